"""Planning only what events touched (``touched_scope``, ``plan_touched``) writes what the
full ``plan`` writes: random event sequences on a small world, with fixed seeds."""

from __future__ import annotations

import copy
import dataclasses
import random
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from lvs_operator.api.contract import GROUP_LABEL, lease_name
from lvs_operator.controller.groups import DirectorPod
from lvs_operator.controller.manifests import service_name
from lvs_operator.controller.pools import PodInfo, SliceInfo, slice_info
from lvs_operator.controller.reconciler import (
    Plan,
    PlanState,
    Touched,
    World,
    plan_full,
    plan_touched,
    touched_scope,
)

from . import objects as o
from .test_reconciler import CONFIG, GROUP, RENEW, T0, apply
from .test_reconciler_loop import FakeClient, reconciler

Key = tuple[str, str]
POOLS = ("a", "b", "c")
# VirtualServer -> (VIP, port, pool): b serves two of them
SERVERS = {"va": ("192.0.2.10", 80, "a"), "vb": ("192.0.2.11", 80, "b"),
           "vb2": ("192.0.2.12", 443, "b"), "vc": ("192.0.2.13", 80, "c")}  # fmt: skip


def key(name: str) -> Key:
    return (o.NS, name)


def small_world() -> World:
    """Three pools of two pods each, four VirtualServers, one group whose leader reports
    every VirtualServer programmed."""
    world = World()
    for name, (vip, port, pool) in SERVERS.items():
        ports = [{"port": port, "targetPort": "http"}]
        world.virtualservers.append(o.vs(name, vip=vip, ports=ports, pool=pool))
    pods: dict[Key, PodInfo] = {}
    slices: dict[Key, list[SliceInfo]] = {}
    for i, pool in enumerate(POOLS):
        world.pools.append(o.pool(pool))
        endpoints = []
        for j in (1, 2):
            pods[key(f"{pool}-{j}")] = PodInfo({"app": pool})
            endpoints.append(o.endpoint(f"10.0.{i}.{j}", f"{pool}-{j}"))
        slices[key(service_name(pool))] = [
            slice_info(o.endpoint_slice(pool, endpoints, {"http": 8080}))
        ]
    world.pods = pods
    world.slices = slices
    world.director_pods = [DirectorPod("d1", GROUP, "n1", True)]
    programmed = {f"{o.NS}/{name}": 1 for name in SERVERS}
    world.leases = {
        lease_name(GROUP): o.lease(lease_name(GROUP), holder="n1", renew=RENEW,
                                   programmed=programmed)
    }  # fmt: skip
    return world


def converged(world: World, now: datetime) -> None:
    for _ in range(5):
        p, _ = plan_full(world, CONFIG, now)
        if not p.writes:
            return
        apply(world, p)
    raise AssertionError("no convergence")


def writes(p: Plan) -> dict[str, Any]:
    """Everything a pass acts on or reports."""
    return {
        "services": p.services,
        "pool_statuses": p.pool_statuses,
        "labels": p.labels,
        "vs_statuses": p.vs_statuses,
        "events": p.events,
        "daemonsets": (p.daemonsets.apply, p.daemonsets.delete),
        "pool_selectors": p.pool_selectors,
        "wanted_services": p.wanted_services,
        "conditions": p.conditions,
        "groups": p.groups,
        "wake_at": p.wake_at,
    }


# --- events: each changes the world as a watch would show it, and returns what it touched --

Event = Callable[[World, random.Random], Touched]


def _pool_raw(world: World, name: str) -> dict[str, Any]:
    return next(p for p in world.pools if p["metadata"]["name"] == name)  # type: ignore[return-value]


def _vs_raw(world: World, name: str) -> dict[str, Any]:
    return next(v for v in world.virtualservers if v["metadata"]["name"] == name)  # type: ignore[return-value]


def flip_readiness(world: World, rng: random.Random) -> Touched:
    pool = rng.choice(POOLS)
    slices = dict(world.slices)
    (sl,) = slices[key(service_name(pool))]
    endpoints = list(sl.endpoints)
    i = rng.randrange(len(endpoints))
    ready = not endpoints[i].ready  # serving unset: it follows ready
    endpoints[i] = dataclasses.replace(endpoints[i], ready=ready, serving=ready)
    slices[key(service_name(pool))] = [dataclasses.replace(sl, endpoints=tuple(endpoints))]
    world.slices = slices
    return Touched(pools=frozenset({key(pool)}))


