"""VIP helpers without a kernel: interface choice, announcement packets, add/remove plan."""

from __future__ import annotations

import ipaddress
import socket
import struct

from lvs_operator.director.vip import (
    Route,
    garp_frame,
    host_prefix,
    pick_interface,
    plan_vips,
    unsolicited_na,
)

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
