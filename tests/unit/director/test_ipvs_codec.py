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
    IpvsTable,
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


def _rendered_sets(text: str) -> dict[str, set[str]]:
    """The elements of each set declared in a rendered table."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("set "):
            name = line.split()[1]
            _, _, elements = line.partition("elements = { ")
            out[name] = set(elements.removesuffix(" } }").split(", ")) if elements else set()
    return out


def test_the_sets_computed_are_the_ones_the_table_is_rendered_with() -> None:
    vips = ["10.0.0.2", "10.0.0.1", "2001:DB8::5"]  # the v6 one not canonical
    dests = ["10.1.0.10", "10.1.0.9", "10.1.0.9", "2001:db8:0::6"]
    sourced = [("10.0.0.1", "tcp", 80), ("10.0.0.1", "udp", 53), ("2001:db8::5", "tcp", 443)]
    sets = nft.snat_sets(vips, dests, sourced)
    assert sets == nft.SnatSets(
        vips4=frozenset({"10.0.0.1", "10.0.0.2"}),
        vips6=frozenset({"2001:db8::5"}),
        dests4=frozenset({"10.1.0.9", "10.1.0.10"}),
        dests6=frozenset({"2001:db8::6"}),
        vipsrc4=frozenset({"10.0.0.1 . tcp . 80", "10.0.0.1 . udp . 53"}),
        vipsrc6=frozenset({"2001:db8::5 . tcp . 443"}),
        vipaddr4=frozenset({"10.0.0.1"}),
        vipaddr6=frozenset({"2001:db8::5"}),
    )
    assert _rendered_sets(nft.render_masquerade_snat(vips, dests, sourced)) == sets.by_name()
    assert _rendered_sets(nft.render_masquerade_snat([], [])) == nft.SnatSets().by_name()
    # in each set the addresses in numeric order, a VIP's services by protocol and port
    text = nft.render_masquerade_snat(vips, dests, sourced)
    assert "elements = { 10.1.0.9, 10.1.0.10 }" in text
    assert "elements = { 10.0.0.1 . tcp . 80, 10.0.0.1 . udp . 53 }" in text


OLD = nft.snat_sets(["10.0.0.1"], ["10.1.0.1", "10.1.0.2"], [("10.0.0.1", "tcp", 80)])


def test_the_update_adds_only_the_new_elements() -> None:
    new = nft.snat_sets(["10.0.0.1"], ["10.1.0.1", "10.1.0.2", "10.1.0.10", "10.1.0.3"],
                        [("10.0.0.1", "tcp", 80)])  # fmt: skip
    assert nft.render_snat_update(OLD, new) == (
        "add element inet lvs_operator dests4 { 10.1.0.3, 10.1.0.10 }\n"
    )


def test_the_update_deletes_only_the_elements_gone() -> None:
    new = nft.snat_sets(["10.0.0.1"], ["10.1.0.2"], [("10.0.0.1", "tcp", 80)])
    assert nft.render_snat_update(OLD, new) == (
        "delete element inet lvs_operator dests4 { 10.1.0.1 }\n"
    )


def test_the_update_deletes_first_then_adds_in_one_script() -> None:
    new = nft.snat_sets(["10.0.0.1", "10.0.0.3"], ["10.1.0.2", "10.1.0.4"],
                        [("10.0.0.1", "tcp", 80)])  # fmt: skip
    assert nft.render_snat_update(OLD, new) == (
        "delete element inet lvs_operator dests4 { 10.1.0.1 }\n"
        "add element inet lvs_operator vips4 { 10.0.0.3 }\n"
        "add element inet lvs_operator dests4 { 10.1.0.4 }\n"
    )


def test_the_update_of_ipv6_and_vip_sourced_services() -> None:
    old = nft.snat_sets(["10.0.0.1", "2001:db8::5"], ["10.1.0.1", "2001:db8::6"],
                        [("10.0.0.1", "tcp", 80)])  # fmt: skip
    # the IPv4 service now masqueraded to the director, an IPv6 one sourced from its VIP,
    # and an IPv6 real server replaced
    new = nft.snat_sets(["10.0.0.1", "2001:db8::5"], ["10.1.0.1", "2001:db8::7"],
                        [("2001:db8::5", "tcp", 443), ("2001:db8::5", "udp", 53)])  # fmt: skip
    assert nft.render_snat_update(old, new) == (
        "delete element inet lvs_operator dests6 { 2001:db8::6 }\n"
        "delete element inet lvs_operator vipsrc4 { 10.0.0.1 . tcp . 80 }\n"
        "delete element inet lvs_operator vipaddr4 { 10.0.0.1 }\n"
        "add element inet lvs_operator dests6 { 2001:db8::7 }\n"
        "add element inet lvs_operator vipsrc6 { 2001:db8::5 . tcp . 443, "
        "2001:db8::5 . udp . 53 }\n"
        "add element inet lvs_operator vipaddr6 { 2001:db8::5 }\n"
    )


def test_no_update_when_the_sets_are_equal(monkeypatch: pytest.MonkeyPatch) -> None:
    same = nft.snat_sets(["10.0.0.1"], ["10.1.0.2", "10.1.0.1"], [("10.0.0.1", "tcp", 80)])
    assert nft.render_snat_update(OLD, same) == ""
    calls: list[str] = []
    monkeypatch.setattr(nft, "nft", lambda commands, netns=None, **_: calls.append(commands))
    assert nft.update_masquerade_snat(OLD, same) == nft.SnatChange(added=0, removed=0)
    assert calls == []


def test_the_update_runs_its_script_alone_without_listing_the_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    new = nft.snat_sets(["10.0.0.1"], ["10.1.0.2", "10.1.0.3"], [("10.0.0.1", "tcp", 80)])
    calls: list[tuple[str, str | None, bool]] = []

    def fake_nft(commands: str, netns: str | None = None, *, json_output: bool = False) -> str:
        calls.append((commands, netns, json_output))
        return ""

    monkeypatch.setattr(nft, "nft", fake_nft)
    assert nft.update_masquerade_snat(OLD, new, "ns1") == nft.SnatChange(added=1, removed=1)
    assert calls == [(
        "delete element inet lvs_operator dests4 { 10.1.0.1 }\n"
        "add element inet lvs_operator dests4 { 10.1.0.3 }\n",
        "ns1",
        False,
    )]  # fmt: skip


class _NoIpvs:
    """DataPlane's IPVS sockets, unused by prepare."""

    def __init__(self, netns: str | None = None) -> None:
        pass

    def close(self) -> None:
        pass


