from __future__ import annotations

import copy
import ipaddress
from datetime import UTC, datetime, timedelta
from typing import Any

from lvs_operator.api.contract import (
    GROUP_LABEL,
    NEXT_GROUP_LABEL,
    daemonset_name,
    group_name,
    lease_name,
)
from lvs_operator.controller.config import ControllerConfig
from lvs_operator.controller.groups import DirectorPod
from lvs_operator.controller.manifests import service_name
from lvs_operator.controller.pools import PodInfo, slice_info
from lvs_operator.controller.reconciler import GroupLabels, Plan, ServiceRejection, World, plan

from . import objects as o

T0 = datetime(2024, 1, 1, tzinfo=UTC)
CONFIG = ControllerConfig(vip_ranges=(ipaddress.ip_network("192.0.2.0/24"),))
GROUP = group_name({"lvs.io/director": "true"})


def apply(world: World, p: Plan) -> None:
    """What the API server would hold after the plan's writes."""
    services = dict(world.services)
    for svc in p.services:
        services[(svc["metadata"]["namespace"], svc["metadata"]["name"])] = copy.deepcopy(svc)
    world.services = services
    by_key = {(x["metadata"]["namespace"], x["metadata"]["name"]): x for x in world.pools}
    for key, status in p.pool_statuses:
        by_key[key]["status"] = copy.deepcopy(status)
    vss = {(x["metadata"]["namespace"], x["metadata"]["name"]): x for x in world.virtualservers}
    for key, want in p.labels:
        labels = vss[key]["metadata"].setdefault("labels", {})
        for label, value in ((GROUP_LABEL, want.group), (NEXT_GROUP_LABEL, want.next_group)):
            if value is None:
                labels.pop(label, None)
            else:
                labels[label] = value
    for key, status in p.vs_statuses:
        vss[key]["status"] = copy.deepcopy(status)
    daemonsets = dict(world.daemonsets)
    for ds in p.daemonsets.apply:
        daemonsets[ds["metadata"]["name"]] = copy.deepcopy(ds)
    for name in p.daemonsets.delete:
        daemonsets.pop(name)
    world.daemonsets = daemonsets


def converge(world: World, now: datetime = T0) -> list[Plan]:
    plans = []
    for _ in range(5):
        p = plan(world, CONFIG, now)
        plans.append(p)
        if not p.writes:
            return plans
        apply(world, p)
    raise AssertionError("no convergence")


def base_world() -> World:
    return World(
        virtualservers=[o.vs("site", ports=[{"port": 80, "targetPort": "http"}])],
        pools=[o.pool("web")],
        slices={
            ("web", service_name("web")): [
                slice_info(
                    o.endpoint_slice(
                        "web",
                        [
                            o.endpoint("10.0.0.1", "web-1"),
                            o.endpoint("10.0.0.2", "web-2", ready=False),
                        ],
                        {"http": 8080},
                    )
                )
            ]
        },
        pods={("web", "web-1"): PodInfo({"app": "web"}, "5")},
    )


def test_first_pass_writes_everything_then_nothing() -> None:
    world = base_world()
    first = plan(world, CONFIG, T0)
    (svc,) = first.services
    assert svc["spec"]["ports"][0]["name"] == "http"
    ((_, pstatus),) = first.pool_statuses
    assert pstatus["readyOfTotal"] == "1/2"
    assert pstatus["members"][0]["weight"] == 5
    assert pstatus["members"][0]["ports"] == [{"name": "http", "port": 8080}]
    assert [d["metadata"]["name"] for d in first.daemonsets.apply] == [daemonset_name(GROUP)]
    assert first.labels == [(("web", "site"), GroupLabels(GROUP))]
    ((_, vstatus),) = first.vs_statuses
    assert vstatus["readyOfTotal"] == "1/2" and vstatus["directorGroup"] == GROUP
    reasons = {e.reason for e in first.events} | {
        e.reason for evs in first.daemonset_events.values() for e in evs
    }
    assert {"DirectorGroupCreated", "NoActiveDirector", "MembersReady"} <= reasons
    assert first.pool_namespaces == {"web"}
    plans = converge(world)
    assert plans[-1].writes == 0 and plans[-1].events == []
    # A restarted controller (same world, later clock) writes nothing either.
    assert plan(world, CONFIG, T0 + timedelta(hours=1)).writes == 0


