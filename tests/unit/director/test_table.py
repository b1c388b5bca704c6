"""The IPVS table model and its diff, without a kernel."""

from __future__ import annotations

import random

import pytest

from lvs_operator.director.table import (
    IP_VS_SVC_F_PERSISTENT,
    IP_VS_SVC_F_SCHED1,
    Change,
    DestKey,
    Forwarding,
    IpvsDestination,
    IpvsService,
    IpvsTable,
    Op,
    Ownership,
    Protocol,
    ServiceEntry,
    ServiceKey,
    apply_to_table,
    bits_to_flags,
    diff,
    flags_to_bits,
    owned_by_addresses,
)

VIP = "10.10.0.100"
WEB = IpvsService(VIP, 80, scheduler="rr")
RS = [IpvsDestination(f"10.20.0.{21 + i}", 8080) for i in range(3)]


def table(*entries: tuple[IpvsService, list[IpvsDestination]]) -> IpvsTable:
    return IpvsTable.of(entries)


def ops(changes: list[Change]) -> list[tuple[str, str, str | None]]:
    return [(c.op.value, str(c.service.key), str(c.dest.key) if c.dest else None) for c in changes]


def converge(desired: IpvsTable, actual: IpvsTable, owned: Ownership = None) -> list[Change]:
    """diff, plus the check that applying it really reaches desired (for the owned part)."""
    changes = diff(desired, actual, owned)
    after = apply_to_table(actual, changes)
    for key, entry in desired.items():
        assert after[key] == entry
    assert diff(desired, after, owned) == []
    return changes


# -- model ------------------------------------------------------------------------------------


def test_addresses_are_canonical_and_keys_compare() -> None:
    a = IpvsService("2001:db8:0::0001", 443, Protocol.TCP)
    assert a.address == "2001:db8::1"
    assert a.key == ServiceKey(Protocol.TCP, "2001:db8::1", 443)
    assert str(a.key) == "TCP/[2001:db8::1]:443"
    assert a.netmask == 128 and WEB.netmask == 32
    assert IpvsDestination("10.0.0.1", 80).key == DestKey("10.0.0.1", 80)


def test_entries_sort_destinations_and_reject_duplicates() -> None:
    assert ServiceEntry(WEB, tuple(reversed(RS))) == ServiceEntry(WEB, tuple(RS))
    with pytest.raises(ValueError, match="duplicate destination"):
        ServiceEntry(WEB, (RS[0], IpvsDestination(RS[0].address, RS[0].port, weight=5)))
    with pytest.raises(ValueError, match="duplicate service"):
        table((WEB, []), (IpvsService(VIP, 80, scheduler="wlc"), []))


def test_flags_names_and_bits() -> None:
    sh = IpvsService(VIP, 80, scheduler="sh", flags=frozenset({"sh-fallback", "sh-port"}))
    assert flags_to_bits(sh.flags) == 0x18
    assert bits_to_flags(0x18 | 0x2, "sh") == {"sh-fallback", "sh-port"}  # HASHED ignored
    assert bits_to_flags(0x08, "mh") == {"mh-fallback"}
    assert bits_to_flags(0x08, "rr") == {"flag-1"}
    assert IpvsService(VIP, 80, persistence_timeout=300).flag_bits == IP_VS_SVC_F_PERSISTENT
    with pytest.raises(ValueError, match="unknown IPVS service flag"):
        IpvsService(VIP, 80, flags=frozenset({"sticky"}))


def test_invalid_values_are_rejected() -> None:
    with pytest.raises(ValueError):
        IpvsService("10.0.0.300", 80)
    with pytest.raises(ValueError):
        IpvsService(VIP, 80, netmask=33)
    with pytest.raises(ValueError):
        IpvsDestination("10.0.0.1", 70000)
    with pytest.raises(ValueError):
        IpvsDestination("10.0.0.1", 80, weight=-1)


# -- diff ---------------------------------------------------------------------------------------


def test_equal_tables_need_nothing() -> None:
    t = table((WEB, RS))
    assert diff(t, t, owned_by_addresses([VIP])) == []


