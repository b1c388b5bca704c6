"""rtnl.py's attribute encoding, and the agent's import budget (no pyroute2, kopf, kubernetes)."""

from __future__ import annotations

import subprocess
import sys

from lvs_operator.director.rtnl import _attrs, _nla


def test_attributes_round_trip_with_padding() -> None:
    data = _nla(1, b"\x0a\x00\x00\x01") + _nla(8, b"\x02") + _nla(2, b"abc")
    assert len(data) % 4 == 0
    assert _attrs(data, 0) == {1: b"\x0a\x00\x00\x01", 8: b"\x02", 2: b"abc"}


def test_the_agent_imports_no_heavy_client() -> None:
    code = (
        "import sys\n"
        "import lvs_operator.director.main as a\n"
        "import lvs_operator.director.kernel, lvs_operator.director.vip\n"
        "a.warm_up()\n"
        "print(sorted(m for m in ('pyroute2', 'kopf', 'kubernetes', 'kubernetes_asyncio')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
