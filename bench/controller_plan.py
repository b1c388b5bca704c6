"""What the controller's pure planning costs at scale, and what an event costs to dismiss.

    python bench/controller_plan.py [--virtualservers 1000] [--pods 10] [--runs 5]

No cluster: ``reconciler.plan`` over a World of ``--virtualservers`` VirtualServers, each
with its own RealServerPool of ``--pods`` pods (one EndpointSlice each), all in one director
group whose leader reports every one programmed. Prints the first pass (everything to
write), a steady pass (nothing to write: what a full pass costs), a pass over the one pool
an endpoint event touched, the programmed record
(its size and the time to format and check it, at this size and at 10x, with short and
hashed names), and the time to
decide that a Lease renewal or a pod's status change is not worth a pass. Times are wall
and CPU (a loaded machine stretches wall time); the record's figures are CPU. Figures, not
asserts: run it on the machine you care about.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import ipaddress
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

from lvs_operator.api.contract import (  # noqa: E402
    PROGRAMMED_ANNOTATION,
    format_programmed,
    group_name,
    lease_name,
    parse_programmed_report,
    programmed_key,
)
from lvs_operator.controller.config import ControllerConfig  # noqa: E402
from lvs_operator.controller.groups import DirectorPod  # noqa: E402
from lvs_operator.controller.manifests import service_name  # noqa: E402
from lvs_operator.controller.pools import PodInfo, SliceEndpoint, SliceInfo  # noqa: E402
from lvs_operator.controller.reconciler import (  # noqa: E402
    Plan,
    Touched,
    World,
    plan,
    plan_full,
    plan_touched,
    touched_scope,
)
from lvs_operator.controller.relevance import (  # noqa: E402
    lease_change_matters,
    pod_change_matters,
    pod_relevance,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
STAMP = NOW.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
CONFIG = ControllerConfig(vip_ranges=(ipaddress.ip_network("10.0.0.0/8"),))
GROUP = group_name({"lvs.io/director": "true"})


def build(virtualservers: int, pods: int) -> World:
    world = World()
    pod_infos: dict[tuple[str, str], PodInfo] = {}
    slices: dict[tuple[str, str], list[SliceInfo]] = {}
    generations: dict[str, int] = {}
    for i in range(virtualservers):
        ns, name = f"team-{i % 50}", f"web-{i:05d}"
        vip = f"10.{1 + i // 62500}.{(i // 250) % 250}.{1 + i % 250}"
        world.virtualservers.append(
            {
                "apiVersion": "lvs.io/v1alpha1",
                "kind": "VirtualServer",
                "metadata": {"name": name, "namespace": ns, "uid": f"u-{i}", "generation": 1,
                             "creationTimestamp": "2026-01-01T00:00:00Z", "labels": {}},
                "spec": {"vip": vip, "ports": [{"port": 80, "targetPort": "http"}],
                         "poolRef": {"name": name}},
            }
        )  # fmt: skip
        world.pools.append(
            {
                "apiVersion": "lvs.io/v1alpha1",
                "kind": "RealServerPool",
                "metadata": {"name": name, "namespace": ns, "uid": f"p-{i}", "generation": 1},
                "spec": {"selector": {"matchLabels": {"app": name}}},
            }
        )
        endpoints = []
        for j in range(pods):
            pod = f"{name}-{j}"
            pod_infos[(ns, pod)] = PodInfo({"app": name})
            address = f"172.{16 + i // 6000}.{(i // 24) % 250}.{(i % 24) * 10 + j + 1}"
            endpoints.append(SliceEndpoint((address,), pod=pod, node=f"node-{j}"))
        slices[(ns, service_name(name))] = [SliceInfo(tuple(endpoints), (("http", 8080),))]
        generations[programmed_key(ns, name)] = 1
    world.slices = slices
    world.pods = pod_infos
    world.director_pods = [DirectorPod(f"d{k}", GROUP, f"n{k}", True) for k in (1, 2)]
    world.leases = {lease_name(GROUP): lease(generations, STAMP)}
    return world


def lease(generations: dict[str, int], renew: str) -> dict[str, Any]:
    return {
        "metadata": {"name": lease_name(GROUP), "namespace": CONFIG.namespace,
                     "annotations": {PROGRAMMED_ANNOTATION: format_programmed(generations)}},
        "spec": {"holderIdentity": "n1", "renewTime": renew, "leaseDurationSeconds": 10},
    }  # fmt: skip


def apply(world: World, p: Plan) -> None:
    """What the API server would hold after the plan's writes (statuses, labels, Services)."""
    by_key = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in world.pools}
    for key, status in p.pool_statuses:
        by_key[key]["status"] = copy.deepcopy(status)
    vss = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in world.virtualservers}
    for key, want in p.labels:
        labels = vss[key]["metadata"]["labels"]
        labels.update({k: v for k, v in (("lvs.io/director-group", want.group),) if v})
    for key, status in p.vs_statuses:
        vss[key]["status"] = copy.deepcopy(status)
    services = dict(world.services)
    for svc in p.services:
        services[(svc["metadata"]["namespace"], svc["metadata"]["name"])] = svc
    world.services = services
    written = {d["metadata"]["name"]: d for d in p.daemonsets.apply}
    world.daemonsets = {**world.daemonsets, **written}


