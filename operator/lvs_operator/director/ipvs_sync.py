"""IPVS convergence: desired table (desired.py) -> health (health.py) -> drain -> diff
against the kernel (table.py) -> apply.

The event loop also runs the election (Lease renewals, step-down deadlines): a stall of it
half a second long can leave two VIP holders. So the work that grows with the table (the
desired build, the health edit, drain, diff, the memory trim) runs in a thread
(``off_loop``) on copies of the caches taken on the loop (the watch handlers mutate them
there); the loop keeps the copying, the probe tasks, the metrics and the logs. ``loop_watch.py``
measures what is left.

Every director of a group programs IPVS (so a standby is ready to forward the moment it
takes the VIP). The kernel is converged by diff, never flushed: a restarted agent adopts the
services on its group's VIPs, and only services on VIPs it owns are ever touched (never
kube-proxy's or hand-made ones).

The diff is against the agent's copy of the kernel's table (``KnownTable``), not a fresh
read: a read of the whole table with its connection counts is one netlink dump per service,
parsed in Python, and takes seconds at scale (kernel/ipvs.py's notes have the figures), so
a pod becoming Ready would wait behind it. The copy is the last read with this agent's
applied changes since (``table.apply_to_table``). A converge reads the whole kernel table
only when there is no copy (``read_reason``: the start; or a converge failed, a read or an
apply, which may have been partly done). While a quiesced destination is still in the copy
(draining needs its connection count) it reads those services' destinations only. Once the
last whole read is older than ``kernel_resync`` (the ``--resync-interval``: the repair of
drift made behind the agent's back), a resync reads the whole table in the background, on
a lane (and a socket) of its own, and becomes the copy with the services the converges
changed meanwhile kept from the copy (``merge_read``); drift found wakes a converge. Each
read is counted in ``lvs_director_kernel_reads_total{reason}`` and logged with its reason.

A restart reads the services first (``ReadReason.ADOPT``): when those on owned VIPs are the
desired ones, their destinations are taken as desired (``adopted_table``) and the first
converge writes nothing; the whole read follows at once as a resync and verifies them.

A whole read costs the node too: at 1,000 x 10 in the test VM (TCG) one took ~10 s of the
guest's two CPUs, so a resync every 30 s kept a third of it busy: the converges that started
one had plan steps of 5-9 s (0.07 s otherwise), and VIPs lapsed in those windows. So the
period is stretched until a whole read takes at most 1/``RESYNC_DUTY`` of the time
(``resync_period``); on a node where a read takes 0.3 s, 30 s stays 30 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Set
from typing import Any, Protocol, TypeVar

from lvs_operator.api.contract import format_programmed
from lvs_operator.api.realserverpool import HealthCheck, PoolMember
from lvs_operator.api.virtualserver import VirtualServer

from . import desired as desired_mod
from . import node_settings
from .brake import WithdrawalBrake
from .config import DEFAULT_RESYNC
from .health import HealthChecker, apply_health, targets_for
from .lanes import Lane
from .metrics import Metrics
from .table import (
    Change,
    DestKey,
    IpvsDestination,
    IpvsService,
    IpvsTable,
    Op,
    ServiceEntry,
    ServiceKey,
    diff,
    owned_by_addresses,
)
from .watches import ObjectKey, Watches, health_checks

log = logging.getLogger("lvs_operator.director.ipvs_sync")

Connections = Mapping[tuple[ServiceKey, DestKey], int]
T = TypeVar("T")
# Runs a blocking function off the event loop (asyncio.to_thread); ``on_loop`` runs it inline
# (the behaviour before: bench/loop_stall.py compares the two).
OffLoop = Callable[..., Awaitable[Any]]


async def on_loop(fn: Callable[..., T], /, *args: Any) -> T:
    return fn(*args)


class Kernel(Protocol):
    """What convergence needs from the kernel (kernel/); blocking calls, run on a lane."""

    def read(
        self, between: Callable[[], object] | None = None
    ) -> tuple[IpvsTable, Connections | None]:
        """The whole table and the active connections, one dump per service; ``between``
        is called after each (a background read steps aside there: ``step_aside``)."""
        ...

    def read_services(self) -> list[IpvsService]:
        """The services alone (one dump; ``read`` adds one more per service)."""
        ...

    def read_destinations(
        self, services: Iterable[IpvsService]
    ) -> tuple[Mapping[ServiceKey, tuple[IpvsDestination, ...]], Connections]:
        """Some services' destinations with their active connections (a drain's read)."""
        ...

    def apply(self, changes: list[Change]) -> None: ...

    def prepare(
        self, table: IpvsTable, masquerade_snat: bool, vip_sourced: Set[ServiceKey] = frozenset()
    ) -> None:
        """The nftables source NAT the table's masquerade services need (to the VIP itself
        for those in ``vip_sourced``, else to the director's own address)."""
        ...

    def check_node_settings(self, ipv6: bool) -> node_settings.Outcome:
        """Read the node's sysctls (correcting a wrong one only where /proc/sys is writable)."""
        ...


