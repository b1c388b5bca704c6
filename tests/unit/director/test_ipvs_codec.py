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


def test_vip_sourced_services_are_translated_to_their_vip_before_the_masquerade() -> None:
    from lvs_operator.director.table import IpvsTable

    v6 = IpvsService("2001:db8::5", 80)
    table = IpvsTable.of([
        (SERVICES[0], [DESTS[0], DESTS[1]]),  # masquerade + direct
        (SERVICES[1], [DESTS[0]]),  # masquerade, not VIP-sourced
        (SERVICES[3], [DESTS[2]]),  # tunnel only: never SNAT, whatever it asks
        (v6, [IpvsDestination("2001:db8::6", 8080)]),
    ])  # fmt: skip
    sourced = nft.vip_sourced_services(table, {SERVICES[0].key, SERVICES[3].key, v6.key})
    assert sourced == [("10.0.0.1", "tcp", 80), ("2001:db8::5", "tcp", 80)]
    text = nft.render_masquerade_snat(*nft.masquerade_targets(table), sourced)
    assert (
        "set vipsrc4 { type ipv4_addr . inet_proto . inet_service; elements = { "
        "10.0.0.1 . tcp . 80 } }" in text
    )
    assert "elements = { 2001:db8::5 . tcp . 80 }" in text
    rules = [line.strip() for line in text.splitlines() if "daddr @dests" in line]
    # the VIP-sourced services first: a NAT rule's verdict ends the chain
    assert rules == [
        "meta l4proto { tcp, udp, sctp } ip daddr @dests4 ct original ip daddr . meta l4proto"
        " . ct original proto-dst @vipsrc4 counter snat ip to ct original ip daddr",
        "meta l4proto { tcp, udp, sctp } ip6 daddr @dests6 ct original ip6 daddr . meta l4proto"
        " . ct original proto-dst @vipsrc6 snat ip6 to ct original ip6 daddr",
        "meta l4proto { tcp, udp, sctp } ip daddr @dests4 ct original ip daddr @vips4 masquerade",
        "meta l4proto { tcp, udp, sctp } ip6 daddr @dests6 ct original ip6 daddr @vips6 masquerade",
    ]
    # a real server's stray mid-stream packet to such a VIP is dropped, not reset
    assert "set vipaddr4 { type ipv4_addr; elements = { 10.0.0.1 } }" in text
    assert "type filter hook input priority 200; policy accept;" in text
    drops = [line.strip() for line in text.splitlines() if line.strip().endswith(" drop")]
    assert drops == [
        "ip saddr @dests4 ip daddr @vipaddr4 ct state new tcp flags & (syn | rst) == 0"
        " counter drop",
        "ip6 saddr @dests6 ip6 daddr @vipaddr6 ct state new tcp flags & (syn | rst) == 0"
        " counter drop",
        # never routed on to a VIP it does not hold (no relay ping-pong after a handover)
        "ip daddr @vipaddr4 counter drop",
        "ip6 daddr @vipaddr6 counter drop",
    ]
    assert "type filter hook forward priority 0; policy accept;" in text
    assert len(rules) + len(drops) == nft.SNAT_RULES


def test_the_table_read_back_compares_equal_to_the_one_wanted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ensure_masquerade_snat writes only when the table differs; `nft -j` lists a
    concatenated element as {"concat": [...]}, read back as the render writes it."""
    import json

    listing = {"nftables": [
        {"set": {"name": "vips4", "elem": ["10.0.0.1"]}},
        {"set": {"name": "vips6"}},
        {"set": {"name": "dests4", "elem": ["10.1.0.1"]}},
        {"set": {"name": "dests6"}},
        {"set": {"name": "vipsrc4", "elem": [{"concat": ["10.0.0.1", "tcp", 80]}]}},
        {"set": {"name": "vipsrc6"}},
        {"set": {"name": "vipaddr4", "elem": ["10.0.0.1"]}},
        {"set": {"name": "vipaddr6"}},
        *({"rule": {}} for _ in range(nft.SNAT_RULES)),
    ]}  # fmt: skip
    calls: list[str] = []

    def fake_nft(commands: str, netns: str | None = None, *, json_output: bool = False) -> str:
        calls.append(commands)
        return json.dumps(listing) if json_output else ""

    monkeypatch.setattr(nft, "nft", fake_nft)
    same = nft.ensure_masquerade_snat(["10.0.0.1"], ["10.1.0.1"], None, [("10.0.0.1", "tcp", 80)])
    assert same is False and len(calls) == 1  # listed, nothing written
    # the service's source goes back to the director: the table is replaced
    assert nft.ensure_masquerade_snat(["10.0.0.1"], ["10.1.0.1"], None, []) is True
    assert "delete table inet lvs_operator" in calls[-1]
    # a table of an older version (two rules, no vipsrc sets) is replaced too
    sets = [i for i in listing["nftables"] if "rule" not in i][:4]
    listing["nftables"] = [*sets, {"rule": {}}, {"rule": {}}]
    assert nft.ensure_masquerade_snat(["10.0.0.1"], ["10.1.0.1"], None, []) is True
