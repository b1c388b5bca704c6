"""Connection synchronisation: which IPVS sync daemons (kernel/ipvs_netlink.py) a director
runs, and keeping them so.

Every director of a group runs a **backup** daemon, always: it receives the leader's
connection table, so the moment it takes over, its IPVS knows the established connections.
The leader runs a **master** as well (the kernel runs both at once; the master does not
hear its own multicast). A takeover starts the master, a step-down stops it; the backup is
never stopped by a leadership change, so no update is missed around one.

Each group has its own sync id (the kernel's is 8 bits) and multicast group, derived from
the group's name, so that two groups on one segment do not fill each other's tables.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from ..api.contract import DirectorSync, SyncRecord
from .kernel.ipvs_netlink import SYNC_BACKUP, SYNC_MASTER, SyncDaemon
from .peer import SyncReport

log = logging.getLogger("lvs_operator.director.sync")

DEFAULT_PORT = 8848  # the kernel's IP_VS_SYNC_PORT
# the connection table with each entry's origin: LOCAL (forwarded here) or SYNC (learned
# from the master); per network namespace, like the agent's IPVS
CONN_SYNC_TABLE = "/proc/net/ip_vs_conn_sync"
DEFAULT_TTL = 1  # the segment only: directors share the VIP's L2 anyway (gratuitous ARP)
# A backup is judged not receiving once the leader has served connections this long while
# the backup held none it received. Well above the sync lag (0.3-1.6 s measured: the master
# sends after 3 packets of a connection and batches) and the leader's connection count's age
# (read with each full read of the kernel's table, at least every --resync-interval, 30 s by
# default: ipvs_sync.py).
RECEIVE_WINDOW = 60.0


def sync_id(group: str) -> int:
    """The group's sync id, 1-255 (0 would make a backup accept every group's)."""
    return 1 + hashlib.sha256(group.encode()).digest()[0] % 255


def multicast_group(group: str) -> str:
    """The group's IPv4 multicast group, in the organisation-local scope 239.255.0.0/16."""
    digest = hashlib.sha256(group.encode()).digest()
    return f"239.255.{digest[1]}.{digest[2] or 1}"


@dataclass(frozen=True)
class SyncSettings:
    ifname: str = ""  # "": the link of the group's first VIP
    port: int = DEFAULT_PORT
    ttl: int = DEFAULT_TTL
    enabled: bool = True


def desired_daemons(
    group: str, leader: bool, vip_link: str | None, settings: SyncSettings
) -> set[SyncDaemon]:
    """The daemons this director should run: none without a link to sync on."""
    ifname = settings.ifname or vip_link
    if not settings.enabled or not ifname:
        return set()
    backup = SyncDaemon(
        SYNC_BACKUP, ifname, sync_id(group), multicast_group(group), settings.port, settings.ttl
    )
    return {backup, replace(backup, state=SYNC_MASTER)} if leader else {backup}


def same(want: SyncDaemon, have: SyncDaemon) -> bool:
    """Whether a running daemon is the one wanted (the kernel reports the message length it
    computed from the MTU when none was asked for)."""
    return replace(have, maxlen=want.maxlen if not want.maxlen else have.maxlen) == want


@dataclass(frozen=True)
class DaemonPlan:
    stop: tuple[int, ...] = ()  # states
    start: tuple[SyncDaemon, ...] = ()


def plan_daemons(desired: Iterable[SyncDaemon], running: Iterable[SyncDaemon]) -> DaemonPlan:
    """Stop what runs but is not wanted (or differs), start what is wanted and missing. A
    daemon that is right is left alone: restarting a backup would lose updates."""
    want = {d.state: d for d in desired}
    have = {d.state: d for d in running}
    stop, start = [], []
    for state in (SYNC_MASTER, SYNC_BACKUP):
        w, h = want.get(state), have.get(state)
        if h is not None and (w is None or not same(w, h)):
            stop.append(state)
        if w is not None and (h is None or not same(w, h)):
            start.append(w)
    return DaemonPlan(tuple(stop), tuple(start))