def sha1(i: int) -> str:
    return hashlib.sha1(str(i).encode()).hexdigest()


def timed(fn: Any, runs: int) -> tuple[float, float]:
    """Median wall time and median CPU time of ``runs`` calls (CPU: what the controller's
    process spends, whatever else the machine runs)."""
    wall, cpu = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--virtualservers", type=int, default=1000)
    ap.add_argument("--pods", type=int, default=10)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    n = args.virtualservers
    world = build(n, args.pods)
    now = NOW + timedelta(seconds=1)

    first: list[Plan] = []
    cold, cold_cpu = timed(lambda: first.append(plan(world, CONFIG, now)), 1)
    print(f"world: {n} VirtualServers, {n} pools, {n * args.pods} pods, 1 director group")
    print(f"first pass: {cold * 1000:.0f} ms ({cold_cpu * 1000:.0f} ms CPU), "
          f"{first[0].writes} writes")  # fmt: skip
    for _ in range(5):
        p = plan(world, CONFIG, now)
        if not p.writes:
            break
        apply(world, p)
    steady = plan(world, CONFIG, now)
    median, cpu = timed(lambda: plan(world, CONFIG, now), args.runs)
    print(f"steady pass ({steady.writes} writes): median {median * 1000:.0f} ms "
          f"({cpu * 1000:.0f} ms CPU) over {args.runs}: what a full pass costs")  # fmt: skip

    # one endpoint of one pool not ready: only that pool and its VirtualServer are planned
    _, state = plan_full(world, CONFIG, now)
    flipped = copy.deepcopy(world)
    slices = dict(flipped.slices)
    first = next(iter(slices))
    (sl,) = slices[first]
    ep = dataclasses.replace(sl.endpoints[0], ready=False)
    slices[first] = [dataclasses.replace(sl, endpoints=(ep, *sl.endpoints[1:]))]
    flipped.slices = slices
    touched = Touched(pools=frozenset({state.pool_by_service[first]}))
    scope = touched_scope(flipped, state, touched)
    assert scope is not None
    one = plan_touched(flipped, state, scope, CONFIG, now)[0]
    median, cpu = timed(
        lambda: (
            touched_scope(flipped, state, touched)
            and plan_touched(flipped, state, scope, CONFIG, now)
        ),
        args.runs,
    )
    print(f"a pass over one pool touched (an endpoint not ready; {one.writes} writes): median "
          f"{median * 1000:.1f} ms ({cpu * 1000:.1f} ms CPU): what a pod event costs")  # fmt: skip

    # names as above, then with a 40-character hash each (past the compressed form's bound)
    for count, hashed in ((n, False), (10 * n, False), (10 * n, True)):
        generations = {
            programmed_key(f"team-{i % 50}", f"web-{i:05d}" + (f"-{sha1(i)}" if hashed else "")): 1
            for i in range(count)
        }
        _, median = timed(lambda g=generations: format_programmed(g), 3)
        text = format_programmed(generations)
        report = parse_programmed_report(text)
        _, checked = timed(lambda r=report, g=generations: r.confirmed(g), 3)
        form = (
            "plain map"
            if text.startswith('{"team')
            else ("compressed map" if report.exact else f"{len(report.buckets)} bucket digests")
        )
        print(
            f"programmed record, {count} VirtualServers named like {next(iter(generations))}: "
            f"{len(text)} bytes ({form}); "
            f"format {median * 1000:.1f} ms, parse + confirm {checked * 1000:.1f} ms"
        )

    old = world.leases[lease_name(GROUP)]
    renewed = copy.deepcopy(old)
    renewed["spec"]["renewTime"] = (NOW + timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert not lease_change_matters(old, renewed, now)
    _, cpu = timed(lambda: [lease_change_matters(old, renewed, now) for _ in range(1000)], 3)
    print(f"Lease renewal dismissed: {cpu * 1000:.1f} us CPU each (was a steady pass)")
    selectors = steady.pool_selectors
    meta = {"namespace": "team-0", "name": "web-00000-0", "labels": {"app": "web-00000"}}
    pod = {"metadata": {**meta, "resourceVersion": "1"}, "status": {"phase": "Running"}}
    moved = copy.deepcopy(pod)
    moved["metadata"]["resourceVersion"] = "2"
    moved["status"]["podIP"] = "172.16.0.1"

    def dismiss() -> bool:
        before = pod_relevance(pod, selectors, CONFIG.namespace)
        return pod_change_matters(before, pod_relevance(moved, selectors, CONFIG.namespace))

    assert not dismiss()
    _, cpu = timed(lambda: [dismiss() for _ in range(1000)], 3)
    print(f"pod status change dismissed: {cpu * 1000:.1f} us CPU each (was a steady pass)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