class ReadReason(enum.StrEnum):
    """Why a converge reads the whole kernel table rather than diff against its copy."""

    START = "start"  # no copy yet
    AFTER_ERROR = "after-error"  # a converge failed: a read or an apply (maybe partly done)
    DRAIN = "drain"  # a quiesced destination is still in the kernel: its connections count
    # (only the services with one are read)
    RESYNC = "resync"  # the copy is older than the period: repair drift made behind our back
    # a restart: the services alone, their destinations taken as desired where every owned
    # service is the desired one (``adopted_table``); the whole read follows at once, beside
    ADOPT = "adopt"


@dataclasses.dataclass(frozen=True)
class KnownTable:
    """The kernel's table as this agent last read it, with its own changes since applied."""

    table: IpvsTable
    read_at: float  # monotonic


def adopted_table(
    services: Iterable[IpvsService],
    want: IpvsTable,
    owned: Callable[[ServiceKey], bool],
    others: Mapping[ServiceKey, tuple[IpvsDestination, ...]],
) -> IpvsTable | None:
    """The kernel's table at a restart, from its ``services`` alone: when the services on
    owned VIPs are exactly the desired ones (same keys, same settings), each with the
    desired destinations, and the other services with ``others`` (their destinations, as
    read); None when any owned service differs (then the whole table is read first).

    The destinations are not read here: a whole read takes seconds at scale (1,000 x 10:
    ~6 s in the test VM, longer than ``ipvsadm-restore`` of the table), and a restart that
    finds its own services unchanged finds their destinations as it left them, short of a
    crash in the middle of a converge or a change by hand. The whole read that follows at
    once (a resync, beside the converges) verifies them and repairs what differs."""
    found = list(services)
    mine = {s.key: s for s in found if owned(s.key)}
    wanted = {k: e for k, e in want.items() if owned(k)}
    if mine.keys() != wanted.keys() or any(mine[k] != e.service for k, e in wanted.items()):
        return None
    entries = list(wanted.values())
    entries += [ServiceEntry(s, others.get(s.key, ())) for s in found if not owned(s.key)]
    return IpvsTable.of(entries)


# a whole read may take at most 1/RESYNC_DUTY of the time between resyncs (the period is
# stretched to RESYNC_DUTY x the last whole read's seconds when that is longer)
RESYNC_DUTY = 20


def resync_period(configured: float, last_read_seconds: float) -> float:
    """Seconds between whole reads: ``configured``, or longer where a read is slow enough
    that it would keep the node busy more than 1/RESYNC_DUTY of the time."""
    return max(configured, RESYNC_DUTY * last_read_seconds)


def read_reason(
    known: KnownTable | None,
    known_before: bool,
    want: desired_mod.Desired,
    now: float,
    period: float,
) -> ReadReason | None:
    """Why this converge must read the kernel (None: the known table will do).
    ``known_before``: a table was known once (its loss is then a failure's)."""
    if known is None:
        return ReadReason.AFTER_ERROR if known_before else ReadReason.START
    if desired_mod.needs_counts(want, known.table):
        return ReadReason.DRAIN
    if now - known.read_at >= period:
        return ReadReason.RESYNC
    return None


