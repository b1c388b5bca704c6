# lvs-operator developer entry points. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
PYTEST ?= $(PYTHON) -m pytest
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help setup setup-python setup-cluster setup-vm crds lint test unit integration dataplane e2e demo demo-down clean

help:  ## list the targets
	@grep -hE '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

setup: setup-python  ## install everything the tests need (idempotent)
	@# the control plane's Go build and the VM's set-up overlap (their lines are prefixed)
	$(MAKE) --no-print-directory -j2 setup-cluster setup-vm

setup-python:  ## the package and its test tools (editable)
	$(PYTHON) -m pip install -q -e '.[test]'

setup-cluster:  ## build the local control plane from Go modules (cached in ~/.cache/lvs-operator)
	hack/test-cluster/cluster.sh build

setup-vm:  ## qemu, virtme-ng and Debian's IPVS kernel for the data-plane VM
	hack/vm/setup.sh

crds:  ## regenerate crds/ from the Python models
	$(PYTHON) -m lvs_operator.api.crd crds/

lint:  ## ruff and mypy
	$(PYTHON) -m ruff check operator tests e2e bench
	$(PYTHON) -m ruff format --check operator tests e2e bench
	$(PYTHON) -m mypy

test: setup  ## every tier: unit, integration, data plane, e2e
	PYTHON=$(PYTHON) hack/test-all.sh

unit:  ## the fast tier only (no cluster, no VM)
	$(PYTEST) -m "not integration and not dataplane and not e2e" tests

integration: setup-python setup-cluster  ## the real control plane tier
	$(PYTEST) -m integration tests

dataplane: setup-python setup-vm  ## the IPVS kernel tier (VM)
	$(PYTEST) -m dataplane tests

e2e: setup  ## the whole system: control plane + VM
	$(PYTEST) -m e2e e2e

clean:  ## remove build and test leftovers from the work tree
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist operator/*.egg-info

include hack/make/ship.mk
include hack/make/e2e.mk
