"""The e2e tier: the whole system on the local control plane and the data-plane VM.

Runs when selected (``pytest -m e2e e2e``, ``make e2e``, or LVS_E2E=1); skips with the
reason and the command that installs what is missing (``hack/test-cluster/cluster.sh build``,
``hack/vm/setup.sh``; both from ``make setup``), unless LVS_E2E_REQUIRE=1 (CI: then it errors).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

HERE = Path(__file__).resolve().parent


def _selected(config: pytest.Config) -> bool:
    markexpr = config.getoption("markexpr", "") or ""
    return "e2e" in markexpr and "not e2e" not in markexpr


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [i for i in items if HERE in Path(str(i.fspath)).resolve().parents]
    if not mine:
        return
    run = _selected(config) or os.environ.get("LVS_E2E") == "1"
    missing: list[str] = []
    if run:
        from e2e.system import missing as system_missing

        missing = system_missing()
    for item in mine:
        item.add_marker(pytest.mark.e2e)
        if not run:
            item.add_marker(
                pytest.mark.skip(
                    reason="e2e boots a cluster and a VM: select it with -m e2e (or LVS_E2E=1)"
                )
            )
        elif missing and os.environ.get("LVS_E2E_REQUIRE") != "1":
            item.add_marker(pytest.mark.skip(reason="e2e unavailable: " + "; ".join(missing)))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    rep = yield
    if rep.when == "call" and rep.failed:
        item.session.stash.setdefault(FAILED, []).append(item.name)  # type: ignore[arg-type]
        item.stash[FAILED_ITEM] = True
    return rep


FAILED = pytest.StashKey[list[str]]()
FAILED_ITEM = pytest.StashKey[bool]()


@pytest.fixture(scope="session")
def say(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Print to the terminal even while pytest captures output (progress and figures)."""
    capman = request.config.pluginmanager.get_plugin("capturemanager")

    def out(msg: str) -> None:
        text = "\n".join(f"[e2e] {line}" for line in msg.splitlines() or [""])
        if capman is not None:
            with capman.global_and_fixture_disabled():
                print(text, flush=True)
        else:
            print(text, flush=True)

    return out