class IpvsSync:
    def __init__(
        self,
        kernel: Kernel,
        lane: Lane,
        watches: Watches,
        health: HealthChecker,
        metrics: Metrics,
        group: str,
        masquerade_snat: bool,
        brake: WithdrawalBrake | None = None,
        kernel_resync: float = DEFAULT_RESYNC,
        read_lane: Lane | None = None,
        wake: Callable[[], None] = lambda: None,
        step_aside: Callable[[], object] | None = None,
    ) -> None:
        self.kernel = kernel
        # called by the periodic whole read between two services, in its thread: returns
        # once no converge is asked for or running (bounded; the agent's Wake.step_aside)
        self.step_aside = step_aside
        self.lane = lane
        # the whole-table reads: a lane of their own, so a resync (seconds at scale) never
        # holds up the writes of a converge (``lane``)
        self.read_lane = read_lane or lane
        self.wake = wake  # asks for a converge (a resync found drift to repair)
        self.watches = watches
        self.health = health
        self.metrics = metrics
        self.group = group
        self.masquerade_snat = masquerade_snat
        self.brake = brake or WithdrawalBrake()
        # seconds after which a converge reads the whole kernel table again (drift repair)
        self.kernel_resync = kernel_resync
        self._resync_period = kernel_resync  # stretched by slow reads (resync_period)
        # a restart adopted the kernel's destinations unread: the next resync verifies them,
        # started by the converge that adopted them (``_adopt``), and says so
        self._verify_adoption = False
        self._adopted_at = 0.0
        self.desired: desired_mod.Desired | None = None  # of the last converge that succeeded
        self.ready = False  # converged once
        # active connections on the group's services at the last full read (None: unknown)
        self.active_connections: int | None = None
        # the kernel's table without reading it (a read costs seconds at scale); None: read
        # it at the next converge (at the start, and after any failure: an apply may have
        # been partly done)
        self._known: KnownTable | None = None
        self._known_before = False
        # converges and a resync's swap of the copy, one at a time
        self._lock = asyncio.Lock()
        self._resync: asyncio.Task[None] | None = None  # the background whole read
        self._resync_retry_at = 0.0  # after a failed one (clock)
        # the services the converges changed while a resync read ran (None: none runs)
        self._touched: set[ServiceKey] | None = None
        self.clock: Callable[[], float] = time.monotonic  # of the reads' ages (tests: a fake)
        for reason in ReadReason:  # exported at 0 from the start
            metrics.kernel_reads.labels(group=group, reason=reason)
        self._reported: set[tuple[str, str, str]] = set()
        self._want_seconds = 0.0  # the last want()'s build, counted in its converge's log line
        self._queued_seconds = 0.0  # from the wake-up (a watch event) to that build
        self._prepare_error = ""  # the last prepare failure logged ("" : none)
        # node settings: when last read (monotonic), with IPv6 or not, the wrong ones' values
        self._settings_read_at: float | None = None
        self._settings_ipv6 = False
        self._settings_wrong: dict[str, str | None] = {}
        self._settings_error = ""  # the last failure to read them logged ("" : none)
        # a thread of its own for the steps of a converge (not asyncio's default executor,
        # which the VIP announcements and probes share: lanes.py)
        self.work = Lane("ipvs-work")
        self.off_loop: OffLoop = self.work.run
        # the health checks of the services of the last ``want()``: its snapshot of the caches
        self._checks: tuple[desired_mod.Desired, dict[ServiceKey, HealthCheck]] | None = None
        # each VirtualServer's part of the table, rebuilt only when it or its pool changed
        self._builder = desired_mod.DesiredBuilder()

    async def want(self, woken_at: float | None = None) -> desired_mod.Desired:
        """The desired table from the caches (problems logged once each). ``woken_at``: when
        the change that asked for it came (monotonic), for the converge's ``queued`` step.

        The caches are copied on the loop (one consistent view: nothing else runs
        meanwhile), the table is built from the copy in a thread."""
        started = time.monotonic()
        self._queued_seconds = 0.0 if woken_at is None else max(0.0, started - woken_at)
        virtual_servers = list(self.watches.virtual_servers.values())
        staged = frozenset(self.watches.staged)
        pools = dict(self.watches.pools)
        pool_checks = dict(self.watches.pool_checks)
        want, checks = await self.off_loop(
            _build, self._builder, virtual_servers, pools, pool_checks, staged
        )
        self._checks = (want, checks)
        self._want_seconds = time.monotonic() - started
        for problem in want.problems:
            key = (problem.namespace, problem.name, problem.message)
            if key not in self._reported:
                self._reported.add(key)
                log.warning(problem.message, extra={"vs": f"{problem.namespace}/{problem.name}"})
        return want

    async def check_node_settings(self, ipv6: bool, now: float) -> None:
        """Read the node settings; report each wrong one (once per value) with its fix, and
        their number in ``lvs_director_node_settings_wrong``. Traffic that needs one fails
        (masquerade without vs.conntrack); the agent goes on: the rest works."""
        # read again at the next recheck, not at every converge, whatever the outcome
        self._settings_read_at, self._settings_ipv6 = now, ipv6
        try:
            outcome = await self.work.run(self.kernel.check_node_settings, ipv6)
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            if reason != self._settings_error:
                log.warning(
                    "cannot read the node settings: %s", reason, extra={"group": self.group}
                )
            self._settings_error = reason
            return
        self._settings_error = ""
        for changed in outcome.changed:
            log.info(
                "node setting corrected (/proc/sys is writable here)",
                extra={"setting": changed.setting.key, "was": changed.was,
                       "value": changed.setting.value, "group": self.group},
            )  # fmt: skip
        wrong = {w.setting.key: w for w in outcome.wrong}
        for key, w in wrong.items():
            if key in self._settings_wrong and self._settings_wrong[key] == w.actual:
                continue
            log.error(
                "node setting wrong: %s; %s. Fix: %s, or on the node: %s",
                w.describe(), w.setting.why, node_settings.ENABLE_INIT_STEP,
                node_settings.fix_command([w.setting]),
                extra={"setting": key, "actual": w.actual, "wanted": w.setting.value,
                       "group": self.group},
            )  # fmt: skip
        for key in self._settings_wrong.keys() - wrong.keys():
            log.info("node setting right again", extra={"setting": key, "group": self.group})
        self._settings_wrong = {key: w.actual for key, w in wrong.items()}
        self.metrics.node_settings_wrong.set(len(wrong))

    async def converge(self, want: desired_mod.Desired, owned: Set[str]) -> None:
        """Make the kernel's services on the ``owned`` VIPs match ``want``."""
        async with self._lock:
            await self._converge(want, owned)

    async def _converge(self, want: desired_mod.Desired, owned: Set[str]) -> None:
        t0 = time.monotonic()
        # where a converge's time goes, in its log line (seconds per step)
        phases = Phases(t0, want=self._want_seconds, queued=self._queued_seconds)
        self._want_seconds = self._queued_seconds = 0.0
        moved, self.watches.moved = self.watches.moved, set()
        want = self.brake.apply(want, self.desired, t0, moved)
        self.metrics.withdrawals_held.set(len(self.brake.held))
        want = await self._with_health(want)
        phases.done("health")
        # unknown until this converge has applied its changes: a failure from here on
        # (a read, an apply partly done) leaves the next converge to read the kernel
        known, self._known = self._known, None
        now = self.clock()
        why_read = read_reason(known, self._known_before, want, now, self._resync_period)
        if (
            known is not None
            and now - known.read_at >= self._resync_period
            and now >= self._resync_retry_at
        ):
            self._start_resync()
        if why_read is ReadReason.RESYNC:
            why_read = None  # the resync reads in the background; the copy serves meanwhile
        if why_read is None:
            assert known is not None
            actual, connections, read_at = known.table, None, known.read_at
        elif why_read is ReadReason.DRAIN and known is not None:
            # the draining services' counts only (a whole read takes seconds at scale); the
            # resync period still runs from the last whole read
            actual, connections = await self._read_draining(want, known.table)
            read_at = known.read_at
        else:
            adopted = await self._adopt(want, owned) if why_read is ReadReason.START else None
            if adopted is None:
                actual, connections = await self._read(why_read)
                self._verify_adoption = False  # read whole: nothing left unread
            elif desired_mod.needs_counts(want, adopted):
                actual, connections = await self._read_draining(want, adopted)
            else:
                actual, connections = adopted, None
            read_at = now
        phases.done("read")
        plan = await self.off_loop(_plan, want, actual, connections, frozenset(owned))
        phases.done("plan")
        table, changes = plan.table, plan.changes
        ipv6 = any(":" in k.address for k in table.entries)
        if (
            self._settings_read_at is None
            or (ipv6 and not self._settings_ipv6)
            or t0 - self._settings_read_at >= node_settings.RECHECK_SECONDS
        ):
            await self.check_node_settings(ipv6, t0)
            phases.done("settings")
        try:
            await self.work.run(self.kernel.prepare, table, self.masquerade_snat, want.vip_sourced)
            self._prepare_error = ""
        except Exception as exc:
            # SNAT is what masquerade needs on top of IPVS; never a reason to hold back the
            # IPVS changes (a real server leaving must leave the table). Retried next converge.
            self.metrics.prepare_errors.inc()
            reason = str(exc) or type(exc).__name__
            if reason != self._prepare_error:
                log.error("nftables masquerade not set (IPVS changes go ahead; "
                          "retried on the next converge): %s", reason,
                          extra={"group": self.group})  # fmt: skip
            self._prepare_error = reason
        phases.done("nft")
        if changes:
            if self._touched is not None:  # a resync read runs: it may not see these
                self._touched.update(c.service.key for c in changes)
            await self.lane.run(self.kernel.apply, changes)
            phases.done("apply")
            for op, count in plan.ops.items():
                self.metrics.changes.labels(group=self.group, op=op).inc(count)
            log.info(
                "IPVS converged: %d change(s)",
                len(changes),
                extra={"changes": [str(c) for c in changes[:50]], "group": self.group,
                       "seconds": phases.total(), "phases": phases.seconds},
            )  # fmt: skip
        elif phases.total() >= SLOW_CONVERGE:
            log.info("IPVS converge without changes took %.1f s", phases.total(),
                     extra={"group": self.group, "seconds": phases.total(),
                            "phases": phases.seconds})  # fmt: skip
        self._known, self._known_before = KnownTable(plan.known, read_at), True
        if self._verify_adoption:
            self._start_resync()  # the whole read that verifies the adopted destinations
        self.desired = want
        if why_read is not None and why_read is not ReadReason.DRAIN:
            # without a whole read, the counts of the last one stand
            self.active_connections = plan.active
        self.metrics.services.set(len(table))
        self.metrics.destinations.set(plan.destinations)
        self.metrics.quiesced.set(plan.quiesced)
        self.metrics.converge_seconds.observe(time.monotonic() - t0)
        self.metrics.last_converge.set(time.time())
        if len(changes) > 100 or not self.ready:
            # the peak of a big read / converge back to the system (malloc_trim lets go of
            # the GIL in the thread; the collection does not, see trim_memory)
            await self.off_loop(trim_memory)
        if not self.ready:
            self.ready = True
            log.info(
                "ready: kernel converged",
                extra={"services": len(table), "destinations": plan.destinations},
            )

    def _start_resync(self) -> None:
        if self._resync is None or self._resync.done():
            self._resync = asyncio.create_task(self._resync_read(), name="ipvs-resync")

    async def close(self) -> None:
        """At the agent's stop: a resync read still running is abandoned."""
        if self._resync is not None and not self._resync.done():
            self._resync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resync

    async def resync_finished(self) -> None:
        """Until the background resync (if one runs) has swapped its read in."""
        if self._resync is not None:
            await asyncio.shield(self._resync)

    async def _resync_read(self) -> None:
        """The periodic whole read, beside the converges: it becomes the copy, with the
        services they changed meanwhile taken from the copy (the read may have missed their
        changes); drift found wakes a converge, which repairs it."""
        self._touched = set()
        started = self.clock()
        try:
            table, connections = await self._read(ReadReason.RESYNC)
        except Exception as exc:
            self._touched = None
            self._resync_retry_at = self.clock() + min(self.kernel_resync, 30.0)
            log.warning("kernel table resync failed (the copy serves; retried): %s", exc,
                        extra={"group": self.group})  # fmt: skip
            return
        async with self._lock:
            touched, self._touched = self._touched or set(), None
            known = self._known
            if known is None:
                return  # a converge failed meanwhile: the next one reads the kernel anyway
            # off the loop: at 1,000 x 10 the merge (a key per service) and the comparison
            # held it ~0.9 s under TCG (the stall sampler's finding)
            # (and the active connections' sum: 10,000 destinations, 0.26 s on the loop)
            desired = None if self.desired is None else self.desired.table
            merged, differs, active = await self.off_loop(
                _merged_resync, table, known.table, touched, desired, connections
            )
            self._known = KnownTable(merged, started)
            if active is not None:
                self.active_connections = active
        if self._verify_adoption:
            self._verify_adoption = False
            log.info("kernel table verified after the restart's adoption: %s",
                     "it differs from the copy (repairing)" if differs else "as adopted",
                     extra={"group": self.group, "differs": differs,
                            "seconds_since_adoption": round(self.clock() - self._adopted_at,
                                                            3)})  # fmt: skip
        elif differs:
            log.info("kernel table resync: the kernel differs from the copy (repairing)",
                     extra={"group": self.group})  # fmt: skip
        if differs:
            self.wake()

    async def _adopt(self, want: desired_mod.Desired, owned: Set[str]) -> IpvsTable | None:
        """A restart's table from the kernel's services alone (``adopted_table``), the
        services on other addresses with their destinations read; None: read it whole."""
        self.metrics.kernel_reads.labels(group=self.group, reason=ReadReason.ADOPT).inc()
        started = self.clock()
        services = await self.read_lane.run(self.kernel.read_services)
        mine = owned_by_addresses(owned)
        others = await self.off_loop(_not_mine, services, mine)
        dests: Mapping[ServiceKey, tuple[IpvsDestination, ...]] = {}
        if others:
            dests, _ = await self.read_lane.run(self.kernel.read_destinations, others)
        # off the loop: a key per service and a comparison with the desired one each held
        # it ~0.5 s at 1,000 services under TCG
        adopted = await self.off_loop(adopted_table, services, want.table, mine, dests)
        if adopted is not None:
            self._verify_adoption, self._adopted_at = True, started
        log.info("kernel table %s", "adopted from its services (the whole read follows)"
                 if adopted is not None else "differs from the desired services: read whole",
                 extra={"services": len(services), "group": self.group,
                        "seconds": round(self.clock() - started, 3)})  # fmt: skip
        return adopted

    async def _read(self, reason: ReadReason) -> tuple[IpvsTable, Connections | None]:
        """The whole kernel table with its connection counts (seconds at scale: once per
        resync period, or when a converge cannot do without it)."""
        self.metrics.kernel_reads.labels(group=self.group, reason=reason).inc()
        started = self.clock()
        # the periodic read steps aside while a converge is asked for or runs (between two
        # services): its parsing on a 2-CPU node tripled a pod's Ready -> kernel
        between = self.step_aside if reason is ReadReason.RESYNC else None
        table, connections = await self.read_lane.run(self.kernel.read, between)
        # the periodic and the draining reads are routine; the others are worth a line
        level = logging.DEBUG if reason in (ReadReason.RESYNC, ReadReason.DRAIN) else logging.INFO
        seconds = round(self.clock() - started, 3)
        log.log(level, "kernel table read (%s)", reason,
                extra={"reason": str(reason), "services": len(table), "seconds": seconds,
                       "group": self.group})  # fmt: skip
        self._stretch_resync(seconds)
        return table, connections

    def _stretch_resync(self, read_seconds: float) -> None:
        """The resync period after a whole read of ``read_seconds`` (a change is logged)."""
        period = resync_period(self.kernel_resync, read_seconds)
        if abs(period - self._resync_period) >= max(1.0, 0.25 * self._resync_period):
            log.info("kernel table resync every %.0f s: a whole read took %.1f s", period,
                     read_seconds, extra={"group": self.group, "period_seconds": round(period, 1),
                                          "configured_seconds": self.kernel_resync,
                                          "read_seconds": read_seconds})  # fmt: skip
            self._resync_period = period

    async def _read_draining(
        self, want: desired_mod.Desired, known: IpvsTable
    ) -> tuple[IpvsTable, Connections]:
        """The copy with the draining services' destinations read again from the kernel,
        and their connection counts."""
        keys = desired_mod.draining_services(want, known)
        self.metrics.kernel_reads.labels(group=self.group, reason=ReadReason.DRAIN).inc()
        started = time.monotonic()
        dests, counts = await self.lane.run(
            self.kernel.read_destinations, [known[k].service for k in keys]
        )
        log.debug("kernel read (drain)",
                  extra={"services": len(keys), "seconds": round(time.monotonic() - started, 3),
                         "group": self.group})  # fmt: skip
        return known.with_destinations(dests), counts

    async def _with_health(self, want: desired_mod.Desired) -> desired_mod.Desired:
        """Start/stop probes for the pools with a healthCheck; quiesce failing members."""
        if self._checks is not None and self._checks[0] is want:
            checks = self._checks[1]
        else:  # a table not from want(): the checks of the caches now
            checks = self.watches.health_checks()
        self._checks = None
        # without checks, or with nothing unhealthy, no trip to the work thread: each trip
        # costs ~5-10 ms of a pod's Ready -> kernel under TCG, and most groups have neither
        decides, timings = (
            await self.off_loop(targets_for, want.table, checks) if checks else ({}, {})
        )
        self.health.update(timings)  # on the loop: starts and cancels probe tasks
        unhealthy = self.health.unhealthy()
        if not unhealthy:
            return want  # (apply_health would return the table as it is)
        table = await self.off_loop(apply_health, want.table, decides, unhealthy)
        return dataclasses.replace(want, table=table)

    @property
    def drain_pending(self) -> bool:
        return bool(self.desired and self.desired.quiesced)