def test_a_refused_service_is_not_applied_again_and_the_pool_says_why() -> None:
    world = base_world()
    (svc,) = plan(world, CONFIG, T0).services
    key = (svc["metadata"]["namespace"], svc["metadata"]["name"])
    world.service_rejections = {key: ServiceRejection(svc, 'Service "lvs-web" is invalid: bad')}
    p = plan(world, CONFIG, T0)
    assert p.services == [] and key in p.wanted_services
    ((_, status),) = p.pool_statuses
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert ready["reason"] == "ServiceRejected" and "invalid: bad" in ready["message"]
    assert status["members"] == []  # the slices are of no Service the pool asks for
    # The pool asks for another Service (a new port): it is applied again.
    world.virtualservers.append(
        o.vs("tls", ports=[{"port": 443, "targetPort": 8443}], created="2024-03-01T00:00:00Z")
    )
    p = plan(world, CONFIG, T0)
    assert [s["metadata"]["name"] for s in p.services] == [key[1]]
    ((_, status),) = p.pool_statuses
    assert {c["type"]: c for c in status["conditions"]}["Ready"]["reason"] != "ServiceRejected"


def test_lease_programs_and_expires() -> None:
    world = base_world()
    converge(world)
    renew = "2024-01-01T00:00:00.000000Z"
    world.leases = {
        lease_name(GROUP): o.lease(
            lease_name(GROUP), holder="n1", renew=renew, duration=10, programmed={"web/site": 1}
        )
    }
    world.director_pods = [
        DirectorPod("d1", GROUP, "n1", True),
        DirectorPod("d2", GROUP, "n2", True),
    ]
    p = plan(world, CONFIG, T0 + timedelta(seconds=1))
    ((_, status),) = p.vs_statuses
    assert status["activeDirector"] == "n1"
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Programmed"]["status"] == "True" and conds["Ready"]["status"] == "True"
    assert conds["Degraded"]["reason"] == "RealServersNotReady"
    assert p.wake_at == T0 + timedelta(seconds=10)
    apply(world, p)
    later = plan(world, CONFIG, T0 + timedelta(seconds=11))
    ((_, status),) = later.vs_statuses
    assert "activeDirector" not in status
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Programmed"] == (
        "NoActiveDirector"
    )
    assert "ActiveDirectorChanged" in {e.reason for e in later.events}


def test_conflict_loser_unlabelled_then_takes_over_and_group_goes() -> None:
    world = base_world()
    world.virtualservers.append(
        o.vs("late", namespace="web", created="2024-02-01T00:00:00Z", labels={GROUP_LABEL: "x"})
    )
    converge(world)
    late = next(v for v in world.virtualservers if v["metadata"]["name"] == "late")
    assert GROUP_LABEL not in late["metadata"]["labels"]
    assert {c["type"]: c["reason"] for c in late["status"]["conditions"]}["Ready"] == "Conflict"
    world.virtualservers = [late]
    converge(world)
    assert late["metadata"]["labels"][GROUP_LABEL] == GROUP
    world.virtualservers = []
    p = plan(world, CONFIG, T0)
    assert p.daemonsets.delete == (daemonset_name(GROUP),)


def test_one_vip_one_group_one_daemonset() -> None:
    """A second director group never gets a DaemonSet (nor a label) for a VIP another
    group holds, even on another port; when the holder goes, the VIP moves."""
    edge = {"lvs.io/director": "edge"}
    world = base_world()
    world.virtualservers.append(
        o.vs(
            "tls",
            namespace="web",
            ports=[{"port": 8443, "targetPort": "http"}],
            selector=edge,
            created="2024-02-01T00:00:00Z",
        )
    )
    converge(world)
    assert set(world.daemonsets) == {daemonset_name(GROUP)}
    tls = next(v for v in world.virtualservers if v["metadata"]["name"] == "tls")
    assert GROUP_LABEL not in tls["metadata"]["labels"]
    ready = {c["type"]: c for c in tls["status"]["conditions"]}["Ready"]
    assert ready["reason"] == "Conflict" and "already held by director group" in ready["message"]
    world.virtualservers = [tls]
    converge(world)
    assert tls["metadata"]["labels"][GROUP_LABEL] == group_name(edge)
    assert set(world.daemonsets) == {daemonset_name(group_name(edge))}


def test_new_targetport_adds_a_service_port() -> None:
    world = base_world()
    converge(world)
    world.virtualservers.append(
        o.vs("tls", ports=[{"port": 443, "targetPort": 8443}], created="2024-03-01T00:00:00Z")
    )
    p = plan(world, CONFIG, T0)
    (svc,) = p.services
    assert [x["name"] for x in svc["spec"]["ports"]] == ["8443", "http"]


def test_invalid_pool_gets_a_status() -> None:
    world = World(pools=[o.pool("bad", selector={"matchLabels": {}})])
    p = plan(world, CONFIG, T0)
    ((_, status),) = p.pool_statuses
    assert status["conditions"][0]["reason"] == "Invalid"
    assert p.services == []


