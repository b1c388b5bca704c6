"""``lvs-operator director``: the director agent (one per director node, a DaemonSet pod).

    watches.py (the group's VirtualServers, RealServerPools' members and checks)
        -> ipvs_sync.py: desired.py -> health.py -> diff (table.py) -> the kernel (kernel.py)
    election.py (the Lease) -> vip_owner.py (VIPs on the interface; vip.py announces them)
    handover.py (SIGTERM: retire, relay, drain), heartbeat.py (takeover before Lease expiry)
    main.py: flags and LVS_* variables (config.py), logs.py, endpoints.py, metrics.py

Every director of a group programs IPVS (so a standby is ready to forward the moment it
takes the VIP); only the Lease holder holds the VIPs. The kernel is converged by diff, never
flushed: a restarted agent adopts the services on its group's VIPs. The first converge waits
for both initial lists, so a restart never removes anything because of a partial view.

Start-up order: read the kernel, take one election step and list the group's VirtualServers
(both bounded by ``--startup-grace``, one second); if this agent is not the leader, drop
the group's VIPs from the node: a restarted agent that lost its Lease while it was down never
answers for a VIP the new leader holds. Only the group's VIPs are ever touched (IPVS services
on them, the addresses): never other IPVS services of the node (kube-proxy's, by hand). A
VirtualServer deleted while every agent of the group was down leaves its service behind
(nothing names it any more): delete it by hand (``ipvsadm -D``).

Endpoints: ``:LVS_HEALTH_PORT`` ``/healthz`` (liveness: the event loop answers) and
``/readyz`` (readiness: initial lists done and the kernel converged once);
``:LVS_METRICS_PORT`` ``/metrics`` (Prometheus).

SIGTERM / SIGINT: hand over (handover.py): the leader moves its VIPs to ``lo`` (it stops
answering ARP for them but keeps serving the connections in flight), releases the Lease
(holderIdentity "") with a ``lvs.io/handover`` note that makes the new leader relay those
connections back to it, waits until they are done (at most ``--handover-drain`` seconds),
drops the VIPs and exits 0. ``--handover-drain 0``: drop the VIPs before releasing, no relay.
IPVS services stay (the standby has its own; a restart adopts them).

Logs are JSON lines naming the objects concerned (vs, pool, vip, lease, identity).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Set
from functools import partial
from typing import Protocol

from ..api.contract import (
    SYNC_ANNOTATION,
    VIP_PROBLEMS_ANNOTATION,
    format_sync,
    format_vip_problems,
)
from ..api.network import canonical_ip
from ..heap import HeapTrimmer
from ..listwatch import KubeClient
from .brake import WithdrawalBrake
from .config import LIFETIME_RENEWALS, AgentConfig
from .conn_restore import RestoreOutcome
from .election import PROGRAMMED_ANNOTATION, Elector, KubeLeaseApi, LeaseApi
from .endpoints import serve
from .events import (
    AgentEvents,
    EventPoster,
    health_events,
    kernel_refused_events,
    vip_events,
    vip_problem_events,
)
from .handover import HandoverKernel, HandoverNode, PlannedHandover, warm_up
from .health import HealthChecker, Probe
from .heartbeat import Heartbeat
from .ipvs_sync import Connections, IpvsSync, Kernel, programmed
from .lanes import Lane
from .loop_watch import GcWatch, LoopWatch, StallSampler
from .metrics import Metrics
from .peer import SyncReport
from .sync import (
    SYNC_BACKUP,
    SYNC_MASTER,
    ConnectionSync,
    DaemonKernel,
    SyncClocks,
    SyncSettings,
    sync_record,
)
from .table import Change, ServiceKey
from .traffic import StatsReader, TrafficCollector, TrafficPoller
from .vip import PROBE_ROUNDS, raw_sockets_allowed
from .vip_owner import HAND_IN_PATIENCE, PROBE_TIMEOUT, LaneWait, VipNode, VipOwner, first_vip
from .watches import Watches

log = logging.getLogger("lvs_operator.director.agent")

DRAIN_RECHECK = 2.0  # seconds between looks at quiesced destinations' connection counts
PRECHECK_MAX_AGE = 0.25  # a VIP probe this fresh stands for one at the takeover
# the probe starts this long before the holder is judged silent: a silent probe listens
# PROBE_ROUNDS windows of PROBE_TIMEOUT, and its result should be in by the judgement (with
# 0.1 s, the takeover waited 0.07-0.09 s for it: bench/e2e_failover.py --timeline). A gated
# standby's shorter limit (0.2 s) caps the lead at 0.1 s: its takeover waits the rest of the
# probe (0.04-0.07 s in the bench's VM), still sooner than a whole --peer-timeout.
PRECHECK_LEAD = PROBE_ROUNDS * PROBE_TIMEOUT + 0.03
PRECHECK_WAIT_LOGGED = 0.02
HAND_IN_RECHECK = 0.05  # seconds between looks at a VIP another node still answers for
# a converge woken within COALESCE_WINDOW s of the last one's end (a burst of watch events:
# a rollout, a resync of many pools) waits COALESCE s to gather the rest; one woken after a
# quiet spell (one pod's Ready) starts at once
COALESCE, COALESCE_WINDOW = 0.02, 0.1
# the longest a background read (the traffic counters, the periodic whole read) waits for a
# converge between two services: a burst of converges slows the read, never stops it
STEP_ASIDE_LIMIT = 0.25


def coalesce_delay(since_last_converge: float) -> float:
    """Seconds a woken converge waits for the rest of a burst (COALESCE_WINDOW's note)."""
    return COALESCE if since_last_converge < COALESCE_WINDOW else 0.0


# how often a director refreshes its sync state (a standby reads its table's received
# connections, O(connections); the leader writes the group's states on the Lease)
SYNC_REPORT_INTERVAL = 10.0


class ConntrackRestorer(Protocol):
    """Conntrack entries for synced connections (kernel/conntrack.KernelConntrack)."""

    def restore(self, vip_sourced: Set[ServiceKey]) -> RestoreOutcome: ...


class EarlyRenewal(Protocol):
    """The process's first-step VIP renewal (main.py), running until the agent's own."""

    def stop(self, timeout: float = 1.0) -> None: ...


def late_round(
    previous: float | None,
    due: float,
    started: float,
    ended: float,
    lifetime: float,
    lane_wait: LaneWait | None,
) -> dict[str, object] | None:
    """The fields of a ``VIP lifetime round late`` line, or None when the round was in time:
    it started at most half a lifetime after the one before and took less than half a
    lifetime. Where the time went: the thread woke late (``woke_late_seconds``: the process
    or the node starved), the round waited in line on the VIP lane (behind ``behind``, which
    had run ``behind_seconds`` by then), or the renewal itself (the look and the batch)."""
    gap = None if previous is None else started - previous
    took = ended - started
    if (gap is None or gap < lifetime / 2) and took < lifetime / 2:
        return None
    waited = lane_wait.seconds if lane_wait is not None else 0.0
    behind = lane_wait.behind if lane_wait is not None else None
    return {
        "since_last_round_seconds": None if gap is None else round(gap, 3),
        "woke_late_seconds": round(max(0.0, started - due), 3),
        "round_seconds": round(took, 3),
        "lane_wait_seconds": round(waited, 3),
        "renewal_seconds": round(max(0.0, took - waited), 3),
        "behind": behind[0] if behind else None,
        "behind_seconds": round(behind[1], 3) if behind else None,
        "lifetime_seconds": lifetime,
    }


class Wake(asyncio.Event):
    """The converge loop's wake-up, which remembers when the first request since the loop
    last took it came (a converge's ``queued`` step: part of a pod's Ready -> kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.since: float | None = None
        # set while no converge is asked for or running (``settled``); read by threads
        self.idle = threading.Event()

    def set(self) -> None:
        if self.since is None:
            self.since = time.monotonic()
        self.idle.clear()
        super().set()

    def settled(self) -> None:
        """A converge ended: idle, unless another was asked for meanwhile."""
        if not self.is_set():
            self.idle.set()

    def step_aside(self, limit: float = STEP_ASIDE_LIMIT) -> None:
        """In a background read's thread, between two services: wait (at most
        ``limit``) while a converge is asked for or runs. On a node with two CPUs the reads'
        parsing (seconds at 1,000 x 10) slowed a pod's converge threefold: its steps wait for
        the GIL and the CPU."""
        self.idle.wait(limit)

    def take(self) -> float | None:
        """Clear it; when the first request it held came (None: none came)."""
        self.clear()
        since, self.since = self.since, None
        return since


class Agent:
    """Lifecycle and wiring: the caches feed IPVS convergence, the election moves the VIPs."""

    def __init__(
        self,
        cfg: AgentConfig,
        client: KubeClient | None,
        kernel: Kernel,
        vips: VipNode,
        lease_api: LeaseApi | None = None,
        metrics: Metrics | None = None,
        netlink: Lane | None = None,
        vip_lane: Lane | None = None,
        handover_node: HandoverNode | None = None,
        peer_key: bytes | None = None,
        early_renewal: EarlyRenewal | None = None,
        daemons: DaemonKernel | None = None,
        traffic: Callable[[], StatsReader] | None = None,
        events: EventPoster | None = None,
        conntrack: ConntrackRestorer | None = None,
    ) -> None:
        self.cfg = cfg
        # conntrack entries for synced connections after a crash takeover (None: unit fakes
        # without it); see conn_restore.py
        self.conntrack = conntrack
        self._restored = False  # done for this leadership
        # the process's first-step renewal (main.py), until this agent's own takes over
        self.early_renewal = early_renewal
        self.client = client
        self._can_probe = raw_sockets_allowed()  # the ARP check a gated standby promises
        self.kernel = kernel
        self.dirty = Wake()
        self._converged_at = float("-inf")  # when the last converge ended (monotonic)
        self.stopping = asyncio.Event()
        self.netlink = netlink or Lane("ipvs")
        self.vip_lane = vip_lane or Lane("vip")
        self.metrics = metrics or Metrics(cfg.group)
        # the Lease's owner, looked up beside the election (KubeLeaseApi.find_owner)
        self._find_lease_owner: Callable[[], Coroutine[None, None, object]] | None = None
        if lease_api is None:
            assert client is not None, "the Lease API needs a client"
            kube_lease = KubeLeaseApi(client, cfg.namespace, cfg.lease_name)
            if cfg.pod_name:
                self._find_lease_owner = partial(kube_lease.find_owner, cfg.pod_name)
            lease_api = kube_lease
        self.elector = Elector(
            cfg.election(), lease_api, self._on_leader_change, vip_in_use=self._vip_in_use,
            early_take=self._early_take,
        )  # fmt: skip
        self.metrics.authority.set_function(self.elector.authority_left)
        self.metrics.watch_lease(self._lease_seen)
        self.events = AgentEvents(events, cfg.node_name)
        self.vips = VipOwner(vips, self.vip_lane, self.metrics, on_placed=self._placed)
        self.watches = Watches(
            self.dirty.set, lambda vip: self.vips.own([vip]), cfg.group, cfg.vip_ranges
        )
        self.health = HealthChecker(self.dirty.set)
        self.ipvs = IpvsSync(
            kernel, self.netlink, self.watches, self.health, self.metrics, cfg.group,
            cfg.masquerade_snat, WithdrawalBrake(cfg.brake), cfg.kernel_resync_period,
            read_lane=Lane("ipvs-read"), wake=self.dirty.set, step_aside=self.dirty.step_aside,
        )  # fmt: skip
        node = handover_node or HandoverKernel()
        self.handover = PlannedHandover(
            cfg.node_name, cfg.handover_drain, node, self.vips, self.elector, self.vip_lane,
            self._connections, self.metrics.handover_relays.inc,
        )  # fmt: skip

        async def node_address(ifname: str, version: int, exclude: list[str]) -> str | None:
            return await self.vip_lane.run(node.link_address, ifname, version, exclude)

        # the kernel's IPVS sync daemons (None: no connection sync, e.g. unit fakes)
        self.sync = (
            ConnectionSync(
                cfg.group,
                SyncSettings(ifname=cfg.sync_interface, enabled=cfg.connection_sync),
                daemons,
                self.netlink.run,
            )
            if daemons is not None
            else None
        )
        if self.sync is not None:
            sync = self.sync
            self.metrics.sync_master.set_function(lambda: sync.runs(SYNC_MASTER))
            self.metrics.sync_backup.set_function(lambda: sync.runs(SYNC_BACKUP))
            self.metrics.sync_problem.set_function(lambda: 1 if sync.problem else 0)
            self.metrics.synced_connections.set_function(sync.synced_connections)
        self._sync_task: asyncio.Task[None] | None = None
        # traffic per service and real server for /metrics (traffic.py; None: unit fakes)
        self.traffic: TrafficPoller | None = None
        if traffic is not None and cfg.traffic_interval > 0:
            collector = TrafficCollector(cfg.group, self._own_services)
            self.metrics.registry.register(collector)
            self.traffic = TrafficPoller(collector, traffic, cfg.traffic_interval,
                                         after_read=HeapTrimmer().trim,
                                         step_aside=self.dirty.step_aside)  # fmt: skip
        self._sync_again = False
        self._precheck: asyncio.Task[tuple[float, set[str]]] | None = None
        self._hand_in: asyncio.Task[None] | None = None
        self._converge_error = ""  # the last converge failure's reason ("": none)
        # what the last VIP reconcile after a converge saw (the VIPs, the role) and when: a
        # converge that changes neither needs none (at 1,000 VIPs one is two netlink dumps
        # on the VIP lane, where the lifetime renewals wait)
        self._vips_reconciled: tuple[object, ...] | None = None
        self._vips_reconciled_at = 0.0
        self._vips_wanted = asyncio.Event()  # a converge asks for a VIP reconcile
        self.heartbeat = Heartbeat(
            cfg.node_name, cfg.peer_port, cfg.peer_interval, cfg.peer_timeout, cfg.peer_address,
            self.elector, self.metrics, node_address, key=peer_key, key_file=cfg.peer_key_file,
        )  # fmt: skip
        if self.heartbeat.monitor is not None:
            self.heartbeat.monitor.suspect_with(self._precheck_soon, PRECHECK_LEAD)
        # this director's connection sync state, refreshed by report_sync(): its probes carry
        # it to the leader, which writes every director's on the Lease (the controller puts
        # them in the VirtualServers' status.directors[].sync)
        self.sync_clocks = SyncClocks()
        self.sync_report: SyncReport | None = None
        if self.heartbeat.monitor is not None and self.sync is not None:
            self.heartbeat.monitor.health.sync_report = lambda: self.sync_report
        self.health.on_flip = self._health_flipped
        self.vips.on_problem = self._vip_problem

    @property
    def ready(self) -> bool:
        return self.ipvs.ready

    async def _connections(self) -> Connections | None:
        _, connections = await self.netlink.run(self.kernel.read)
        return connections

    async def _placed(self) -> None:
        await self.heartbeat.publish(self.vips.placements, self.vips.not_node_addresses())
        # gated: every VIP of the group is placed here, so the ARP check before a takeover
        # covers them all (the leader may then rely on it; peer.py)
        desired = self.ipvs.desired
        wanted = set(desired.vips) if desired is not None else set()
        placed = bool(wanted) and wanted <= set(self.vips.placements)
        self.heartbeat.set_gated(placed and self._can_probe)
        self.heartbeat.start_probing()  # settled: its first placement is done
        self._sync_daemons_soon()

    def _lease_seen(self) -> tuple[str, float | None] | None:
        record = self.elector.record
        if record is None:
            return None
        renewed = record.renew_time.timestamp() if record.renew_time is not None else None
        return record.holder, renewed

    def _own_services(self) -> set[ServiceKey] | None:
        desired = self.ipvs.desired
        return None if desired is None else set(desired.table)

    def _sync_daemons_soon(self) -> None:
        """Bring the sync daemons in line with the role and the VIP's link, off the path of
        the VIPs (a takeover's VIPs never wait for it)."""
        if self.sync is None:
            return
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = asyncio.create_task(self._sync_daemons())
        else:
            self._sync_again = True

    async def _sync_daemons(self) -> None:
        assert self.sync is not None
        while True:
            self._sync_again = False
            first = first_vip(self.vips.placements)
            await self.sync.apply(self.elector.is_leader, first[1] if first else None)
            if not self._sync_again:
                return

    async def report_sync(self) -> None:
        """Refresh this director's sync state; the leader also puts the group's on the Lease
        (SYNC_ANNOTATION) and counts its backups judged not receiving."""
        if self.sync is None:
            return
        now = time.monotonic()
        leader = self.elector.is_leader
        self.sync_clocks.serving(self.ipvs.active_connections if leader else 0, now)
        # the leader's own table is the one synced from: not read (O(connections))
        synced = 0 if leader else await asyncio.to_thread(self.sync.synced_connections)
        self.sync_clocks.synced(synced, now)
        report = self.sync.report(synced, self.sync_clocks.received_ago(now))
        self.sync_report = report
        if not leader:
            self.metrics.sync_backups_not_receiving.set(0)
            return
        responder = self.heartbeat.responder
        record = sync_record(
            self.cfg.node_name,
            report,
            responder.confirmations() if responder is not None else {},
            self.sync_clocks.serving_for(now),
            now,
            2 * SYNC_REPORT_INTERVAL,
        )
        self.elector.set_annotation(SYNC_ANNOTATION, format_sync(record))
        not_receiving = sum(1 for d in record.directors.values() if d.receiving == "False")
        self.metrics.sync_backups_not_receiving.set(not_receiving)

    async def _sync_report_loop(self) -> None:
        while True:
            try:
                await self.report_sync()
            except Exception:
                log.exception("refreshing the connection sync state failed")
            await asyncio.sleep(SYNC_REPORT_INTERVAL)

    def _converge_failed(self, exc: Exception) -> None:
        """A converge failed (it is retried every second): logged once per reason, with the
        traceback the first time; a change the kernel refused (kernel.ipvs.IpvsError names
        it) is also an Event on the VirtualServers of its VIP."""
        why = str(exc) or type(exc).__name__
        if why == self._converge_error:
            return
        self._converge_error = why
        log.error("converging IPVS failed; retrying every second: %s", why, exc_info=exc,
                  extra={"group": self.cfg.group})  # fmt: skip
        change = getattr(exc, "change", None)
        if isinstance(change, Change):
            for spec in kernel_refused_events(self.cfg.node_name, self.watches.virtual_servers,
                                              change.service.address, why):  # fmt: skip
                self.events.emit(spec)

    def _vip_problem(self, vip: str, reason: str) -> None:
        """A VIP this node cannot place, add or remove: an Event on its VirtualServers."""
        for spec in vip_problem_events(self.cfg.node_name, self.watches.virtual_servers,
                                       {vip: reason}):  # fmt: skip
            self.events.emit(spec)

    def _health_flipped(self, target: Probe, healthy: bool) -> None:
        """A real server quiesced or restored: an Event on the VirtualServers it serves, from
        the leader only (every director probes; one Event per flip is enough)."""
        desired = self.ipvs.desired
        if not self.elector.is_leader or desired is None:
            return
        address = canonical_ip(target.address)
        vips = {key.address for key, entry in desired.table.items()
                if any(canonical_ip(d.address) == address and d.port == target.port
                       for d in entry.destinations)}  # fmt: skip
        real_server = f"{target.address}:{target.port}"
        for spec in health_events(self.cfg.node_name, self.watches.virtual_servers, vips,
                                  real_server, healthy, str(target.type)):  # fmt: skip
            self.events.emit(spec)

    def _precheck_soon(self) -> None:
        """The holder is about to be judged silent: probe for the VIPs now, so the takeover
        does not wait for the probe's listening window after the judgement."""
        if self._precheck is None or self._precheck.done():
            self._precheck = asyncio.create_task(self._probe_vips())

    async def _probe_vips(self) -> tuple[float, set[str]]:
        started = time.monotonic()
        return started, await self.vips.answered()

    async def _vip_in_use(self) -> bool:
        """Before taking over from a live-looking holder: does another node still answer ARP
        (or NDP) for one of the group's VIPs? A stopped leader's kernel still holds them.

        A probe that started at most PRECHECK_MAX_AGE ago (on the heartbeat's suspicion) and
        found nobody is used as is: a VIP absent from every other node stays absent unless a
        node that holds the Lease adds it, and that node's Lease write would make our
        takeover's write fail (409)."""
        answered: set[str] | None = None
        pre = self._precheck
        asked = time.monotonic()
        age: float | None = None
        if pre is not None:
            with contextlib.suppress(Exception):
                started, found = await pre
                age = time.monotonic() - started
                if age <= PRECHECK_MAX_AGE:
                    answered = found
                waited = time.monotonic() - asked
                if waited > PRECHECK_WAIT_LOGGED:  # the lead was too short for this node
                    log.info("waited for the VIP probe before the takeover",
                             extra={"seconds": round(waited, 3)})  # fmt: skip
        if answered is None:
            # the takeover waits for this probe's listening window (where a failover's time
            # goes: logged)
            answered = await self.vips.answered()
            log.info(
                "probed for the VIPs before the takeover",
                extra={
                    "precheck_age": None if age is None else round(age, 3),
                    "seconds": round(time.monotonic() - asked, 3),
                },
            )
        if answered:
            self.metrics.takeovers_held.inc()
        return bool(answered)

    # -- convergence ---------------------------------------------------------------------------

    async def converge(self, woken_at: float | None = None) -> None:
        want = await self.ipvs.want(woken_at)
        self.vips.own(want.vips)
        # staged VIPs (moving in): their services are this group's, their address not yet
        await self.ipvs.converge(want, self.vips.owned | want.staged_vips)
        self.elector.set_annotation(PROGRAMMED_ANNOTATION, programmed(want))

    async def reconcile_vips(self, announce: bool = False) -> None:
        leader = self.elector.is_leader or self.elector.taking_early
        if not leader and not self.elector.not_holder:
            return  # no Lease seen yet, or it names us: nothing here is known to be stale
        desired = self.ipvs.desired
        vips = None if desired is None else desired.vips
        await self.vips.reconcile(vips, leader, announce)
        # what the leader cannot place reaches the VirtualServer's status (controller)
        self.elector.set_annotation(
            VIP_PROBLEMS_ANNOTATION, format_vip_problems(self.vips.problems)
        )
        if self.vips.arriving and (self._hand_in is None or self._hand_in.done()):
            # another node still answers for a VIP this leader wants (it comes from another
            # director group): look again shortly; it is added once nobody answers
            self._hand_in = asyncio.create_task(self._hand_in_again())

    async def _hand_in_again(self) -> None:
        # after the patience (reported by then) the look is slower: a host keeping the
        # address for good must not get three ARP probes every 0.1 s for ever
        waited = asyncio.get_running_loop().time() - min(self.vips.arriving.values(), default=0)
        await asyncio.sleep(HAND_IN_RECHECK if waited < HAND_IN_PATIENCE else 1.0)
        self.vips.background(self.reconcile_vips())

    async def _reconcile_loop(self) -> None:
        await self.watches.synced()
        # the VIP reconcile after a converge runs beside this loop: at 1,000 VIPs it waits
        # on the VIP lane (lifetime renewals, re-adds) for seconds, and a pod's next change
        # must not wait behind it
        vip_loop = asyncio.create_task(self._vip_reconcile_loop(), name="vip-reconcile")
        try:
            await self._converge_loop()
        finally:
            vip_loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await vip_loop

    async def _converge_loop(self) -> None:
        while True:
            timeout = DRAIN_RECHECK if self.ipvs.drain_pending else self.cfg.resync
            release = self.ipvs.brake.next_release()
            if release is not None:  # a held withdrawal goes ahead on time
                timeout = max(0.05, min(timeout, release - time.monotonic() + 0.05))
            woken = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.dirty.wait(), timeout)
                woken = True
            woken_at = self.dirty.take()
            # at least one pass of the loop: the watch events already read go in this one
            await asyncio.sleep(coalesce_delay(time.monotonic() - self._converged_at))
            try:
                await self.converge(woken_at)
            except Exception as exc:
                self._converged_at = time.monotonic()
                self.dirty.settled()
                self.metrics.converge_errors.inc()
                self._converge_failed(exc)
                await asyncio.sleep(1.0)
                self.dirty.set()
                continue
            self._converged_at = time.monotonic()
            self.dirty.settled()
            if self._converge_error:
                log.info("converging IPVS works again", extra={"group": self.cfg.group})
                self._converge_error = ""
            if self.traffic is not None and self.ready:
                # after the first converge: a restart's whole read of the counters (seconds
                # at 1,000 x 10 under TCG) would otherwise compete with its start-up
                self.traffic.start()
            if (
                woken
                and self._vip_state() == self._vips_reconciled
                and not self.vips.problems
                and not self.vips.arriving
                and time.monotonic() - self._vips_reconciled_at < self.cfg.resync
            ):
                continue  # a change of destinations only: the VIPs stand as reconciled
            self._vips_wanted.set()

    async def _vip_reconcile_loop(self) -> None:
        """The VIP reconcile a converge asked for; requests made while one runs coalesce
        into the next."""
        while True:
            await self._vips_wanted.wait()
            self._vips_wanted.clear()
            seen = self._vip_state()
            try:
                await self.reconcile_vips()
            except Exception:
                log.exception("VIP reconcile failed; retrying", extra={"group": self.cfg.group})
                self._vips_reconciled = None
                await asyncio.sleep(1.0)
                self._vips_wanted.set()
                continue
            self._vips_reconciled, self._vips_reconciled_at = seen, time.monotonic()
            self.forget_unused_vips()

    def _vip_state(self) -> tuple[object, ...]:
        """What a VIP reconcile after a converge depends on: the group's VIPs (with their
        interface overrides) and this director's role."""
        desired = self.ipvs.desired
        vips = None if desired is None else tuple(sorted(desired.vips.items(), key=str))
        return (vips, self.elector.is_leader, self.elector.taking_early,
                self.elector.not_holder)  # fmt: skip

    def forget_unused_vips(self) -> None:
        """After a converge and a VIP reconcile both succeeded: own only the VIPs in use."""
        if self.ipvs.desired is not None:
            self.vips.keep_only(self.ipvs.desired.vips)

    async def _vip_refresh_loop(self) -> None:
        if self.cfg.vip_refresh <= 0:
            return
        while True:
            await asyncio.sleep(self.cfg.vip_refresh)
            try:
                await self.reconcile_vips(announce=True)
            except Exception:
                log.exception("VIP refresh failed")

    def _vip_lifetime_thread(self, stop: threading.Event) -> None:
        """The dead-man switch (vip.py): renew the lifetime of what this node holds, a few
        times per lifetime, on a thread of its own so that a stalled event loop (a first
        import or a big decode under load) cannot let a held VIP lapse. Runs until the
        handover has drained (the VIPs on lo lapse too)."""
        every = self.cfg.vip_lifetime / LIFETIME_RENEWALS
        # rounds start ``every`` apart (start to start): a round that took a second under
        # load must not push every later one a second further from the lifetime's end
        wait, due, previous = every, time.monotonic() + every, None
        while not stop.wait(wait):
            # a converge asked for or running goes first (at most STEP_ASIDE_LIMIT, here,
            # outside the VIP lane, which a takeover's adds must find free): at 1,000 VIPs a
            # round's dump and batch keep a CPU busy ~0.3 s under TCG, and the pod converges
            # that overlapped one, every 2 s, took three times as long
            self.dirty.step_aside(min(STEP_ASIDE_LIMIT, every / 8))
            started = time.monotonic()
            self.vips.renewal_wait = None
            try:
                self.renew_vips_blocking()
            except Exception:
                log.exception("renewing the VIPs' lifetime failed", extra={"group": self.cfg.group})
            ended = time.monotonic()
            late = late_round(previous, due, started, ended, self.cfg.vip_lifetime,
                              self.vips.renewal_wait)  # fmt: skip
            if late is not None:
                log.warning("VIP lifetime round late", extra={"group": self.cfg.group, **late})
            previous = started
            wait = max(every / 4, every - (ended - started))
            due = ended + wait

    async def renew_vips(self) -> None:
        await asyncio.to_thread(self.renew_vips_blocking)

    def renew_vips_blocking(self) -> None:
        """One renewal. A leader that knows its VIPs renews those it holds. Until it knows
        them (a restart before the first converge), and while the Lease is not known to name
        another director (a restart that cannot read the Lease yet), the agent-added VIPs
        still on the node that no other node answers ARP for are renewed, as the process's
        first step did (main.py); one another node answers for is left to lapse."""
        leader, known = self.elector.is_leader, self.ipvs.desired is not None
        if leader and not known and self.vips.held:
            # adopted at the start-up (VipOwner.adopt_present: the group's VIPs, from its
            # VirtualServers, still on this node): renewing those is one address dump (in
            # the renewal's lane call), against two for the present ones, every 2 s of a
            # restart at 1,000 VIPs; an agent-added VIP no listed VirtualServer has lapses
            self.vips.renew_lifetimes_blocking()
        elif (leader and not known) or (not leader and not self.elector.not_holder):
            # a leader does not probe: no standby holds a VIP while this node holds the
            # Lease, and at 1,000 VIPs the probe took 2-4 s of a restart's CPU every other
            # round (its desired-table build took 3x the cold start's)
            only = set(self.vips.owned) if known else None
            self.vips.renew_present_blocking(only, probe=not leader)
        else:
            self.vips.renew_lifetimes_blocking()

    async def _on_leader_change(self, leader: bool) -> None:
        self.metrics.leader.set(1 if leader else 0)
        self.metrics.transitions.inc()
        if leader:
            log.info("leader: taking the VIPs", extra={"lease": self.cfg.lease_ref})
            planned = await self.handover.start_relay()
            if not planned and not self._restored:
                # a crash takeover: the synced connections' conntrack entries (a planned
                # one relays the old leader's connections to it instead), written while the
                # VIPs go up: a real server's retransmission must find them
                self.vips.background(self.restore_conntrack(time.monotonic()))
            await self.vips.take_fast(lambda: self.elector.is_leader)
        else:
            self._restored = False
            log.info("standby: dropping the VIPs", extra={"lease": self.cfg.lease_ref})
            await self.vips.drop_held()  # then a reconcile catches anything else
        for spec in vip_events(self.cfg.node_name, self.cfg.group, leader,
                               self.watches.virtual_servers, self.vips.owned):  # fmt: skip
            self.events.emit(spec)  # queued: posted off the takeover's path
        self.vips.background(self.reconcile_vips())
        self._sync_daemons_soon()  # the master follows the leadership

    async def restore_conntrack(self, takeover_at: float | None = None) -> None:
        """Once per takeover: conntrack entries for the established synced connections of the
        services translated to their VIP (conn_restore.py). Started alongside the VIPs, not
        after them: an answer lost with the old leader comes back as the real server's
        retransmission, and one that arrives before its entry is dropped (kernel/nft.py), so
        the connection waits for the next one (its retransmission timeout doubles each time)."""
        desired = self.ipvs.desired
        if self.conntrack is None or desired is None or not desired.vip_sourced:
            return
        if self._restored:
            return
        self._restored = True
        t0 = time.monotonic()
        try:
            outcome = await asyncio.to_thread(self.conntrack.restore, desired.vip_sourced)
        except Exception as exc:
            log.warning("synced connections' conntrack entries not restored (they continue "
                        "with the client's next packet): %s", exc)  # fmt: skip
            return
        self.metrics.conntrack_restored.inc(outcome.created)
        level = logging.WARNING if outcome.failed else logging.INFO
        done = time.monotonic()
        log.log(level, "conntrack entries restored for synced connections",
                extra={"entries_created": outcome.created, "entries_existing": outcome.existing,
                       "entries_failed": outcome.failed, "error": outcome.error,
                       "seconds": round(done - t0, 3), "kernel_s": outcome.seconds,
                       "after_takeover_s": round(done - (takeover_at or t0), 3)})  # fmt: skip

    async def _early_take(self, up: bool) -> None:
        """A heartbeat-loss takeover with nobody else able to take the VIPs (election.py):
        up and announced while the Lease write is in flight; off again if it fails."""
        if up:
            # the old leader went silent: its connections' entries, while the VIPs go up
            self.vips.background(self.restore_conntrack(time.monotonic()))
            await self.vips.take_fast(lambda: self.elector.taking_early or self.elector.is_leader)
        else:
            self._restored = False
            await self.vips.drop_held()

    # -- lifecycle -----------------------------------------------------------------------------

    async def startup(self) -> None:
        """Before any slow work (reading the whole IPVS table, converging): take one election
        step, then deal with the group's VIPs left on this node. Still the leader: restart
        their lifetime (adopted; they must not lapse during the start-up). Not: drop them.

        Both bounded by ``startup_grace`` (the informers are already listing): which VIPs
        are the group's comes from its VirtualServers. Without the list in time nothing is
        done here: the first converge's VIP reconcile does it, and a stale VIP lapses by
        itself meanwhile."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self.cfg.startup_grace
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.elector.tick(), max(0.05, end - loop.time()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.watches.vs_synced.wait(), max(0.05, end - loop.time()))
        if self.elector.is_leader:
            if self.watches.vs_synced.is_set():
                adopted = await self.vips.adopt_present()
                if adopted:
                    log.info("restarted leader: the VIPs still here are kept",
                             extra={"vips": adopted})  # fmt: skip
        else:
            await self.reconcile_vips()  # drops stale VIPs
        # the services only: the first converge reads the whole table (one dump per service
        # more: at 1,000 services, tens of seconds in the TCG test VM), not this line
        services = await self.netlink.run(self.kernel.read_services)
        await self.handover.clean_leftover()
        log.info(
            "kernel read",
            extra={"services": len(services),
                   "addresses": sorted({s.address for s in services})},
        )  # fmt: skip

    async def run(self) -> int:
        assert self.client is not None, "run() watches the API"
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        gc_watch = GcWatch(self.metrics)
        gc_watch.install()
        loop_watch = asyncio.create_task(
            LoopWatch(self.metrics, gc_watch=gc_watch, sampler=StallSampler()).run(),
            name="loop-watch",
        )
        servers = await serve(
            self.cfg.health_port,
            self.cfg.metrics_port,
            lambda: self.ready,
            self.metrics.render_chunks,
        )
        await self.heartbeat.start()
        log.info(
            "director agent starting",
            extra={"identity": self.cfg.node_name, "group": self.cfg.group,
                   "lease": self.cfg.lease_ref},
        )  # fmt: skip
        tasks = [
            *self.watches.start(self.client),
            asyncio.create_task(self._reconcile_loop(), name="reconcile"),
            asyncio.create_task(self._vip_refresh_loop(), name="vip-refresh"),
            asyncio.create_task(self._sync_report_loop(), name="sync-report"),
        ]
        # not a task: it outlives them, until the handover's drain is over
        stop_renewing = threading.Event()
        lifetimes = threading.Thread(
            target=self._vip_lifetime_thread, args=(stop_renewing,), name="vip-lifetimes",
            daemon=True,
        )  # fmt: skip
        if self.cfg.vip_lifetime > 0:
            lifetimes.start()
        if self.early_renewal is not None:
            # before any address change of this agent (the start-up drops stale VIPs): the
            # early renewal uses a socket of its own, outside the VIP lane's order
            await asyncio.to_thread(self.early_renewal.stop)
        await self.startup()
        warming = asyncio.create_task(warm_up(self.handover.node), name="nft-warm-up")
        if not self.elector.is_leader:
            # A standby joins the election once its initial lists are in: an agent still
            # warming up (first decodes, first converge) must not take the VIPs and then miss
            # its renewals. A leader (restarted holder) keeps renewing from the start.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.watches.synced(), self.cfg.startup_sync)
        tasks.append(asyncio.create_task(self.elector.run(), name="election"))
        # not among `tasks`: it ends by itself, which must not stop the agent
        find_owner: asyncio.Task[object] | None = (
            asyncio.create_task(self._find_lease_owner(), name="lease-owner")
            if self._find_lease_owner is not None
            else None
        )
        stop = asyncio.create_task(self.stopping.wait())
        done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
        code = 0
        for task in done:
            if task is not stop and task.exception() is not None:
                log.error("task %s died: %s", task.get_name(), task.exception())
                code = 1
        log.info("stopping: releasing the Lease", extra={"identity": self.cfg.node_name})
        for task in tasks:
            if task.get_name() != "election":
                task.cancel()
        if self.elector.is_leader and self.cfg.handover_drain > 0:
            await self.handover.retire()
        await self.elector.release()  # drops the VIPs (on_change) before freeing the Lease
        if self._sync_task is not None:
            # the master stops with the leadership: the kernel's daemon outlives the process
            await asyncio.wait([self._sync_task], timeout=2.0)
        for task in tasks:
            task.cancel()
        await self.handover.stop_relay()
        await asyncio.gather(*tasks, *self.vips.tasks, return_exceptions=True)
        if self.vips.retired:
            await self.handover.drain()
        stop_renewing.set()
        if lifetimes.is_alive():
            await asyncio.to_thread(lifetimes.join, 5.0)
        if self.traffic is not None:
            await asyncio.to_thread(self.traffic.stop)
        await self.events.close()
        await self.health.close()
        await self.ipvs.close()
        await self.heartbeat.close()
        for server in servers:
            server.close()
        with contextlib.suppress(Exception):
            await self.client.close()
        loop_watch.cancel()
        gc_watch.uninstall()
        if find_owner is not None:
            find_owner.cancel()
        await asyncio.gather(
            loop_watch, warming, *([find_owner] if find_owner else []), return_exceptions=True
        )
        log.info("stopped", extra={"identity": self.cfg.node_name})
        return code
