"""The desired IPVS table from VirtualServers and pool members (pure)."""

from __future__ import annotations

from typing import Any

from lvs_operator.api.realserverpool import PoolMember
from lvs_operator.api.virtualserver import VirtualServer
from lvs_operator.director.desired import (
    DesiredBuilder,
    build,
    drain,
    needs_counts,
    resolve_port,
)
from lvs_operator.director.table import (
    DestKey,
    Forwarding,
    IpvsDestination,
    IpvsService,
    IpvsTable,
    Protocol,
    ServiceKey,
    diff,
)


def vs(name: str = "web", ns: str = "demo", generation: int = 1, **spec: Any) -> VirtualServer:
    body: dict[str, Any] = {
        "vip": "10.10.0.100",
        "ports": [{"port": 80, "targetPort": 8080}],
        "poolRef": {"name": "pool"},
    }
    body.update(spec)
    return VirtualServer.from_object(
        {"metadata": {"name": name, "namespace": ns, "generation": generation}, "spec": body}
    )


def member(address: str, weight: int = 1, **kw: Any) -> PoolMember:
    kw.setdefault("ready", True)
    return PoolMember(address=address, weight=weight, **kw)


def pods(*addresses: str, **kw: Any) -> list[PoolMember]:
    return [member(a, ports={"http": 8080, "8080": 8080}, **kw) for a in addresses]


POOL = ("demo", "pool")
K80 = ServiceKey(Protocol.TCP, "10.10.0.100", 80)


def test_service_and_destinations_masquerade_by_default() -> None:
    d = build([vs(scheduler="rr")], {POOL: pods("10.20.0.21", "10.20.0.22")})
    entry = d.table[K80]
    assert entry.service == IpvsService("10.10.0.100", 80, Protocol.TCP, "rr")
    assert entry.destinations == (
        IpvsDestination("10.20.0.21", 8080, 1, Forwarding.MASQUERADE),
        IpvsDestination("10.20.0.22", 8080, 1, Forwarding.MASQUERADE),
    )
    assert d.generations == {"demo/web": 1}
    assert d.vips == {"10.10.0.100": None}
    assert d.quiesced == frozenset() and d.problems == ()


def test_default_scheduler_is_wlc_and_weights_carry_over() -> None:
    d = build([vs()], {POOL: [member("10.20.0.21", 3, ports={"8080": 8080}),
                              member("10.20.0.22", 1, ports={"8080": 8080})]})  # fmt: skip
    entry = d.table[K80]
    assert entry.service.scheduler == "wlc"
    assert [x.weight for x in entry.destinations] == [3, 1]


def test_persistence_timeout_and_netmask() -> None:
    d = build(
        [vs(persistence={"timeoutSeconds": 600, "netmask": "255.255.255.0"})],
        {POOL: pods("10.20.0.21")},
    )
    svc = d.table[K80].service
    assert svc.persistence_timeout == 600
    assert svc.netmask == 24
    d2 = build([vs(persistence={})], {POOL: []})
    assert d2.table[K80].service.persistence_timeout == 300  # ipvsadm's default
    assert d2.table[K80].service.netmask == 32


def test_ipv6_vip_with_prefix_length_persistence() -> None:
    d = build(
        [vs(vip="2001:db8::100", persistence={"timeoutSeconds": 60, "prefixLength": 64})],
        {POOL: pods("2001:db8:1::21", "10.20.0.22")},
    )
    key = ServiceKey(Protocol.TCP, "2001:db8::100", 80)
    assert d.table[key].service.netmask == 64
    assert [x.address for x in d.table[key].destinations] == ["2001:db8:1::21"]
    assert any("not IPv6" in p.message for p in d.problems)  # the IPv4 member is left out


def test_named_target_port_resolves_per_member() -> None:
    members = [
        member("10.20.0.21", ports={"http": 8080}),
        member("10.20.0.22", ports={"http": 9090}),
        member("10.20.0.23", ports={"metrics": 9100}),  # no "http": left out, reported
    ]
    d = build([vs(ports=[{"port": 80, "targetPort": "http"}])], {POOL: members})
    dests = d.table[K80].destinations
    assert [(x.address, x.port) for x in dests] == [("10.20.0.21", 8080), ("10.20.0.22", 9090)]
    assert [p.message for p in d.problems] == [
        "member 10.20.0.23 (pod) has no port named 'http'; left out"
    ]


def test_numeric_target_port_uses_member_mapping_then_the_number() -> None:
    vport = vs(ports=[{"port": 80, "targetPort": 8080}]).spec.ports[0]
    assert resolve_port(member("10.0.0.1", ports={"8080": 18080}), vport) == 18080
    assert resolve_port(member("10.0.0.1"), vport) == 8080
    same = vs(ports=[{"port": 80}]).spec.ports[0]  # targetPort defaults to port
    assert resolve_port(member("10.0.0.1"), same) == 80


