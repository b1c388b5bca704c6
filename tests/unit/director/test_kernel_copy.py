"""A converge diffs against the agent's copy of the kernel's table (ipvs_sync.KnownTable) and
reads the whole table only when it must: at the start, after a failure, while a quiesced
destination drains, and once per resync period. The fake kernel counts its reads."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest

from lvs_operator.director.agent import Agent
from lvs_operator.director.desired import Desired
from lvs_operator.director.ipvs_sync import (
    RESYNC_DUTY,
    KnownTable,
    ReadReason,
    adopted_table,
    read_reason,
    resync_period,
)
from lvs_operator.director.table import (
    Change,
    DestKey,
    IpvsDestination,
    IpvsService,
    IpvsTable,
    Op,
    Protocol,
    ServiceEntry,
    ServiceKey,
    apply_to_table,
)
from tests.unit.director.fake_lease import FakeLeaseStore
from tests.unit.director.fakes import FakeKernel
from tests.unit.director.test_agent import K80, m, make, pool_obj, vs_obj

RS21, RS22 = DestKey("10.20.0.21", 8080), DestKey("10.20.0.22", 8080)


def reads(agent: Agent, reason: ReadReason) -> float:
    value = agent.metrics.registry.get_sample_value(
        "lvs_director_kernel_reads_total", {"group": "g1", "reason": str(reason)}
    )
    assert value is not None  # every reason is exported from the start
    return value


def weights(kernel: FakeKernel) -> dict[str, int]:
    return {d.address: d.weight for d in kernel.table[K80].destinations}


async def serving(*members: str, kernel: FakeKernel | None = None, **cfg: object) -> Agent:
    """An agent converged once on the web VirtualServer with ``members`` in its pool."""
    agent = make(kernel=kernel or FakeKernel(), store=FakeLeaseStore(), **cfg)
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj(*(m(a) for a in members))])
    await agent.converge()
    return agent


async def test_the_first_converge_reads_the_kernel_and_the_next_ones_use_the_copy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kernel = FakeKernel()
    with caplog.at_level(logging.INFO, logger="lvs_operator.director.ipvs_sync"):
        agent = await serving("10.20.0.21", kernel=kernel)
    assert kernel.reads == 1 and reads(agent, ReadReason.START) == 1
    assert weights(kernel) == {"10.20.0.21": 1}
    lines = [r for r in caplog.records if r.getMessage().startswith("kernel table read")]
    assert [r.getMessage() for r in lines] == ["kernel table read (start)"]
    assert lines[0].__dict__["reason"] == "start" and lines[0].__dict__["services"] == 0

    # a pod becomes Ready: programmed at once, no read behind it
    kernel.applied.clear()
    agent.watches.apply_pool("MODIFIED", pool_obj(m("10.20.0.21"), m("10.20.0.22")))
    await agent.converge()
    assert kernel.reads == 1
    assert [(c.op, c.dest and c.dest.key) for c in kernel.applied] == [(Op.ADD_DEST, RS22)]
    assert weights(kernel) == {"10.20.0.21": 1, "10.20.0.22": 1}

    # a pod deleted: removed, still no read
    kernel.applied.clear()
    agent.watches.apply_pool("MODIFIED", pool_obj(m("10.20.0.22")))
    await agent.converge()
    assert kernel.reads == 1
    assert [(c.op, c.dest and c.dest.key) for c in kernel.applied] == [(Op.DEL_DEST, RS21)]
    assert weights(kernel) == {"10.20.0.22": 1}

    # nothing changed: nothing read, nothing applied
    kernel.applied.clear()
    await agent.converge()
    assert kernel.reads == 1 and kernel.applied == []
    # the start tried to adopt the (empty) kernel's services first: one services read
    assert reads(agent, ReadReason.ADOPT) == 1
    assert sum(reads(agent, r) for r in ReadReason) == 2
    assert agent.ready


async def test_a_failed_apply_makes_the_next_converge_read_the_kernel() -> None:
    """The apply fails halfway (the kernel refused a change after taking the first): the
    copy no longer says what the kernel has, so the next converge reads it. Diffing against
    the copy would add the destination that went in again (the fake kernel refuses that,
    as the real one does: EEXIST)."""
    kernel = FakeKernel()
    agent = await serving("10.20.0.21", kernel=kernel)
    real_apply = kernel.apply

    def half_apply(changes: list[Change]) -> None:
        real_apply(changes[:1])
        raise RuntimeError("IPVS: File exists (1 of 2 failed)")

    kernel.apply = half_apply  # type: ignore[method-assign]
    three = pool_obj(m("10.20.0.21"), m("10.20.0.22"), m("10.20.0.23"))
    agent.watches.apply_pool("MODIFIED", three)
    with pytest.raises(RuntimeError, match="File exists"):
        await agent.converge()
    assert kernel.reads == 1  # the failed converge used the copy
    assert weights(kernel) == {"10.20.0.21": 1, "10.20.0.22": 1}  # half done

    kernel.apply = real_apply  # type: ignore[method-assign]
    kernel.applied.clear()
    await agent.converge()
    assert kernel.reads == 2 and reads(agent, ReadReason.AFTER_ERROR) == 1
    assert [(c.op, str(c.dest and c.dest.key)) for c in kernel.applied] == [
        (Op.ADD_DEST, "10.20.0.23:8080")
    ]
    assert weights(kernel) == {"10.20.0.21": 1, "10.20.0.22": 1, "10.20.0.23": 1}
    # converged again: back to the copy
    await agent.converge()
    assert kernel.reads == 2


async def test_a_failed_read_makes_the_next_converge_read_again() -> None:
    kernel = FakeKernel()
    kernel.read_error = OSError("netlink: No buffer space available")
    agent = make(kernel=kernel, store=FakeLeaseStore())
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    with pytest.raises(OSError):
        await agent.converge()
    kernel.read_error = None
    await agent.converge()
    # never known yet: still the start (the failed one stopped at its services read)
    assert reads(agent, ReadReason.ADOPT) == 2
    assert kernel.reads == 1 and reads(agent, ReadReason.START) == 1
    assert weights(kernel) == {"10.20.0.21": 1}
    kernel.read_error = OSError("netlink: No buffer space available")
    await agent.converge()  # the copy serves: the kernel's trouble is not in the way
    assert kernel.reads == 1


async def test_a_due_resync_reads_the_kernel_and_repairs_drift(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Someone changes the group's service behind the agent's back (ipvsadm -e) and adds a
    service of their own: the copy does not see it until the resync period is over; then a
    converge reads the kernel, puts the weight back and leaves the hand-made service."""
    kernel = FakeKernel()
    clock = [1000.0]
    agent = make(kernel=kernel, store=FakeLeaseStore(), kernel_resync=60.0)
    assert agent.ipvs.kernel_resync == 60.0  # the config's value reaches the converge
    agent.ipvs.clock = lambda: clock[0]
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    await agent.converge()
    assert kernel.reads == 1
    hand_made = IpvsService("192.0.2.1", 80)
    svc = kernel.table[K80].service
    kernel.table = apply_to_table(
        kernel.table,
        [
            Change(Op.EDIT_DEST, svc, IpvsDestination("10.20.0.21", 8080, weight=9)),
            Change(Op.ADD_SERVICE, hand_made),
        ],
    )
    clock[0] += 59.0
    await agent.converge()
    assert kernel.reads == 1 and weights(kernel) == {"10.20.0.21": 9}  # not seen yet
    clock[0] += 1.0
    with caplog.at_level(logging.DEBUG, logger="lvs_operator.director.ipvs_sync"):
        await agent.converge()  # the copy serves; the read runs beside it
        await agent.ipvs.resync_finished()
    assert kernel.reads == 2 and reads(agent, ReadReason.RESYNC) == 1
    assert agent.dirty.is_set()  # the drift found asks for a converge
    await agent.converge()
    assert weights(kernel) == {"10.20.0.21": 1}
    assert kernel.table[hand_made.key] == ServiceEntry(hand_made)
    assert any(r.getMessage() == "kernel table read (resync)" and r.levelno == logging.DEBUG
               for r in caplog.records)  # fmt: skip
    # the period starts again from that read
    clock[0] += 30.0
    await agent.converge()
    assert kernel.reads == 2