def count_synced(lines: Iterable[str]) -> int:
    """The entries of ``/proc/net/ip_vs_conn_sync`` (header first) whose origin is SYNC:
    what the backup daemon received. 0 for a table without an Origin column."""
    it = iter(lines)
    header = next(it, "").split()
    if "Origin" not in header:
        return 0
    col = header.index("Origin")
    count = 0
    for line in it:
        fields = line.split()
        if len(fields) > col and fields[col].upper() == "SYNC":
            count += 1
    return count


def read_synced(path: str = CONN_SYNC_TABLE) -> int | None:
    """``count_synced`` of this namespace's table (None: it cannot be read, e.g. no ip_vs).
    Reads the whole table: O(connections), paid on each scrape of a running backup."""
    try:
        with open(path, encoding="ascii", errors="replace") as table:
            return count_synced(table)
    except OSError:
        return None


class DaemonKernel(Protocol):
    """The kernel's sync daemons in the agent's namespace (kernel/ipvs_netlink.IpvsNetlink)."""

    def daemons(self) -> list[SyncDaemon]: ...

    def start_daemon(self, daemon: SyncDaemon) -> int: ...

    def stop_daemon(self, state: int) -> int: ...


Run = Callable[..., Awaitable[Any]]  # runs a blocking kernel call off the event loop


class ConnectionSync:
    """Keeps this director's sync daemons as ``desired_daemons`` says: called at start-up,
    on every leadership change and when the group's VIP link changes. Errors are logged once
    per change (with the fix where one is known) and never raised: connection sync is a
    bonus on top of failover, never a reason to stop serving."""

    def __init__(
        self,
        group: str,
        settings: SyncSettings,
        kernel: DaemonKernel,
        run: Run,
        synced: Callable[[], int | None] = read_synced,
    ):
        self.group, self.settings, self.kernel, self.run = group, settings, kernel, run
        self._synced = synced  # the count of entries the backup received (read_synced)
        self.running: set[SyncDaemon] = set()
        self.problem = ""
        self._lock = asyncio.Lock()

    async def apply(self, leader: bool, vip_link: str | None) -> DaemonPlan:
        async with self._lock:  # a leadership change and a placement must not interleave
            desired = desired_daemons(self.group, leader, vip_link, self.settings)
            try:
                running = await self.run(self.kernel.daemons)
            except Exception as exc:
                self._report(f"reading the IPVS sync daemons failed: {exc}")
                return DaemonPlan()
            plan = plan_daemons(desired, running)
            problems = []
            for state in plan.stop:
                err = await self.run(self.kernel.stop_daemon, state)
                if err not in (0, errno.ESRCH):
                    problems.append(f"stopping the {STATE_NAMES[state]}: {os.strerror(err)}")
            for daemon in plan.start:
                err = await self.run(self.kernel.start_daemon, daemon)
                if err == 0:
                    log.info("IPVS sync daemon started", extra={
                        "state": STATE_NAMES[daemon.state], "interface": daemon.ifname,
                        "sync_id": daemon.sync_id, "group": daemon.group})  # fmt: skip
                elif err != errno.EEXIST:
                    problems.append(f"starting the {STATE_NAMES[daemon.state]} on "
                                    f"{daemon.ifname}: {os.strerror(err)}{_hint(err)}")  # fmt: skip
            try:
                self.running = set(await self.run(self.kernel.daemons))
            except Exception:
                self.running = set()
            self._report("; ".join(problems))
            return plan

    def runs(self, state: int) -> int:
        """1 if the kernel ran a daemon in ``state`` at the last read-back (metrics)."""
        return 1 if any(d.state == state for d in self.running) else 0

    def report(self, synced: int, received_ago: int | None) -> SyncReport:
        """This director's sync state (the daemons read back at the last change)."""
        return report_of(self.running, synced, received_ago)

    def synced_connections(self) -> int:
        """Connections this node's backup daemon received (0 while it runs none): a standby
        whose leader serves connections but that shows none here receives no sync traffic
        (multicast filtered, another interface, another sync id)."""
        if not self.runs(SYNC_BACKUP):
            return 0
        return self._synced() or 0

    def _report(self, problem: str) -> None:
        if problem and problem != self.problem:
            log.error("connection sync: %s", problem, extra={"group": self.group})
        elif not problem and self.problem:
            log.info("connection sync: running", extra={"group": self.group})
        self.problem = problem


