"""The event-loop stall monitor (loop_watch.py) on a fake clock, its metrics, and the desired
table built off the loop (ipvs_sync.py)."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

import pytest

from lvs_operator.director.health import Probe
from lvs_operator.director.ipvs_sync import on_loop
from lvs_operator.director.loop_watch import GcWatch, LoopWatch
from lvs_operator.director.metrics import Metrics
from lvs_operator.director.table import Protocol, ServiceKey
from tests.unit.director.test_agent import make, pool_obj, vs_obj

LOGGER = "lvs_operator.director.loop_watch"


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    value = metrics.registry.get_sample_value(name, {"group": "g1", **labels})
    return value


def test_gc_pauses_are_timed_by_generation_and_named_in_the_stall_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, gc_clock, metrics = Clock(), Clock(), Metrics("g1")
    gcw = GcWatch(metrics, clock=gc_clock)
    watch = LoopWatch(metrics, interval=0.05, threshold=0.25, clock=clock, gc_watch=gcw)
    gcw.callback("start", {"generation": 0})
    gc_clock.t += 0.002
    gcw.callback("stop", {"generation": 0, "collected": 0, "uncollectable": 0})
    gcw.callback("start", {"generation": 2})
    gc_clock.t += 1.5
    gcw.callback("stop", {"generation": 2, "collected": 10, "uncollectable": 0})
    gcw.callback("stop", {"generation": 1})  # a stop without its start (installed mid-way)
    assert gcw.collections == 2 and gcw.longest == pytest.approx(1.5)
    pause = "lvs_director_gc_pause_seconds"
    assert sample(metrics, f"{pause}_count", generation="0") == 1
    assert sample(metrics, f"{pause}_sum", generation="2") == pytest.approx(1.5)
    assert sample(metrics, "lvs_director_gc_longest_pause_seconds") == pytest.approx(1.5)
    due = watch.due()
    clock.t = due + 1.6
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        watch.tick(due)
    (record,) = caplog.records
    assert (record.gc_seconds, record.gc_generation) == (1.5, 2)  # type: ignore[attr-defined]
    # taken: the next stall names no collection
    caplog.clear()
    due = watch.due()
    clock.t = due + 20.0  # past warn_every, so it is logged
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        watch.tick(due)
    (record,) = caplog.records
    assert not hasattr(record, "gc_seconds")


def test_gc_watch_times_real_collections_until_uninstalled() -> None:
    gcw = GcWatch()
    gcw.install()
    gcw.install()  # once only
    try:
        assert gc.callbacks.count(gcw.callback) == 1
        gc.collect()
        assert gcw.collections >= 1 and gcw.longest > 0
        taken = gcw.take()
        assert taken is not None and taken[1] == 2
    finally:
        gcw.uninstall()
    assert gcw.callback not in gc.callbacks
    seen = gcw.collections
    gc.collect()
    assert gcw.collections == seen


def test_stall_is_the_lateness_of_the_look_and_the_longest_is_kept() -> None:
    clock, metrics = Clock(), Metrics("g1")
    watch = LoopWatch(metrics, interval=0.05, threshold=0.25, clock=clock)
    due = watch.due()
    assert due == pytest.approx(100.05)
    clock.t = 100.05  # on time
    assert watch.tick(due) == 0.0
    due = watch.due()
    clock.t = due + 0.2  # 200 ms late
    assert watch.tick(due) == pytest.approx(0.2)
    due = watch.due()
    clock.t = due + 0.03
    assert watch.tick(due) == pytest.approx(0.03)
    due = watch.due()
    clock.t = due - 1e-9  # a timer fired a hair early: no negative stall
    assert watch.tick(due) == 0.0
    assert watch.longest == pytest.approx(0.2) and watch.ticks == 4 and watch.over == 0
    longest = "lvs_director_event_loop_longest_stall_seconds"
    assert sample(metrics, longest) == pytest.approx(0.2)
    stall = "lvs_director_event_loop_stall_seconds"
    assert sample(metrics, f"{stall}_count") == 4
    assert sample(metrics, f"{stall}_sum") == pytest.approx(0.23)
    assert sample(metrics, f"{stall}_bucket", le="0.025") == 2
    assert sample(metrics, f"{stall}_bucket", le="0.05") == 3
    assert sample(metrics, f"{stall}_bucket", le="0.25") == 4


def test_long_stalls_are_logged_at_most_once_per_interval(caplog: Any) -> None:
    clock = Clock()
    watch = LoopWatch(None, interval=0.05, threshold=0.25, warn_every=10.0, clock=clock)

    def stall(seconds: float) -> None:
        due = watch.due()
        clock.t = due + seconds
        watch.tick(due)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        stall(0.24)  # below the threshold: not logged
        assert caplog.records == []
        stall(0.6)
        assert len(caplog.records) == 1
        assert "stalled for 0.600 s" in caplog.records[0].getMessage()
        assert caplog.records[0].stall_seconds == 0.6
        stall(0.3)  # within 10 s of the warning: counted, not logged
        stall(0.9)
        clock.t += 9.0
        assert len(caplog.records) == 1
        stall(0.4)  # 10.75 s after the warning
        assert len(caplog.records) == 2
        record = caplog.records[1]
        assert "stalled for 0.400 s" in record.getMessage()
        assert record.unlogged_stalls == 2 and record.unlogged_longest_seconds == 0.9
        clock.t += 10.0
        stall(0.5)
        assert len(caplog.records) == 3
        assert not hasattr(caplog.records[2], "unlogged_stalls")
    assert watch.over == 5 and watch.longest == pytest.approx(0.9)


def test_metrics_render_the_loop_stall() -> None:
    clock, metrics = Clock(), Metrics("g1")
    watch = LoopWatch(metrics, clock=clock)
    due = watch.due()
    clock.t = due + 0.12
    watch.tick(due)
    text = metrics.render().decode()
    assert 'lvs_director_event_loop_stall_seconds_bucket{group="g1",le="0.25"} 1.0' in text
    assert 'lvs_director_event_loop_stall_seconds_count{group="g1"} 1.0' in text
    assert 'lvs_director_event_loop_longest_stall_seconds{group="g1"} 0.12' in text


async def test_run_looks_every_interval_until_cancelled() -> None:
    watch = LoopWatch(interval=0.01)
    task = asyncio.create_task(watch.run())
    await asyncio.sleep(0.1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert watch.ticks >= 3


# -- the desired table is built off the loop ----------------------------------------------------


def big(services: int, dests: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    vss = [vs_obj(f"vs{i}", vip=f"10.30.{i // 250}.{1 + i % 250}") for i in range(services)]
    members = [
        {"address": f"10.20.{i // 250}.{1 + i % 250}", "weight": 1, "ready": True}
        for i in range(dests)
    ]
    return vss, pool_obj(*members)


async def test_the_desired_build_leaves_the_loop_running() -> None:
    """A ticker on the loop keeps running while a 1000 x 10 table is built: its worst lateness
    is a fraction of the build's own time (the GIL's switch interval, not the build)."""
    agent = make()
    vss, pool = big(1000, 10)
    agent.watches.reset_vs(vss)
    agent.watches.reset_pools([pool])
    await agent.ipvs.want()  # warm (first use of each code path)
    # the pool every VirtualServer uses changes: the next build makes the whole table again
    # (an unchanged one reuses each VirtualServer's part: desired.DesiredBuilder)
    _, changed = big(1000, 10)
    for member in changed["status"]["members"]:
        member["weight"] = 2
    agent.watches.reset_pools([changed])
    lateness: list[float] = []

    async def ticker() -> None:
        while True:
            due = time.perf_counter() + 0.002
            await asyncio.sleep(0.002)
            lateness.append(time.perf_counter() - due)

    task = asyncio.create_task(ticker())
    # A garbage collection holds the GIL wherever it runs (trim_memory's note; the bench
    # measures it): not what is tested here, and with the whole suite's heap it can be long.
    gc.disable()
    try:
        await asyncio.sleep(0.01)
        lateness.clear()
        t0 = time.perf_counter()
        want = await agent.ipvs.want()
        build = time.perf_counter() - t0
        ticks = len(lateness)
        worst = max(lateness, default=build)
    finally:
        gc.enable()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(want.table) == 1000 and want.table.dest_count() == 10_000
    assert all(d.weight == 2 for e in want.table.values() for d in e.destinations)
    assert ticks >= 3, f"the loop ran {ticks} ticks during a {build:.3f}s build"
    assert worst < build / 2, f"worst lateness {worst:.3f}s during a {build:.3f}s build"


async def test_the_build_sees_the_caches_as_they_were_when_it_started() -> None:
    """The caches are copied on the loop: a watch event while the thread builds is not half
    seen (it sets dirty: the next converge has it)."""
    agent = make()
    agent.watches.reset_vs([vs_obj("a", vip="10.10.0.1"), vs_obj("b", vip="10.10.0.2")])
    agent.watches.reset_pools([pool_obj({"address": "10.20.0.21", "weight": 1, "ready": True})])

    async def meanwhile_a_watch_event(fn: Any, /, *args: Any) -> Any:
        agent.watches.apply_vs("DELETED", vs_obj("a"))
        agent.watches.apply_vs("ADDED", vs_obj("c", vip="10.10.0.3"))
        agent.watches.reset_pools([pool_obj()])
        return await asyncio.to_thread(fn, *args)

    agent.ipvs.off_loop = meanwhile_a_watch_event
    want = await agent.ipvs.want()
    assert sorted(want.generations) == ["demo/a", "demo/b"]
    assert {e.key.address: len(e.destinations) for e in want.table.values()} == {
        "10.10.0.1": 1, "10.10.0.2": 1,
    }  # fmt: skip


async def test_health_checks_come_from_the_same_snapshot_as_the_table() -> None:
    agent = make()
    pool = pool_obj({"address": "10.20.0.21", "weight": 1, "ready": True})
    pool["spec"] = {"selector": {"matchLabels": {"app": "web"}},
                    "healthCheck": {"type": "tcp", "port": 8081}}  # fmt: skip
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool])
    seen: list[Probe] = []

    async def prober(target: Probe, timeout: float) -> bool:
        seen.append(target)
        return True

    agent.health.prober = prober
    want = await agent.ipvs.want()
    agent.watches.reset_pools([pool_obj({"address": "10.20.0.21", "weight": 1, "ready": True})])
    await agent.ipvs.converge(want, agent.vips.owned)  # the check removed meanwhile: still used
    await asyncio.sleep(0)
    assert [(p.address, p.port) for p in agent.health.checks] == [("10.20.0.21", 8081)]
    assert ServiceKey(Protocol.TCP, "10.10.0.100", 80) in agent.kernel.table  # type: ignore[attr-defined]
    await agent.health.close()


async def test_on_loop_runs_inline() -> None:
    assert await on_loop(sorted, [3, 1, 2]) == [1, 2, 3]


def test_a_stall_warning_says_where_the_loop_and_the_threads_were(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The sampler takes each thread's frames while the loop is overdue, once per stall, and
    the stall's warning carries them."""
    import threading

    from lvs_operator.director.loop_watch import StallSampler

    clock = Clock()
    release, parked = threading.Event(), threading.Event()

    def busy_building_a_table() -> None:  # stands for the loop's thread, held somewhere
        parked.set()
        release.wait(10)

    def renewing_lifetimes() -> None:  # another thread, also somewhere
        release.wait(10)

    loop_thread = threading.Thread(target=busy_building_a_table, name="loop")
    other = threading.Thread(target=renewing_lifetimes, name="vip-lifetimes")
    loop_thread.start()
    other.start()
    parked.wait(5)
    try:
        sampler = StallSampler(threshold=0.25, clock=clock)
        sampler.loop_thread = loop_thread.ident
        watch = LoopWatch(threshold=0.25, clock=clock, sampler=sampler)
        due = watch.due()
        clock.t += 0.2
        sampler.look()  # not overdue yet: nothing taken
        assert sampler.take() is None
        clock.t += 0.3
        sampler.look()
        first = sampler._sample
        clock.t += 0.3
        sampler.look()  # the same stall: the first frames stand
        assert sampler._sample is first
        caplog.set_level(logging.WARNING, logger=LOGGER)
        assert watch.tick(due) == pytest.approx(0.75)
    finally:
        release.set()
        loop_thread.join(5)
        other.join(5)
    (record,) = [r for r in caplog.records if "stalled" in r.getMessage()]
    assert "busy_building_a_table" in record.__dict__["loop_in"]
    threads = record.__dict__["threads"]
    assert isinstance(threads, dict) and "renewing_lifetimes" in threads["vip-lifetimes"]
    assert "MainThread" not in threads  # the sampler's own (here the test's): left out
    assert sampler.take() is None  # taken with the warning
    sampler.look()  # right after the look: not overdue
    assert sampler.take() is None


