"""Data-plane tier: tests that need a real IPVS kernel, run in a virtme-ng VM.

One VM is booted per test session (fixture ``vm``) and shared by every test in the tier; each
test calls guest-side functions with ``vm.call("tests.dataplane.<module>:<function>", ...)``.
The tier runs when selected (``pytest -m dataplane``, or LVS_DATAPLANE=1) and skips with the
reason when the VM's requirements are missing (install them with hack/vm/setup.sh), unless
LVS_DATAPLANE_REQUIRE=1 (CI: then the tests error instead of skipping).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # so `tests.dataplane.vm` imports however pytest was started
    sys.path.insert(0, str(REPO))

from tests.dataplane.vm import SETUP_HINT, Vm, missing_requirements  # noqa: E402

HERE = Path(__file__).resolve().parent


def _selected(config: pytest.Config) -> bool:
    markexpr = config.getoption("markexpr", "") or ""
    return "dataplane" in markexpr and "not dataplane" not in markexpr


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run = _selected(config) or os.environ.get("LVS_DATAPLANE") == "1"
    missing = missing_requirements() if run else []
    for item in items:
        if HERE not in Path(str(item.fspath)).resolve().parents:
            continue
        item.add_marker(pytest.mark.dataplane)
        if not run:
            item.add_marker(
                pytest.mark.skip(reason="data-plane tier boots a VM: select it with -m dataplane")
            )
        elif missing and os.environ.get("LVS_DATAPLANE_REQUIRE") != "1":
            item.add_marker(
                pytest.mark.skip(
                    reason=f"data-plane VM unavailable: {'; '.join(missing)} ({SETUP_HINT})"
                )
            )


@pytest.fixture(scope="session")
def vm() -> Iterator[Vm]:
    keep = os.environ.get("LVS_VM_KEEP") == "1"  # keep the shared dir (logs) for debugging
    machine = Vm(keep_shared=keep, boot_timeout=float(os.environ.get("LVS_VM_BOOT_TIMEOUT", 300)))
    t0 = time.monotonic()
    machine.start()
    print(
        f"\n[dataplane] VM booted in {machine.boot_seconds:.1f}s "
        f"(kernel {machine.guest_info.get('kernel')}, shared {machine.shared})"
    )
    try:
        yield machine
    finally:
        machine.stop()
        print(f"\n[dataplane] VM session {time.monotonic() - t0:.1f}s")


@pytest.fixture(scope="session")
def topology(vm: Vm) -> dict[str, object]:
    """The namespaces of tests/dataplane/topology.py, built once, with HTTP servers running."""
    topo: dict[str, object] = vm.call("tests.dataplane.topology:build", timeout=180)
    vm.call("tests.dataplane.topology:start_http_servers", timeout=60)
    return topo


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the item: fixtures print diagnostics for a failed test."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"report_{report.when}", report)