async def test_a_resync_without_drift_keeps_the_copy_itself() -> None:
    """The whole read equals the copy: the copy stands, its very entries (those of the desired
    table: the next diff skips them by identity), and nothing asks for a converge."""
    kernel = FakeKernel()
    clock = [1000.0]
    agent = make(kernel=kernel, store=FakeLeaseStore(), kernel_resync=60.0)
    agent.ipvs.clock = lambda: clock[0]
    agent.watches.reset_vs([vs_obj(), vs_obj("web2", vip="10.10.0.101")])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    await agent.converge()
    assert kernel.reads == 1
    clock[0] += 60.0
    dest = DestKey("10.20.0.21", 8080)
    kernel.connections = {(K80, dest): 4, (IpvsService("192.0.2.1", 80).key, dest): 9}
    agent.dirty.clear()
    await agent.converge()  # starts the resync
    await agent.ipvs.resync_finished()
    assert kernel.reads == 2 and reads(agent, ReadReason.RESYNC) == 1
    # the periodic read steps aside for converges; the start's read is one
    assert kernel.read_between == [None, agent.dirty.step_aside]
    assert agent.ipvs.active_connections == 4  # on the group's services only
    known, desired = agent.ipvs._known, agent.ipvs.desired
    assert known is not None and desired is not None and known.read_at == clock[0]
    assert known.table is desired.table  # the copy (the desired table's very object) stands
    assert not agent.dirty.is_set()


