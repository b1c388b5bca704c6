"""VIP helpers without a kernel: interface choice, announcement packets, add/remove plan."""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import threading

import pytest

from lvs_operator.director.vip import (
    Route,
    VipManager,
    _AnnounceSockets,
    arp_probe_frame,
    garp_frame,
    host_prefix,
    neighbour_solicitation,
    parse_arp_reply,
    parse_neighbour_advert,
    pick_interface,
    plan_vips,
    solicited_node,
    unsolicited_na,
)

MAC = "02:00:00:00:00:0b"

ROUTES = [
    Route(ipaddress.ip_network("0.0.0.0/0"), "eth0", 100),
    Route(ipaddress.ip_network("10.10.0.0/24"), "front"),
    Route(ipaddress.ip_network("10.10.0.0/16"), "wide"),
    Route(ipaddress.ip_network("10.20.0.0/24"), "back", 10),
    Route(ipaddress.ip_network("10.20.0.0/24"), "back2", 5),
    Route(ipaddress.ip_network("2001:db8::/64"), "front"),
    Route(ipaddress.ip_network("::/0"), "eth0"),
]


def test_interface_is_the_most_specific_route() -> None:
    assert pick_interface("10.10.0.100", ROUTES) == "front"
    assert pick_interface("10.10.7.1", ROUTES) == "wide"
    assert pick_interface("192.0.2.1", ROUTES) == "eth0"
    assert pick_interface("10.20.0.5", ROUTES) == "back2"  # lower metric wins a tie
    assert pick_interface("2001:db8::10", ROUTES) == "front"
    assert pick_interface("2001:db9::10", ROUTES) == "eth0"
    assert pick_interface("2001:db9::10", ROUTES[:5]) is None


def test_gratuitous_arp_frame() -> None:
    frame = garp_frame("10.10.0.100", "02:00:00:00:00:0b")
    assert frame[:6] == b"\xff" * 6
    assert frame[6:12] == bytes.fromhex("02000000000b")
    assert frame[12:14] == b"\x08\x06"
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 1)
    vip = socket.inet_aton("10.10.0.100")
    assert frame[28:32] == vip and frame[38:42] == vip  # sender IP == target IP
    assert len(frame) == 42
    reply = garp_frame("10.10.0.100", "02:00:00:00:00:0b", reply=True)
    assert struct.unpack("!H", reply[20:22])[0] == 2


def test_unsolicited_neighbour_advertisement() -> None:
    na = unsolicited_na("2001:db8::100", "02:00:00:00:00:0b")
    kind, code, _checksum, flags = struct.unpack("!BBHI", na[:8])
    assert (kind, code) == (136, 0)
    assert flags & 0x20000000  # override
    assert not flags & 0x40000000  # not solicited
    assert na[8:24] == socket.inet_pton(socket.AF_INET6, "2001:db8::100")
    assert na[24:26] == b"\x02\x01" and na[26:32] == bytes.fromhex("02000000000b")


def test_host_prefix() -> None:
    assert host_prefix("10.0.0.1") == 32
    assert host_prefix("2001:db8::1") == 128


def test_plan_adds_wanted_and_removes_only_known_vips() -> None:
    present = {"10.10.0.100": "front", "10.10.0.50": "front", "10.10.0.200": "back"}
    plan = plan_vips(
        wanted={"10.10.0.100": "front", "10.10.0.101": "front", "10.10.0.200": "front"},
        present=present,
        candidates=["10.10.0.100", "10.10.0.101", "10.10.0.200", "10.10.0.77"],
    )
    assert plan.add == {"10.10.0.101": "front", "10.10.0.200": "front"}
    assert plan.remove == {"10.10.0.200": "back"}  # moved; .50 is not ours


def test_standby_plan_drops_stale_vips() -> None:
    plan = plan_vips({}, {"10.10.0.100": "front", "2001:db8::100": "front"},
                     ["10.10.0.100", "2001:db8:0::100"])  # fmt: skip
    assert plan.add == {}
    assert plan.remove == {"10.10.0.100": "front", "2001:db8::100": "front"}


def test_arp_probe_frame() -> None:
    frame = arp_probe_frame("10.10.0.100", MAC)
    assert len(frame) == 42
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == bytes.fromhex("02000000000b")
    assert frame[12:14] == b"\x08\x06"
    assert struct.unpack("!HHBBH", frame[14:22]) == (1, 0x0800, 6, 4, 1)  # a request
    assert frame[22:28] == bytes.fromhex("02000000000b")  # sender MAC: ours
    assert frame[28:32] == b"\x00" * 4  # sender IP 0.0.0.0: a probe, teaches no cache
    assert frame[32:38] == b"\x00" * 6
    assert frame[38:42] == socket.inet_aton("10.10.0.100")  # target: the VIP


def linux_probe_reply(vip: str, their_mac: str, our_mac: str) -> bytes:
    """What Linux answers an ARP probe with: a reply unicast to the prober, target IP 0."""
    theirs, ours = (
        bytes.fromhex(their_mac.replace(":", "")),
        bytes.fromhex(our_mac.replace(":", "")),
    )
    eth = ours + theirs + b"\x08\x06"
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + theirs + socket.inet_aton(vip)
    return eth + arp + ours + b"\x00" * 4 + b"\x00" * 18  # padded to 60 bytes


