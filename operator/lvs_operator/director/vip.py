"""VIP ownership on the director: addresses on the interface, gratuitous ARP / unsolicited NA.

The leader of a director group holds every VIP of the group's VirtualServers; the others
hold none. VIPs are host addresses (/32, /128 with ``nodad``), so adding one never changes
routing. The interface is ``spec.directors.interface`` when set, else the one whose route
(main table, longest prefix) leads to the VIP: "the interface on the VIP's subnet".

On takeover each VIP is announced a few times (IPv4: gratuitous ARP, request and reply
forms; IPv6: unsolicited neighbour advertisement with the Override flag to ff02::1), and
again every ``refresh_interval`` seconds (switches and neighbours whose caches age out).
An announcement stops between two frames when its ``stop`` event is set (step-down).

``VipManager.answered`` asks the link whether another host answers for some VIPs (an ARP
probe, a neighbour solicitation): before a takeover, a VIP still held elsewhere (a stopped
leader whose kernel still answers ARP) is seen.

**Only what it added.** Every VIP goes on with IFA_PROTO ``VIP_PROTO`` and, by default, a
finite lifetime (``lifetime`` seconds) that the leader renews while it holds the VIP: an
agent that dies (SIGKILL, OOM kill, a crash loop) loses its VIPs to the kernel within the
lifetime, instead of keeping them until a restart that may never come (the dead-man switch).
``present`` lists only such addresses, so nothing removes an address someone else added (a
node's own /32, kube-proxy's ClusterIPs): on kernels older than 6.1, which do not keep
IFA_PROTO, "ours" is "a host address with a finite lifetime". A VIP that is already an
address of the node, not added by an agent, is refused (``ForeignAddress``), never adopted.
A renewal round is one rtnetlink batch for all the VIPs (``Rtnl.renew_addresses``: as few
sends as the receive buffer allows, only the last request of each acknowledged, failures
answered anyway): a round of one request per VIP, each waiting for its acknowledgement, did
not keep up with the lifetime at 1,000 VIPs in the test VM (bench/agent_scale.py under
TCG), so VIPs lapsed and were added again; an acknowledgement per request still cost a recv
each, 0.92 s of a 1,000-VIP round against 0.29 s now (bench/vip_renewal.py).

Pure parts (interface choice, packet builders) are unit-tested; ``VipManager`` does the
netlink (rtnl.py, standard library only) and raw-socket work and needs CAP_NET_ADMIN and
CAP_NET_RAW.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lvs_operator.api.network import canonical_ip

if TYPE_CHECKING:
    from .kernel.addresses import AddrEntry

log = logging.getLogger("lvs_operator.director.vip")

IFA_F_NODAD = 0x02
IFA_F_NOPREFIXROUTE = 0x200
MAIN_TABLE = 254
ETH_P_ARP = 0x0806
BROADCAST_MAC = b"\xff" * 6
ALL_NODES = "ff02::1"
NA_FLAG_OVERRIDE = 0x20000000
ND_SOLICIT, ND_ADVERT = 135, 136
ICMP6_FILTER = 1  # <netinet/icmp6.h>: socket option of IPPROTO_ICMPV6
PACKET_OUTGOING = 4  # AF_PACKET pkttype of a frame this host sent
SOL_PACKET = 263
# (Linux 4.20) this host's own frames are not queued to the socket: a probe for 1,000 VIPs
# sends 3,000 frames per window, each of which came back to be read and dropped in Python
PACKET_IGNORE_OUTGOING = 23
PROBE_COUNT = 3  # probes per VIP, PROBE_GAP apart: one lost frame is no false "free"
PROBE_GAP = 0.02
PROBE_ROUNDS = 2  # a silent window is checked once more before "nobody answers"
CLAIM_PROBE = 0.06  # seconds a renewal without the Lease listens for another holder
# a renewal's probe: one frame per VIP in one window. It runs again every round (a lost frame
# costs one round), and at 1,000 VIPs a takeover's 3 frames x 2 windows per VIP made each
# round of a restarted leader take 6-8 s under TCG: its VIPs lapsed
RENEWAL_PROBE_COUNT, RENEWAL_PROBE_WINDOWS = 1, 1
MAX_FRAMES = 256  # read per socket per look
VIP_PROTO = 76  # IFA_PROTO of the addresses the agent adds ("L"; 0-3 are the kernel's)
PROTO_KERNEL = (6, 1)  # first kernel release that keeps IFA_PROTO
LATE_RENEWAL = 1  # a renewal with this many seconds (or fewer) left is logged


def kernel_keeps_proto(release: str | None = None) -> bool:
    import os
    import re

    m = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return m is not None and (int(m.group(1)), int(m.group(2))) >= PROTO_KERNEL


class ForeignAddress(RuntimeError):
    """The VIP is already an address of this node that no agent added."""


class NoSuchInterface(LookupError):
    """The interface a VIP is placed on does not exist on this node."""


@dataclass(frozen=True)
class Route:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    ifname: str
    metric: int = 0


def pick_interface(vip: str, routes: Iterable[Route]) -> str | None:
    """The interface of the most specific route to ``vip`` (lowest metric on a tie)."""
    return RouteIndex(routes).pick(vip)


class RouteIndex:
    """``pick_interface`` for many VIPs against one route dump: each route's network as
    integers once, each VIP by one C call (inet_pton). A VIP reconcile places every VIP of
    the group: at 1,000 VIPs, ``ipaddress`` (a parse and a containment test per route for
    each) cost ~0.3 s of the VIP lane under TCG, every refresh."""

    def __init__(self, routes: Iterable[Route]) -> None:
        # (version, network, mask, prefix length, metric, interface), in the dump's order
        self._routes = [
            (r.network.version, int(r.network.network_address), int(r.network.netmask),
             r.network.prefixlen, r.metric, r.ifname)
            for r in routes
        ]  # fmt: skip

    def pick(self, vip: str) -> str | None:
        version = 6 if ":" in vip else 4
        try:
            packed = socket.inet_pton(socket.AF_INET6 if version == 6 else socket.AF_INET, vip)
        except OSError as exc:
            raise ValueError(f"{vip!r} is not an IP address") from exc
        address = int.from_bytes(packed, "big")
        best: tuple[int, int, str] | None = None  # (prefix length, metric, interface)
        for route_version, network, mask, prefixlen, metric, ifname in self._routes:
            if route_version != version or address & mask != network:
                continue
            if best is None or prefixlen > best[0] or (prefixlen == best[0] and metric < best[1]):
                best = (prefixlen, metric, ifname)
        return best[2] if best else None


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


def arp_probe_frame(vip: str, mac: str) -> bytes:
    """An ARP probe (RFC 5227): a request for ``vip`` from sender IP 0.0.0.0, to broadcast.
    Sender IP 0 teaches no host's ARP cache anything; a holder answers it (Linux: with a
    reply unicast to our MAC, target IP 0)."""
    hw = mac_bytes(mac)
    eth = BROADCAST_MAC + hw + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
    arp += hw + b"\x00" * 4 + b"\x00" * 6 + socket.inet_aton(vip)
    return eth + arp


def parse_arp_reply(frame: bytes) -> tuple[str, str] | None:
    """(sender IP, sender MAC) of an Ethernet ARP reply (IPv4 over Ethernet); None for any
    other frame."""
    if len(frame) < 42 or frame[12:14] != struct.pack("!H", ETH_P_ARP):
        return None
    if struct.unpack("!HHBBH", frame[14:22]) != (1, 0x0800, 6, 4, 2):
        return None
    return socket.inet_ntoa(frame[28:32]), ":".join(f"{b:02x}" for b in frame[22:28])


def solicited_node(vip: str) -> str:
    """The solicited-node multicast group of an IPv6 address (ff02::1:ffXX:XXXX)."""
    low = int.from_bytes(ipaddress.IPv6Address(vip).packed[13:], "big")
    return str(ipaddress.IPv6Address("ff02::1:ff00:0") + low)


def neighbour_solicitation(vip: str, mac: str) -> bytes:
    """ICMPv6 neighbour solicitation for ``vip`` with our link-layer address (checksum 0:
    the kernel fills it). Sent from our link-local address: a raw socket cannot send from
    the unspecified address (DAD form), and a holder answers either."""
    header = struct.pack("!BBHI", ND_SOLICIT, 0, 0, 0)
    target = socket.inet_pton(socket.AF_INET6, vip)
    option = struct.pack("!BB", 1, 1) + mac_bytes(mac)  # source link-layer address
    return header + target + option


def parse_neighbour_advert(packet: bytes) -> tuple[str, str | None] | None:
    """(target, target link-layer address or None) of an ICMPv6 neighbour advertisement
    (as a raw ICMPv6 socket reads it: no IPv6 header); None for anything else."""
    if len(packet) < 24 or packet[0] != ND_ADVERT or packet[1] != 0:
        return None
    target = str(ipaddress.IPv6Address(packet[8:24]))
    options = packet[24:]
    while len(options) >= 8 and options[1]:
        size = options[1] * 8
        if options[0] == 2 and size >= 8:
            return target, ":".join(f"{b:02x}" for b in options[2:8])
        options = options[size:]
    return target, None


def host_prefix(vip: str) -> int:
    """32 for an IPv4 address, 128 for an IPv6 one (only IPv6 text has a colon)."""
    return 128 if ":" in vip else 32


class VipManager:
    """Adds, removes and announces VIPs in the current network namespace."""

    def __init__(
        self,
        rt: Any = None,
        announce_count: int = 3,
        announce_interval: float = 0.2,
        lifetime: int | None = None,
        keeps_proto: bool | None = None,
    ) -> None:
        if rt is None:
            from .kernel.addresses import Rtnl

            rt = Rtnl()
        self.rt = rt
        self.announce_count = announce_count
        self.announce_interval = announce_interval
        self.lifetime = lifetime or None  # seconds; None: VIPs stay until removed
        self.keeps_proto = kernel_keeps_proto() if keeps_proto is None else keeps_proto
        self._lock = threading.Lock()  # one netlink socket: one request at a time

    def ours(self, entry: AddrEntry) -> bool:
        """Did an agent add this address (see the module's docstring)?"""
        if self.keeps_proto:
            return bool(entry.proto == VIP_PROTO)
        return entry.valid_lft is not None or self.lifetime is None

    # -- queries -------------------------------------------------------------------------------

    @staticmethod
    def _ifname(index: int) -> str:
        from .kernel.addresses import name_of

        return name_of(index)

    def _indexer(self) -> Callable[[str], int]:
        """``_index`` remembered for one batch: a round names one interface for each of
        1,000 VIPs, and each look is a socket and an ioctl."""
        known: dict[str, int] = {}

        def index(ifname: str) -> int:
            if ifname not in known:
                known[ifname] = self._index(ifname)  # a missing interface raises: not kept
            return known[ifname]

        return index

    @staticmethod
    def _index(ifname: str) -> int:
        from .kernel.addresses import index_of

        index = index_of(ifname)
        if index is None:
            raise NoSuchInterface(
                f"interface {ifname} does not exist on this node: fix spec.directors.interface, "
                "or leave it out to use the interface routing to the VIP"
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
        """Host addresses (/32, /128) an agent added on this node: address -> interface."""
        return {address: ifname for address, (ifname, _) in self._present().items()}

    def _present(self) -> dict[str, tuple[str, int | None]]:
        """``present``, with each address's remaining lifetime (seconds; None: none)."""
        out: dict[str, tuple[str, int | None]] = {}
        names: dict[int, str] = {}
        with self._lock:
            dump = self.rt.addresses()
        for a in dump:
            if a.prefixlen != (32 if a.family == socket.AF_INET else 128) or not self.ours(a):
                continue
            if a.index not in names:
                names[a.index] = self._ifname(a.index)
            out[canonical_ip(a.address)] = (names[a.index], a.valid_lft)
        return out

    # -- changes -------------------------------------------------------------------------------

    def add(self, vip: str, ifname: str) -> bool:
        """Add ``vip`` as a host address on ``ifname``; False if an agent's was already
        there (its lifetime restarts: adopted). Raises ForeignAddress if the node has it
        from someone else."""
        index = self._index(ifname)
        flags = (IFA_F_NODAD | IFA_F_NOPREFIXROUTE) if ":" in vip else 0
        try:
            with self._lock:
                self.rt.add_address(index, vip, host_prefix(vip), flags, VIP_PROTO, self.lifetime)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
            with self._lock:
                dump = self.rt.addresses()
            agents = [
                a
                for a in dump
                if a.index == index
                and canonical_ip(a.address) == canonical_ip(vip)
                and a.prefixlen == host_prefix(vip)
                and self.ours(a)
            ]
            if not agents:
                raise ForeignAddress(
                    f"{vip} is already an address of this node on {ifname}, not added by "
                    "lvs-operator: left alone and not announced; remove it from the node or "
                    "choose another VIP"
                ) from None
            self.renew([(vip, ifname)])
            return False
        log.info("VIP added", extra={"vip": vip, "interface": ifname})
        return True

    def add_many(self, items: Sequence[tuple[str, str]]) -> list[Exception | None]:
        """``add`` for each (vip, interface), in one rtnetlink batch: a takeover adds every
        VIP before it announces them, and one request at a time took about 0.1 s per VIP in
        a loaded test VM. The error of each (None: added, or an agent's already: adopted).
        An address already there goes through ``add`` (adopted, or ForeignAddress)."""
        from .kernel.addresses import Renewal

        errors: list[Exception | None] = [None] * len(items)
        batch: list[tuple[int, Renewal]] = []  # (position in items, request)
        index_of = self._indexer()
        for pos, (vip, ifname) in enumerate(items):
            try:
                index = index_of(ifname)
            except LookupError as exc:
                errors[pos] = exc
                continue
            batch.append((pos, Renewal(index, vip, host_prefix(vip), self._flags(vip),
                                       VIP_PROTO, self.lifetime)))  # fmt: skip
        with self._lock:
            codes = self.rt.add_addresses([r for _, r in batch]) if batch else []
        for (pos, _), code in zip(batch, codes, strict=True):
            vip, ifname = items[pos]
            try:
                if code == errno.EEXIST:
                    self.add(vip, ifname)
                    continue
                if code:
                    raise OSError(code, os.strerror(code))
            except (OSError, ForeignAddress) as exc:
                errors[pos] = exc
                continue
            log.info("VIP added", extra={"vip": vip, "interface": ifname})
        return errors

    def renew(self, items: Iterable[tuple[str, str]]) -> list[str]:
        """Restart the lifetime of the VIPs of ``items`` ((vip, interface) pairs) that an
        agent's address holds on that interface now; the VIPs that failed (each logged).

        Only present ones: the kernel's "replace" would add an address that is gone (a VIP
        just moved to lo, or one that lapsed while this process was stopped, which a standby
        may hold by now). One call does the look and the renewals, and every address change
        of the agent runs on the same thread, so nothing changes in between."""
        failed: list[str] = []
        if self.lifetime is None:
            return failed
        items = list(items)
        if not items:
            return failed
        started = time.monotonic()
        here = self._present()
        # the shortest remaining lifetime first: a round of 1,000 took 2-5 s in the test VM
        # (the kernel's work per address grows with their number), and the last of a round
        # waited for all the others
        items.sort(key=lambda item: _remaining(here.get(canonical_ip(item[0]))))
        from .kernel.addresses import Renewal
        from .kernel.netlink import NetlinkError

        # One batch for all of them: a round of one request (and one wait for its ACK) per
        # VIP did not keep up with the lifetime at 1,000 VIPs. Errors are kept per VIP, in
        # the order of ``items``, so the log and ``failed`` read as they did per request.
        errors: dict[int, OSError | LookupError] = {}
        batch: list[tuple[int, Renewal]] = []  # (position in items, request)
        index_of = self._indexer()
        for pos, (vip, ifname) in enumerate(items):
            if here.get(canonical_ip(vip), (None, None))[0] != ifname:
                continue
            flags = (IFA_F_NODAD | IFA_F_NOPREFIXROUTE) if ":" in vip else 0
            try:
                index = index_of(ifname)
            except LookupError as exc:
                errors[pos] = exc
                continue
            batch.append((pos, Renewal(index, vip, host_prefix(vip), flags, VIP_PROTO,
                                       self.lifetime)))  # fmt: skip
        if batch:
            try:
                with self._lock:
                    codes = self.rt.renew_addresses([r for _, r in batch])
            except OSError as exc:  # the batch as a whole failed (the socket)
                errors.update((pos, exc) for pos, _ in batch)
            else:
                for (pos, _), code in zip(batch, codes, strict=True):
                    if code:
                        errors[pos] = NetlinkError(code, os.strerror(code))
        for pos in sorted(errors):
            vip, ifname = items[pos]
            log.warning("VIP lifetime not renewed: %s", errors[pos],
                        extra={"vip": vip, "interface": ifname})  # fmt: skip
            failed.append(vip)
        if batch:
            shortest = _remaining(here.get(canonical_ip(items[batch[0][0]][0])))
            if shortest <= LATE_RENEWAL:  # close to a lapse: worth a line, with the round's cost
                log.warning("VIP lifetimes renewed late",
                            extra={"shortest_remaining_s": shortest, "renewed": len(batch),
                                   "seconds": round(time.monotonic() - started, 3)})  # fmt: skip
        return failed

    def renew_unclaimed(self, items: Iterable[tuple[str, str]]) -> tuple[list[str], list[str]]:
        """Renew the VIPs of ``items`` that no other host answers ARP / NDP for (a probe
        first, as before a takeover); returns (renewed, left: another host answers). For a
        node whose Lease standing is not known yet (a restart): its kernel's VIPs are kept
        only while nobody else holds them, e.g. not after the node was cut off and its
        standby took over."""
        items = list(items)
        links: dict[str, tuple[int, str] | None] = {}
        probe: list[tuple[str, str, tuple[int, str]]] = []
        for vip, ifname in items:
            if ifname not in links:
                links[ifname] = self.link_info(ifname)
            link = links[ifname]
            if link is not None:  # lo has no link-layer address: nobody else answers there
                probe.append((vip, ifname, link))
        taken = (
            self.answered(probe, CLAIM_PROBE, RENEWAL_PROBE_COUNT, RENEWAL_PROBE_WINDOWS)
            if probe
            else set()
        )
        keep = [(vip, ifname) for vip, ifname in items if vip not in taken]
        failed = set(self.renew(keep))
        return [v for v, _ in keep if v not in failed], sorted(taken)

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

    def move(self, moves: Mapping[str, str], to: str) -> tuple[list[str], list[str]]:
        """Move each VIP of ``moves`` (vip -> its interface) to interface ``to``: added
        there first (so it is never missing), then removed from its interface. One batch of
        adds, one of removals: a handover releases the Lease only after this, and one
        request at a time took about 1 s for 9 VIPs in a loaded test VM. Returns the VIPs now
        on ``to`` and, of those, the ones no longer on their interface. Each failure is
        logged with the VIP."""
        from .kernel.addresses import Renewal

        vips = list(moves)
        target = self._index(to)
        adds = [Renewal(target, vip, host_prefix(vip), self._flags(vip), VIP_PROTO,
                        self.lifetime) for vip in vips]  # fmt: skip
        with self._lock:
            codes = self.rt.add_addresses(adds) if adds else []
        on_target: list[str] = []
        for vip, code in zip(vips, codes, strict=True):
            try:
                if code == errno.EEXIST:
                    self.add(vip, to)  # an agent's already (adopted) or someone else's: raises
                elif code:
                    raise OSError(code, os.strerror(code))
            except (OSError, ForeignAddress) as exc:
                log.warning("cannot move the VIP to %s: %s", to, exc, extra={"vip": vip})
                continue
            on_target.append(vip)
        removals: list[tuple[str, tuple[int, str, int]]] = []
        moved: list[str] = []
        index_of = self._indexer()
        for vip in on_target:
            try:
                removals.append((vip, (index_of(moves[vip]), vip, host_prefix(vip))))
            except LookupError:
                moved.append(vip)  # its interface is gone, and the VIP with it
        with self._lock:
            codes = self.rt.del_addresses([r for _, r in removals]) if removals else []
        for (vip, _), code in zip(removals, codes, strict=True):
            if code in (0, errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                moved.append(vip)  # not there any more either way
            else:
                log.warning("cannot remove the VIP from its interface: %s", os.strerror(code),
                            extra={"vip": vip, "interface": moves[vip]})  # fmt: skip
        if on_target:
            sources = sorted({moves[v] for v in on_target})
            log.info("VIPs moved", extra={"vips": on_target, "interface": to, "from": sources})
        return on_target, [v for v in on_target if v in moved]

    @staticmethod
    def _flags(vip: str) -> int:
        return (IFA_F_NODAD | IFA_F_NOPREFIXROUTE) if ":" in vip else 0

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

    def send_many(
        self,
        items: list[tuple[str, str, tuple[int, str]]],
        count: int | None,
        stop: threading.Event,
    ) -> None:
        """Announce many VIPs at once: ``count`` rounds over all of them, ``announce_interval``
        apart (blocking; raw sockets only, no netlink: safe on any thread). A failed send is
        logged and the others go on. Once ``stop`` is set no further frame goes out (checked
        before each one; the wait between rounds ends at once)."""
        count = self.announce_count if count is None else count
        sockets = _AnnounceSockets()
        try:
            for i in range(count):
                for vip, ifname, (index, mac) in items:
                    if stop.is_set():
                        return
                    try:
                        if ":" in vip:
                            self._send_na(vip, ifname, index, mac, sockets)
                        else:
                            self._send_garp(vip, ifname, mac, bool(i % 2), sockets)
                    except OSError as exc:
                        sockets.drop(ifname)  # the next frame there tries a fresh socket
                        log.warning(
                            "announcing VIP failed: %s (the agent needs CAP_NET_RAW)",
                            exc,
                            extra={"vip": vip, "interface": ifname},
                        )
                if i + 1 < count and stop.wait(self.announce_interval):
                    return
        finally:
            sockets.close()

    @staticmethod
    def _send_garp(vip: str, ifname: str, mac: str, reply: bool,
                   sockets: _AnnounceSockets) -> None:  # fmt: skip
        sockets.arp(ifname).send(garp_frame(vip, mac, reply))

    @staticmethod
    def _send_na(vip: str, ifname: str, index: int, mac: str,
                 sockets: _AnnounceSockets) -> None:  # fmt: skip
        sockets.nd(ifname, index).sendto(unsolicited_na(vip, mac), (ALL_NODES, 0, 0, index))

    def answered(
        self,
        items: list[tuple[str, str, tuple[int, str]]],
        timeout: float,
        count: int = PROBE_COUNT,
        windows: int = PROBE_ROUNDS,
    ) -> set[str]:
        """The VIPs of ``items`` (vip, interface, (index, our MAC)) another host answers for
        on their link. Blocking, at most ``timeout`` seconds per window (``windows``, each of
        ``count`` frames per VIP); never raises.

        IPv4: an ARP probe (sender IP 0.0.0.0) to broadcast, ``PROBE_COUNT`` times
        ``PROBE_GAP`` apart; an ARP reply whose sender IP is the VIP, from a MAC not ours,
        is an answer. IPv6: a neighbour solicitation to the VIP's solicited-node group, from
        our link-local address; a neighbour advertisement for the VIP whose target MAC is
        not ours is an answer. A VIP held only by this node is never "answered" (our own
        frames are left out, and our kernel does not see the probes it sends).

        A socket or send error (no CAP_NET_RAW, the interface gone) is logged at debug and
        counts as "no answer": the probe exists to hold back a takeover, and a probe that
        cannot run must not hold it back for ever (the Lease stays the arbiter)."""
        found: set[str] = set()
        if not items:
            return found
        probes: list[_Probe] = []
        try:
            # one socket per interface and IP version
            groups: dict[tuple[str, bool], tuple[int, str, list[str]]] = {}
            for vip, ifname, (index, mac) in items:
                v6 = ipaddress.ip_address(vip).version == 6
                groups.setdefault((ifname, v6), (index, mac, []))[2].append(vip)
            for (ifname, v6), (index, mac, vips) in groups.items():
                try:
                    probes.append((_NdProbe if v6 else _ArpProbe)(ifname, index, mac, vips))
                except OSError as exc:
                    log.debug("cannot probe for the VIPs: %s", exc,
                              extra={"interface": ifname, "vips": vips})  # fmt: skip
            # "nobody answered" lets a takeover through, so it must not come from a window
            # this process (or its VM) slept through: answers are read from the socket even
            # after the deadline, and a silent window is followed by a second one
            for _ in range(windows):
                deadline = time.monotonic() + timeout
                for i in range(count):
                    for probe in probes:
                        probe.send()
                    last = i + 1 == count
                    gap = min(deadline, time.monotonic() + PROBE_GAP)
                    _collect(probes, deadline if last else gap, found)
                    if time.monotonic() >= deadline:
                        break
                for probe in probes:
                    probe.receive(found)  # what queued while we were not looking
                if found:
                    break
        except Exception as exc:  # a probe only informs: never fail the caller
            log.debug("probing for the VIPs failed: %s", exc)
        finally:
            for probe in probes:
                probe.sock.close()
        return found


def raw_sockets_allowed() -> bool:
    """Whether this process may open the raw sockets ``answered`` needs (CAP_NET_RAW): a
    standby that cannot probe must not tell its leader that it checks ARP (peer.py)."""
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)).close()
    except OSError:
        return False
    return True


class _AnnounceSockets:
    """The raw sockets of one announcement, one per interface and kind, opened at first use
    and closed at its end: a socket per frame cost three more system calls per frame (at
    1,000 VIPs, 3,000 frames per takeover and 1,000 per refresh, under TCG)."""

    def __init__(self, make: Callable[..., socket.socket] = socket.socket) -> None:
        self.make = make
        self._arp: dict[str, socket.socket] = {}
        self._nd: dict[str, socket.socket] = {}

    def arp(self, ifname: str) -> socket.socket:
        if ifname not in self._arp:
            s = self.make(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
            try:
                s.bind((ifname, ETH_P_ARP))
            except BaseException:
                s.close()
                raise
            self._arp[ifname] = s
        return self._arp[ifname]

    def nd(self, ifname: str, index: int) -> socket.socket:
        if ifname not in self._nd:
            s = self.make(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
            except BaseException:
                s.close()
                raise
            self._nd[ifname] = s
        return self._nd[ifname]

    def drop(self, ifname: str) -> None:
        for table in (self._arp, self._nd):
            s = table.pop(ifname, None)
            if s is not None:
                s.close()

    def close(self) -> None:
        for table in (self._arp, self._nd):
            for s in table.values():
                s.close()
            table.clear()


class _Probe:
    """One socket on one interface, probing for some VIPs of one IP version."""

    sock: socket.socket

    def __init__(self, ifname: str, index: int, mac: str, vips: list[str]) -> None:
        self.ifname, self.index, self.mac = ifname, index, mac
        self.vips = {canonical_ip(vip): vip for vip in vips}  # as answers name it -> as given
        self.own = mac_bytes(mac)

    def send(self) -> None:
        for vip in self.vips:
            try:
                self._send(vip)
            except OSError as exc:
                log.debug("probe for the VIP not sent: %s", exc,
                          extra={"vip": vip, "interface": self.ifname})  # fmt: skip

    def _send(self, vip: str) -> None:
        raise NotImplementedError

    def _read(self) -> tuple[str, str | None] | None:
        """One waiting answer: (VIP, the answering MAC if known), or None if not one."""
        raise NotImplementedError

    def receive(self, found: set[str]) -> None:
        """Read what is waiting (non-blocking) into ``found``; at most MAX_FRAMES, so a
        flood cannot keep us here."""
        for _ in range(MAX_FRAMES):
            try:
                answer = self._read()
            except (BlockingIOError, InterruptedError):
                return
            if answer is None or answer[0] not in self.vips:
                continue
            if answer[1] is None or mac_bytes(answer[1]) != self.own:  # not our own frame
                found.add(self.vips[answer[0]])


class _ArpProbe(_Probe):
    def __init__(self, ifname: str, index: int, mac: str, vips: list[str]) -> None:
        super().__init__(ifname, index, mac, vips)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        try:
            self.sock.bind((ifname, ETH_P_ARP))
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise
        # older kernels refuse it: our frames still come back, and _read leaves them out
        with contextlib.suppress(OSError):
            self.sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)

    def _send(self, vip: str) -> None:
        self.sock.send(arp_probe_frame(vip, self.mac))

    def _read(self) -> tuple[str, str | None] | None:
        frame, address = self.sock.recvfrom(128)
        if address[2] == PACKET_OUTGOING:  # our own probe, seen on its way out
            return None
        return parse_arp_reply(frame)


class _NdProbe(_Probe):
    def __init__(self, ifname: str, index: int, mac: str, vips: list[str]) -> None:
        super().__init__(ifname, index, mac, vips)
        self.sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
            # our own kernel must not answer (nor see) our solicitation
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            # neighbour advertisements only: every ICMPv6 type blocked but 136
            words = [0xFFFFFFFF] * 8
            words[ND_ADVERT >> 5] &= ~(1 << (ND_ADVERT & 31))
            self.sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("=8I", *words))
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise

    def _send(self, vip: str) -> None:
        group = (solicited_node(vip), 0, 0, self.index)
        self.sock.sendto(neighbour_solicitation(vip, self.mac), group)

    def _read(self) -> tuple[str, str | None] | None:
        return parse_neighbour_advert(self.sock.recv(256))


def _collect(probes: list[_Probe], until: float, found: set[str]) -> None:
    """Read answers until ``until`` (monotonic)."""
    while probes:
        left = until - time.monotonic()
        if left <= 0:
            return
        ready, _, _ = select.select([p.sock for p in probes], [], [], left)
        for probe in probes:
            if probe.sock in ready:
                probe.receive(found)


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


def _remaining(found: tuple[str, int | None] | None) -> float:
    """A present address's remaining lifetime, for ordering (not present: last)."""
    if found is None:
        return float("inf")
    valid = found[1]
    return float("inf") if valid is None else float(valid)
