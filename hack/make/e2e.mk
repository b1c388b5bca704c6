# e2e and demo targets (issue 8). Included by the Makefile:
#   include hack/make/e2e.mk
# `make e2e` itself is the Makefile's (pytest -m e2e e2e). Needs PYTHON from the including
# Makefile (defaults to python3 here).
PYTHON ?= python3
DEMO_ARGS ?=

.PHONY: demo demo-once demo-down bench-e2e

demo: setup  ## the whole system here: control plane + VM + operator + traffic + failover (Ctrl-C stops)
	$(PYTHON) e2e/demo.py $(DEMO_ARGS)

demo-once: setup  ## the demo, non-interactive: run the show, clean up, exit
	$(PYTHON) e2e/demo.py --once $(DEMO_ARGS)

demo-down:  ## stop a running demo and remove everything it started
	$(PYTHON) e2e/demo.py --down

bench-e2e: setup  ## handover/crash failover x5, ours vs keepalived (by hand; ~30 min)
	$(PYTHON) bench/e2e_failover.py --runs 5