_last_programmed: tuple[dict[str, int], str] = ({}, format_programmed({}))


# a converge with nothing to change that takes this long (seconds) is logged with its steps
SLOW_CONVERGE = 1.0


class Phases:
    """The seconds each step of a converge took, for its log line. ``queued``: from the
    wake-up (a watch event, a health change) to the desired table's build; not in the total
    (the converge's own time), but part of a pod's Ready -> kernel."""

    def __init__(self, started: float, want: float = 0.0, queued: float = 0.0) -> None:
        self.started = self._last = started
        self.want = want
        self.seconds: dict[str, float] = {"queued": round(queued, 3)} if queued else {}
        if want:
            self.seconds["want"] = round(want, 3)

    def done(self, step: str) -> None:
        now = time.monotonic()
        self.seconds[step] = round(now - self._last, 3)
        self._last = now

    def total(self) -> float:
        """From the desired table's build to now."""
        return round(self.want + time.monotonic() - self.started, 3)


def programmed(want: desired_mod.Desired) -> str:
    """The ``lvs.io/programmed`` annotation: the generation of each VirtualServer programmed
    (contract.format_programmed: bounded in size). Formatted again only when the map changed:
    a large group's digests take tens of milliseconds, and most converges change no
    generation."""
    global _last_programmed
    generations, text = _last_programmed
    if generations != want.generations:
        generations = dict(want.generations)
        text = format_programmed(generations)
        _last_programmed = (generations, text)
    return text