def test_parse_arp_reply() -> None:
    reply = linux_probe_reply("10.10.0.100", "02:00:00:00:00:0a", MAC)
    assert parse_arp_reply(reply) == ("10.10.0.100", "02:00:00:00:00:0a")
    garp = garp_frame("10.10.0.100", "02:00:00:00:00:0a", reply=True)
    assert parse_arp_reply(garp) == ("10.10.0.100", "02:00:00:00:00:0a")
    assert parse_arp_reply(arp_probe_frame("10.10.0.100", MAC)) is None  # a request
    assert parse_arp_reply(reply[:41]) is None  # short
    assert parse_arp_reply(reply[:12] + b"\x08\x00" + reply[14:]) is None  # not ARP
    ipv6_arp = reply[:16] + b"\x86\xdd" + reply[18:]
    assert parse_arp_reply(ipv6_arp) is None  # not IPv4 over Ethernet


def test_neighbour_solicitation_and_advertisement() -> None:
    assert solicited_node("2001:db8::1:2345:6789") == "ff02::1:ff45:6789"
    ns = neighbour_solicitation("2001:db8::100", MAC)
    assert struct.unpack("!BBHI", ns[:8]) == (135, 0, 0, 0)
    assert ns[8:24] == socket.inet_pton(socket.AF_INET6, "2001:db8::100")
    assert ns[24:26] == b"\x01\x01" and ns[26:32] == bytes.fromhex("02000000000b")
    advert = unsolicited_na("2001:db8::100", "02:00:00:00:00:0a")
    assert parse_neighbour_advert(advert) == ("2001:db8::100", "02:00:00:00:00:0a")
    assert parse_neighbour_advert(advert[:24]) == ("2001:db8::100", None)  # no option
    assert parse_neighbour_advert(ns) is None
    assert parse_neighbour_advert(advert[:20]) is None


def test_an_announcement_sends_nothing_once_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    stop = threading.Event()
    sent: list[str] = []

    def send(vip: str, ifname: str, mac: str, reply: bool, sockets: object) -> None:
        sent.append(vip)
        stop.set()  # a step-down right after the first frame

    monkeypatch.setattr(VipManager, "_send_garp", staticmethod(send))
    manager = VipManager(rt=object(), announce_count=3, announce_interval=0.01)
    items = [("10.10.0.100", "front", (2, MAC)), ("10.10.0.101", "front", (2, MAC))]
    manager.send_many(items, None, stop)
    assert sent == ["10.10.0.100"]
    manager.send_many(items, None, threading.Event())  # a new leadership: all of them
    assert len(sent) == 1 + 3 * 2


def test_answered_never_raises_and_bounds_its_time() -> None:
    manager = VipManager(rt=object())
    assert manager.answered([], 1.0) == set()
    # no such interface (or no CAP_NET_RAW): no socket, no answer
    items = [("10.10.0.100", "nosuch0", (99, MAC)), ("2001:db8::100", "nosuch0", (99, MAC))]
    assert manager.answered(items, 0.05) == set()
    assert manager.answered([("not an address", "front", (2, MAC))], 0.05) == set()


def test_answers_that_queued_while_the_prober_slept_still_count() -> None:
    """A loaded host stalled the standby past its listening window; the holder's ARP reply
    was waiting in the socket, and used to be dropped as late: "nobody answers", a takeover,
    two holders (seen under load in the data-plane tier). Whatever queued is read."""
    import socket as socket_mod

    from lvs_operator.director import vip as vip_mod

    ours, holder = socket_mod.socketpair(socket_mod.AF_UNIX, socket_mod.SOCK_DGRAM)
    ours.setblocking(False)

    class Probe(vip_mod._Probe):
        def __init__(self) -> None:
            super().__init__("front", 2, "02:00:00:00:00:01", ["10.10.0.100"])
            self.sock = ours

        def _send(self, vip: str) -> None:
            pass

        def _read(self) -> tuple[str, str | None] | None:
            return vip_mod.parse_arp_reply(self.sock.recv(128))

    holder.send(vip_mod.garp_frame("10.10.0.100", "02:00:00:00:00:02", reply=True))
    found: set[str] = set()
    try:
        Probe().receive(found)  # long after any deadline
    finally:
        ours.close()
        holder.close()
    assert found == {"10.10.0.100"}


def test_an_arp_probe_socket_does_not_queue_this_hosts_own_frames() -> None:
    """A probe for 1,000 VIPs sends 3,000 frames per window: the kernel keeps them off the
    probe's socket (PACKET_IGNORE_OUTGOING), rather than Python reading and dropping each."""
    import socket

    from lvs_operator.director.vip import PACKET_IGNORE_OUTGOING, SOL_PACKET, _ArpProbe

    try:
        probe = _ArpProbe("lo", socket.if_nametoindex("lo"), MAC, ["192.0.2.1"])
    except PermissionError:
        pytest.skip("needs CAP_NET_RAW (an AF_PACKET socket)")
    try:
        assert probe.sock.getsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING) == 1
    finally:
        probe.sock.close()