class _FakeNft:
    """The nft runner: the table never listable (a whole write always writes), and the
    commands containing ``refuse`` refused."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.refuse: str | None = None

    def __call__(
        self, commands: str, netns: str | None = None, *, json_output: bool = False
    ) -> str:
        self.calls.append(commands)
        if commands.startswith("list table") or (self.refuse and self.refuse in commands):
            raise nft.NftError(f"refused: {commands}")
        return ""

    def take(self) -> list[str]:
        calls, self.calls = self.calls, []
        return calls


def _masquerade_table(*dests: str) -> IpvsTable:
    """A service at 10.0.0.1 masquerading to ``dests``."""
    return IpvsTable.of([(IpvsService("10.0.0.1", 80), [IpvsDestination(d, 8080) for d in dests])])


WHOLE_WRITE = "table inet lvs_operator {}\ndelete table inet lvs_operator\n"


def test_prepare_writes_the_table_whole_first_then_only_what_changed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from lvs_operator.director.kernel import dataplane

    monkeypatch.setattr(dataplane, "IpvsKernel", _NoIpvs)
    runner = _FakeNft()
    monkeypatch.setattr(nft, "nft", runner)
    caplog.set_level("INFO", logger="lvs_operator.director.kernel")
    plane = dataplane.DataPlane()

    def logged(*keys: str) -> list[list[object]]:
        records = [vars(r) for r in caplog.records if r.msg == "nftables masquerade updated"]
        caplog.clear()
        return [[r.get(k) for k in keys] for r in records]

    plane.prepare(_masquerade_table("10.1.0.1", "10.1.0.2"), True)
    listed, written = runner.take()
    assert listed == "list table inet lvs_operator"
    assert written == WHOLE_WRITE + nft.render_masquerade_snat(
        ["10.0.0.1"], ["10.1.0.1", "10.1.0.2"]
    )
    assert logged("rewritten", "vips", "real_servers") == [[True, 1, 2]]

    plane.prepare(_masquerade_table("10.1.0.1", "10.1.0.2"), True)
    assert runner.take() == []  # nothing changed: no nft at all

    # a real server leaves and another comes: one transaction of those two, no list
    plane.prepare(_masquerade_table("10.1.0.2", "10.1.0.3"), True)
    assert runner.take() == [
        "delete element inet lvs_operator dests4 { 10.1.0.1 }\n"
        "add element inet lvs_operator dests4 { 10.1.0.3 }\n"
    ]
    assert logged("added", "removed", "vips", "real_servers") == [[1, 1, 1, 2]]

    # and the next change is against what that update wrote
    plane.prepare(_masquerade_table("10.1.0.3"), True)
    assert runner.take() == ["delete element inet lvs_operator dests4 { 10.1.0.2 }\n"]


def test_a_refused_update_falls_back_to_the_whole_write(monkeypatch: pytest.MonkeyPatch) -> None:
    from lvs_operator.director.kernel import dataplane

    monkeypatch.setattr(dataplane, "IpvsKernel", _NoIpvs)
    runner = _FakeNft()
    monkeypatch.setattr(nft, "nft", runner)
    plane = dataplane.DataPlane()
    plane.prepare(_masquerade_table("10.1.0.1", "10.1.0.2"), True)
    runner.take()

    # the table deleted by hand, say: the update's delete of an element fails
    runner.refuse = "delete element"
    plane.prepare(_masquerade_table("10.1.0.2"), True)
    update, listed, written = runner.take()
    assert update == "delete element inet lvs_operator dests4 { 10.1.0.1 }\n"
    assert listed == "list table inet lvs_operator"
    assert written == WHOLE_WRITE + nft.render_masquerade_snat(["10.0.0.1"], ["10.1.0.2"])

    # what the whole write made is what the next update starts from
    runner.refuse = None
    plane.prepare(_masquerade_table("10.1.0.2", "10.1.0.5"), True)
    assert runner.take() == ["add element inet lvs_operator dests4 { 10.1.0.5 }\n"]


def test_when_the_whole_write_fails_too_the_next_converge_writes_whole_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lvs_operator.director.kernel import dataplane

    monkeypatch.setattr(dataplane, "IpvsKernel", _NoIpvs)
    runner = _FakeNft()
    monkeypatch.setattr(nft, "nft", runner)
    plane = dataplane.DataPlane()
    plane.prepare(_masquerade_table("10.1.0.1", "10.1.0.2"), True)
    runner.take()

    runner.refuse = "lvs_operator"  # every command
    with pytest.raises(nft.NftError):
        plane.prepare(_masquerade_table("10.1.0.2"), True)
    update, listed, written = runner.take()
    assert update == "delete element inet lvs_operator dests4 { 10.1.0.1 }\n"
    assert listed == "list table inet lvs_operator"
    assert written == WHOLE_WRITE + nft.render_masquerade_snat(["10.0.0.1"], ["10.1.0.2"])

    # back to the table last written: not skipped, nor an update from it: written whole
    runner.refuse = None
    plane.prepare(_masquerade_table("10.1.0.1", "10.1.0.2"), True)
    listed, written = runner.take()
    assert listed == "list table inet lvs_operator"
    assert written == WHOLE_WRITE + nft.render_masquerade_snat(
        ["10.0.0.1"], ["10.1.0.1", "10.1.0.2"]
    )


def test_masquerade_targets_kept_per_service_equal_a_whole_pass() -> None:
    """300 random tables in a row (services coming and going, destinations changing, a
    forwarding method changed, services VIP-sourced or not, addresses shared by services):
    the kept targets are what a pass over the whole table gives, and ``update`` says
    "changed" exactly when they changed."""
    import random

    rng = random.Random(3)
    services = {i: IpvsService(f"10.0.0.{i % 6}", 80 + i, Protocol.TCP, "rr") for i in range(10)}

    methods = [Forwarding.MASQUERADE, Forwarding.MASQUERADE, Forwarding.DIRECT]

    def entry(i: int) -> tuple[IpvsService, list[IpvsDestination]]:
        dests = [
            IpvsDestination(f"10.1.0.{rng.randrange(8)}", 8080 + k, forwarding=rng.choice(methods))
            for k in range(rng.randrange(0, 4))
        ]
        return services[i], dests

    entries = {i: entry(i) for i in rng.sample(range(10), 5)}
    kept = nft.MasqueradeTargets()
    before: tuple[object, ...] = ()
    changes = 0
    for _ in range(300):
        roll = rng.random()
        if roll < 0.6:
            i = rng.randrange(10)
            entries[i] = entry(i)
        elif roll < 0.8 and entries:
            entries.pop(rng.choice(list(entries)))
        table = IpvsTable.of(entries.values())
        sourced = {s.key for i, s in services.items() if i % 3 == 0 and rng.random() < 0.9}
        changed = kept.update(table, sourced)
        whole = (*nft.masquerade_targets(table), nft.vip_sourced_services(table, sourced))
        assert kept.targets() == whole
        assert changed == (whole != before)
        changes += changed
        before = whole
    assert 50 < changes < 300  # both answers were given