def test_add_service_comes_before_its_destinations() -> None:
    changes = converge(table((WEB, RS)), IpvsTable())
    assert ops(changes) == [
        ("add-service", "TCP/10.10.0.100:80", None),
        ("add-dest", "TCP/10.10.0.100:80", "10.20.0.21:8080"),
        ("add-dest", "TCP/10.10.0.100:80", "10.20.0.22:8080"),
        ("add-dest", "TCP/10.10.0.100:80", "10.20.0.23:8080"),
    ]


def test_remove_owned_service_removes_destinations_first() -> None:
    actual = table((WEB, RS), (IpvsService(VIP, 443), RS[:1]))
    desired = table((WEB, RS))
    changes = converge(desired, actual, owned_by_addresses([VIP]))
    assert ops(changes) == [
        ("del-dest", "TCP/10.10.0.100:443", "10.20.0.21:8080"),
        ("del-service", "TCP/10.10.0.100:443", None),
    ]


def test_foreign_services_are_left_alone() -> None:
    foreign = IpvsService("192.0.2.1", 80)
    actual = table((WEB, RS), (foreign, [IpvsDestination("192.0.2.9", 80)]))
    # desired no longer has WEB: only WEB (on our VIP) goes; the foreign one stays
    changes = converge(IpvsTable(), actual, owned_by_addresses([VIP]))
    assert {c.service.key for c in changes} == {WEB.key}
    assert apply_to_table(actual, changes) == table((foreign, [IpvsDestination("192.0.2.9", 80)]))
    # without ownership information nothing outside desired is touched
    assert diff(IpvsTable(), actual) == []
    # ownership as a collection of keys (what the agent programmed before)
    assert {c.service.key for c in diff(IpvsTable(), actual, {WEB.key})} == {WEB.key}


def test_desired_service_is_adopted_when_present() -> None:
    # same key programmed by someone (e.g. a previous agent) with other settings: edited
    actual = table((IpvsService(VIP, 80, scheduler="wlc"), RS))
    assert ops(converge(table((WEB, RS)), actual)) == [("edit-service", "TCP/10.10.0.100:80", None)]


def test_weight_change_is_one_edit() -> None:
    changed = [RS[0], IpvsDestination(RS[1].address, 8080, weight=3), RS[2]]
    changes = converge(table((WEB, changed)), table((WEB, RS)))
    assert ops(changes) == [("edit-dest", "TCP/10.10.0.100:80", "10.20.0.22:8080")]
    assert changes[0].dest is not None and changes[0].dest.weight == 3


def test_quiesce_is_weight_zero_not_removal() -> None:
    quiesced = [RS[0], RS[1], IpvsDestination(RS[2].address, 8080, weight=0)]
    changes = converge(table((WEB, quiesced)), table((WEB, RS)))
    assert [c.op for c in changes] == [Op.EDIT_DEST]


def test_forwarding_change_is_an_edit() -> None:
    direct = [IpvsDestination(d.address, 80, forwarding=Forwarding.DIRECT) for d in RS]
    masq = [IpvsDestination(d.address, 80) for d in RS]
    changes = converge(table((WEB, direct)), table((WEB, masq)))
    assert [c.op for c in changes] == [Op.EDIT_DEST] * 3


def test_scheduler_change_is_a_service_edit() -> None:
    changes = converge(table((IpvsService(VIP, 80, scheduler="wrr"), RS)), table((WEB, RS)))
    assert ops(changes) == [("edit-service", "TCP/10.10.0.100:80", None)]


def test_flags_change_is_a_service_edit() -> None:
    sh = IpvsService(VIP, 80, scheduler="sh")
    sh_fb = IpvsService(VIP, 80, scheduler="sh", flags=frozenset({"sh-fallback"}))
    changes = converge(table((sh_fb, RS)), table((sh, RS)))
    assert [c.op for c in changes] == [Op.EDIT_SERVICE]
    assert changes[0].service.flag_bits == IP_VS_SVC_F_SCHED1
    # the same bits under another spelling are no change
    generic = IpvsService(VIP, 80, scheduler="sh", flags=frozenset({"flag-1"}))
    assert diff(table((generic, RS)), table((sh_fb, RS))) == []