def test_the_sampler_thread_stops_with_the_watch() -> None:
    import threading

    from lvs_operator.director.loop_watch import StallSampler

    async def main() -> None:
        task = asyncio.create_task(LoopWatch(sampler=StallSampler()).run())
        await asyncio.sleep(0.12)
        assert any(t.name == "stall-sampler" for t in threading.enumerate())
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0.12)
        assert not any(t.name == "stall-sampler" for t in threading.enumerate())

    asyncio.run(main())


def test_an_import_shows_as_the_module_and_its_importer(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The import machinery's frames are left out: they filled the four frames kept when
    the sampler caught a lazy import on the loop."""
    import importlib
    import sys

    from lvs_operator.director import loop_watch

    (tmp_path / "lazily_imported.py").write_text(
        "import sys\nfrom lvs_operator.director.loop_watch import stack_text\n"
        "SEEN = stack_text(sys._getframe())\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    def importer() -> str:
        return str(importlib.import_module("lazily_imported").SEEN)

    seen = importer()
    sys.modules.pop("lazily_imported", None)
    parts = seen.split(" < ")
    assert parts[0] == "lazily_imported.py:3 <module>", seen
    assert "frozen" not in seen and any("importer" in p for p in parts), seen
    assert len(parts) == loop_watch.STACK_DEPTH
