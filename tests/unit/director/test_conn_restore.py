"""conn_restore.py (which conntrack entries a crash takeover writes) and kernel/conntrack.py's
message (checked by decoding it with the netlink core's own parser)."""

from __future__ import annotations

import socket
import struct

from lvs_operator.director.conn_restore import (
    ConntrackEntry,
    IpvsConnection,
    conntrack_entries,
    parse_conn_table,
)
from lvs_operator.director.kernel import conntrack as ct
from lvs_operator.director.kernel.netlink import HEADER, parse_attrs
from lvs_operator.director.table import Protocol, ServiceKey

# /proc/net/ip_vs_conn_sync as the kernel writes it (ip_vs_conn.c): hex IPv4, colon IPv6
TABLE = """\
Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Origin Expires
TCP C0000202 D0E8 C000020A 0050 0AF40005 1F90 ESTABLISHED SYNC       897
TCP C0000202 0000 C000020A 0050 0AF40005 1F90 NONE        SYNC      1799
TCP C0000203 D0E9 C000020A 0050 0AF40006 1F90 FIN_WAIT    SYNC        80
UDP C0000202 D0EA C000020A 0035 0AF40005 0035 UDP         SYNC       290
TCP C0000204 D0EB C000020B 0050 0AF40005 1F90 ESTABLISHED LOCAL      899
garbage line
"""
V6 = "2001:0db8:0000:0000:0000:0000:0000:"
TABLE += f"TCP {V6}0002 D0EC {V6}0010 0050 fd44:0000:0000:0000:0000:0000:0001:0001 1F90 "
TABLE += "ESTABLISHED SYNC 900\n"
VIP_SOURCED = {
    ServiceKey(Protocol.TCP, "192.0.2.10", 80),
    ServiceKey(Protocol.TCP, "2001:db8::10", 80),
}


def test_the_table_parses_with_addresses_ports_state_and_origin() -> None:
    conns = parse_conn_table(TABLE.splitlines())
    assert len(conns) == 6  # the garbage line skipped
    first = conns[0]
    assert first == IpvsConnection("TCP", "192.0.2.2", 0xD0E8, "192.0.2.10", 80, "10.244.0.5",
                                   8080, "ESTABLISHED", "SYNC", 897)  # fmt: skip
    assert conns[1].template and not first.template
    assert conns[5].client == "2001:db8::2" and conns[5].dest == "fd44::1:1"
    assert parse_conn_table(["Pro FromIP FPrt ToIP TPrt DestIP DPrt State Expires"]) == []


def test_the_table_read_for_some_services_keeps_exactly_theirs() -> None:
    """The restore reads the table for its services only (hex VIP and port compared before
    any parsing): the same connections as reading all and filtering."""
    every = parse_conn_table(TABLE.splitlines())
    theirs = parse_conn_table(TABLE.splitlines(), VIP_SOURCED)
    keys = {(c.protocol, c.vip, c.vip_port) for c in theirs}
    assert keys == {("TCP", "192.0.2.10", 80), ("TCP", "2001:db8::10", 80)}
    assert theirs == [
        c for c in every if ServiceKey(Protocol(c.protocol), c.vip, c.vip_port) in VIP_SOURCED
    ]
    assert parse_conn_table(TABLE.splitlines(), set()) == []


def test_entries_only_for_established_tcp_connections_of_vip_sourced_services() -> None:
    entries = conntrack_entries(parse_conn_table(TABLE.splitlines()), VIP_SOURCED)
    assert entries == [
        ConntrackEntry(6, "192.0.2.2", 0xD0E8, "192.0.2.10", 80, "10.244.0.5", 8080),
        ConntrackEntry(6, "2001:db8::2", 0xD0EC, "2001:db8::10", 80, "fd44::1:1", 8080),
    ]  # not: the template, FIN_WAIT, UDP, 192.0.2.11 (not VIP-sourced)
    assert conntrack_entries(parse_conn_table(TABLE.splitlines()), set()) == []