def test_persistence_change_is_a_service_edit() -> None:
    sticky = IpvsService(VIP, 80, scheduler="rr", persistence_timeout=300)
    assert [c.op for c in converge(table((sticky, RS)), table((WEB, RS)))] == [Op.EDIT_SERVICE]
    longer = IpvsService(VIP, 80, scheduler="rr", persistence_timeout=600)
    assert [c.op for c in converge(table((longer, RS)), table((sticky, RS)))] == [Op.EDIT_SERVICE]
    masked = IpvsService(VIP, 80, scheduler="rr", persistence_timeout=600, netmask=24)
    assert [c.op for c in converge(table((masked, RS)), table((longer, RS)))] == [Op.EDIT_SERVICE]
    # and off again
    assert [c.op for c in converge(table((WEB, RS)), table((masked, RS)))] == [Op.EDIT_SERVICE]


def test_destination_adds_come_before_removals() -> None:
    new = [IpvsDestination("10.20.0.31", 8080), IpvsDestination("10.20.0.32", 8080)]
    changes = converge(table((WEB, new)), table((WEB, RS)))
    kinds = [c.op for c in changes]
    assert kinds == [Op.ADD_DEST] * 2 + [Op.DEL_DEST] * 3


def test_port_change_of_a_destination_is_add_and_remove() -> None:
    # a destination's key is address:port; another port is another destination
    moved = [IpvsDestination(RS[0].address, 9090)]
    changes = converge(table((WEB, moved)), table((WEB, RS[:1])))
    assert ops(changes) == [
        ("add-dest", "TCP/10.10.0.100:80", "10.20.0.21:9090"),
        ("del-dest", "TCP/10.10.0.100:80", "10.20.0.21:8080"),
    ]


def test_mixed_changes_are_ordered_and_converge() -> None:
    dns = IpvsService(VIP, 53, Protocol.UDP, scheduler="rr")
    old = IpvsService(VIP, 8443)
    v6 = IpvsService("2001:db8::100", 80, scheduler="mh", flags=frozenset({"mh-port"}))
    actual = table(
        (WEB, RS),
        (old, RS),
        (IpvsService("192.0.2.1", 80), [IpvsDestination("192.0.2.2", 80)]),
    )
    desired = table(
        (IpvsService(VIP, 80, scheduler="wrr"), [RS[0], IpvsDestination(RS[1].address, 8080, 5)]),
        (dns, [IpvsDestination("10.20.0.21", 53)]),
        (v6, [IpvsDestination("2001:db8::21", 8080)]),
    )
    changes = converge(desired, actual, owned_by_addresses([VIP, "2001:db8::100"]))
    kinds = [c.op for c in changes]
    # new services (with their dests) first, then edits, then removals
    assert kinds == [
        Op.ADD_SERVICE, Op.ADD_DEST,  # dns
        Op.ADD_SERVICE, Op.ADD_DEST,  # v6
        Op.EDIT_SERVICE, Op.EDIT_DEST, Op.DEL_DEST,  # web
        Op.DEL_DEST, Op.DEL_DEST, Op.DEL_DEST, Op.DEL_SERVICE,  # old
    ]  # fmt: skip
    assert "192.0.2.1" in {k.address for k in apply_to_table(actual, changes)}


def test_apply_to_table_rejects_impossible_changes() -> None:
    with pytest.raises(ValueError, match="no such service"):
        apply_to_table(IpvsTable(), [Change(Op.ADD_DEST, WEB, RS[0])])
    with pytest.raises(ValueError, match="service exists"):
        apply_to_table(table((WEB, [])), [Change(Op.ADD_SERVICE, WEB)])
    with pytest.raises(ValueError, match="destination exists"):
        apply_to_table(table((WEB, RS[:1])), [Change(Op.ADD_DEST, WEB, RS[0])])
    for op in (Op.EDIT_DEST, Op.DEL_DEST):
        with pytest.raises(ValueError, match="no such destination"):
            apply_to_table(table((WEB, RS[:1])), [Change(op, WEB, RS[1])])
    for op in (Op.EDIT_SERVICE, Op.DEL_SERVICE):
        with pytest.raises(ValueError, match="no such service"):
            apply_to_table(IpvsTable(), [Change(op, WEB)])
    # a service deleted earlier in the same list is gone for the changes after it
    with pytest.raises(ValueError, match="no such service"):
        gone_then_added_to = [Change(Op.DEL_SERVICE, WEB), Change(Op.ADD_DEST, WEB, RS[0])]
        apply_to_table(table((WEB, RS)), gone_then_added_to)