def test_deleting_pool_is_skipped_and_vs_reports_pool_missing() -> None:
    world = base_world()
    world.pools[0]["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    p = plan(world, CONFIG, T0)
    assert p.services == [] and p.pool_statuses == []
    ((_, status),) = p.vs_statuses
    assert status["conditions"][0]["reason"] == "PoolNotFound"
    assert p.labels == []


# --- a VIP moving to another director group (make-before-break) -----------------------------

EDGE = {"lvs.io/director": "edge"}
EDGE_GROUP = group_name(EDGE)
RENEW = "2024-01-01T00:00:00.000000Z"


def _vs_named(world: World, name: str) -> dict[str, Any]:
    return next(v for v in world.virtualservers if v["metadata"]["name"] == name)


def _conds(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj["status"]["conditions"]}


def _leader(group: str, programmed: dict[str, int], holder: str = "n1") -> dict[str, Any]:
    return o.lease(lease_name(group), holder=holder, renew=RENEW, programmed=programmed)


def _serving_world() -> World:
    """``site`` served by the default group's leader, Ready."""
    world = base_world()
    world.director_pods = [
        DirectorPod("d1", GROUP, "n1", True),
        DirectorPod("d2", GROUP, "n2", True),
    ]
    converge(world)
    world.leases = {lease_name(GROUP): _leader(GROUP, {"web/site": 1})}
    converge(world)
    assert _conds(_vs_named(world, "site"))["Ready"]["status"] == "True"
    return world


def _edit_selector(vs: dict[str, Any], selector: dict[str, str]) -> None:
    vs["spec"]["directors"] = {"nodeSelector": selector}
    vs["metadata"]["generation"] += 1


def test_a_selector_edit_stages_the_vip_in_the_new_group_then_hands_it_over() -> None:
    world = _serving_world()
    site = _vs_named(world, "site")
    _edit_selector(site, EDGE)
    p = plan(world, CONFIG, T0)
    # the old group keeps serving (and programs the new generation); the new one is staged
    assert p.labels == [(("web", "site"), GroupLabels(GROUP, EDGE_GROUP))]
    ((_, status),) = p.vs_statuses
    assert status["directorGroup"] == GROUP and status["nextDirectorGroup"] == EDGE_GROUP
    assert [d["metadata"]["name"] for d in p.daemonsets.apply] == [daemonset_name(EDGE_GROUP)]
    assert p.daemonsets.delete == ()
    conds = {c["type"]: c for c in status["conditions"]}
    # generation 2 not programmed yet, but the old group still serves generation 1: Ready
    assert conds["Programmed"]["reason"] == "Pending"
    assert (
        conds["Ready"]["status"] == "True" and "generation 2 pending" in conds["Ready"]["message"]
    )
    assert conds["Degraded"]["reason"] == "MovingToDirectorGroup"
    assert "no director holds Lease" in conds["Degraded"]["message"]
    assert "DirectorGroupCreated" in {e.reason for evs in p.daemonset_events.values() for e in evs}
    converge(world)
    # the old group programs generation 2; the new group's leader has not: nothing moves
    world.leases = {
        lease_name(GROUP): _leader(GROUP, {"web/site": 2}),
        lease_name(EDGE_GROUP): _leader(EDGE_GROUP, {}, holder="e1"),
    }
    converge(world)
    assert site["status"]["directorGroup"] == GROUP
    assert _conds(site)["Ready"]["status"] == "True"
    assert "waiting for its director e1" in _conds(site)["Degraded"]["message"]
    # the new group's leader reports it programmed at generation 2: the VIP is handed over
    world.leases[lease_name(EDGE_GROUP)] = _leader(EDGE_GROUP, {"web/site": 2}, holder="e1")
    p = plan(world, CONFIG, T0)
    assert p.labels == [(("web", "site"), GroupLabels(EDGE_GROUP))]
    ((_, status),) = p.vs_statuses
    assert status["directorGroup"] == EDGE_GROUP and "nextDirectorGroup" not in status
    assert status["activeDirector"] == "e1"
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    # the old group's DaemonSet stays while its leader still reports the VirtualServer
    assert p.daemonsets.delete == ()
    converge(world)
    world.leases[lease_name(GROUP)] = _leader(GROUP, {})
    assert plan(world, CONFIG, T0).daemonsets.delete == (daemonset_name(GROUP),)


def test_a_move_from_a_group_without_a_leader_is_immediate() -> None:
    world = _serving_world()
    world.leases = {}
    site = _vs_named(world, "site")
    _edit_selector(site, EDGE)
    converge(world)
    assert site["status"]["directorGroup"] == EDGE_GROUP
    assert "nextDirectorGroup" not in site["status"]
    assert set(world.daemonsets) == {daemonset_name(EDGE_GROUP)}


def test_a_vip_moves_whole_and_a_port_left_behind_is_refused() -> None:
    world = _serving_world()
    world.virtualservers.append(
        o.vs("tls", ports=[{"port": 443, "targetPort": "http"}], created="2024-02-01T00:00:00Z")
    )
    world.virtualservers.append(
        o.vs(
            "api",
            ports=[{"port": 8443, "targetPort": "http"}],
            created="2024-03-01T00:00:00Z",
            selector=EDGE,
        )
    )
    converge(world)
    site, tls, api = (_vs_named(world, n) for n in ("site", "tls", "api"))
    assert _conds(api)["Ready"]["reason"] == "Conflict"  # the VIP is the default group's
    # the holder moves alone: the younger one of the old group is refused (one VIP, one group)
    _edit_selector(site, EDGE)
    converge(world)
    assert _conds(tls)["Ready"]["reason"] == "Conflict"
    assert EDGE_GROUP in _conds(tls)["Ready"]["message"]
    # ... and the one already asking for the new group joins the move, served meanwhile by
    # the group that announces the VIP
    assert api["status"]["directorGroup"] == GROUP
    assert api["status"]["nextDirectorGroup"] == EDGE_GROUP
    assert api["metadata"]["labels"] == {GROUP_LABEL: GROUP, NEXT_GROUP_LABEL: EDGE_GROUP}
    # the hand-over waits for every VirtualServer of the VIP
    world.leases[lease_name(EDGE_GROUP)] = _leader(EDGE_GROUP, {"web/site": 2}, holder="e1")
    converge(world)
    assert site["status"]["directorGroup"] == GROUP
    world.leases[lease_name(EDGE_GROUP)] = _leader(
        EDGE_GROUP, {"web/site": 2, "web/api": 1}, holder="e1"
    )
    converge(world)
    assert site["status"]["directorGroup"] == api["status"]["directorGroup"] == EDGE_GROUP
    assert api["metadata"]["labels"] == {GROUP_LABEL: EDGE_GROUP}


def test_a_vip_change_with_the_selector_is_no_move() -> None:
    world = _serving_world()
    site = _vs_named(world, "site")
    _edit_selector(site, EDGE)
    site["spec"]["vip"] = "192.0.2.11"
    converge(world)
    assert site["status"]["directorGroup"] == EDGE_GROUP
    assert "nextDirectorGroup" not in site["status"]


def _digest_leader(
    group: str, programmed: dict[str, int], holder: str = "n1", buckets: int = 4
) -> dict[str, Any]:
    """A leader of a large group: it reports per-bucket digests, not its map."""
    import base64
    import json

    from lvs_operator.api.contract import PROGRAMMED_ANNOTATION, programmed_digests

    lease = o.lease(lease_name(group), holder=holder, renew=RENEW)
    digests = b"".join(programmed_digests(programmed, buckets))
    record = {"v": 2, "n": len(programmed), "d": base64.b64encode(digests).decode()}
    lease["metadata"]["annotations"] = {PROGRAMMED_ANNOTATION: json.dumps(record)}
    return lease


def test_a_digest_report_programs_exactly_what_the_controller_expects() -> None:
    world = _serving_world()
    world.leases = {lease_name(GROUP): _digest_leader(GROUP, {"web/site": 1})}
    assert plan(world, CONFIG, T0).vs_statuses == []  # the same answer as the exact map
    site = _vs_named(world, "site")
    site["metadata"]["generation"] = 2  # an edit: the leader still serves generation 1
    converge(world)
    conds = _conds(site)
    assert conds["Programmed"]["reason"] == "Pending"
    assert conds["Ready"]["status"] == "True"
    # one change in its bucket: the digest proves generation 1 is served
    assert "serves generation 1 (generation 2 pending)" in conds["Ready"]["message"]
    world.leases = {lease_name(GROUP): _digest_leader(GROUP, {"web/site": 2})}
    converge(world)
    assert _conds(site)["Programmed"]["status"] == "True"
    # a leader listing a VirtualServer the controller does not expect in the same bucket:
    # the bucket is not confirmed
    listed = {"web/site": 2, "web/x": 1}
    world.leases = {lease_name(GROUP): _digest_leader(GROUP, listed, buckets=1)}
    converge(world)
    assert _conds(site)["Programmed"]["reason"] == "Pending"


def test_a_digest_report_hands_a_moving_vip_over() -> None:
    world = _serving_world()
    site = _vs_named(world, "site")
    _edit_selector(site, EDGE)
    converge(world)
    world.leases = {
        lease_name(GROUP): _digest_leader(GROUP, {"web/site": 2}),
        lease_name(EDGE_GROUP): _digest_leader(EDGE_GROUP, {"web/site": 1}, holder="e1"),
    }
    converge(world)
    assert site["status"]["directorGroup"] == GROUP  # the new group has an old generation
    world.leases[lease_name(EDGE_GROUP)] = _digest_leader(EDGE_GROUP, {"web/site": 2}, "e1")
    converge(world)
    assert site["status"]["directorGroup"] == EDGE_GROUP
