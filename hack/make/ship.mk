# Shipping targets (issue 7): image, chart, plain manifests. Included by the Makefile:
#   include hack/make/ship.mk
# Needs PYTHON from the including Makefile (defaults to python3 here).
PYTHON ?= python3
IMAGE ?= lvs-operator:dev
# helm: from PATH, else hack/test-cluster's tools cache (`hack/test-cluster/cluster.sh build`).
HELM ?= $(shell command -v helm 2>/dev/null || \
	$(PYTHON) -c 'import sys; sys.path.insert(0, "hack/ship"); import render; print(render.find_tool("helm") or "helm")')

.PHONY: image image-rootfs image-smoke image-engine lock chart-lint manifests manifests-check

IMAGE_ROOTFS ?= /var/lib/lvs-operator/image-rootfs

image:  ## build the container image $(IMAGE) (starts Debian's docker engine and seeds the base when needed)
	hack/image/build.sh $(IMAGE)

image-rootfs:  ## export $(IMAGE)'s file system to $(IMAGE_ROOTFS) (chroot DIR lvs-operator ...)
	hack/image/rootfs.sh $(IMAGE) $(IMAGE_ROOTFS)

image-smoke:  ## every subcommand, size, labels in $(IMAGE), and chroot into $(IMAGE_ROOTFS) if exported
	hack/image/smoke.sh $(IMAGE) $(if $(wildcard $(IMAGE_ROOTFS)/usr),$(IMAGE_ROOTFS))

image-engine:  ## start Debian's docker engine in the background unless one answers
	hack/image/engine.sh start

lock:  ## regenerate the image's hashed Python locks (hack/image/*.lock) from pyproject.toml
	PYTHON=$(PYTHON) hack/image/lock.sh

chart-lint:  ## helm lint --strict the chart (default values and a full example)
	$(HELM) lint --strict charts/lvs-operator
	$(HELM) lint --strict charts/lvs-operator --set 'vipRanges={192.0.2.0/24,2001:db8::/64}' \
		--set director.timings.leaseDurationSeconds=4 --set director.timings.renewDeadlineSeconds=3 \
		--set director.timings.retryPeriodSeconds=1 --set metrics.serviceMonitor.enabled=true \
		--set metrics.prometheusRule.enabled=true --set metrics.dashboard.enabled=true

manifests:  ## copy crds/ into the chart; render deploy/lvs-operator.yaml and the Argo CD patch
	$(PYTHON) hack/ship/render.py

manifests-check:  ## fail when the chart CRDs, deploy/lvs-operator.yaml or the Argo CD patch are stale
	$(PYTHON) hack/ship/render.py --check