def test_apply_to_table_does_each_operation() -> None:
    sticky = IpvsService(VIP, 80, scheduler="wrr", persistence_timeout=300)
    heavy = IpvsDestination(RS[1].address, RS[1].port, weight=7, forwarding=Forwarding.DIRECT)
    api = IpvsService(VIP, 81)
    steps: list[tuple[Change, IpvsTable]] = [
        (Change(Op.ADD_SERVICE, WEB), table((WEB, []))),
        (Change(Op.ADD_DEST, WEB, RS[0]), table((WEB, RS[:1]))),
        (Change(Op.ADD_DEST, WEB, RS[1]), table((WEB, RS[:2]))),
        # an edit of the service keeps its destinations
        (Change(Op.EDIT_SERVICE, sticky), table((sticky, RS[:2]))),
        (Change(Op.EDIT_DEST, sticky, heavy), table((sticky, [RS[0], heavy]))),
        (Change(Op.DEL_DEST, sticky, heavy), table((sticky, RS[:1]))),
        (Change(Op.ADD_SERVICE, api), table((sticky, RS[:1]), (api, []))),
        # the kernel deletes a service with whatever destinations it still has
        (Change(Op.DEL_SERVICE, sticky), table((api, []))),
    ]
    now = IpvsTable()
    for change, expected in steps:
        now = apply_to_table(now, [change])
        assert now == expected, change  # services compared field by field
    # the same steps as one list give the same table
    assert apply_to_table(IpvsTable(), [c for c, _ in steps]) == steps[-1][1]


def test_apply_to_table_leaves_its_input_and_the_untouched_services_alone() -> None:
    foreign = IpvsService("192.0.2.1", 80)
    before = table((WEB, RS), (foreign, [IpvsDestination("192.0.2.9", 80)]))
    snapshot = IpvsTable.of(before.values())
    after = apply_to_table(before, [Change(Op.DEL_DEST, WEB, RS[0])])
    assert before == snapshot and before[WEB.key].destinations == tuple(RS)
    assert after[WEB.key].destinations == tuple(RS[1:])
    assert after[foreign.key] is before[foreign.key]  # shared, not rebuilt
    assert apply_to_table(before, []) == before


def test_apply_to_table_keeps_the_tables_key_order() -> None:
    # the diff's order follows its tables' order: a table with services added stays sorted
    # like IpvsTable.of builds it
    services = [IpvsService(VIP, port) for port in (90, 70, 80, 60)]
    now = table((services[0], []))
    for svc in services[1:]:
        now = apply_to_table(now, [Change(Op.ADD_SERVICE, svc)])
        assert list(now) == sorted(now)
    assert list(now) == list(IpvsTable.of((s, []) for s in services))


def _random_table(rng: random.Random, vips: list[str]) -> IpvsTable:
    entries = []
    for vip in vips:
        for port in rng.sample([80, 443, 8080], rng.randint(0, 3)):
            svc = IpvsService(
                vip, port, rng.choice([Protocol.TCP, Protocol.UDP]),
                scheduler=rng.choice(["rr", "wlc", "sh"]),
                persistence_timeout=rng.choice([0, 0, 300]),
            )  # fmt: skip
            if svc.key in {e[0].key for e in entries}:
                continue
            hosts = rng.sample(range(1, 9), rng.randint(0, 5))
            weights = [rng.choice([0, 1, 1, 5]) for _ in hosts]
            methods = [rng.choice(list(Forwarding)) for _ in hosts]
            dests = [
                IpvsDestination(f"10.20.0.{h}", 8080, weight=w, forwarding=f)
                for h, w, f in zip(hosts, weights, methods, strict=True)
            ]
            entries.append((svc, dests))
    return IpvsTable.of(entries)


