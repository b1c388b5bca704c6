"""VIP ownership on the director: addresses on the interface, gratuitous ARP / unsolicited NA.

The leader of a director group holds every VIP of the group's VirtualServers; the others
hold none. VIPs are host addresses (/32, /128 with ``nodad``), so adding one never changes
routing. The interface is ``spec.directors.interface`` when set, else the one whose route
(main table, longest prefix) leads to the VIP: "the interface on the VIP's subnet".

On takeover each VIP is announced a few times (IPv4: gratuitous ARP, request and reply
forms; IPv6: unsolicited neighbour advertisement with the Override flag to ff02::1), and
again every ``refresh_interval`` seconds (switches and neighbours whose caches age out).

Pure parts (interface choice, packet builders) are unit-tested; ``VipManager`` does the
netlink (rtnl.py, standard library only) and raw-socket work and needs CAP_NET_ADMIN and
CAP_NET_RAW.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lvs_operator.api.network import canonical_ip

log = logging.getLogger("lvs_operator.director.vip")

IFA_F_NODAD = 0x02
IFA_F_NOPREFIXROUTE = 0x200
MAIN_TABLE = 254
ETH_P_ARP = 0x0806
BROADCAST_MAC = b"\xff" * 6
ALL_NODES = "ff02::1"
NA_FLAG_OVERRIDE = 0x20000000


@dataclass(frozen=True)
class Route:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    ifname: str
    metric: int = 0


def pick_interface(vip: str, routes: Iterable[Route]) -> str | None:
    """The interface of the most specific route to ``vip`` (lowest metric on a tie)."""
    address = ipaddress.ip_address(vip)
    best: Route | None = None
    for route in routes:
        if route.network.version != address.version or address not in route.network:
            continue
        if (
            best is None
            or route.network.prefixlen > best.network.prefixlen
            or (route.network.prefixlen == best.network.prefixlen and route.metric < best.metric)
        ):
            best = route
    return best.ifname if best else None


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def garp_frame(vip: str, mac: str, reply: bool = False) -> bytes:
    """A gratuitous ARP Ethernet frame: sender = target = VIP, to broadcast."""
    hw = mac_bytes(mac)
    ip = socket.inet_aton(vip)
    op = 2 if reply else 1
    eth = BROADCAST_MAC + hw + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op)
    arp += hw + ip + (BROADCAST_MAC if reply else b"\x00" * 6) + ip
    return eth + arp


def unsolicited_na(vip: str, mac: str) -> bytes:
    """ICMPv6 neighbour advertisement (checksum left 0: the kernel fills it for raw ICMPv6)."""
    header = struct.pack("!BBHI", 136, 0, 0, NA_FLAG_OVERRIDE)
    target = socket.inet_pton(socket.AF_INET6, vip)
    option = struct.pack("!BB", 2, 1) + mac_bytes(mac)  # target link-layer address
    return header + target + option


def host_prefix(vip: str) -> int:
    return 32 if ipaddress.ip_address(vip).version == 4 else 128


class VipManager:
    """Adds, removes and announces VIPs in the current network namespace."""

    def __init__(
        self,
        rt: Any = None,
        announce_count: int = 3,
        announce_interval: float = 0.2,
    ) -> None:
        if rt is None:
            from .kernel.addresses import Rtnl

            rt = Rtnl()
        self.rt = rt
        self.announce_count = announce_count
        self.announce_interval = announce_interval
        self._lock = threading.Lock()  # one netlink socket: one request at a time

    # -- queries -------------------------------------------------------------------------------

    @staticmethod
    def _ifname(index: int) -> str:
        from .kernel.addresses import name_of

        return name_of(index)

    @staticmethod
    def _index(ifname: str) -> int:
        from .kernel.addresses import index_of

        index = index_of(ifname)
        if index is None:
            raise LookupError(
                f"interface {ifname!r} does not exist on this node: fix "
                "spec.directors.interface, or leave it out to use the interface routing to the VIP"
            )
        return index

    def routes(self) -> list[Route]:
        """Unicast routes of the main table with an output interface."""
        out = []
        names: dict[int, str] = {}
        with self._lock:
            dump = self.rt.routes()
        for r in dump:
            if r.table != MAIN_TABLE or r.type != 1 or r.oif is None:
                continue
            if r.oif not in names:
                names[r.oif] = self._ifname(r.oif)
            dst = r.dst or ("0.0.0.0" if r.family == socket.AF_INET else "::")
            network = ipaddress.ip_network(f"{dst}/{r.dst_len}", strict=False)
            out.append(Route(network, names[r.oif], r.priority))
        return out

    def present(self) -> dict[str, str]:
        """Host addresses (/32, /128) on this node: address -> interface name."""
        out: dict[str, str] = {}
        names: dict[int, str] = {}
        with self._lock:
            dump = self.rt.addresses()
        for a in dump:
            if a.prefixlen != (32 if a.family == socket.AF_INET else 128):
                continue
            if a.index not in names:
                names[a.index] = self._ifname(a.index)
            out[canonical_ip(a.address)] = names[a.index]
        return out

    # -- changes -------------------------------------------------------------------------------

    def add(self, vip: str, ifname: str) -> bool:
        """Add ``vip`` as a host address on ``ifname``; False if it was already there."""
        index = self._index(ifname)
        flags = (IFA_F_NODAD | IFA_F_NOPREFIXROUTE) if ":" in vip else 0
        try:
            with self._lock:
                self.rt.add_address(index, vip, host_prefix(vip), flags)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                return False
            raise
        log.info("VIP added", extra={"vip": vip, "interface": ifname})
        return True

    def remove(self, vip: str, ifname: str) -> bool:
        try:
            index = self._index(ifname)
            with self._lock:
                self.rt.del_address(index, vip, host_prefix(vip))
        except LookupError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                return False
            raise
        log.info("VIP removed", extra={"vip": vip, "interface": ifname})
        return True

    def link_info(self, ifname: str) -> tuple[int, str] | None:
        """(index, MAC) of ``ifname``; None if it has no link-layer address."""
        from .kernel.addresses import mac_of

        try:
            index = self._index(ifname)
        except LookupError as exc:
            log.warning("cannot announce on %s: %s", ifname, exc)
            return None
        mac = mac_of(ifname)
        if not mac or mac == "00:00:00:00:00:00":
            return None  # loopback or a device without link-layer addresses
        return index, mac

    def send_many(self, items: list[tuple[str, str, tuple[int, str]]], count: int | None) -> None:
        """Announce many VIPs at once: ``count`` rounds over all of them, ``announce_interval``
        apart (blocking; raw sockets only, no netlink: safe on any thread). A failed send is
        logged and the others go on."""
        count = self.announce_count if count is None else count
        for i in range(count):
            for vip, ifname, (index, mac) in items:
                try:
                    if ":" in vip:
                        self._send_na(vip, ifname, index, mac)
                    else:
                        self._send_garp(vip, ifname, mac, reply=bool(i % 2))
                except OSError as exc:
                    log.warning(
                        "announcing VIP failed: %s (the agent needs CAP_NET_RAW)",
                        exc,
                        extra={"vip": vip, "interface": ifname},
                    )
            if i + 1 < count:
                time.sleep(self.announce_interval)

    @staticmethod
    def _send_garp(vip: str, ifname: str, mac: str, reply: bool) -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
            s.bind((ifname, ETH_P_ARP))
            s.send(garp_frame(vip, mac, reply))

    @staticmethod
    def _send_na(vip: str, ifname: str, index: int, mac: str) -> None:
        with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
            s.sendto(unsolicited_na(vip, mac), (ALL_NODES, 0, 0, index))


@dataclass(frozen=True)
class VipPlan:
    add: Mapping[str, str]  # vip -> interface
    remove: Mapping[str, str]  # vip -> interface it is on now


def plan_vips(
    wanted: Mapping[str, str], present: Mapping[str, str], candidates: Iterable[str]
) -> VipPlan:
    """What to change so that exactly ``wanted`` (vip -> interface) is present.

    Only addresses in ``candidates`` (VIPs this agent knows of: its VirtualServers' and its
    IPVS services' addresses) are ever removed; other host addresses on the node are left
    alone. A VIP on the wrong interface is moved."""
    wanted = {canonical_ip(k): v for k, v in wanted.items()}
    add: dict[str, str] = {}
    remove: dict[str, str] = {}
    for vip, ifname in wanted.items():
        if present.get(vip) != ifname:
            add[vip] = ifname
            if vip in present:
                remove[vip] = present[vip]
    for vip in {canonical_ip(c) for c in candidates}:
        if vip not in wanted and vip in present:
            remove[vip] = present[vip]
    return VipPlan(add=add, remove=remove)