def test_the_resync_period_stretches_so_that_whole_reads_stay_a_small_share_of_the_time() -> None:
    assert resync_period(30.0, 0.3) == 30.0  # a fast node: the configured period
    assert resync_period(30.0, 1.5) == 30.0 == 1.5 * RESYNC_DUTY
    assert resync_period(30.0, 10.0) == 10.0 * RESYNC_DUTY  # 1,000 x 10 under TCG
    assert resync_period(0.0, 0.01) == 0.01 * RESYNC_DUTY


async def test_a_slow_whole_read_stretches_the_resync_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A whole read that takes 5 s of the (fake) clock: the next resync comes 5 x RESYNC_DUTY
    seconds after it, not the configured 60, and the stretch is logged once."""
    kernel = FakeKernel()
    clock = [1000.0]
    read = kernel.read

    def slow_read(between: Callable[[], object] | None = None) -> object:
        clock[0] += 5.0
        return read()

    kernel.read = slow_read  # type: ignore[method-assign]
    agent = make(kernel=kernel, store=FakeLeaseStore(), kernel_resync=60.0)
    agent.ipvs.clock = lambda: clock[0]
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    with caplog.at_level(logging.INFO, logger="lvs_operator.director.ipvs_sync"):
        await agent.converge()
    assert kernel.reads == 1
    stretched = [r for r in caplog.records
                 if r.getMessage().startswith("kernel table resync every")]  # fmt: skip
    assert len(stretched) == 1 and stretched[0].period_seconds == 5.0 * RESYNC_DUTY
    clock[0] += 60.0  # the configured period is over, the stretched one is not
    await agent.converge()
    await agent.ipvs.resync_finished()
    assert kernel.reads == 1
    clock[0] += 5.0 * RESYNC_DUTY - 60.0 - 5.0  # the read itself took 5 s of the period
    await agent.converge()
    await agent.ipvs.resync_finished()
    assert kernel.reads == 2 and reads(agent, ReadReason.RESYNC) == 1
    assert len([r for r in caplog.records
                if r.getMessage().startswith("kernel table resync every")]) == 1  # fmt: skip


async def test_a_resync_read_keeps_the_changes_converges_made_while_it_ran() -> None:
    """The resync reads on a lane of its own while converges go on: a destination a converge
    added after the read had passed its service is not lost when the read becomes the copy
    (else the next converge would add it again and the kernel refuse it)."""
    kernel = FakeKernel()
    clock = [1000.0]
    agent = make(kernel=kernel, store=FakeLeaseStore(), kernel_resync=60.0)
    agent.ipvs.clock = lambda: clock[0]
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    await agent.converge()
    before = kernel.table  # what the slow read will return: before the converge below
    gate = asyncio.Event()

    def slow_read(
        between: Callable[[], object] | None = None,
    ) -> tuple[IpvsTable, dict[tuple[ServiceKey, DestKey], int]]:
        kernel.reads += 1
        while not gate.is_set():
            time.sleep(0.005)
        return before, {}

    kernel.read = slow_read  # type: ignore[method-assign]
    clock[0] += 60.0
    agent.watches.apply_pool("MODIFIED", pool_obj(m("10.20.0.21"), m("10.20.0.22")))
    await agent.converge()  # starts the resync, adds rs2 meanwhile
    assert weights(kernel) == {"10.20.0.21": 1, "10.20.0.22": 1}
    gate.set()
    await agent.ipvs.resync_finished()
    assert kernel.reads == 2
    kernel.applied.clear()
    await agent.converge()
    assert kernel.applied == []  # the copy has rs2: nothing to add again


async def test_a_draining_destination_is_read_for_its_connections() -> None:
    """A terminating member with connections stays at weight 0, and leaves once idle: each
    of those converges reads the counts of the draining service only (one destination dump,
    not the whole table); once it left, the copy serves again."""
    kernel = FakeKernel()
    agent = await serving("10.20.0.21", "10.20.0.22", kernel=kernel)
    kernel.connections[(K80, RS22)] = 3
    kernel.connections[(K80, RS21)] = 1
    terminating = pool_obj(m("10.20.0.21"), m("10.20.0.22", terminating=True))
    agent.watches.apply_pool("MODIFIED", terminating)
    await agent.converge()
    assert (kernel.reads, kernel.partial_reads) == (1, 1)
    assert reads(agent, ReadReason.DRAIN) == 1
    assert weights(kernel) == {"10.20.0.21": 1, "10.20.0.22": 0}
    assert agent.ipvs.drain_pending
    await agent.converge()  # the drain re-check (every 2 s in the agent's loop)
    assert (kernel.reads, kernel.partial_reads) == (1, 2)
    assert weights(kernel) == {"10.20.0.21": 1, "10.20.0.22": 0}
    kernel.connections[(K80, RS22)] = 0
    await agent.converge()
    assert (kernel.reads, kernel.partial_reads) == (1, 3) and reads(agent, ReadReason.DRAIN) == 3
    assert weights(kernel) == {"10.20.0.21": 1}
    # drained: no quiesced destination left in the kernel, nothing to count
    await agent.converge()
    assert (kernel.reads, kernel.partial_reads) == (1, 3)


async def test_a_drain_reads_only_its_service_and_sees_its_destinations_anew() -> None:
    """The drain's read replaces the draining service's destinations in the copy with the
    kernel's (a destination removed behind the agent's back is seen and added again) and
    leaves the other services' as they were."""
    kernel = FakeKernel()
    agent = await serving("10.20.0.21", "10.20.0.22", "10.20.0.23", kernel=kernel)
    kernel.connections[(K80, RS22)] = 2
    svc = kernel.table[K80].service
    # behind the agent's back: rs3 removed by hand
    kernel.table = apply_to_table(
        kernel.table, [Change(Op.DEL_DEST, svc, IpvsDestination("10.20.0.23", 8080))]
    )
    terminating = pool_obj(m("10.20.0.21"), m("10.20.0.22", terminating=True), m("10.20.0.23"))
    agent.watches.apply_pool("MODIFIED", terminating)
    await agent.converge()
    assert (kernel.reads, kernel.partial_reads) == (1, 1)
    assert weights(kernel) == {"10.20.0.21": 1, "10.20.0.22": 0, "10.20.0.23": 1}


