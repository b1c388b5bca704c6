"""The netlink core's attribute encoding (shared by rtnetlink and IPVS), and the agent's
import budget (no pyroute2, kopf, kubernetes)."""

from __future__ import annotations

import subprocess
import sys

from lvs_operator.director.kernel.netlink import NLA_F_NESTED, nested, nla, parse_attrs


def test_attributes_round_trip_with_padding() -> None:
    data = nla(1, b"\x0a\x00\x00\x01") + nla(8, b"\x02") + nla(2, b"abc")
    assert len(data) % 4 == 0
    assert parse_attrs(data, 0) == {1: b"\x0a\x00\x00\x01", 8: b"\x02", 2: b"abc"}


def test_attribute_padding_and_nesting() -> None:
    a = nla(1, b"abc")
    assert len(a) == 8 and a[:4] == (7).to_bytes(2, "little") + (1).to_bytes(2, "little")
    n = nested(2, a, nla(3, b"\x01\x02\x03\x04"))
    assert int.from_bytes(n[2:4], "little") == 2 | NLA_F_NESTED
    inner = parse_attrs(parse_attrs(n)[2])
    assert inner == {1: b"abc", 3: b"\x01\x02\x03\x04"}


def test_the_agent_imports_no_heavy_client() -> None:
    code = (
        "import sys\n"
        "import lvs_operator.director.main as a\n"
        "import lvs_operator.director.kernel.dataplane, lvs_operator.director.vip\n"
        "a.warm_up()\n"
        "print(sorted(m for m in ('pyroute2', 'kopf', 'kubernetes', 'kubernetes_asyncio')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