def _tuple(data: bytes) -> tuple[str, str, int, int, int]:
    attrs = parse_attrs(data)
    ip, proto = parse_attrs(attrs[ct.CTA_TUPLE_IP]), parse_attrs(attrs[ct.CTA_TUPLE_PROTO])
    family = socket.AF_INET6 if ct.CTA_IP_V6_SRC in ip else socket.AF_INET
    src = ip.get(ct.CTA_IP_V4_SRC) or ip[ct.CTA_IP_V6_SRC]
    dst = ip.get(ct.CTA_IP_V4_DST) or ip[ct.CTA_IP_V6_DST]
    (sport,) = struct.unpack("!H", proto[ct.CTA_PROTO_SRC_PORT])
    (dport,) = struct.unpack("!H", proto[ct.CTA_PROTO_DST_PORT])
    return (socket.inet_ntop(family, src), socket.inet_ntop(family, dst), sport, dport,
            proto[ct.CTA_PROTO_NUM][0])  # fmt: skip


def test_the_message_creates_the_entry_forwarding_would_have_made() -> None:
    entry = ConntrackEntry(6, "192.0.2.2", 53480, "192.0.2.10", 80, "10.244.0.5", 8080, 600)
    msg = ct.new_entry_message(entry, seq=7)
    length, msg_type, flags, seq, _ = HEADER.unpack_from(msg)
    assert length == len(msg) and msg_type == (1 << 8) and seq == 7
    assert flags & 0x400 and flags & 0x200  # create, exclusive: an entry there is kept
    family, version, _ = ct.NFGENMSG.unpack_from(msg, HEADER.size)
    assert (family, version) == (socket.AF_INET, 0)
    attrs = parse_attrs(msg, HEADER.size + ct.NFGENMSG.size)
    assert _tuple(attrs[ct.CTA_TUPLE_ORIG]) == ("192.0.2.2", "192.0.2.10", 53480, 80, 6)
    # the reply as IPVS translates it; the kernel's NAT setup turns it to RS -> VIP:cport
    assert _tuple(attrs[ct.CTA_TUPLE_REPLY]) == ("10.244.0.5", "192.0.2.2", 8080, 53480, 6)
    nat = parse_attrs(attrs[ct.CTA_NAT_SRC])
    assert socket.inet_ntoa(nat[ct.CTA_NAT_V4_MINIP]) == "192.0.2.10"
    assert socket.inet_ntoa(nat[ct.CTA_NAT_V4_MAXIP]) == "192.0.2.10"
    ports = parse_attrs(nat[ct.CTA_NAT_PROTO])
    assert struct.unpack("!H", ports[ct.CTA_PROTONAT_PORT_MIN]) == (53480,)
    assert struct.unpack("!H", ports[ct.CTA_PROTONAT_PORT_MAX]) == (53480,)
    assert struct.unpack("!I", attrs[ct.CTA_TIMEOUT]) == (600,)
    assert struct.unpack("!I", attrs[ct.CTA_STATUS]) == (
        ct.IPS_SEEN_REPLY | ct.IPS_ASSURED | ct.IPS_CONFIRMED,
    )
    tcp = parse_attrs(parse_attrs(attrs[ct.CTA_PROTOINFO])[ct.CTA_PROTOINFO_TCP])
    assert tcp[ct.CTA_PROTOINFO_TCP_STATE][:1] == bytes([ct.TCP_CONNTRACK_ESTABLISHED])
    assert tcp[ct.CTA_PROTOINFO_TCP_FLAGS_ORIGINAL][:2] == bytes([0x08, 0x08])  # be liberal
    assert tcp[ct.CTA_PROTOINFO_TCP_FLAGS_REPLY][:2] == bytes([0x08, 0x08])


def test_an_ipv6_entry_uses_the_ipv6_attributes() -> None:
    entry = ConntrackEntry(6, "2001:db8::2", 53484, "2001:db8::10", 80, "fd44::1:1", 8080)
    msg = ct.new_entry_message(entry, seq=1)
    family, _, _ = ct.NFGENMSG.unpack_from(msg, HEADER.size)
    assert family == socket.AF_INET6
    attrs = parse_attrs(msg, HEADER.size + ct.NFGENMSG.size)
    assert _tuple(attrs[ct.CTA_TUPLE_REPLY]) == ("fd44::1:1", "2001:db8::2", 8080, 53484, 6)
    nat = parse_attrs(attrs[ct.CTA_NAT_SRC])
    assert socket.inet_ntop(socket.AF_INET6, nat[ct.CTA_NAT_V6_MINIP]) == "2001:db8::10"