def test_static_servers_use_their_own_port() -> None:
    static = [
        member("192.0.2.10", port=8443, source="static"),
        member("192.0.2.11", source="static"),  # no port: the targetPort
    ]
    d = build([vs()], {POOL: static})
    assert [(x.address, x.port) for x in d.table[K80].destinations] == [
        ("192.0.2.10", 8443),
        ("192.0.2.11", 8080),
    ]


def test_forwarding_methods() -> None:
    for method, expected in (
        ("direct", Forwarding.DIRECT),
        ("tunnel", Forwarding.TUNNEL),
        ("masquerade", Forwarding.MASQUERADE),
    ):
        d = build([vs(forwarding=method, ports=[{"port": 80}])], {POOL: pods("10.20.0.21")})
        (dest,) = d.table[K80].destinations
        assert dest.forwarding is expected
        assert dest.port == 80


def test_masquerade_source_vip_marks_every_port_of_the_virtualserver() -> None:
    two_ports = [{"port": 80, "targetPort": 8080}, {"port": 443, "targetPort": 8080}]
    d = build(
        [
            vs("sourced", ports=two_ports, masqueradeSource="VIP"),
            vs("plain", vip="10.10.0.101"),
            vs("spelled-out", vip="10.10.0.102", masqueradeSource="Director"),
        ],
        {POOL: pods("10.20.0.21")},
    )
    assert d.vip_sourced == {K80, ServiceKey(Protocol.TCP, "10.10.0.100", 443)}
    assert len(d.table) == 4
    assert d.vip_sourced == build([vs(masqueradeSource="VIP", ports=two_ports)], {}).vip_sourced
    assert build([vs()], {POOL: pods("10.20.0.21")}).vip_sourced == frozenset()


def test_not_ready_and_terminating_members_are_quiesced() -> None:
    members = [
        member("10.20.0.21", ports={"8080": 8080}),
        member("10.20.0.22", ready=False, ports={"8080": 8080}),
        member("10.20.0.23", 5, terminating=True, ports={"8080": 8080}),
    ]
    d = build([vs()], {POOL: members})
    assert {x.address: x.weight for x in d.table[K80].destinations} == {
        "10.20.0.21": 1,
        "10.20.0.22": 0,
        "10.20.0.23": 0,
    }
    assert d.quiesced == {
        (K80, DestKey("10.20.0.22", 8080)),
        (K80, DestKey("10.20.0.23", 8080)),
    }


def test_drain_keeps_quiesced_destinations_only_while_they_have_connections() -> None:
    members = [member("10.20.0.21"), member("10.20.0.22", ready=False)]
    d = build([vs()], {POOL: members})
    svc = d.table[K80].service
    actual = IpvsTable.of([(svc, [IpvsDestination("10.20.0.21", 8080),
                                  IpvsDestination("10.20.0.22", 8080)])])  # fmt: skip
    busy = drain(d, actual, {(K80, DestKey("10.20.0.22", 8080)): 2})
    assert {x.address: x.weight for x in busy[K80].destinations} == {
        "10.20.0.21": 1,
        "10.20.0.22": 0,
    }
    # the change is a weight edit, not a removal: established connections continue
    assert [str(c.op) for c in diff(busy, actual)] == ["edit-dest"]
    idle = drain(d, actual, {})
    assert [x.address for x in idle[K80].destinations] == ["10.20.0.21"]
    # a quiesced member never programmed is not added
    fresh = drain(d, IpvsTable.of([(svc, [])]), None)
    assert [x.address for x in fresh[K80].destinations] == ["10.20.0.21"]


def test_counts_are_needed_only_for_a_quiesced_destination_the_kernel_still_has() -> None:
    members = [member("10.20.0.21"), member("10.20.0.22", ready=False)]
    d = build([vs()], {POOL: members})
    svc = d.table[K80].service
    both = IpvsTable.of([(svc, [IpvsDestination("10.20.0.21", 8080),
                                IpvsDestination("10.20.0.22", 8080)])])  # fmt: skip
    assert needs_counts(d, both)
    # never programmed, or already gone: drain leaves it out whatever the counts
    assert not needs_counts(d, IpvsTable.of([(svc, [IpvsDestination("10.20.0.21", 8080)])]))
    assert not needs_counts(d, IpvsTable())
    assert drain(d, IpvsTable.of([(svc, [])]), None) == drain(d, IpvsTable.of([(svc, [])]), {})
    # the same address on another port is another destination
    other_port = IpvsTable.of([(svc, [IpvsDestination("10.20.0.22", 9090)])])
    assert not needs_counts(d, other_port)
    # nothing quiesced: nothing to count
    assert not needs_counts(build([vs()], {POOL: members[:1]}), both)


