from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from lvs_operator.api.contract import daemonset_name, group_name, lease_name
from lvs_operator.controller import groups as g
from lvs_operator.controller.config import ControllerConfig
from lvs_operator.controller.manifests import build_daemonset
from lvs_operator.controller.virtualservers import evaluate

from . import objects as o

T0 = datetime(2024, 1, 1, tzinfo=UTC)
CONFIG = ControllerConfig()


def test_lease_active_only_until_expiry() -> None:
    lease = g.parse_lease(o.lease("l", holder="node-1", duration=15, programmed={"web/a": 1}))
    assert lease.holder == "node-1" and lease.programmed.generations == {"web/a": 1}
    assert lease.expires_at() == T0 + timedelta(seconds=15)
    assert lease.active_holder(T0 + timedelta(seconds=14)) == "node-1"
    assert lease.active_holder(T0 + timedelta(seconds=15)) is None
    assert g.parse_lease(o.lease("l", holder="")).active_holder(T0) is None
    assert g.next_lease_expiry([lease], T0) == T0 + timedelta(seconds=15)
    assert g.next_lease_expiry([lease], T0 + timedelta(seconds=20)) is None


def pod(name: str, node: str, ready: bool = True, group: str = "g1") -> dict:
    return {
        "metadata": {"name": name, "labels": {"lvs.io/director-group": group}},
        "spec": {"nodeName": node},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_director_pods_and_views() -> None:
    pods = [g.director_pod(pod("a", "n1")), g.director_pod(pod("b", "n2", ready=False))]
    assert pods[0] == g.DirectorPod("a", "g1", "n1", True)
    assert g.director_pod({"metadata": {"name": "x"}}) is None
    leases = {lease_name("g1"): g.parse_lease(o.lease(lease_name("g1"), holder="n1"))}
    views = g.group_views(["g1", "g2"], leases, [p for p in pods if p], T0)
    assert views["g1"].active == "n1" and views["g1"].ready_nodes == ("n1",)
    assert views["g2"].active is None and views["g2"].ready_nodes == ()
    expired = g.group_views(["g1"], leases, [], T0 + timedelta(minutes=1))
    assert expired["g1"].active is None and expired["g1"].programmed == {}


def test_nodes_shared_by_two_groups_are_seen_by_both() -> None:
    """Overlapping node selectors put two groups' agents on one node (their host ports
    collide): each group's view names the node and the other group, ready or not."""
    pods = [
        g.director_pod(pod("a1", "n1", group="g1")),
        g.director_pod(pod("a2", "n2", group="g1")),
        g.director_pod(pod("b2", "n2", ready=False, group="g2")),  # crash-looping there
    ]
    views = g.group_views(["g1", "g2"], {}, [p for p in pods if p], T0)
    assert views["g1"].shared_nodes == {"n2": ("g2",)}
    assert views["g2"].shared_nodes == {"n2": ("g1",)}
    alone = g.group_views(["g1"], {}, [p for p in pods[:2] if p], T0)
    assert alone["g1"].shared_nodes == {}


def test_desired_groups_only_accepted() -> None:
    objs = [
        o.vs("a", selector={"role": "lb"}),
        o.vs("b", vip="192.0.2.11", pool="missing"),
    ]
    import ipaddress

    decisions = evaluate(objs, [("web", "web")], [ipaddress.ip_network("192.0.2.0/24")])
    assert g.desired_groups(decisions.values()) == {group_name({"role": "lb"}): {"role": "lb"}}


def test_plan_daemonsets_create_update_noop_delete() -> None:
    groups = {"g1": {"a": "b"}, "g2": {"c": "d"}}
    plan = g.plan_daemonsets(groups, {}, CONFIG)
    assert plan.create_groups == ("g1", "g2") and len(plan.apply) == 2 and plan.delete == ()
    current = build_daemonset("g1", {"a": "b"}, CONFIG)
    current["spec"]["revisionHistoryLimit"] = 10  # server defaults do not count
    changed = build_daemonset("g2", {"c": "old"}, CONFIG)
    orphan = build_daemonset("g3", {"e": "f"}, CONFIG)
    existing = {
        daemonset_name("g1"): current,
        daemonset_name("g2"): changed,
        daemonset_name("g3"): orphan,
    }
    plan = g.plan_daemonsets(groups, existing, CONFIG)
    assert plan.create_groups == ()
    assert [d["metadata"]["name"] for d in plan.apply] == [daemonset_name("g2")]
    assert plan.delete == (daemonset_name("g3"),)
    orphan["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    assert g.plan_daemonsets(groups, existing, CONFIG).delete == ()


def test_lease_carries_the_holders_vip_problems() -> None:
    from lvs_operator.api.contract import VIP_PROBLEMS_ANNOTATION, format_vip_problems

    obj = o.lease("l", holder="node-1", duration=15)
    text = format_vip_problems({"192.0.2.20": "interface eth9 does not exist" + "x" * 999})
    obj["metadata"].setdefault("annotations", {})[VIP_PROBLEMS_ANNOTATION] = text
    lease = g.parse_lease(obj)
    assert set(lease.vip_problems) == {"192.0.2.20"}
    assert len(lease.vip_problems["192.0.2.20"]) <= 300
    assert g.parse_vip_problems("not json") == {} and g.parse_vip_problems(None) == {}
    leases = {lease_name("g1"): dataclasses.replace(lease, name=lease_name("g1"))}
    (view,) = g.group_views(["g1"], leases, [], T0).values()
    assert view.active == "node-1" and view.vip_problems == lease.vip_problems
    (expired,) = g.group_views(["g1"], leases, [], T0 + timedelta(minutes=1)).values()
    assert expired.vip_problems == {}  # only a valid Lease speaks


def test_lease_carries_the_directors_sync_state_only_from_its_holder() -> None:
    from lvs_operator.api.contract import SYNC_ANNOTATION, DirectorSync, SyncRecord, format_sync

    states = {
        "node-1": DirectorSync("master", 12, "eth0"),
        "node-2": DirectorSync("backup", 12, "eth0", "True"),
    }
    obj = o.lease(lease_name("g1"), holder="node-1", duration=15)
    obj["metadata"]["annotations"] = {SYNC_ANNOTATION: format_sync(SyncRecord("node-1", states))}
    lease = g.parse_lease(obj)
    assert lease.sync == states
    (view,) = g.group_views(["g1"], {lease.name: lease}, [], T0).values()
    assert view.sync == states
    (expired,) = g.group_views(["g1"], {lease.name: lease}, [], T0 + timedelta(minutes=1)).values()
    assert expired.sync == {}
    # written by node-1, now held by node-2 (an older agent carried the record over): stale
    obj["spec"]["holderIdentity"] = "node-2"
    assert g.parse_lease(obj).sync == {}
    # an older holder writes no record at all
    assert g.parse_lease(o.lease("l", holder="node-1")).sync == {}