def test_the_read_rule() -> None:
    svc = IpvsService("10.10.0.100", 80, Protocol.TCP, "rr")
    both = IpvsTable.of([(svc, [IpvsDestination("10.20.0.21", 8080),
                                IpvsDestination("10.20.0.22", 8080)])])  # fmt: skip
    known = KnownTable(both, read_at=100.0)
    nothing_quiesced = Desired(both)
    draining = Desired(both, frozenset({(svc.key, RS22)}))
    assert read_reason(None, False, nothing_quiesced, 100.0, 30.0) is ReadReason.START
    assert read_reason(None, True, nothing_quiesced, 100.0, 30.0) is ReadReason.AFTER_ERROR
    assert read_reason(known, True, nothing_quiesced, 129.9, 30.0) is None
    assert read_reason(known, True, nothing_quiesced, 130.0, 30.0) is ReadReason.RESYNC
    # a period of 0: every converge reads (bench/loop_stall.py's warm converge)
    assert read_reason(known, True, nothing_quiesced, 100.0, 0.0) is ReadReason.RESYNC
    assert read_reason(known, True, draining, 100.0, 30.0) is ReadReason.DRAIN
    # a quiesced destination the kernel no longer has needs no count
    gone = KnownTable(IpvsTable.of([(svc, [IpvsDestination("10.20.0.21", 8080)])]), 100.0)
    assert read_reason(gone, True, draining, 100.0, 30.0) is None