def test_pool_without_members_still_gets_its_service() -> None:
    d = build([vs(ports=[{"port": 80}, {"port": 53, "protocol": "UDP"}])], {})
    assert set(d.table) == {K80, ServiceKey(Protocol.UDP, "10.10.0.100", 53)}
    assert all(e.destinations == () for e in d.table.values())


def test_scheduler_flags_and_multiple_ports() -> None:
    d = build(
        [vs(scheduler="sh", schedulerFlags=["sh-port"],
            ports=[{"port": 80, "targetPort": 8080}, {"port": 443, "targetPort": 8443}])],
        {POOL: pods("10.20.0.21")},
    )  # fmt: skip
    k443 = ServiceKey(Protocol.TCP, "10.10.0.100", 443)
    assert d.table[K80].service.flags == {"sh-port"}
    assert d.table[k443].destinations[0].port == 8443


def test_conflicting_virtual_servers_first_wins() -> None:
    d = build([vs("b", generation=4), vs("a", generation=2)], {POOL: pods("10.20.0.21")})
    assert d.generations == {"demo/a": 2}
    assert d.problems[0].name == "b"
    assert "already served by demo/a" in d.problems[0].message


def test_pools_are_looked_up_in_the_virtual_servers_namespace() -> None:
    d = build([vs(ns="other")], {POOL: pods("10.20.0.21")})
    assert d.table[K80].destinations == ()


def test_duplicate_member_endpoints_collapse() -> None:
    d = build([vs()], {POOL: [member("10.20.0.21", 1), member("10.20.0.21", 4)]})
    assert [(x.address, x.weight) for x in d.table[K80].destinations] == [("10.20.0.21", 4)]


def test_changes_in_the_desired_table_diff_in_place() -> None:
    before = build([vs(scheduler="rr")], {POOL: pods("10.20.0.21", "10.20.0.22")}).table
    after = build(
        [vs(scheduler="wrr", persistence={"timeoutSeconds": 60})],
        {POOL: [*pods("10.20.0.21"), member("10.20.0.23", 2, ports={"8080": 8080})]},
    ).table
    ops = [(str(c.op), c.dest.address if c.dest else None) for c in diff(after, before)]
    assert ops == [("edit-service", None), ("add-dest", "10.20.0.23"), ("del-dest", "10.20.0.22")]


def test_a_staged_virtualserver_has_its_services_and_generation_but_not_its_vip() -> None:
    moving = vs("moving", vip="10.10.0.101")
    d = build([vs(), moving], {POOL: pods("10.20.0.21")}, staged={("demo", "moving")})
    assert ServiceKey(Protocol.TCP, "10.10.0.101", 80) in d.table
    assert d.generations == {"demo/web": 1, "demo/moving": 1}
    assert d.vips == {"10.10.0.100": None} and d.staged_vips == {"10.10.0.101"}


# -- DesiredBuilder: each VirtualServer's part remembered -------------------------------------


def three_pools() -> tuple[list[VirtualServer], dict[tuple[str, str], tuple[PoolMember, ...]]]:
    servers = [
        vs(f"web{i}", vip=f"10.10.0.{100 + i}", poolRef={"name": f"pool{i}"}) for i in range(3)
    ]
    pools = {("demo", f"pool{i}"): tuple(pods(f"10.20.{i}.1", f"10.20.{i}.2")) for i in range(3)}
    return servers, pools


def test_builder_rebuilds_only_the_virtualserver_whose_pool_changed() -> None:
    servers, pools = three_pools()
    builder = DesiredBuilder()
    first = builder.build(servers, pools)
    pools[("demo", "pool1")] = tuple(pods("10.20.1.1", "10.20.1.3"))
    second = builder.build(servers, pools)
    assert second.table == build(servers, pools).table  # as a fresh build says
    keys = {i: ServiceKey(Protocol.TCP, f"10.10.0.{100 + i}", 80) for i in range(3)}
    assert second.table[keys[0]] is first.table[keys[0]]  # the very entry: the diff skips it
    assert second.table[keys[2]] is first.table[keys[2]]
    assert second.table[keys[1]] is not first.table[keys[1]]
    assert [d.address for d in second.table[keys[1]].destinations] == ["10.20.1.1", "10.20.1.3"]


def test_builder_reuses_parts_for_equal_objects_and_forgets_deleted_ones() -> None:
    servers, pools = three_pools()
    builder = DesiredBuilder()
    first = builder.build(servers, pools)
    # a relist: new objects, the same state
    relisted, again = three_pools()
    second = builder.build(relisted, again)
    assert all(second.table[k] is first.table[k] for k in first.table)
    # web1 deleted, then created again with another spec: built from its new spec
    builder.build([servers[0], servers[2]], pools)
    changed = vs("web1", vip="10.10.0.101", poolRef={"name": "pool1"}, scheduler="sh")
    third = builder.build([servers[0], changed, servers[2]], pools)
    assert third.table[ServiceKey(Protocol.TCP, "10.10.0.101", 80)].service.scheduler == "sh"