def test_applying_the_diff_reaches_desired_and_leaves_the_rest_alone() -> None:
    """What the agent's copy of the kernel's table rests on: ``actual`` with the diff's
    changes applied has the owned part equal to ``desired`` (every desired service, and the
    owned ones not desired gone) and every service nobody owns (kube-proxy's, hand-made)
    exactly as it was. Random tables, seeded: the same cases every run."""
    rng = random.Random(19)
    ours, foreign = ["10.10.0.100", "10.10.0.101"], ["10.96.0.10", "192.0.2.1"]
    owned = owned_by_addresses(ours)

    def unowned(key: ServiceKey) -> bool:
        return not owned(key)

    for case in range(300):
        desired = _random_table(rng, ours)
        actual = _random_table(rng, ours + foreign)
        after = apply_to_table(actual, diff(desired, actual, owned))
        assert after.only(owned) == desired, case
        assert after.only(unowned) == actual.only(unowned), case
        assert diff(desired, after, owned) == [], case
        # nothing owned but the desired services: what is not desired stays, untouched
        after_unowned = apply_to_table(actual, diff(desired, actual))
        for key, entry in actual.items():
            if key not in desired:
                assert after_unowned[key] is entry, case
        for key, entry in desired.items():
            assert after_unowned[key] == entry, case


def test_diff_scales_linearly() -> None:
    # 1,000 services x 10 destinations: diffing must stay cheap (it runs on every event).
    # Held as a ratio of CPU time (this process's, so other load does not count) against 100
    # services in the same run: linear is 10x, quadratic would be 100x. An absolute bound in
    # seconds failed on a loaded machine; speed itself is measured by the benchmarks.
    import time

    def table(services: int) -> IpvsTable:
        return IpvsTable.of(
            (IpvsService(f"10.{i // 250}.{i % 250}.1", 80), [
                IpvsDestination(f"10.200.{j}.{i % 250}", 8080) for j in range(10)
            ])
            for i in range(services)
        )  # fmt: skip

    def cost(t: IpvsTable) -> float:
        best = float("inf")
        for _ in range(3):  # the best of three: the least disturbed
            t0 = time.process_time()
            assert diff(t, t) == []
            assert len(diff(t, IpvsTable())) == 11 * len(t)
            best = min(best, time.process_time() - t0)
        return best

    small, big = table(100), table(1000)
    ratio = cost(big) / max(cost(small), 1e-4)
    assert ratio < 30, f"1,000 services cost {ratio:.1f}x 100 services (linear: 10x)"


def test_with_destinations_replaces_only_the_services_named() -> None:
    a = IpvsService("10.10.0.100", 80, Protocol.TCP, "rr")
    b = IpvsService("10.10.0.101", 80, Protocol.TCP, "rr")
    d1, d2 = IpvsDestination("10.20.0.21", 8080), IpvsDestination("10.20.0.22", 8080)
    table = IpvsTable.of([(a, [d1]), (b, [d1, d2])])
    gone = IpvsService("10.10.0.102", 80, Protocol.TCP, "rr").key
    out = table.with_destinations({a.key: (d1, d2), gone: (d1,)})
    assert out == IpvsTable.of([(a, [d1, d2]), (b, [d1, d2])])
    assert out[b.key] is table[b.key]  # untouched
    assert list(out) == list(table)  # same services, same order


def test_sharing_takes_the_other_tables_entries_under_the_same_keys_in_this_order() -> None:
    a = IpvsService("10.10.0.1", 80, Protocol.TCP, "rr")
    b = IpvsService("10.10.0.2", 80, Protocol.TCP, "rr")
    c = IpvsService("10.10.0.3", 80, Protocol.TCP, "rr")
    kernel = IpvsTable.of([(a, [IpvsDestination("10.20.0.1", 80)]), (b, []), (c, [])])
    desired = IpvsTable.of([(c, []), (a, [IpvsDestination("10.20.0.1", 80)])])
    shared = kernel.sharing(desired)
    assert shared == kernel and list(shared) == list(kernel)
    assert shared[a.key] is desired[a.key] and shared[c.key] is desired[c.key]
    assert shared[b.key] is kernel[b.key]
    assert diff(desired, shared) == []
