"""The lean IPVS netlink encoding round-trips through its own decoder (no kernel needed)."""

from __future__ import annotations

import socket

import pytest

from lvs_operator.director.kernel import ipvs, nft
from lvs_operator.director.kernel import ipvs_netlink as nl
from lvs_operator.director.table import (
    Change,
    Forwarding,
    IpvsDestination,
    IpvsService,
    Op,
    Protocol,
)

SERVICES = [
    IpvsService("10.0.0.1", 80, Protocol.TCP, "rr"),
    IpvsService("10.0.0.1", 53, Protocol.UDP, "wrr", persistence_timeout=300, netmask=24),
    IpvsService("10.0.0.1", 9, Protocol.SCTP, "mh", flags=frozenset({"mh-port"})),
    IpvsService(
        "2001:db8::1",
        443,
        Protocol.TCP,
        "sh",
        frozenset({"sh-fallback", "sh-port"}),
        persistence_timeout=60,
        netmask=64,
    ),
]
DESTS = [
    IpvsDestination("10.1.0.1", 8080, 3, Forwarding.MASQUERADE),
    IpvsDestination("10.1.0.2", 80, 0, Forwarding.DIRECT, upper_threshold=100, lower_threshold=5),
    IpvsDestination("2001:db8::2", 8443, 7, Forwarding.TUNNEL),
]


def _top(body: bytes) -> dict[int, bytes]:
    return nl.parse_attrs(body)


@pytest.mark.parametrize("service", SERVICES, ids=str)
def test_service_roundtrip(service: IpvsService) -> None:
    for op, cmd in ((Op.ADD_SERVICE, nl.CMD_NEW_SERVICE), (Op.EDIT_SERVICE, nl.CMD_SET_SERVICE)):
        got_cmd, body = ipvs._nl_request(Change(op, service))
        assert got_cmd == cmd
        assert ipvs._nl_service(nl.parse_attrs(_top(body)[nl.ATTR_SERVICE])) == service
    cmd, body = ipvs._nl_request(Change(Op.DEL_SERVICE, service))
    attrs = nl.parse_attrs(_top(body)[nl.ATTR_SERVICE])
    assert cmd == nl.CMD_DEL_SERVICE
    assert set(attrs) == {nl.SVC_AF, nl.SVC_PROTOCOL, nl.SVC_ADDR, nl.SVC_PORT}  # key only


@pytest.mark.parametrize("dest", DESTS, ids=str)
def test_dest_roundtrip(dest: IpvsDestination) -> None:
    for op in (Op.ADD_DEST, Op.EDIT_DEST):
        _, body = ipvs._nl_request(Change(op, SERVICES[0], dest))
        top = _top(body)
        assert set(top) == {nl.ATTR_SERVICE, nl.ATTR_DEST}
        got, conns = ipvs._nl_dest(nl.parse_attrs(top[nl.ATTR_DEST]), socket.AF_INET)
        assert got == dest and conns == ipvs.ConnCounts()


def test_netmask_encodings() -> None:
    # IPv4: the mask itself, network order; IPv6: the prefix length as a host-order u32
    assert ipvs._nl_netmask(SERVICES[1]) == bytes([255, 255, 255, 0])
    assert int.from_bytes(ipvs._nl_netmask(SERVICES[3]), "little") == 64


def test_masquerade_targets_and_nft_rendering() -> None:
    from lvs_operator.director.table import IpvsTable

    table = IpvsTable.of([
        (SERVICES[0], [DESTS[0], DESTS[1]]),  # masquerade + direct
        (SERVICES[3], [DESTS[2]]),  # tunnel only: no SNAT for it
        (IpvsService("2001:db8::5", 80), [IpvsDestination("2001:db8::6", 80)]),
    ])  # fmt: skip
    vips, dests = nft.masquerade_targets(table)
    assert vips == ["10.0.0.1", "2001:db8::5"]
    assert dests == ["10.1.0.1", "2001:db8::6"]
    text = nft.render_masquerade_snat(vips, dests)
    assert "table inet lvs_operator {" in text
    assert "set vips4 { type ipv4_addr; elements = { 10.0.0.1 } }" in text
    assert "set dests6 { type ipv6_addr; elements = { 2001:db8::6 } }" in text
    assert text.count("masquerade\n") == 2
    assert "ct original ip daddr @vips4" in text and "meta l4proto { tcp, udp, sctp }" in text
    empty = nft.render_masquerade_snat([], [])
    assert "set vips4 { type ipv4_addr; }" in empty