def test_a_takeover_probes_three_frames_twice_and_a_renewal_one_frame_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each VIP's probe frames: a takeover's probe gates one decision (3 frames, and a silent
    window checked once more); a renewal's repeats every round, so one frame in one window
    (at 1,000 VIPs the takeover's 6,000 frames per round made a restarted leader's rounds
    longer than a lifetime under TCG)."""
    import socket

    from lvs_operator.director import vip as vip_mod

    sent: list[str] = []

    class CountingProbe:
        def __init__(self, ifname: str, index: int, mac: str, vips: list[str]) -> None:
            self.vips = vips
            self.sock, self._peer = socket.socketpair()

        def send(self) -> None:
            sent.extend(self.vips)

        def receive(self, found: set[str]) -> None:
            pass

    monkeypatch.setattr(vip_mod, "_ArpProbe", CountingProbe)
    manager = VipManager(rt=object())
    items = [("10.10.0.100", "front", (2, MAC)), ("10.10.0.101", "front", (2, MAC))]
    assert manager.answered(items, 0.1) == set()  # room for 3 frames PROBE_GAP apart
    assert sorted(sent) == ["10.10.0.100"] * 6 + ["10.10.0.101"] * 6
    sent.clear()
    light = (vip_mod.RENEWAL_PROBE_COUNT, vip_mod.RENEWAL_PROBE_WINDOWS)
    assert manager.answered(items, 0.1, *light) == set()
    assert sorted(sent) == ["10.10.0.100", "10.10.0.101"]


def test_an_announcement_opens_one_socket_per_interface_and_kind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not one per frame (three more system calls each: 3,000 frames per takeover at 1,000
    VIPs); a socket that failed is replaced; all are closed at the end."""
    from lvs_operator.director import vip as vip_mod

    opened: list[FakeSocket] = []
    failing = ["back"]  # the first socket on "back" fails its first send

    class FakeSocket:
        def __init__(self, family: int, kind: int, proto: int) -> None:
            self.family, self.frames, self.closed = family, 0, False
            opened.append(self)

        def bind(self, address: object) -> None:
            self.ifname = address[0]  # type: ignore[index]

        def setsockopt(self, *args: object) -> None:
            pass

        def send(self, frame: bytes) -> int:
            if self.family == socket.AF_PACKET and self.ifname in failing:
                failing.remove(self.ifname)
                self.frames += 1
                raise OSError(errno.ENETDOWN, "Network is down")
            self.frames += 1
            return len(frame)

        def sendto(self, frame: bytes, address: object) -> int:
            self.frames += 1
            return len(frame)

        def close(self) -> None:
            self.closed = True

    def sockets() -> _AnnounceSockets:
        return _AnnounceSockets(make=FakeSocket)  # type: ignore[arg-type]

    monkeypatch.setattr(vip_mod, "_AnnounceSockets", sockets)
    manager = VipManager(rt=object(), announce_count=3, announce_interval=0.0)
    items = [(f"10.10.0.{i}", "front", (2, MAC)) for i in range(100, 110)]
    items += [("10.20.0.100", "back", (3, MAC)), ("2001:db8::100", "front", (2, MAC))]
    manager.send_many(items, None, threading.Event())
    arp = [s for s in opened if s.family == socket.AF_PACKET]
    assert sorted((s.ifname, s.frames) for s in arp) == [("back", 1), ("back", 2), ("front", 30)]
    nd = [s for s in opened if s.family == socket.AF_INET6]
    assert [s.frames for s in nd] == [3]
    assert all(s.closed for s in opened)


def _pick_by_ipaddress(vip: str, routes: list[Route]) -> str | None:
    """The rule as ``ipaddress`` states it (the implementation before RouteIndex)."""
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


def test_the_route_index_picks_as_ipaddress_does() -> None:
    """RouteIndex (integers, one C parse per VIP) against the ``ipaddress`` rule, over random
    routes of both families with overlapping prefixes and tied metrics."""
    import random

    from lvs_operator.director.vip import RouteIndex

    rng = random.Random(11)
    for _ in range(200):
        routes = []
        for i in range(rng.randrange(0, 8)):
            if rng.random() < 0.7:
                net = ipaddress.ip_network(
                    f"10.{rng.randrange(4)}.{rng.randrange(4)}.0/{rng.choice([0, 8, 16, 24])}",
                    strict=False,
                )
            else:
                prefix = rng.choice([0, 32, 64, 96])
                net = ipaddress.ip_network(f"2001:db8::/{prefix}", strict=False)
            routes.append(Route(net, f"if{i}", rng.choice([0, 0, 100, 200])))
        index = RouteIndex(routes)
        for _ in range(20):
            if rng.random() < 0.8:
                vip = f"10.{rng.randrange(5)}.{rng.randrange(5)}.{rng.randrange(256)}"
            else:
                vip = f"2001:db8::{rng.randrange(1 << 16):x}"
            assert index.pick(vip) == _pick_by_ipaddress(vip, routes), (vip, routes)
    with pytest.raises(ValueError):
        RouteIndex([]).pick("not an address")