def replace_endpoint(world: World, rng: random.Random) -> Touched:
    """A pod goes, or (the last one left) another comes."""
    pool = rng.choice(POOLS)
    slices = dict(world.slices)
    (sl,) = slices[key(service_name(pool))]
    endpoints = list(sl.endpoints)
    if len(endpoints) > 1:
        endpoints.pop(rng.randrange(len(endpoints)))
    else:
        n = rng.randint(3, 9)
        body = o.endpoint_slice(pool, [o.endpoint(f"10.0.{POOLS.index(pool)}.{n}", f"{pool}-{n}")])
        endpoints.extend(slice_info(body).endpoints)
        world.pods = {**world.pods, key(f"{pool}-{n}"): PodInfo({"app": pool})}
    slices[key(service_name(pool))] = [dataclasses.replace(sl, endpoints=tuple(endpoints))]
    world.slices = slices
    return Touched(pools=frozenset({key(pool)}))


def weigh_pod(world: World, rng: random.Random) -> Touched:
    pool = rng.choice(POOLS)
    pods = dict(world.pods)
    pods[key(f"{pool}-1")] = PodInfo({"app": pool}, str(rng.randint(1, 5)))
    world.pods = pods
    return Touched(pools=frozenset({key(pool)}))


def edit_pool_weight(world: World, rng: random.Random) -> Touched:
    present = [p["metadata"]["name"] for p in world.pools]
    if not present:
        return Touched()
    pool = _pool_raw(world, rng.choice(present))
    pool["spec"]["weight"] = rng.randint(1, 9)
    pool["metadata"]["generation"] += 1
    return Touched(pools=frozenset({key(pool["metadata"]["name"])}))


def drop_vs_status(world: World, rng: random.Random) -> Touched:
    """Someone else's write to a status (what deciding reads stays)."""
    vs = _vs_raw(world, rng.choice(list(SERVERS)))
    status = vs.get("status") or {}
    vs["status"] = {k: v for k, v in status.items() if k in ("directorGroup", "acceptedVIP")}
    return Touched(virtualservers=frozenset({key(vs["metadata"]["name"])}))


def drop_group_label(world: World, rng: random.Random) -> Touched:
    vs = _vs_raw(world, rng.choice(list(SERVERS)))
    vs["metadata"]["labels"].pop(GROUP_LABEL, None)
    return Touched(virtualservers=frozenset({key(vs["metadata"]["name"])}))


def edit_vs_port(world: World, rng: random.Random) -> Touched:
    """A spec edit: decided on the whole set (a full pass)."""
    vs = _vs_raw(world, rng.choice(list(SERVERS)))
    vs["spec"]["ports"] = [{"port": rng.choice((80, 443, 8443)), "targetPort": "http"}]
    vs["metadata"]["generation"] += 1
    return Touched(virtualservers=frozenset({key(vs["metadata"]["name"])}))


def delete_pool(world: World, rng: random.Random) -> Touched:
    """A pool goes: decided on the whole set (a full pass)."""
    name = rng.choice(POOLS)
    world.pools = [p for p in world.pools if p["metadata"]["name"] != name]
    return Touched(pools=frozenset({key(name)}))


def restore_pool(world: World, rng: random.Random) -> Touched:
    """A pool comes (back): decided on the whole set (a full pass)."""
    missing = [name for name in POOLS if name not in {p["metadata"]["name"] for p in world.pools}]
    if not missing:
        return Touched()
    name = rng.choice(missing)
    world.pools = [*world.pools, o.pool(name)]
    return Touched(pools=frozenset({key(name)}))


EVENTS: tuple[Event, ...] = (
    flip_readiness, flip_readiness, replace_endpoint, weigh_pod, edit_pool_weight,
    drop_vs_status, drop_group_label, edit_vs_port, delete_pool, restore_pool,
)  # fmt: skip


def echoes(p: Plan, state: PlanState) -> Touched:
    """What the watch events of a pass's own writes touch."""
    pools = {k for k, _ in p.pool_statuses}
    pools |= {state.pool_by_service[o_key(svc)] for svc in p.services}
    vss = {k for k, _ in p.vs_statuses} | {k for k, _ in p.labels}
    return Touched(frozenset(pools), frozenset(vss))


def o_key(obj: dict[str, Any]) -> Key:
    return (obj["metadata"]["namespace"], obj["metadata"]["name"])


def delivered(world: World) -> None:
    """Every object as a watch delivers it: a new one, not the one planned from before."""
    world.virtualservers = copy.deepcopy(world.virtualservers)
    world.pools = copy.deepcopy(world.pools)


def union(a: Touched, b: Touched) -> Touched:
    return Touched(a.pools | b.pools, a.virtualservers | b.virtualservers)


