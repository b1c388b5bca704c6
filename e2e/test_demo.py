"""The demo (``make demo`` / ``lvs-operator demo``) runs non-interactively to the end.

It brings up its own control plane and VM (a few minutes more), so it runs only when asked:
``LVS_E2E_DEMO=1 pytest -m e2e e2e/test_demo.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.environ.get("LVS_E2E_DEMO") != "1", reason="the demo test runs with LVS_E2E_DEMO=1"
    ),
]

REPO = Path(__file__).resolve().parents[1]


def test_demo_once_shows_the_system_and_cleans_up(tmp_path: Path) -> None:
    env = {**os.environ, "CI": "true", "LVS_DEMO_DIR": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-m", "lvs_operator.cli", "demo", "--once", "--live-seconds", "4"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        stdin=subprocess.DEVNULL,
    )
    print(r.stdout[-6000:], r.stderr[-3000:])
    assert r.returncode == 0
    out = r.stdout
    for needle in (
        "export KUBECONFIG=",
        "kubectl get lvs,rsp",
        "answers/s:",
        "handover",
        "crash failover",
        "cleaning up",
    ):
        assert needle in out, needle
    assert not (tmp_path / "state.json").exists()  # cleaned up
