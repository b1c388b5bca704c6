"""Lease election in classic mode (no heartbeat confirmations, ``--peer-port 0``): acquire,
renew, conflicts, step-down before expiry, release, takeover. The timings are the short ones
these tests were written with; outage-tolerant mode (the default) is test_election_outage.py."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest

from lvs_operator.api.contract import VIP_PROBLEMS_ANNOTATION
from lvs_operator.director.election import (
    PROGRAMMED_ANNOTATION,
    ElectionConfig,
    Elector,
    LeaseConflict,
    LeaseRecord,
)
from tests.unit.director.fake_lease import FakeClock, FakeLeaseApi, FakeLeaseStore

# classic mode at short timings: duration 2 s, renew deadline 1.5 s, retry 0.4 s
CLASSIC = {"lease_duration": 2, "renew_deadline": 1.5, "retry_period": 0.4}


class Director:
    def __init__(self, name: str, store: FakeLeaseStore, clock: FakeClock) -> None:
        self.api = FakeLeaseApi(store)
        self.changes: list[tuple[float, bool]] = []
        self.clock = clock

        async def on_change(leader: bool) -> None:
            self.changes.append((clock.monotonic(), leader))

        self.elector = Elector(ElectionConfig(identity=name, **CLASSIC), self.api, on_change, clock)

    @property
    def leader(self) -> bool:
        return self.elector.is_leader


@pytest.fixture
def env() -> tuple[FakeLeaseStore, FakeClock, Director, Director]:
    store, clock = FakeLeaseStore(), FakeClock()
    return store, clock, Director("node-a", store, clock), Director("node-b", store, clock)


async def test_first_director_creates_and_holds_the_lease(env) -> None:
    store, _clock, a, b = env
    await a.elector.tick()
    assert a.leader
    assert store.record is not None and store.record.holder == "node-a"
    assert store.record.duration_seconds == 2
    await b.elector.tick()
    assert not b.leader
    assert b.elector.holder == "node-a"


async def test_leader_renews_and_standby_stays_standby(env) -> None:
    store, clock, a, b = env
    await a.elector.tick()
    first_renew = store.record.renew_time
    for _ in range(20):  # 8 s of renewals every 0.4 s: never expires for the standby
        clock.advance(0.4)
        await a.elector.tick()
        await b.elector.tick()
    assert a.leader and not b.leader
    assert store.record.renew_time > first_renew
    assert store.record.holder == "node-a"


async def test_update_with_stale_resource_version_is_rejected(env) -> None:
    store, clock, a, _ = env
    await a.elector.tick()
    stale = store.record
    clock.advance(0.4)
    await a.elector.tick()
    with pytest.raises(LeaseConflict):
        await FakeLeaseApi(store).update(replace(stale, holder="intruder"))
    assert store.record.holder == "node-a"


async def test_racing_standbys_only_one_wins(env) -> None:
    store, _clock, a, b = env
    store._store(LeaseRecord(holder=""))  # released Lease: both see it free
    rec = store.record
    # b reads, then a acquires, then b's write (carrying the rv it read) must fail.
    original_get = b.api.get

    async def get_then_a_wins() -> LeaseRecord | None:
        got = await original_get()
        await a.elector.tick()
        return got

    b.api.get = get_then_a_wins  # type: ignore[method-assign]
    await b.elector.tick()
    assert a.leader and not b.leader
    assert store.record.holder == "node-a"
    assert rec is not None


async def test_classic_leader_steps_down_before_lease_can_expire(env) -> None:
    store, clock, a, b = env
    await a.elector.tick()
    await b.elector.tick()
    last_sent = clock.monotonic()
    a.api.down = True
    stepped_down_at = None
    for _ in range(20):
        clock.advance(0.1)
        await a.elector.tick()
        if not a.leader:
            stepped_down_at = clock.monotonic()
            break
    assert stepped_down_at is not None
    assert stepped_down_at - last_sent <= 1.5 + 1e-9  # renew deadline
    # the standby may only take over once the duration (2 s) has passed since it saw a renewal
    took_over_at = None
    for _ in range(40):
        await b.elector.tick()
        if b.leader:
            took_over_at = clock.monotonic()
            break
        clock.advance(0.1)
    assert took_over_at is not None
    assert took_over_at - last_sent >= 2.0 - 1e-9
    assert stepped_down_at < took_over_at
    assert a.changes == [(a.changes[0][0], True), (stepped_down_at, False)]
    assert store.record.holder == "node-b"
    assert store.record.transitions == 1


async def test_lost_lease_is_noticed_on_conflict(env) -> None:
    store, clock, a, _ = env
    await a.elector.tick()
    # someone else takes it (e.g. after a network partition healed)
    store._store(replace(store.record, holder="node-c"))
    clock.advance(0.4)
    await a.elector.tick()
    assert not a.leader
    assert a.elector.holder == "node-c"


async def test_conflict_on_own_record_is_retried(env) -> None:
    store, clock, a, _ = env
    await a.elector.tick()
    # an unrelated write (e.g. a label) bumps the resourceVersion, holder unchanged
    store._store(replace(store.record, labels={"x": "y"}))
    clock.advance(0.4)
    await a.elector.tick()
    assert a.leader
    assert store.record.labels == {"x": "y"}


async def test_release_frees_the_lease_for_immediate_takeover(env) -> None:
    store, _clock, a, b = env
    await a.elector.tick()
    await b.elector.tick()
    assert await a.elector.release()
    assert not a.leader
    assert a.changes[-1][1] is False
    assert store.record.holder == ""
    await b.elector.tick()  # no clock advance: free at once
    assert b.leader
    assert store.record.holder == "node-b"


async def test_heartbeat_says_leading_until_the_release_is_written(env) -> None:
    """A standby hearing "not leading" while the release is still in flight would take the
    Lease from the leader, without the annotations the release writes (seen in e2e: the
    handover note was lost and the old leader's connections in flight were reset)."""
    store, _clock, a, _b = env
    await a.elector.tick()
    seen: list[tuple[bool, str]] = []

    async def on_change(leader: bool) -> None:
        seen.append((a.elector.serving, store.record.holder))

    a.elector.on_change = on_change
    real_update = a.api.update

    async def update(record: LeaseRecord) -> LeaseRecord:
        seen.append((a.elector.serving, store.record.holder))
        return await real_update(record)

    a.api.update = update  # type: ignore[method-assign]
    assert await a.elector.release()
    assert seen == [(True, "node-a"), (True, "node-a")]  # on_change, then the write
    assert not a.elector.serving and store.record.holder == ""


async def test_standby_takes_over_after_expiry(env) -> None:
    store, clock, a, b = env
    await a.elector.tick()
    await b.elector.tick()
    # a crashes: no more ticks
    clock.advance(1.9)
    await b.elector.tick()
    assert not b.leader
    clock.advance(0.2)
    await b.elector.tick()
    assert b.leader
    assert store.record.holder == "node-b"
    assert store.record.transitions == 1


async def test_restarted_agent_takes_back_its_own_lease(env) -> None:
    store, clock, a, _ = env
    await a.elector.tick()
    restarted = Director("node-a", store, clock)
    await restarted.elector.tick()  # no waiting for expiry
    assert restarted.leader
    assert store.record.transitions == 0


async def test_programmed_annotation_written_with_renewal(env) -> None:
    store, clock, a, _ = env
    await a.elector.tick()
    a.elector.set_annotation(PROGRAMMED_ANNOTATION, '{"ns/web": 3}')
    clock.advance(0.4)
    await a.elector.tick()
    assert store.record.annotations[PROGRAMMED_ANNOTATION] == '{"ns/web": 3}'


async def test_oversized_annotation_is_left_out_and_the_renewal_succeeds(env) -> None:
    """A report past the API server's annotation limit (here 1,000 VIPs' problems) would
    make it refuse every renewal, and the group lose its leader: it is left out instead."""
    store, clock, a, _ = env
    await a.elector.tick()
    a.elector.set_annotation(PROGRAMMED_ANNOTATION, '{"ns/web": 3}')
    problems = {f"192.0.2.{i % 250}/{i}": "x" * 299 for i in range(1000)}
    a.elector.set_annotation(VIP_PROBLEMS_ANNOTATION, json.dumps(problems))
    renewed_before = store.record.renew_time
    clock.advance(0.4)
    await a.elector.tick()
    assert a.leader and store.record.holder == "node-a"
    assert store.record.renew_time > renewed_before  # the renewal went through
    assert VIP_PROBLEMS_ANNOTATION not in store.record.annotations
    assert store.record.annotations[PROGRAMMED_ANNOTATION] == '{"ns/web": 3}'
    a.elector.set_annotation(VIP_PROBLEMS_ANNOTATION, "{}")  # small again: written again
    clock.advance(0.4)
    await a.elector.tick()
    assert store.record.annotations[VIP_PROBLEMS_ANNOTATION] == "{}"


async def test_run_wakes_on_release_through_the_watch() -> None:
    store = FakeLeaseStore()
    # B's retry period far beyond the wait below: only the watch can wake it in time (an
    # absolute bound on the delay is what a loaded machine breaks)
    slow = {"lease_duration": 120, "renew_deadline": 90.0, "retry_period": 60.0}
    a = Elector(ElectionConfig("node-a", retry_period=0.4), FakeLeaseApi(store))
    b = Elector(ElectionConfig("node-b", **slow), FakeLeaseApi(store))
    await a.tick()
    task = asyncio.create_task(b.run())
    await asyncio.sleep(0.05)
    assert not b.is_leader
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await a.release()
    while not b.is_leader and loop.time() - t0 < 10:
        await asyncio.sleep(0.01)
    assert b.is_leader  # woken by the watch: its next retry was a minute away
    await b.release()
    await asyncio.wait_for(task, 2)
    assert store.record.holder == ""


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"identity": ""}, "NODE_NAME"),
        ({"identity": "a", "lease_duration": 2, "renew_deadline": 2}, "shorter than the lease"),
        ({"identity": "a", "renew_deadline": 1.5, "retry_period": 1.5}, "shorter than the renew"),
        ({"identity": "a", "peer_timeout": 0.15}, "peer timeout"),
        ({"identity": "a", "outage_hold": -1}, "outage hold"),
    ],
)
def test_config_rejects_unsafe_timings(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        ElectionConfig(**kwargs)


# -- peer heartbeat: takeover before expiry, step-down on a watched takeover -------------------


async def test_standby_takes_the_lease_before_expiry_when_the_holder_is_lost(env, caplog) -> None:
    store, clock, a, b = env
    asked: list[str] = []

    def unreachable(holder: str) -> bool:
        asked.append(holder)
        return lost

    b.elector.holder_unreachable = unreachable
    lost = False
    await a.elector.tick()
    await b.elector.tick()
    clock.advance(0.4)
    await b.elector.tick()
    assert not b.leader  # heartbeat fine: the Lease is not expired either
    assert asked == ["node-a", "node-a"]
    lost = True
    clock.advance(0.1)  # 0.5 s after the last renewal: far from the 2 s expiry
    with caplog.at_level("INFO", logger="lvs_operator.director.election"):
        await b.elector.tick()
    assert b.leader
    assert store.record.holder == "node-b"
    assert store.record.transitions == 1
    assert "peer heartbeat from 'node-a' lost" in caplog.text
    # the old leader, if alive, loses its next renewal to the conflict
    clock.advance(0.4)
    await a.elector.tick()
    assert not a.leader


async def test_heartbeat_only_counts_for_the_current_holder(env) -> None:
    store, clock, a, b = env
    b.elector.holder_unreachable = lambda holder: holder == "node-c"
    await a.elector.tick()
    for _ in range(4):
        clock.advance(0.4)
        await a.elector.tick()
        await b.elector.tick()
    assert a.leader and not b.leader
    assert store.record.holder == "node-a"


async def test_a_failing_heartbeat_check_is_not_a_loss(env) -> None:
    store, _clock, a, b = env

    def broken(holder: str) -> bool:
        raise RuntimeError("boom")

    b.elector.holder_unreachable = broken
    await a.elector.tick()
    await b.elector.tick()
    assert not b.leader and store.record.holder == "node-a"


async def test_heartbeat_takeover_loses_a_race_to_a_conflict(env) -> None:
    store, _clock, a, b = env
    await a.elector.tick()
    b.elector.holder_unreachable = lambda holder: True
    original_get = b.api.get

    async def get_then_a_renews() -> LeaseRecord | None:
        got = await original_get()
        _clock.advance(0.4)
        await a.elector.tick()  # the holder was alive after all: its renewal lands first
        return got

    b.api.get = get_then_a_renews  # type: ignore[method-assign]
    await b.elector.tick()
    assert a.leader and not b.leader
    assert store.record.holder == "node-a"


async def test_on_record_sees_every_observed_record(env) -> None:
    store, clock, a, b = env
    seen_a: list[str] = []
    seen_b: list[LeaseRecord] = []
    a.elector.on_record = lambda record: seen_a.append(record.holder)
    b.elector.on_record = seen_b.append
    await a.elector.tick()
    store._store(replace(store.record, annotations={"lvs.io/heartbeat": "10.0.0.1:9643"}))
    await b.elector.tick()
    assert seen_a == ["node-a"]
    assert seen_b[-1].holder == "node-a"
    assert seen_b[-1].annotations == {"lvs.io/heartbeat": "10.0.0.1:9643"}
    assert b.elector.record == seen_b[-1]

    def broken(record: LeaseRecord) -> None:
        raise RuntimeError("boom")

    b.elector.on_record = broken
    clock.advance(0.4)
    await b.elector.tick()  # a failing hook does not break the election
    assert not b.leader


async def test_leader_steps_down_when_its_watch_shows_the_lease_taken(caplog) -> None:
    store = FakeLeaseStore()
    changes: list[bool] = []

    async def on_change(leader: bool) -> None:
        changes.append(leader)

    # A's retry period far beyond the wait below: only the watch can make it step down in
    # time (an absolute bound on the delay is what a loaded machine breaks)
    slow = {"lease_duration": 120, "renew_deadline": 90.0, "retry_period": 60.0}
    a = Elector(ElectionConfig("node-a", **slow), FakeLeaseApi(store), on_change)
    b = Elector(
        ElectionConfig("node-b", **CLASSIC), FakeLeaseApi(store), holder_unreachable=lambda h: True
    )
    await a.tick()
    task = asyncio.create_task(a.run())
    await asyncio.sleep(0.05)  # a renewed and waits for its retry period (a minute)
    assert changes == [True]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with caplog.at_level("INFO", logger="lvs_operator.director.election"):
        await b.tick()
        assert b.is_leader
        while a.is_leader and loop.time() - t0 < 10:
            await asyncio.sleep(0.005)
    assert not a.is_leader  # woken by the watch: its next renewal was a minute away
    assert changes == [True, False]
    assert "stepped down: Lease taken by 'node-b'" in caplog.text
    assert a.holder == "node-b"
    assert not await a.release()  # not leader: nothing to release
    await asyncio.wait_for(task, 2)
    assert store.record.holder == "node-b"


async def test_leader_ignores_older_or_released_records_from_a_lagging_watch() -> None:
    store = FakeLeaseStore()
    b = Elector(ElectionConfig("node-b", **CLASSIC), FakeLeaseApi(store))
    a = Elector(
        ElectionConfig("node-a", **CLASSIC), FakeLeaseApi(store), holder_unreachable=lambda h: True
    )
    await b.tick()
    b_record = store.record
    await a.tick()  # takes it from b (heartbeat lost)
    assert a.is_leader and store.record.transitions == 1
    task = asyncio.create_task(a.run())
    await asyncio.sleep(0.05)
    # the watch delivers records older than our takeover (b's renewals), then a release-like
    # record and our own holder: none of them is a takeover by another director
    for queue in store.watchers:
        queue.put_nowait(replace(b_record, resource_version="0"))
        queue.put_nowait(b_record)
        queue.put_nowait(replace(store.record, holder="", resource_version="98", transitions=9))
        queue.put_nowait(replace(store.record, resource_version="99", transitions=9))
    await asyncio.sleep(0.1)
    assert a.is_leader
    assert await a.release()
    await asyncio.wait_for(task, 2)


async def test_serving_lasts_until_the_vips_are_dropped(env) -> None:
    store, clock, a, _ = env
    during: list[tuple[bool, bool]] = []

    async def on_change(leader: bool) -> None:
        during.append((leader, a.elector.serving))

    a.elector.on_change = on_change
    assert not a.elector.serving
    await a.elector.tick()
    assert a.elector.serving
    store._store(replace(store.record, holder="node-c", transitions=1))
    clock.advance(0.4)
    await a.elector.tick()
    assert during == [(True, True), (False, True)]  # still "leading" while dropping VIPs
    assert not a.elector.serving and not a.leader