def play(seed: int) -> Counter[str]:
    """Fifteen random events, with a pass after about every other one; each pass planned
    both ways, the writes compared. Returns how many passes were incremental or full, and
    how many incremental ones wrote."""
    rng = random.Random(seed)
    world = small_world()
    now = T0 + timedelta(seconds=1)
    converged(world, now)
    _, state = plan_full(world, CONFIG, now)
    touched = Touched()
    seen: Counter[str] = Counter()
    for step in range(15):
        delivered(world)
        touched = union(touched, rng.choice(EVENTS)(world, rng))
        if rng.random() < 0.5:
            continue  # more events before the next pass
        now = T0 + timedelta(seconds=1, milliseconds=300 * step)
        full, full_state = plan_full(world, CONFIG, now)
        scope = touched_scope(world, state, touched)
        if scope is None:
            seen["full"] += 1
            state = full_state
        else:
            mine, state = plan_touched(world, state, scope, CONFIG, now)
            assert writes(mine) == writes(full), f"seed {seed} step {step}"
            seen["incremental"] += 1
            seen["written"] += bool(mine.writes)
        apply(world, full)
        delivered(world)
        touched = echoes(full, state)
    return seen


@pytest.mark.parametrize("seed", range(40))
def test_planning_what_events_touched_writes_what_the_full_plan_writes(seed: int) -> None:
    play(seed)


def test_the_random_sequences_plan_touched_objects_alone_and_write() -> None:
    """The property above is not vacuous: its passes are often incremental, and write."""
    seen = sum((play(seed) for seed in range(40)), Counter[str]())
    assert seen["incremental"] > 100 and seen["written"] > 50 and seen["full"] > 20, seen


def test_a_slice_change_plans_its_pool_and_the_virtualservers_using_it() -> None:
    world = small_world()
    now = T0 + timedelta(seconds=1)
    converged(world, now)
    _, state = plan_full(world, CONFIG, now)
    touched = flip_readiness(world, random.Random(1))
    (pool,) = touched.pools
    scope = touched_scope(world, state, touched)
    assert scope is not None
    using = {k for k, (_, _, p) in SERVERS.items() if key(p) == pool}
    assert scope == Touched(frozenset({pool}), frozenset(key(n) for n in using))
    p, _ = plan_touched(world, state, scope, CONFIG, now)
    assert [k for k, _ in p.pool_statuses] == [pool]


def test_what_is_decided_on_the_whole_set_asks_for_a_full_pass() -> None:
    world = small_world()
    now = T0 + timedelta(seconds=1)
    converged(world, now)
    _, state = plan_full(world, CONFIG, now)
    rng = random.Random(2)
    edited = copy.deepcopy(world)
    assert touched_scope(edited, state, edit_vs_port(edited, rng)) is None
    gone = copy.deepcopy(world)
    assert touched_scope(gone, state, delete_pool(gone, rng)) is None
    moved = copy.deepcopy(world)
    vs = _vs_raw(moved, "va")
    vs["status"]["directorGroup"] = "elsewhere"  # the group serving it is read by deciding
    assert touched_scope(moved, state, Touched(virtualservers=frozenset({key("va")}))) is None
    # a status change deciding does not read is planned alone
    vs["status"]["directorGroup"] = _vs_raw(world, "va")["status"]["directorGroup"]
    vs["status"]["conditions"] = []
    scope = touched_scope(moved, state, Touched(virtualservers=frozenset({key("va")})))
    assert scope == Touched(frozenset(), frozenset({key("va")}))


def _slice_event(pool: str) -> dict[str, Any]:
    body = o.endpoint_slice(pool, [o.endpoint("10.0.0.1", "web-1", ready=False)])
    return {"resource": SimpleNamespace(plural="endpointslices"), "namespace": o.NS,
            "name": body["metadata"]["name"], "body": body, "type": "MODIFIED"}  # fmt: skip


async def test_the_reconciler_plans_a_slice_event_alone_and_a_lease_event_fully() -> None:
    client = FakeClient()
    r = reconciler(client)
    assert (await r.reconcile_once())[0] == 0
    assert r.full_passes == 1
    # the pod behind the slice is not ready any more
    assert r.indices is not None
    r.indices["lvs_slices"] = {key(service_name("web")): [slice_info(_slice_event("web")["body"])]}
    await r.kick(**_slice_event("web"))
    client.calls.clear()
    assert (await r.reconcile_once())[0] == 0
    assert r.full_passes == 1  # planned the pool and its VirtualServer only
    assert ("patch", "RealServerPoolStatus", "web/web") in client.calls
    r.wake()  # e.g. a Lease's holder changed
    await r.reconcile_once()
    assert r.full_passes == 2
    # a slice of a Service no pool has: plan everything
    await r.kick(**_slice_event("nobody"))
    await r.reconcile_once()
    assert r.full_passes == 3
