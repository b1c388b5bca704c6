"""Guest side of test_arp_filter.py: the handover's ARP filter (handover.py's
``render_arp_filter``, installed by ``HandoverKernel``) on a real kernel, in two network
namespaces of its own joined by a veth pair (not the shared topology):

- ``arpf-old`` (the old leader) keeps the VIP on ``lo``; with ``arp_ignore=0`` (the default)
  its kernel answers ARP for it on any interface;
- ``arpf-peer`` (a client or the new leader's side of the link).

Needs root, ``ip`` and nftables' ``arp`` family; touches nothing outside its namespaces (it
deletes them at the end), so it also runs on a host as root:
``python -c 'from tests.dataplane.scenarios_arp_filter import arp_filter; print(arp_filter())'``.
"""

from __future__ import annotations

import subprocess
import sys
import time

from lvs_operator.director.handover import HandoverKernel

OLD, PEER = "arpf-old", "arpf-peer"
OLD_LINK, PEER_LINK = "arpf-o0", "arpf-p0"
OLD_ADDR, PEER_ADDR, VIP = "10.77.0.1", "10.77.0.2", "10.77.0.9"


def _ip(*argv: str) -> str:
    return subprocess.run(
        ["ip", *argv], check=True, capture_output=True, text=True, timeout=30
    ).stdout


def _send_udp(ns: str, to: str, source: str | None = None) -> None:
    """One datagram from ``ns`` (from ``source`` if given): makes its kernel resolve ``to``."""
    bind = f"s.bind(({source!r}, 0));" if source else ""
    code = f"import socket; s = socket.socket(2, 2); {bind} s.sendto(b'x', ({to!r}, 9))"
    _ip("netns", "exec", ns, sys.executable, "-c", code)


def _neighbour(ns: str, dev: str, address: str) -> str:
    """``ip neigh`` line of ``address`` ("" when none): a MAC ("lladdr") means answered."""
    return _ip("-n", ns, "neigh", "show", "dev", dev, "to", address).strip()


def _flush() -> None:
    _ip("-n", OLD, "neigh", "flush", "dev", OLD_LINK)
    _ip("-n", PEER, "neigh", "flush", "dev", PEER_LINK)


def _peer_asks_for_the_vip() -> str:
    _flush()
    _send_udp(PEER, VIP)
    time.sleep(1.5)  # the kernel's ARP request and, if any, the answer
    return _neighbour(PEER, PEER_LINK, VIP)


def _old_sends_from_the_vip() -> str:
    """The old leader answers from the VIP (a relayed connection): its kernel resolves the
    peer with an ARP request whose sender, without the filter, is the VIP (arp_announce=0),
    and the peer learns the VIP at the old leader's MAC. The peer's entry for the VIP."""
    _ip("-n", PEER, "neigh", "flush", "dev", PEER_LINK)
    _ip("-n", OLD, "neigh", "flush", "dev", OLD_LINK)
    # an entry the peer's own earlier probe left (INCOMPLETE) would not show the difference
    if _neighbour(PEER, PEER_LINK, VIP):
        _ip("-n", PEER, "neigh", "del", VIP, "dev", PEER_LINK)
    _send_udp(OLD, PEER_ADDR, source=VIP)
    time.sleep(1.5)
    return _neighbour(PEER, PEER_LINK, VIP)


def _teardown() -> None:
    for ns in (OLD, PEER):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def arp_filter() -> dict[str, object]:
    _teardown()
    _ip("netns", "add", OLD)
    _ip("netns", "add", PEER)
    try:
        _ip("link", "add", OLD_LINK, "type", "veth", "peer", "name", PEER_LINK)
        _ip("link", "set", OLD_LINK, "netns", OLD)
        _ip("link", "set", PEER_LINK, "netns", PEER)
        for ns, dev, addr in ((OLD, OLD_LINK, OLD_ADDR), (PEER, PEER_LINK, PEER_ADDR)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", OLD, "addr", "add", f"{VIP}/32", "dev", "lo")
        out: dict[str, object] = {"without_filter": _peer_asks_for_the_vip()}
        out["without_filter_peer_learnt_vip"] = _old_sends_from_the_vip()

        node = HandoverKernel(OLD)
        node.filter_arp([VIP], {OLD_LINK: OLD_ADDR})
        out["with_filter"] = _peer_asks_for_the_vip()
        # with the filter, that request goes out from the old leader's own address
        out["peer_learnt_vip"] = _old_sends_from_the_vip()
        out["old_resolves_peer"] = _neighbour(OLD, OLD_LINK, PEER_ADDR)
        out["peer_learnt_old"] = _neighbour(PEER, PEER_LINK, OLD_ADDR)

        out["removed"] = node.remove_arp_filter()
        out["removed_again"] = node.remove_arp_filter()
        out["after_removal"] = _peer_asks_for_the_vip()
        return out
    finally:
        _teardown()