def test_known_after_is_the_table_the_changes_make_sharing_the_desired_entries() -> None:
    """``known_after`` (the copy after a converge) is what ``apply_to_table`` computes from
    the diff, whatever the mix: services added, edited, kept, deleted, and one not owned
    (left as it is); the services of the desired table are its very entries."""
    import random

    from lvs_operator.director.ipvs_sync import known_after
    from lvs_operator.director.table import diff, owned_by_addresses

    rng = random.Random(7)

    def table(vips: list[str], scheds: tuple[str, ...]) -> IpvsTable:
        return IpvsTable.of(
            ServiceEntry(
                IpvsService(vip, 80, Protocol.TCP, rng.choice(scheds)),
                tuple(
                    IpvsDestination(f"10.20.0.{d}", 8080, rng.randint(0, 2))
                    for d in rng.sample(range(1, 9), rng.randint(0, 4))
                ),
            )
            for vip in vips
        )

    for _ in range(200):
        owned = [f"10.10.0.{i}" for i in range(1, 9)]
        actual = table([*rng.sample(owned, rng.randint(0, 8)), "10.99.0.1"], ("rr", "wlc"))
        want = table(rng.sample(owned, rng.randint(0, 8)), ("rr", "wlc"))
        changes = diff(want, actual, owned_by_addresses(owned))
        known = known_after(actual, want, changes)
        assert known == apply_to_table(actual, changes)
        assert list(known) == sorted(known)
        assert all(known[k] is want[k] for k in want)
        assert diff(want, known, owned_by_addresses(owned)) == []


async def test_a_converge_logs_where_its_time_went(caplog: pytest.LogCaptureFixture) -> None:
    """The converge's line has its seconds and each step's: a read only when it read."""
    with caplog.at_level(logging.INFO, logger="lvs_operator.director.ipvs_sync"):
        agent = await serving("10.20.0.21")
        agent.watches.apply_pool("MODIFIED", pool_obj(m("10.20.0.21"), m("10.20.0.22")))
        await agent.converge()
    lines = [r.__dict__ for r in caplog.records if r.getMessage().startswith("IPVS converged")]
    assert len(lines) == 2
    steps = ["want", "health", "read", "plan", "settings", "nft", "apply"]
    for line in lines:
        assert list(line["phases"]) == [s for s in steps if s in line["phases"]]
        assert {"want", "health", "plan", "nft", "apply"} <= line["phases"].keys()
        assert all(v >= 0 for v in line["phases"].values())
        assert line["seconds"] >= sum(line["phases"].values()) - 0.01
    assert "settings" in lines[0]["phases"] and "settings" not in lines[1]["phases"]


def test_a_big_converges_collection_freezes_what_survives_only_in_the_agents_process() -> None:
    """The agent (main.freeze_startup turns it on) freezes what survives trim_memory's
    collection, so later full collections do not walk the tables again; a test run never."""
    import gc

    from lvs_operator.director.ipvs_sync import freeze_survivors, trim_memory

    survivor = [object() for _ in range(10)]
    before = gc.get_freeze_count()
    trim_memory()
    assert gc.get_freeze_count() == before
    freeze_survivors()
    try:
        trim_memory()
        assert gc.get_freeze_count() > before
    finally:
        freeze_survivors(False)
        gc.unfreeze()
    assert survivor


# -- a restart adopts the kernel's table from its services -----------------------------------------


async def restarted(kernel: FakeKernel, *members: str) -> Agent:
    """A new agent on the kernel an earlier one programmed (the same VirtualServer)."""
    agent = make(kernel=kernel, store=FakeLeaseStore())
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj(*(m(a) for a in members))])
    return agent


