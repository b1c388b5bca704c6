"""The VM boots with an IPVS kernel, the topology works, and hand-made IPVS NAT balances."""

from __future__ import annotations

from tests.dataplane.vm import Vm


def test_guest_has_ipvs(vm: Vm) -> None:
    assert vm.run(["sh", "-c", "lsmod | grep -q '^ip_vs '"]).returncode == 0
    assert "IP Virtual Server" in vm.run(["cat", "/proc/net/ip_vs"], check=True).stdout


def test_nat_round_robin_by_hand(vm: Vm, topology: dict[str, object]) -> None:
    out = vm.call("tests.dataplane.scenarios_smoke:nat_round_robin", requests=30)
    assert out["direct"] == {"rs1": "rs1", "rs2": "rs2", "rs3": "rs3"}
    # rr over 3 servers with one client and fresh connections: exactly 10 each.
    assert out["counts"] == {"rs1": 10, "rs2": 10, "rs3": 10}, out["table"]
