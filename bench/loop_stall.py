"""The director agent's event-loop stall during a big converge: table built on the loop
(before) vs off it (now).

    python bench/loop_stall.py [--services 1000] [--dests 10] [--runs 5]

No VM, no API server: one agent (agent.py) with the unit tests' fakes for the kernel, the
VIPs and the Lease (tests/unit/director/fakes.py), its caches filled as the informers would
(``--services`` VirtualServers, one TCP port each, VIPs 10.30.x.y, rr, all on one pool of
``--dests`` ready members). A ``LoopWatch`` (loop_watch.py) looks every 5 ms meanwhile;
its longest stall is what a Lease renewal or a step-down would have waited.

Each run is a fresh agent: a **cold** converge (the whole table added: services x (1 +
dests) changes) then a **warm** one (nothing changed: a resync); both end with the full
collection of ``trim_memory``. Both modes run the same code; *before* swaps
``IpvsSync.off_loop`` for ``on_loop`` (every step inline on the loop, as before the change);
*after* is the agent as shipped: ``asyncio.to_thread``, and the objects made before the loop
frozen (``main.freeze_startup``; undone after the run); *no-freeze* is *after* without the
freeze (what the freeze adds). The fake kernel's apply runs on the
IPVS lane (a thread) in both, as the real kernel's does. Prints each run and the medians of
``--runs``. Figures are for this machine and its load: compare the two modes, not machines.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "operator"))

from tests.unit.director.fake_lease import FakeLeaseApi, FakeLeaseStore  # noqa: E402
from tests.unit.director.fakes import FakeHandoverKernel, FakeKernel, FakeVips  # noqa: E402

from lvs_operator.director.agent import Agent  # noqa: E402
from lvs_operator.director.config import AgentConfig  # noqa: E402
from lvs_operator.director.ipvs_sync import freeze_survivors, on_loop  # noqa: E402
from lvs_operator.director.loop_watch import LoopWatch  # noqa: E402
from lvs_operator.director.main import freeze_startup, warm_up  # noqa: E402


def objects(services: int, dests: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    # accepted by the controller for the agent's group (its status): the agent programs
    # only those (watches.refusal)
    vss = [
        {"metadata": {"name": f"vs{i}", "namespace": "demo", "generation": 1},
         "spec": {"vip": f"10.30.{i // 250}.{1 + i % 250}", "scheduler": "rr",
                  "ports": [{"port": 80, "targetPort": "http"}], "poolRef": {"name": "big"}},
         "status": {"directorGroup": "g1", "acceptedVIP": f"10.30.{i // 250}.{1 + i % 250}"}}
        for i in range(services)
    ]  # fmt: skip
    members = [
        {"address": f"10.20.{1 + i // 250}.{1 + i % 250}", "weight": 1, "ready": True,
         "serving": True, "terminating": False, "source": "pod",
         "ports": [{"name": "http", "port": 8080}]}
        for i in range(dests)
    ]  # fmt: skip
    pool = {"metadata": {"name": "big", "namespace": "demo"},
            "spec": {"selector": {"matchLabels": {"app": "big"}}},
            "status": {"members": members}}  # fmt: skip
    return vss, pool


def agent() -> Agent:
    # kernel_resync 0: every converge starts a whole read, so the warm one is a resync (in
    # the background since the resync has a lane of its own: awaited in ``timed``)
    cfg = AgentConfig(node_name="bench", namespace="lvs-system", group="g1", lease_name="lease",
                      lease_duration=60, renew_deadline=45.0, kernel_resync=0.0)  # fmt: skip
    a = Agent(cfg, client=None, kernel=FakeKernel(), vips=FakeVips(),
              lease_api=FakeLeaseApi(FakeLeaseStore()),
              handover_node=FakeHandoverKernel())  # fmt: skip
    a.watches.reset_next_vs([])  # nothing moving in
    return a


async def timed(a: Agent, watch: LoopWatch) -> tuple[float, float]:
    """One converge (want + converge) watched: (its seconds, the longest stall meanwhile)."""
    watch.longest = 0.0
    await asyncio.sleep(0.05)  # the watch is looking
    t0 = time.perf_counter()
    await a.converge()
    await a.ipvs.resync_finished()
    seconds = time.perf_counter() - t0
    await asyncio.sleep(0.02)  # a stall at the very end is seen
    return seconds, watch.longest


async def one(services: int, dests: int, before: bool) -> dict[str, float]:
    vss, pool = objects(services, dests)
    a = agent()
    if before:
        a.ipvs.off_loop = on_loop
    a.watches.reset_vs(vss)
    a.watches.reset_pools([pool])
    watch = LoopWatch(interval=0.005, threshold=3600)
    task = asyncio.create_task(watch.run())
    try:
        cold, cold_stall = await timed(a, watch)
        warm, warm_stall = await timed(a, watch)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    changes = len(a.kernel.applied)  # type: ignore[attr-defined]
    return {"cold": cold, "cold_stall": cold_stall, "warm": warm, "warm_stall": warm_stall,
            "changes": changes}  # fmt: skip


def run(services: int, dests: int, mode: str) -> dict[str, float]:
    gc.collect()
    if mode == "after":
        freeze_startup()
    try:
        return asyncio.run(one(services, dests, before=mode == "before"))
    finally:
        gc.unfreeze()
        freeze_survivors(False)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--dests", type=int, default=10)
    p.add_argument("--runs", type=int, default=5)
    a = p.parse_args(argv)
    warm_up()  # the agent's start-up: its heap before the loop runs is this one
    print(f"{a.services} VirtualServers x {a.dests} real servers, {a.runs} runs, "
          f"gc threshold {gc.get_threshold()}")  # fmt: skip
    results: dict[str, list[dict[str, float]]] = {"before": [], "no-freeze": [], "after": []}
    for n in range(a.runs):
        for mode in results:  # interleaved: the machine's load hits each alike
            r = run(a.services, a.dests, mode)
            results[mode].append(r)
            print(f"run {n + 1} {mode:9}: cold converge {r['cold']:.3f}s (longest stall "
                  f"{r['cold_stall'] * 1000:.0f} ms), warm {r['warm']:.3f}s (stall "
                  f"{r['warm_stall'] * 1000:.0f} ms), {r['changes']:.0f} changes")  # fmt: skip
    print("medians:")
    for mode, rs in results.items():

        def med(key: str, rs: list[dict[str, float]] = rs) -> float:
            return statistics.median(r[key] for r in rs)

        print(f"  {mode:9}: cold converge {med('cold'):.3f}s, longest stall "
              f"{med('cold_stall') * 1000:.0f} ms; warm converge {med('warm'):.3f}s, longest "
              f"stall {med('warm_stall') * 1000:.0f} ms")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