async def test_a_restart_adopts_an_unchanged_table_without_reading_it_whole_then_verifies(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The services are the desired ones: the first converge takes their destinations as
    desired (no whole read before it, no write), and the whole read that follows at once
    finds them as adopted."""
    kernel = FakeKernel()
    await serving("10.20.0.21", "10.20.0.22", kernel=kernel)
    kernel.reads, kernel.applied = 0, []
    agent = await restarted(kernel, "10.20.0.21", "10.20.0.22")
    with caplog.at_level(logging.INFO, logger="lvs_operator.director.ipvs_sync"):
        await agent.converge()
        assert agent.ready and kernel.applied == []
        assert reads(agent, ReadReason.ADOPT) == 1 and reads(agent, ReadReason.START) == 0
        agent.dirty.clear()  # (set by the lists) only the verifying read may set it again
        await agent.ipvs.resync_finished()
    assert kernel.reads == 1 and reads(agent, ReadReason.RESYNC) == 1
    assert not agent.dirty.is_set()  # nothing to repair
    verified = [r for r in caplog.records if r.getMessage().startswith("kernel table verified")]
    assert len(verified) == 1 and verified[0].__dict__["differs"] is False
    await agent.converge()
    assert kernel.applied == [] and kernel.reads == 1


async def test_a_destination_changed_while_the_agent_was_down_is_repaired_after_adoption() -> None:
    """Someone set a weight by hand while no agent ran: the services still match, so the
    restart adopts; the verifying read sees the weight, and the converge it asks for puts
    the desired one back."""
    kernel = FakeKernel()
    await serving("10.20.0.21", kernel=kernel)
    svc = kernel.table[K80].service
    kernel.table = apply_to_table(
        kernel.table, [Change(Op.EDIT_DEST, svc, IpvsDestination("10.20.0.21", 8080, weight=9))]
    )
    kernel.applied = []
    agent = await restarted(kernel, "10.20.0.21")
    await agent.converge()
    assert kernel.applied == [] and weights(kernel) == {"10.20.0.21": 9}  # adopted as desired
    agent.dirty.clear()
    await agent.ipvs.resync_finished()
    assert agent.dirty.is_set()  # the read found the difference
    await agent.converge()
    assert weights(kernel) == {"10.20.0.21": 1}


async def test_a_restart_whose_services_differ_reads_the_whole_table_first() -> None:
    kernel = FakeKernel()
    await serving("10.20.0.21", kernel=kernel)
    svc = kernel.table[K80].service
    changed = IpvsService(svc.address, svc.port, svc.protocol, "wlc")  # the scheduler by hand
    kernel.table = apply_to_table(kernel.table, [Change(Op.EDIT_SERVICE, changed)])
    kernel.reads, kernel.applied = 0, []
    agent = await restarted(kernel, "10.20.0.21")
    await agent.converge()
    assert kernel.reads == 1 and reads(agent, ReadReason.START) == 1
    assert [c.op for c in kernel.applied] == [Op.EDIT_SERVICE]
    assert kernel.table[K80].service.scheduler == svc.scheduler


def test_adopted_table_takes_the_desired_destinations_only_when_every_owned_service_matches() -> (
    None
):
    mine = IpvsService("10.10.0.100", 80, Protocol.TCP, "rr")
    other = IpvsService("192.0.2.1", 80, Protocol.TCP, "wlc")
    dests = (IpvsDestination("10.20.0.21", 8080),)
    want = IpvsTable.of([(mine, dests)])
    owned = lambda key: key.address == "10.10.0.100"  # noqa: E731
    theirs = {other.key: (IpvsDestination("192.0.2.9", 80),)}
    adopted = adopted_table([mine, other], want, owned, theirs)
    assert adopted == IpvsTable.of([(mine, dests), (other, theirs[other.key])])
    assert adopted_table([mine], want, owned, {}) == want
    edited = IpvsService("10.10.0.100", 80, Protocol.TCP, "wlc")
    assert adopted_table([edited], want, owned, {}) is None  # a setting differs
    extra = IpvsService("10.10.0.100", 443, Protocol.TCP, "rr")
    assert adopted_table([mine, extra], want, owned, {}) is None  # one more of ours
    assert adopted_table([], want, owned, {}) is None  # a cold start: nothing there


def test_the_ownership_rule_is_kept_while_the_vips_are_the_same() -> None:
    from lvs_operator.director.ipvs_sync import _ownership

    first = _ownership(frozenset({"10.0.0.1", "10.0.0.2"}))
    assert _ownership(frozenset({"10.0.0.2", "10.0.0.1"})) is first
    assert first(IpvsService("10.0.0.1", 80).key) and not first(IpvsService("10.0.0.3", 80).key)
    other = _ownership(frozenset({"10.0.0.3"}))
    assert other is not first and other(IpvsService("10.0.0.3", 80).key)
    assert not other(IpvsService("10.0.0.1", 80).key)