STATE_NAMES = {SYNC_MASTER: "master", SYNC_BACKUP: "backup"}


def report_of(running: Iterable[SyncDaemon], synced: int, received_ago: int | None) -> SyncReport:
    """This director's sync state for its probes and the Lease: the master if it runs one
    (the leader), else the backup, else off."""
    by_state = {d.state: d for d in running}
    daemon = by_state.get(SYNC_MASTER) or by_state.get(SYNC_BACKUP)
    if daemon is None:
        return SyncReport("off")
    role = STATE_NAMES[daemon.state]
    return SyncReport(role, daemon.sync_id, daemon.ifname[:15], synced, received_ago)


def judge_receiving(
    report: SyncReport, serving_for: float | None, window: float = RECEIVE_WINDOW
) -> str:
    """Whether a backup receives the leader's connections: "True" while its table holds
    some (they stay until their timeout, up to 15 min for an established TCP connection:
    a link that stops carrying sync shows as "False" only once they expired); "False" when
    the leader has served connections for ``window`` (``serving_for``: seconds, None: it
    serves none) and the backup saw none for as long; "Unknown" otherwise (nothing to sync,
    or too soon). "" for a director that runs no backup alone (the leader, or off)."""
    if report.role != "backup":
        return ""
    if report.synced > 0:
        return "True"
    if serving_for is None or serving_for < window:
        return "Unknown"
    if report.received_ago is not None and report.received_ago < window:
        return "Unknown"
    return "False"


def director_sync(report: SyncReport, serving_for: float | None) -> DirectorSync:
    """A director's entry on the Lease (SYNC_ANNOTATION), judged by the leader."""
    return DirectorSync(
        report.role, report.sync_id, report.interface, judge_receiving(report, serving_for)
    )


class Reported(Protocol):
    """A standby's newest confirmation (peer.Confirmation): when it last heard us lead (our
    clock) and the sync state its probe carried."""

    @property
    def at(self) -> float: ...

    @property
    def sync(self) -> SyncReport | None: ...


def sync_record(
    leader: str,
    own: SyncReport,
    standbys: Mapping[str, Reported],
    serving_for: float | None,
    now: float,
    fresh_within: float,
) -> SyncRecord:
    """The leader's SYNC_ANNOTATION: its own state and that of each standby that confirmed
    within ``fresh_within`` with a sync state (a standby gone, or of a version that sends
    none, is left out: the status shows no sync state for it rather than a stale one)."""
    directors = {leader: director_sync(own, None)}
    for identity, confirmation in standbys.items():
        report = confirmation.sync
        if report is not None and identity != leader and now - confirmation.at <= fresh_within:
            directors[identity] = director_sync(report, serving_for)
    return SyncRecord(leader, directors)


class SyncClocks:
    """Since when the leader serves connections, and when this director's backup last held
    received ones; pure (the caller passes the time)."""

    def __init__(self) -> None:
        self.serving_since: float | None = None
        self.received_at: float | None = None

    def serving(self, active_connections: int | None, now: float) -> None:
        """The leader's active connections at ``now`` (None: unknown, nothing changes)."""
        if active_connections is None:
            return
        if active_connections <= 0:
            self.serving_since = None
        elif self.serving_since is None:
            self.serving_since = now

    def serving_for(self, now: float) -> float | None:
        return None if self.serving_since is None else now - self.serving_since

    def synced(self, count: int, now: float) -> None:
        if count > 0:
            self.received_at = now

    def received_ago(self, now: float) -> int | None:
        return None if self.received_at is None else int(now - self.received_at)


def _hint(err: int) -> str:
    if err == errno.ENODEV:
        return (
            " (no such interface on this node: set the sync interface, or leave it empty "
            "to sync on the VIP's link)"
        )
    if err == errno.EPERM:
        return " (the agent needs CAP_NET_ADMIN)"
    return ""
