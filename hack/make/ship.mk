# Shipping targets (issue 7): image, chart, plain manifests. Included by the Makefile:
#   include hack/make/ship.mk
# Needs PYTHON from the including Makefile (defaults to python3 here).
PYTHON ?= python3
IMAGE ?= lvs-operator:dev
# helm: from PATH, else hack/test-cluster's tools cache (`hack/test-cluster/cluster.sh build`).
HELM ?= $(shell command -v helm 2>/dev/null || \
	$(PYTHON) -c 'import sys; sys.path.insert(0, "hack/ship"); import render; print(render.find_tool("helm") or "helm")')

.PHONY: image chart-lint manifests manifests-check

image:  ## build the container image $(IMAGE) (seeds the base image locally when no registry answers)
	hack/image/build.sh $(IMAGE)

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