def _build(
    builder: desired_mod.DesiredBuilder,
    virtual_servers: list[VirtualServer],
    pools: Mapping[ObjectKey, tuple[PoolMember, ...]],
    pool_checks: Mapping[ObjectKey, HealthCheck | None],
    staged: frozenset[ObjectKey] = frozenset(),
) -> tuple[desired_mod.Desired, dict[ServiceKey, HealthCheck]]:
    """Off the loop: the desired table and its services' health checks, from cache copies."""
    desired = builder.build(virtual_servers, pools, staged)
    return desired, health_checks(virtual_servers, pool_checks)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a converge programs, and the figures its metrics report (computed off the loop)."""

    table: IpvsTable
    changes: list[Change]
    known: IpvsTable  # the kernel's table once the changes are applied
    ops: dict[str, int]  # changes by op
    destinations: int
    quiesced: int  # destinations at weight 0 still draining
    active: int | None = None  # active connections on the table's services (None: unknown)


def _plan(
    want: desired_mod.Desired,
    actual: IpvsTable,
    connections: Connections | None,
    owned: frozenset[str],
) -> Plan:
    table = desired_mod.drain(want, actual, connections)
    changes = diff(table, actual, _ownership(owned))
    ops: dict[str, int] = {}
    for change in changes:
        ops[str(change.op)] = ops.get(str(change.op), 0) + 1
    # few are quiesced: look each up, not every destination of the table
    quiesced = sum(
        1
        for k, dk in want.quiesced
        if k in table and any(d.key == dk for d in table[k].destinations)
    )
    active = None
    if connections is not None:
        active = sum(n for (service, _), n in connections.items() if service in table)
    return Plan(table, changes, known_after(actual, table, changes), ops, table.dest_count(),
                quiesced, active)  # fmt: skip


_last_ownership: tuple[frozenset[str], Callable[[ServiceKey], bool]] | None = None


def _ownership(owned: frozenset[str]) -> Callable[[ServiceKey], bool]:
    """``owned_by_addresses(owned)``, kept while the VIPs are the same: it canonicalises each
    address (1,000 calls, ~10 ms of a pod's converge under TCG), and they seldom change."""
    global _last_ownership
    last = _last_ownership
    if last is not None and last[0] == owned:
        return last[1]
    ownership = owned_by_addresses(owned)
    _last_ownership = (owned, ownership)
    return ownership


def known_after(actual: IpvsTable, table: IpvsTable, changes: list[Change]) -> IpvsTable:
    """The kernel's table once ``changes`` (``diff(table, actual, ...)``) are applied: each
    service of ``table`` as ``table`` has it (the diff covers them all), with ``table``'s
    very entries, so that the next diff skips every one the next desired table shares with
    this one (``diff``: ``is``); the services it deleted gone; the others as they were.
    ``table.apply_to_table`` computes the same (its tests say so) but rebuilds every entry a
    change names: a cold converge's 11,000 changes at 1,000 x 10 took ~0.35 s."""
    deleted = {c.service.key for c in changes if c.op is Op.DEL_SERVICE}
    if not deleted and actual.entries.keys() == table.entries.keys():
        return table  # every service as ``table`` has it: its keys too (the next diff's look)
    if not deleted and actual.entries.keys() >= table.entries.keys():
        return actual.sharing(table)  # no service added or deleted: the order stands
    entries = {k: e for k, e in actual.items() if k not in deleted}
    entries.update(table.entries)
    return IpvsTable(dict(sorted(entries.items())))


def _not_mine(services: list[IpvsService], mine: Callable[[ServiceKey], bool]) -> list[IpvsService]:
    """The services on addresses this group does not own (a key made for each: off the loop)."""
    return [s for s in services if not mine(s.key)]


def _merged_resync(
    read: IpvsTable,
    copy: IpvsTable,
    touched: Set[ServiceKey],
    desired: IpvsTable | None = None,
    connections: Connections | None = None,
) -> tuple[IpvsTable, bool, int | None]:
    """``merge_read``; whether it differs from the copy (drift to repair); the active
    connections on the ``desired`` services (None: either unknown). Without drift
    the copy itself stands: its very entries are the desired table's, so the next diff skips
    them by identity and the read's 11,000 objects (at 1,000 x 10) go at once; as the read,
    the next converge's plan compared every entry (1.3 s under TCG) and the process kept both."""
    active = None
    if desired is not None and connections is not None:
        active = sum(n for (service, _), n in connections.items() if service in desired)
    merged = merge_read(read, copy, touched)
    if merged == copy:
        return copy, False, active
    return merged, True, active


def merge_read(read: IpvsTable, copy: IpvsTable, touched: Set[ServiceKey]) -> IpvsTable:
    """A whole read made while converges changed the ``touched`` services: it may or may
    not show their changes, the agent's copy does. Everything else as read."""
    entries = [e for k, e in read.items() if k not in touched]
    entries += [copy[k] for k in touched if k in copy]
    return IpvsTable.of(entries)


_freeze_survivors = False


def freeze_survivors(on: bool = True) -> None:
    """Whether ``trim_memory`` freezes what its collection leaves (the agent's process:
    main.freeze_startup)."""
    global _freeze_survivors
    _freeze_survivors = on


def trim_memory() -> None:
    """Collect, then hand freed heap back to the OS (glibc): RSS after a big converge or
    list is otherwise its peak for the process's lifetime.

    Run in a thread: ``malloc_trim`` (a ctypes call) releases the GIL; ``gc.collect`` holds
    it for the whole collection wherever it runs, which is why the agent freezes its start-up
    objects (main.py) so a full collection only walks what was made since. What survives
    this collection is frozen too: at 1,000 services x 10 destinations the tables and caches
    are ~100,000 objects, which every later full collection (automatic ones included) would
    walk again while the loop waits (0.3 s in the TCG test VM). Frozen objects are still
    freed when their last reference goes (the tables hold no reference cycles); only cyclic
    garbage among them would be kept. Only in the agent's process (``freeze_survivors``):
    not in a test run, where freezing would keep every test's garbage."""
    import ctypes
    import gc

    gc.collect()
    if _freeze_survivors:
        gc.freeze()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)
