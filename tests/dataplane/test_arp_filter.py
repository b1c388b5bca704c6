"""The handover's ARP filter on a real kernel (in the VM): the old leader, keeping the VIP on
lo, answers no ARP for it while the filter is in, its own requests sent from the VIP name its
own address instead (so no neighbour learns the VIP at its MAC), and all of it ends when the
filter is removed. Run here by hand on the host kernel too (scenarios_arp_filter.py)."""

from __future__ import annotations

from tests.dataplane.vm import Vm


def test_the_old_leader_answers_no_arp_for_its_vip_on_lo_while_filtered(vm: Vm) -> None:
    out = vm.call("tests.dataplane.scenarios_arp_filter:arp_filter")
    # without the filter both happen (what arp_ignore/arp_announce used to prevent)
    assert "lladdr" in out["without_filter"], out
    assert "lladdr" in out["without_filter_peer_learnt_vip"], out
    # with it: no answer for the VIP, no VIP learnt from a request sent from it...
    assert "lladdr" not in out["with_filter"], out
    assert "lladdr" not in out["peer_learnt_vip"], out
    # ...while that request, re-sourced, still resolves the peer (the relayed answers flow)
    assert "lladdr" in out["old_resolves_peer"], out
    assert "lladdr" in out["peer_learnt_old"], out
    assert (out["removed"], out["removed_again"]) == (True, False)
    assert "lladdr" in out["after_removal"], out
