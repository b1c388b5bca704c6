from __future__ import annotations

import ipaddress
from datetime import UTC, datetime

from lvs_operator.api.contract import group_name
from lvs_operator.api.realserverpool import RealServerPool
from lvs_operator.controller import virtualservers as v
from lvs_operator.controller.pools import PoolOutcome, evaluate_pool, slice_info

from . import objects as o

T0 = datetime(2024, 1, 1, tzinfo=UTC)
RANGES = [ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/64")]
POOLS = [("web", "web"), ("other", "web")]
GROUP = group_name({"lvs.io/director": "true"})


def decide(*objs: dict, pools=POOLS, ranges=RANGES) -> dict:
    return v.evaluate(objs, pools, ranges)


def test_accepted_gets_group() -> None:
    (d,) = decide(o.vs("a")).values()
    assert d.accepted and d.group == GROUP and d.pool_key == ("web", "web")


def test_invalid() -> None:
    bad = o.vs("a")
    bad["spec"]["ports"] = []
    (d,) = decide(bad).values()
    assert d.reason == v.INVALID and "spec.ports" in d.message and d.vs is None


def test_vip_not_allowed_messages() -> None:
    (d,) = decide(o.vs("a", vip="198.51.100.7")).values()
    assert d.reason == v.VIP_NOT_ALLOWED
    assert "outside the allowed ranges (192.0.2.0/24, 2001:db8::/64)" in d.message
    assert "--vip-ranges" in d.message and "LVS_VIP_RANGES" in d.message
    (d,) = decide(o.vs("a"), ranges=[]).values()
    assert d.reason == v.VIP_NOT_ALLOWED
    assert "allows no VIPs" in d.message and "--vip-ranges=192.0.2.0/24" in d.message
    (d,) = decide(o.vs("a", vip="2001:db9::1"), ranges=[]).values()
    assert "--vip-ranges=2001:db8::/64" in d.message


def test_conflict_across_namespaces_newer_loses_and_takes_over() -> None:
    old = o.vs("old", namespace="other", created="2024-01-01T00:00:00Z")
    new = o.vs("new", namespace="web", created="2024-01-02T00:00:00Z")
    ds = decide(new, old)
    assert ds[("other", "old")].accepted
    loser = ds[("web", "new")]
    assert loser.reason == v.CONFLICT and loser.group is None
    assert "192.0.2.10:80/TCP" in loser.message and "other/old" in loser.message
    # The winner goes: the other one takes over.
    assert decide(new)[("web", "new")].accepted


def test_conflict_ties_break_by_name_and_other_ports_or_protocols_do_not_clash() -> None:
    a = o.vs("a")
    b = o.vs("b")
    ds = decide(b, a)
    assert ds[("web", "a")].accepted and ds[("web", "b")].reason == v.CONFLICT
    udp = o.vs("c", ports=[{"port": 80, "protocol": "UDP"}])
    other_port = o.vs("d", ports=[{"port": 443}])
    ds = decide(a, udp, other_port)
    assert all(d.accepted for d in ds.values())
    # IPv6 spelled differently is the same VIP.
    six1 = o.vs("e", vip="2001:db8::1")
    six2 = o.vs("f", vip="2001:0db8:0:0::1", created="2024-02-01T00:00:00Z")
    ds = decide(six1, six2)
    assert ds[("web", "f")].reason == v.CONFLICT
    assert "[2001:db8::1]:80/TCP" in ds[("web", "f")].message


def test_pool_not_found_still_claims_its_vip() -> None:
    missing = o.vs("a", pool="nope")
    newer = o.vs("b", created="2024-02-01T00:00:00Z")
    ds = decide(missing, newer)
    assert ds[("web", "a")].reason == v.POOL_NOT_FOUND
    assert "RealServerPool web/nope does not exist" in ds[("web", "a")].message
    assert ds[("web", "b")].reason == v.CONFLICT


OTHER_SELECTOR = {"lvs.io/director": "edge"}
OTHER_GROUP = group_name(OTHER_SELECTOR)


def test_a_vip_belongs_to_one_director_group_across_namespaces() -> None:
    # The case: same VIP, other port, other node selector, other namespace.
    a = o.vs("a", namespace="other", ports=[{"port": 80}])
    b = o.vs("b", ports=[{"port": 8443}], selector=OTHER_SELECTOR, created="2024-01-02T00:00:00Z")
    ds = decide(b, a)
    assert ds[("other", "a")].accepted and ds[("other", "a")].group == GROUP
    loser = ds[("web", "b")]
    assert loser.reason == v.CONFLICT and loser.group is None and not loser.accepted
    assert "VIP 192.0.2.10 is already held by director group " + GROUP in loser.message
    assert "VirtualServer other/a" in loser.message
    assert "lvs.io/director=true" in loser.message  # the holder's selector: what to use
    assert "spec.directors.nodeSelector" in loser.message
    # Only one group is left wanting the VIP.
    assert {d.group for d in ds.values() if d.accepted} == {GROUP}
    # The holder goes: the other group takes the VIP over.
    (only,) = decide(b).values()
    assert only.accepted and only.group == OTHER_GROUP


def test_same_group_shares_a_vip_on_other_ports() -> None:
    a = o.vs("a", ports=[{"port": 80}])
    b = o.vs("b", namespace="other", ports=[{"port": 443}], created="2024-01-02T00:00:00Z")
    c = o.vs(
        "c",
        ports=[{"port": 8443}],
        selector={"lvs.io/director": "true"},  # spelled out: the same group as the default
        created="2024-01-03T00:00:00Z",
    )
    ds = decide(a, b, c)
    assert all(d.accepted and d.group == GROUP for d in ds.values())


def test_group_conflict_ties_break_oldest_then_name() -> None:
    # Same creationTimestamp: namespace/name decides, whatever the input order.
    a = o.vs("a", ports=[{"port": 80}], selector=OTHER_SELECTOR)
    b = o.vs("b", ports=[{"port": 443}])
    for order in ((a, b), (b, a)):
        ds = decide(*order)
        assert ds[("web", "a")].accepted and ds[("web", "a")].group == OTHER_GROUP
        assert ds[("web", "b")].reason == v.CONFLICT
        assert "VirtualServer web/a" in ds[("web", "b")].message
    # Older wins even with a later name.
    z = o.vs("z", ports=[{"port": 80}], created="2023-12-31T00:00:00Z")
    ds = decide(a, z)
    assert ds[("web", "z")].accepted and ds[("web", "a")].reason == v.CONFLICT


def test_group_conflict_ipv6_spellings_and_refused_ones_hold_nothing() -> None:
    a = o.vs("a", vip="2001:db8::1", ports=[{"port": 80}])
    b = o.vs(
        "b",
        vip="2001:0db8:0:0::1",
        ports=[{"port": 443}],
        selector=OTHER_SELECTOR,
        created="2024-01-02T00:00:00Z",
    )
    # c is of b's group: refused because of a, not accepted because b "holds" it.
    c = o.vs(
        "c",
        vip="2001:db8::1",
        ports=[{"port": 8443}],
        selector=OTHER_SELECTOR,
        created="2024-01-03T00:00:00Z",
    )
    ds = decide(a, b, c)
    assert ds[("web", "a")].accepted
    for name in ("b", "c"):
        assert ds[("web", name)].reason == v.CONFLICT
        assert "VIP 2001:db8::1 is already held" in ds[("web", name)].message
        assert "VirtualServer web/a" in ds[("web", name)].message


def test_a_vip_held_by_a_pool_not_found_one_is_still_held() -> None:
    # As for the VIP:port claims: a VirtualServer waiting for its pool keeps its VIP.
    missing = o.vs("a", pool="nope", ports=[{"port": 80}])
    other = o.vs(
        "b", ports=[{"port": 443}], selector=OTHER_SELECTOR, created="2024-02-01T00:00:00Z"
    )
    ds = decide(missing, other)
    assert ds[("web", "a")].reason == v.POOL_NOT_FOUND
    assert ds[("web", "b")].reason == v.CONFLICT


def test_group_conflict_is_reported_like_a_port_conflict() -> None:
    a = o.vs("a", ports=[{"port": 80}])
    b = o.vs("b", ports=[{"port": 443}], selector=OTHER_SELECTOR, created="2024-01-02T00:00:00Z")
    d = decide(a, b)[("web", "b")]
    cs = conds(d, None, None)
    for type_ in ("Ready", "Programmed"):
        assert cs[type_].status == "False" and cs[type_].reason == v.CONFLICT
        assert cs[type_].message == d.message
    status = v.vs_status(d, None, None, "lvs-system", None, T0)
    assert "directorGroup" not in status
    events = v.vs_events(v.vs_ref(d), None, status)
    assert [(e.type, e.reason, e.message) for e in events] == [("Warning", v.CONFLICT, d.message)]


def test_deleting_objects_are_left_out() -> None:
    gone = o.vs("a")
    gone["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    assert decide(gone, o.vs("b", created="2024-02-01T00:00:00Z"))[("web", "b")].accepted


def outcome(ready: int, total: int) -> PoolOutcome:
    pool = RealServerPool.from_object(o.pool())
    eps = [o.endpoint(f"10.0.0.{i + 1}", f"p{i}", ready=i < ready) for i in range(total)]
    return evaluate_pool(pool, [slice_info(o.endpoint_slice("web", eps))], {})


def conds(decision, pool, view) -> dict:
    return {c.type: c for c in v.vs_conditions(decision, pool, view, "lvs-system")}


def test_conditions_rejected() -> None:
    (d,) = decide(o.vs("a", pool="nope")).values()
    cs = conds(d, None, None)
    assert {t: (c.status, c.reason) for t, c in cs.items()} == {
        "Ready": ("False", v.POOL_NOT_FOUND),
        "Programmed": ("False", v.POOL_NOT_FOUND),
        "Degraded": ("False", v.POOL_NOT_FOUND),
    }


def test_conditions_director_states() -> None:
    (d,) = decide(o.vs("a", generation=4)).values()
    none = conds(d, outcome(2, 2), v.DirectorView(GROUP))
    assert none["Programmed"].reason == v.NO_ACTIVE_DIRECTOR
    assert "lvs-system/lvs-director-" in none["Programmed"].message
    assert none["Ready"].reason == v.NO_ACTIVE_DIRECTOR
    assert (none["Degraded"].status, none["Degraded"].reason) == ("True", v.NO_STANDBY_DIRECTOR)

    shared = v.DirectorView(
        GROUP, "n1", {"web/a": 4}, ("n1", "n2"), shared_nodes={"n2": ("gother",)}
    )
    cs = conds(d, outcome(2, 2), shared)
    assert (cs["Degraded"].status, cs["Degraded"].reason) == ("True", v.DIRECTOR_NODE_SHARED)
    assert "n2 (also gother)" in cs["Degraded"].message
    assert "nodeSelector" in cs["Degraded"].message and cs["Ready"].status == "True"

    pending = v.DirectorView(GROUP, "n1", {"web/a": 3}, ("n1", "n2"))
    cs = conds(d, outcome(2, 2), pending)
    assert cs["Programmed"].reason == v.PENDING and "generation 4" in cs["Programmed"].message

    done = v.DirectorView(GROUP, "n1", {"web/a": 4}, ("n1", "n2"))
    cs = conds(d, outcome(2, 2), done)
    assert (cs["Programmed"].status, cs["Ready"].status) == ("True", "True")
    assert cs["Ready"].message == "2/2 real servers ready on n1"
    assert (cs["Degraded"].status, cs["Degraded"].reason) == ("False", v.AS_EXPECTED)

    cs = conds(d, outcome(1, 3), done)
    assert (cs["Degraded"].status, cs["Degraded"].reason) == ("True", v.REAL_SERVERS_NOT_READY)
    cs = conds(d, outcome(0, 3), done)
    assert (cs["Ready"].status, cs["Ready"].reason) == ("False", v.NO_READY_REAL_SERVERS)


def test_status_fields_and_idempotence() -> None:
    (d,) = decide(o.vs("a", generation=2)).values()
    view = v.DirectorView(GROUP, "n2", {"web/a": 2}, ("n1", "n2"))
    status = v.vs_status(d, outcome(1, 2), view, "lvs-system", None, T0)
    assert status["observedGeneration"] == 2
    assert status["directorGroup"] == GROUP
    assert status["acceptedVIP"] == d.vs.spec.vip  # what the agents trust (not the label)
    assert status["activeDirector"] == "n2"
    assert status["directors"] == [
        {"node": "n1", "role": "standby"},
        {"node": "n2", "role": "active"},
    ]
    assert (status["readyRealServers"], status["totalRealServers"]) == (1, 2)
    assert status["readyOfTotal"] == "1/2"
    assert [c["type"] for c in status["conditions"]] == [
        "Ready", "Programmed", "Degraded", "ConnectionsSurviveCrash"
    ]  # fmt: skip
    again = v.vs_status(
        d, outcome(1, 2), view, "lvs-system", status, datetime(2025, 1, 1, tzinfo=UTC)
    )
    assert again == status
    assert v.owned_status({**status, "extra": 1}) == status
    (r,) = decide(o.vs("a", pool="nope")).values()
    rejected = v.vs_status(r, None, None, "lvs-system", None, T0)
    assert "directorGroup" not in rejected and rejected["readyOfTotal"] == "0/0"
    assert "acceptedVIP" not in rejected


def test_events() -> None:
    (d,) = decide(o.vs("a")).values()
    ref = v.vs_ref(d)
    first = v.vs_status(d, outcome(1, 1), v.DirectorView(GROUP), "ns", None, T0)
    evs = v.vs_events(ref, None, first)
    assert [(e.type, e.reason) for e in evs] == [("Warning", v.NO_ACTIVE_DIRECTOR)]
    view = v.DirectorView(GROUP, "n1", {"web/a": 1}, ("n1", "n2"))
    second = v.vs_status(d, outcome(1, 1), view, "ns", first, T0)
    evs = v.vs_events(ref, first, second)
    assert [(e.type, e.reason) for e in evs] == [
        ("Normal", v.READY),
        ("Normal", v.PROGRAMMED),
        ("Normal", "ActiveDirectorChanged"),
    ]
    assert evs[2].message == "active director: none -> n1"
    assert v.vs_events(ref, second, second) == []
    (c,) = decide(o.vs("a", vip="198.51.100.1")).values()
    evs = v.vs_events(ref, second, v.vs_status(c, None, None, "ns", second, T0))
    assert ("Warning", v.VIP_NOT_ALLOWED) in [(e.type, e.reason) for e in evs]


def test_a_vip_the_director_cannot_hold_is_reported_with_its_reason() -> None:
    (d,) = decide(o.vs("a", generation=4)).values()
    vip = d.vs.spec.vip
    reason = "interface eth9 does not exist on this node: fix spec.directors.interface"
    view = v.DirectorView(GROUP, "n1", {"web/a": 4}, ("n1", "n2"), {vip: reason})
    cs = conds(d, outcome(2, 2), view)
    assert (cs["Programmed"].status, cs["Programmed"].reason) == ("False", v.VIP_NOT_PLACED)
    assert "eth9" in cs["Programmed"].message and vip in cs["Programmed"].message
    assert cs["Ready"].reason == v.VIP_NOT_PLACED
    other = v.DirectorView(GROUP, "n1", {"web/a": 4}, ("n1", "n2"), {"192.0.2.99": reason})
    assert conds(d, outcome(2, 2), other)["Programmed"].status == "True"  # another VIP's


def test_a_digest_report_that_cannot_tell_keeps_a_ready_virtualserver_ready() -> None:
    """A leader reporting digests whose bucket it cannot read (two changes in flight): the
    VirtualServer is Pending; one that was Ready stays so, as during an edit, while one that
    never was is not."""
    (d,) = decide(o.vs("a", generation=4)).values()
    unread = v.DirectorView(GROUP, "n1", {}, ("n1", "n2"), programmed_exact=False)
    args = (d, outcome(2, 2), unread, "lvs-system")
    was_ready = {c.type: c for c in v.vs_conditions(*args, was_ready=True)}
    assert was_ready["Programmed"].reason == v.PENDING
    assert was_ready["Ready"].status == "True"
    assert "an earlier generation (generation 4 pending)" in was_ready["Ready"].message
    new = {c.type: c for c in v.vs_conditions(*args, was_ready=False)}
    assert (new["Ready"].status, new["Ready"].reason) == ("False", v.PENDING)
    exact = v.DirectorView(GROUP, "n1", {}, ("n1", "n2"))  # a map without it: not served
    cs = {c.type: c for c in v.vs_conditions(d, outcome(2, 2), exact, "lvs-system", None, True)}
    assert cs["Ready"].status == "False"


def test_directors_show_their_sync_state_and_a_silent_backup_degrades() -> None:
    from lvs_operator.api.contract import DirectorSync

    (d,) = decide(o.vs("a", generation=4)).values()
    receiving = {
        "n1": DirectorSync("master", 12, "eth0"),
        "n2": DirectorSync("backup", 12, "eth0", "True"),
    }
    view = v.DirectorView(GROUP, "n1", {"web/a": 4}, ("n1", "n2", "n3"), sync=receiving)
    status = v.vs_status(d, outcome(2, 2), view, "lvs-system", None, T0)
    master = {"role": "master", "syncId": 12, "interface": "eth0"}
    backup = {"role": "backup", "syncId": 12, "interface": "eth0", "receiving": "True"}
    assert status["directors"] == [
        {"node": "n1", "role": "active", "sync": master},
        {"node": "n2", "role": "standby", "sync": backup},
        {"node": "n3", "role": "standby"},  # no state reported (an older agent): no sync
    ]
    cs = conds(d, outcome(2, 2), view)
    assert (cs["Degraded"].status, cs["Degraded"].reason) == ("False", v.AS_EXPECTED)

    silent = {**receiving, "n3": DirectorSync("backup", 12, "eth1", "False")}
    cs = conds(d, outcome(2, 2), v.DirectorView(GROUP, "n1", {"web/a": 4}, ("n1", "n2", "n3"),
                                                 sync=silent))  # fmt: skip
    assert (cs["Degraded"].status, cs["Degraded"].reason) == ("True", v.BACKUP_NOT_RECEIVING)
    message = cs["Degraded"].message
    assert "n3 receive no connection sync from n1" in message and "eth1" in message
    assert "multicast" in message and "--sync-interface" in message
    assert cs["Ready"].status == "True"  # serving is not in question
    # "Unknown" (nothing to sync yet) is no issue; nor is a director no longer listed
    unknown = {**receiving, "n3": DirectorSync("backup", 12, "eth0", "Unknown")}
    cs = conds(d, outcome(2, 2), v.DirectorView(GROUP, "n1", {"web/a": 4}, ("n1", "n2", "n3"),
                                                 sync=unknown))  # fmt: skip
    assert cs["Degraded"].status == "False"
    gone = v.DirectorView(GROUP, "n1", {"web/a": 4}, ("n1", "n2"), sync=silent)
    assert conds(d, outcome(2, 2), gone)["Degraded"].status == "False"


def test_crash_survival_says_masquerade_connections_are_reset_and_synced_ones_kept() -> None:
    from lvs_operator.api.contract import DirectorSync

    def survival(
        forwarding: str | None, sync: dict[str, DirectorSync], source: str | None = None
    ) -> tuple[str, str, str]:
        obj = o.vs("a")
        if source:
            obj["spec"]["masqueradeSource"] = source
        if forwarding:
            obj["spec"]["forwarding"] = forwarding
            obj["spec"]["ports"] = [{"port": 80}]  # direct and tunnel keep the port
        (d,) = decide(obj).values()
        assert d.accepted, d.message
        view = v.DirectorView(GROUP, "n1", {"web/a": 1}, ("n1", "n2"), sync=sync)
        cond = v.crash_survival_condition(d, view)
        assert cond.type == "ConnectionsSurviveCrash"
        return cond.status, cond.reason, cond.message

    synced = {"n1": DirectorSync("master", 12, "eth0"), "n2": DirectorSync("backup", 12, "eth0")}
    # masquerade (the default): reset by a crash whatever the sync state, and it says why
    status, reason, message = survival(None, synced)
    assert (status, reason) == ("False", v.MASQUERADE_SNAT)
    assert "0 of 50" in message and "masqueradeSource: VIP" in message
    assert "direct or tunnel" in message
    assert survival(None, synced, "Director")[:2] == ("False", v.MASQUERADE_SNAT)
    # masqueradeSource: VIP: the same addresses on the real server from either director
    status, reason, message = survival(None, synced, "VIP")
    assert (status, reason) == ("True", v.SYNCED) and "source: the VIP" in message
    assert survival(None, {**synced, "n2": DirectorSync("off", 0, "")}, "VIP")[1] == v.SYNC_OFF
    for forwarding in ("direct", "tunnel"):
        assert survival(forwarding, synced)[:2] == ("True", v.SYNCED)
        # older agents report nothing: no reason to say otherwise
        assert survival(forwarding, {})[:2] == ("True", v.SYNCED)
    off = {**synced, "n2": DirectorSync("off", 0, "")}
    status, reason, message = survival("direct", off)
    assert (status, reason) == ("False", v.SYNC_OFF) and "n2" in message
    (rejected,) = decide(o.vs("a", pool="nope")).values()
    assert v.crash_survival_condition(rejected, None).status == "False"