def test_builder_reports_a_claimed_service_each_time_and_keeps_the_first() -> None:
    servers, pools = three_pools()
    twin = vs("zz-twin", vip="10.10.0.100", poolRef={"name": "pool1"})
    builder = DesiredBuilder()
    for _ in range(2):  # the second from the remembered parts
        d = builder.build([*servers, twin], pools)
        assert [p.message for p in d.problems if p.name == "zz-twin"] == [
            f"{K80} is already served by demo/web0; not programmed"
        ]
        assert [x.address for x in d.table[K80].destinations] == ["10.20.0.1", "10.20.0.2"]


def test_drain_rebuilds_only_the_services_with_a_quiesced_destination() -> None:
    servers, pools = three_pools()
    pools[("demo", "pool1")] = (*pods("10.20.1.1"), *pods("10.20.1.2", ready=False))
    d = build(servers, pools)
    k1 = ServiceKey(Protocol.TCP, "10.10.0.101", 80)
    assert d.quiesced == {(k1, DestKey("10.20.1.2", 8080))}
    table = drain(d, d.table, {(k1, DestKey("10.20.1.2", 8080)): 0})
    assert [x.address for x in table[k1].destinations] == ["10.20.1.1"]
    assert list(table) == list(d.table)
    assert all(table[k] is d.table[k] for k in d.table if k != k1)


def test_builder_after_pod_events_equals_a_fresh_build_and_patches_in_place() -> None:
    """200 random pool changes (readiness, weights, members coming and going, a member
    without the named port, a member of the wrong family), now and then a VirtualServer
    changed or one claiming another's service: after each, the builder's table (patched in
    place when only members changed) is what a fresh build says, every field."""
    import dataclasses
    import random

    rng = random.Random(7)
    servers = [
        vs(f"web{i}", vip=f"10.10.0.{100 + i}", poolRef={"name": f"pool{i}"},
           ports=[{"port": 80, "targetPort": "http"}, {"port": 443, "targetPort": 8443}])
        for i in range(4)
    ]  # fmt: skip
    servers.append(vs("zz-twin", vip="10.10.0.101", poolRef={"name": "pool0"}))

    def pool(i: int) -> tuple[PoolMember, ...]:
        out = []
        for j in rng.sample(range(1, 9), rng.randrange(0, 5)):
            kind = rng.random()
            if kind < 0.1:
                out.append(member(f"10.20.{i}.{j}", ports={}))  # no port named http
            elif kind < 0.15:
                out.append(member(f"fd00::{i}:{j}", ports={"http": 8080}))  # not IPv4
            else:
                out.append(member(f"10.20.{i}.{j}", weight=rng.randrange(0, 4),
                                  ready=rng.random() < 0.8, ports={"http": 8080}))  # fmt: skip
        return tuple(out)

    def roll_i(roll: float) -> int:
        return int(roll * 1000) % 4

    pools = {("demo", f"pool{i}"): pool(i) for i in range(4)}
    builder = DesiredBuilder()
    full = builder._build
    whole: list[int] = []
    builder._build = lambda *a: (whole.append(1), full(*a))[1]  # type: ignore[method-assign]
    patched = 0
    last = builder.build(servers, pools)
    for step in range(200):
        roll = rng.random()
        if roll < 0.05:
            i = rng.randrange(4)
            servers[i] = vs(f"web{i}", generation=step, vip=f"10.10.0.{100 + i}",
                            poolRef={"name": f"pool{i}"}, scheduler=rng.choice(["rr", "wlc"]),
                            ports=[{"port": 80, "targetPort": "http"}])  # fmt: skip
        elif roll < 0.35 or not pools[("demo", f"pool{roll_i(roll)}")]:
            i = rng.randrange(4)
            pools = {**pools, ("demo", f"pool{i}"): pool(i)}
        else:  # a pod event: one member's readiness or weight
            i = roll_i(roll)
            members = list(pools[("demo", f"pool{i}")])
            j = rng.randrange(len(members))
            members[j] = dataclasses.replace(members[j], ready=not members[j].ready,
                                             weight=rng.randrange(0, 4))  # fmt: skip
            pools = {**pools, ("demo", f"pool{i}"): tuple(members)}
        got = builder.build(servers, pools)
        assert got == build(servers, pools), step
        if roll >= 0.05 and got.table.keys() == last.table.keys():
            # untouched services keep their very entries (the diff skips them)
            kept = [k for k in got.table if k.address not in (f"10.10.0.{100 + i}",)]
            patched += all(got.table[k] is last.table[k] for k in kept)
        last = got
    assert patched > 100  # untouched services kept their entries
    assert 10 < len(whole) < 80  # most pod events were patched in, not built anew
