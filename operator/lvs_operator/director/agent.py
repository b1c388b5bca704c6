"""``lvs-operator director``: the director agent (one per director node, a DaemonSet pod).

    watches (VirtualServers of the group, RealServerPools' status.members)
        -> desired table (desired.py) -> diff against the kernel (table.py) -> ipvs.py
    Lease election (election.py) -> VIPs on the interface + announcements (vip.py)

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

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from lvs_operator.api.directorgroup import GROUP_LABEL, lease_name
from lvs_operator.api.realserverpool import (
    HealthCheck,
    PoolMember,
    RealServerPool,
    RealServerPoolStatus,
)
from lvs_operator.api.validation import ValidationError
from lvs_operator.api.virtualserver import VirtualServer

from . import desired as desired_mod
from . import handover as handover_mod
from . import health as health_mod
from . import peer as peer_mod
from .election import (
    DEFAULT_LEASE_DURATION,
    DEFAULT_RENEW_DEADLINE,
    DEFAULT_RETRY_PERIOD,
    PROGRAMMED_ANNOTATION,
    ElectionConfig,
    Elector,
    KubeLeaseApi,
)
from .health import HealthChecker
from .table import Change, DestKey, IpvsTable, ServiceKey, diff, owned_by_addresses
from .table import Protocol as IpProtocol

log = logging.getLogger("lvs_operator.director.agent")

DEFAULT_HEALTH_PORT = 9641
DEFAULT_METRICS_PORT = 9642
DEFAULT_VIP_REFRESH = 10.0
DEFAULT_RESYNC = 30.0
DRAIN_RECHECK = 2.0  # seconds between looks at quiesced destinations' connection counts

Connections = Mapping[tuple[ServiceKey, DestKey], int]


# -- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentConfig:
    node_name: str
    namespace: str
    group: str
    lease_name: str
    pod_name: str = ""
    health_port: int = DEFAULT_HEALTH_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    lease_duration: int = DEFAULT_LEASE_DURATION
    renew_deadline: float = DEFAULT_RENEW_DEADLINE
    retry_period: float = DEFAULT_RETRY_PERIOD
    vip_refresh: float = DEFAULT_VIP_REFRESH  # 0: no periodic re-announcement
    announce_count: int = 3
    announce_interval: float = 0.2
    resync: float = DEFAULT_RESYNC
    masquerade_snat: bool = True
    startup_grace: float = 1.0  # first election step; then a non-leader drops stale VIPs
    startup_sync: float = 30.0  # a standby waits this long for its lists before electing
    handover_drain: float = handover_mod.DEFAULT_DRAIN  # 0: no relay on a planned handover
    peer_port: int = peer_mod.DEFAULT_PEER_PORT  # UDP heartbeat between directors (0: off)
    peer_interval: float = peer_mod.DEFAULT_PEER_INTERVAL
    peer_timeout: float = peer_mod.DEFAULT_PEER_TIMEOUT
    peer_address: str = ""  # published for the heartbeat; "": this node's on the VIP's link
    kubeconfig: str | None = None
    log_level: str = "INFO"

    def election(self) -> ElectionConfig:
        return ElectionConfig(
            identity=self.node_name,
            lease_duration=self.lease_duration,
            renew_deadline=self.renew_deadline,
            retry_period=self.retry_period,
        )


def _env(env: Mapping[str, str], key: str, default: Any = None) -> Any:
    value = env.get(key)
    return default if value in (None, "") else value


def parse_args(argv: list[str], env: Mapping[str, str] | None = None) -> AgentConfig:
    env = os.environ if env is None else env
    p = argparse.ArgumentParser(
        prog="lvs-operator director",
        description="Director agent: programs IPVS for its director group and, when it holds "
        "the group's Lease, owns the VIPs. Every option defaults to the environment variable "
        "named in its help.",
    )
    p.add_argument("--node-name", default=_env(env, "NODE_NAME"), help="NODE_NAME (identity)")
    p.add_argument("--pod-name", default=_env(env, "POD_NAME", ""), help="POD_NAME")
    p.add_argument(
        "--namespace", default=_env(env, "POD_NAMESPACE"), help="POD_NAMESPACE (the Lease's)"
    )
    p.add_argument("--group", default=_env(env, "LVS_DIRECTOR_GROUP"), help="LVS_DIRECTOR_GROUP")
    p.add_argument("--lease-name", default=_env(env, "LVS_LEASE_NAME"), help="LVS_LEASE_NAME")
    p.add_argument(
        "--health-port",
        type=int,
        default=int(_env(env, "LVS_HEALTH_PORT", DEFAULT_HEALTH_PORT)),
        help="LVS_HEALTH_PORT: /healthz, /readyz (0: off)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env(env, "LVS_METRICS_PORT", DEFAULT_METRICS_PORT)),
        help="LVS_METRICS_PORT: /metrics (0: off)",
    )
    p.add_argument(
        "--lease-duration",
        type=int,
        default=int(_env(env, "LVS_LEASE_DURATION_SECONDS", DEFAULT_LEASE_DURATION)),
        help="LVS_LEASE_DURATION_SECONDS (integer >= 1)",
    )
    p.add_argument(
        "--renew-deadline",
        type=float,
        default=float(_env(env, "LVS_RENEW_DEADLINE_SECONDS", DEFAULT_RENEW_DEADLINE)),
        help="LVS_RENEW_DEADLINE_SECONDS (< lease duration)",
    )
    p.add_argument(
        "--retry-period",
        type=float,
        default=float(_env(env, "LVS_RETRY_PERIOD_SECONDS", DEFAULT_RETRY_PERIOD)),
        help="LVS_RETRY_PERIOD_SECONDS (< renew deadline)",
    )
    p.add_argument(
        "--vip-refresh-interval",
        type=float,
        default=float(_env(env, "LVS_VIP_REFRESH_SECONDS", DEFAULT_VIP_REFRESH)),
        help="LVS_VIP_REFRESH_SECONDS: re-check and re-announce held VIPs (0: off)",
    )
    p.add_argument(
        "--announce-count",
        type=int,
        default=int(_env(env, "LVS_ANNOUNCE_COUNT", 3)),
        help="LVS_ANNOUNCE_COUNT: gratuitous ARPs / NAs sent on takeover",
    )
    p.add_argument(
        "--resync-interval",
        type=float,
        default=float(_env(env, "LVS_RESYNC_SECONDS", DEFAULT_RESYNC)),
        help="LVS_RESYNC_SECONDS: re-read the kernel and repair drift",
    )
    p.add_argument(
        "--no-masquerade-snat",
        action="store_true",
        default=_env(env, "LVS_MASQUERADE_SNAT", "true").lower() in ("0", "false", "no"),
        help="LVS_MASQUERADE_SNAT=false: no nftables masquerade for masquerade-mode services "
        "(the real servers route back through the director)",
    )
    p.add_argument(
        "--startup-grace",
        type=float,
        default=float(_env(env, "LVS_STARTUP_GRACE_SECONDS", 1.0)),
        help="LVS_STARTUP_GRACE_SECONDS: bound of the first election step at start-up; a "
        "restarted agent that is not the holder after it drops any stale VIP",
    )
    p.add_argument(
        "--handover-drain",
        type=float,
        default=float(_env(env, "LVS_HANDOVER_DRAIN_SECONDS", handover_mod.DEFAULT_DRAIN)),
        help="LVS_HANDOVER_DRAIN_SECONDS: on SIGTERM the leader keeps serving its connections "
        "in flight, relayed by the new leader, for at most this long (0: drop the VIPs at "
        "once); keep it below the pod's terminationGracePeriodSeconds",
    )
    p.add_argument(
        "--peer-port",
        type=int,
        default=int(_env(env, "LVS_PEER_PORT", peer_mod.DEFAULT_PEER_PORT)),
        help="LVS_PEER_PORT: UDP port of the heartbeat between the directors of a group; a "
        "standby takes the Lease when the leader stops answering, before the Lease expires "
        "(0: off, failover at Lease expiry)",
    )
    p.add_argument(
        "--peer-interval",
        type=float,
        default=float(_env(env, "LVS_PEER_INTERVAL_SECONDS", peer_mod.DEFAULT_PEER_INTERVAL)),
        help="LVS_PEER_INTERVAL_SECONDS: heartbeat probe interval",
    )
    p.add_argument(
        "--peer-timeout",
        type=float,
        default=float(_env(env, "LVS_PEER_TIMEOUT_SECONDS", peer_mod.DEFAULT_PEER_TIMEOUT)),
        help="LVS_PEER_TIMEOUT_SECONDS: silence after which a standby takes over",
    )
    p.add_argument(
        "--peer-address",
        default=_env(env, "LVS_PEER_ADDRESS", ""),
        help="LVS_PEER_ADDRESS: the address the other directors probe (default: this node's "
        "address on the interface of the group's first VIP)",
    )
    p.add_argument("--kubeconfig", default=_env(env, "KUBECONFIG"), help="KUBECONFIG")
    p.add_argument("--log-level", default=_env(env, "LVS_LOG_LEVEL", "INFO"), help="LVS_LOG_LEVEL")
    a = p.parse_args(argv)
    missing = [
        f"{flag} ({var})"
        for flag, var, value in (
            ("--node-name", "NODE_NAME", a.node_name),
            ("--namespace", "POD_NAMESPACE", a.namespace),
            ("--group", "LVS_DIRECTOR_GROUP", a.group),
        )
        if not value
    ]
    if missing:
        p.error("missing " + ", ".join(missing) + ": the DaemonSet sets them from the downward API")
    cfg = AgentConfig(
        node_name=a.node_name,
        pod_name=a.pod_name,
        namespace=a.namespace,
        group=a.group,
        lease_name=a.lease_name or lease_name(a.group),
        health_port=a.health_port,
        metrics_port=a.metrics_port,
        lease_duration=a.lease_duration,
        renew_deadline=a.renew_deadline,
        retry_period=a.retry_period,
        vip_refresh=a.vip_refresh_interval,
        announce_count=a.announce_count,
        resync=a.resync_interval,
        masquerade_snat=not a.no_masquerade_snat,
        startup_grace=a.startup_grace,
        handover_drain=max(0.0, a.handover_drain),
        peer_port=a.peer_port,
        peer_interval=a.peer_interval,
        peer_timeout=a.peer_timeout,
        peer_address=a.peer_address,
        kubeconfig=a.kubeconfig,
        log_level=a.log_level,
    )
    try:
        cfg.election()
        if cfg.peer_address:
            ipaddress.ip_address(cfg.peer_address)
    except ValueError as exc:
        p.error(str(exc))
    if cfg.peer_port and not 0 < cfg.peer_interval < cfg.peer_timeout:
        p.error(
            f"--peer-interval ({cfg.peer_interval}s) must be > 0 and shorter than "
            f"--peer-timeout ({cfg.peer_timeout}s)"
        )
    return cfg


# -- logging -----------------------------------------------------------------------------------

_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name.removeprefix("lvs_operator."),
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpx2", "httpcore", "pyroute2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# -- the kernel --------------------------------------------------------------------------------


class Kernel(Protocol):
    """What the agent needs from the kernel side (ipvs.py); blocking calls, run in a thread."""

    def read(self) -> tuple[IpvsTable, Connections | None]: ...

    def apply(self, changes: list[Change]) -> None: ...

    def prepare(self, table: IpvsTable, masquerade_snat: bool) -> None:
        """Sysctls and the nftables masquerade rule the table's forwarding methods need."""
        ...


# -- metrics -----------------------------------------------------------------------------------


class Metrics:
    def __init__(self, group: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        labels = {"group": group}
        self.leader = Gauge(
            "lvs_director_leader", "1 if this director holds the group's Lease", ["group"],
            registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.services = Gauge(
            "lvs_director_ipvs_services", "IPVS services programmed for the group", ["group"],
            registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.destinations = Gauge(
            "lvs_director_ipvs_destinations", "IPVS destinations programmed", ["group"],
            registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.quiesced = Gauge(
            "lvs_director_quiesced_destinations", "destinations at weight 0 draining",
            ["group"], registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.vips = Gauge(
            "lvs_director_vips", "VIPs held on this node", ["group"], registry=self.registry
        ).labels(**labels)
        self.converge_seconds = Histogram(
            "lvs_director_converge_seconds", "time to read, diff and apply the IPVS table",
            ["group"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        ).labels(**labels)  # fmt: skip
        self.converge_errors = Counter(
            "lvs_director_converge_errors", "failed converges", ["group"], registry=self.registry
        ).labels(**labels)
        self.changes = Counter(
            "lvs_director_ipvs_changes", "IPVS operations applied", ["group", "op"],
            registry=self.registry,
        )  # fmt: skip
        self.transitions = Counter(
            "lvs_director_election_transitions", "leader/standby transitions", ["group"],
            registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.peer_reply_age = Gauge(
            "lvs_director_peer_reply_age_seconds",
            "standby: seconds since the leader last answered a heartbeat (NaN: not probing)",
            ["group"], registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.peer_armed = Gauge(
            "lvs_director_peer_armed",
            "standby: 1 if a silent leader would be taken over at once (steady answers seen)",
            ["group"], registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.handover_relays = Counter(
            "lvs_director_handover_relays", "planned handovers whose connections in flight "
            "this director relayed to the old leader", ["group"], registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.group = group

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))


# -- watches -----------------------------------------------------------------------------------


async def informer(
    client: Any,
    resource: Any,
    labels: Mapping[str, str] | None,
    apply: Callable[[str, dict[str, Any]], None],
    reset: Callable[[list[dict[str, Any]]], None],
    what: str,
    server_timeout: int = 240,
) -> None:
    """List then watch, for ever; any watch error (410 Gone included) relists."""
    from lightkube import ALL_NS

    backoff = 0.2
    while True:
        try:
            listing = client.list(resource, namespace=ALL_NS, labels=dict(labels or {}) or None)
            items = [obj.to_dict() async for obj in listing]
            reset(items)
            version = listing.resourceVersion
            backoff = 0.2
            async for kind, obj in client.watch(
                resource,
                namespace=ALL_NS,
                labels=dict(labels or {}) or None,
                resource_version=version,
                server_timeout=server_timeout,
            ):
                apply(kind, obj.to_dict())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("watch of %s failed, relisting: %s", what, exc or type(exc).__name__)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


def _trim_memory() -> None:
    """Collect, then hand freed heap back to the OS (glibc): RSS after a big converge or
    list is otherwise its peak for the process's lifetime."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _canonical_ip(address: str) -> str:
    return str(ipaddress.ip_address(address))


def _ref(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace", "")), str(meta.get("name", "")))


# -- the agent ---------------------------------------------------------------------------------


class Agent:
    def __init__(
        self,
        cfg: AgentConfig,
        client: Any,
        kernel: Kernel,
        vips: Any,
        lease_api: Any = None,
        metrics: Metrics | None = None,
        netlink: ThreadPoolExecutor | None = None,
        vip_thread: ThreadPoolExecutor | None = None,
        handover_kernel: Any = None,
    ) -> None:
        self.cfg = cfg
        self.dirty = asyncio.Event()
        # Netlink calls block and each socket serves one request at a time (and pyroute2, if
        # ipvs.py uses it, keeps per-thread state and refuses a running loop): IPVS calls run
        # on one thread, address calls on another, so a VIP change never waits behind a long
        # IPVS converge.
        self.netlink = netlink or ThreadPoolExecutor(1, thread_name_prefix="ipvs")
        self.vip_thread = vip_thread or ThreadPoolExecutor(1, thread_name_prefix="vip")
        self.client = client
        self.kernel = kernel
        self.vipman = vips
        self.metrics = metrics or Metrics(cfg.group)
        self.virtual_servers: dict[tuple[str, str], VirtualServer] = {}
        self.pools: dict[tuple[str, str], tuple[PoolMember, ...]] = {}
        self.pool_checks: dict[tuple[str, str], HealthCheck | None] = {}
        self.health = HealthChecker(self.dirty_set)
        self.vs_synced = asyncio.Event()
        self.pools_synced = asyncio.Event()
        self.stopping = asyncio.Event()
        self.ready = False
        self.desired: desired_mod.Desired | None = None
        # Every VIP of this group's VirtualServers seen while running: what this agent owns
        # (IPVS services on them, the addresses themselves). Never "every IPVS service on
        # the node": kube-proxy in IPVS mode has its own, with ClusterIPs on kube-ipvs0.
        self.known_vips: set[str] = set()
        self.held: dict[str, str] = {}  # vip -> interface, while leader
        self.placements: dict[str, str] = {}  # vip -> interface it goes on (all directors)
        # Planned handover (handover.py): VIPs this old leader moved to lo (vip -> the
        # interface they were on), the ARP sysctls it changed, the new leader's relay.
        self.handover_kernel = handover_kernel or handover_mod.HandoverKernel()
        self.retired: dict[str, str] = {}
        self._arp_saved: dict[str, dict[str, str]] = {}
        self._relay_end: asyncio.Task[None] | None = None
        self._links: dict[str, Any] = {}  # interface -> (index, MAC)
        self._unplaced: set[str] = set()  # VIPs without a route (reported once)
        self._vip_lock = asyncio.Lock()
        self._announcing: set[asyncio.Task[None]] = set()
        api = lease_api or KubeLeaseApi(client, cfg.namespace, cfg.lease_name)
        self.elector = Elector(cfg.election(), api, self._on_leader_change)
        # Peer heartbeat (peer.py): the standby probes the holder at the address the holder
        # published on the Lease, and takes over when it stops answering.
        self.peer_monitor: peer_mod.HeartbeatMonitor | None = None
        self.peer_responder: peer_mod.HeartbeatResponder | None = None
        self._peer_published = ""
        if cfg.peer_port:
            monitor = peer_mod.HeartbeatMonitor(
                self.elector.wake, interval=cfg.peer_interval, timeout=cfg.peer_timeout
            )
            self.peer_monitor = monitor
            self.elector.holder_unreachable = monitor.unreachable
            self.elector.on_record = lambda record: monitor.follow(
                record.holder, record.annotations, cfg.node_name
            )
            health = monitor.health

            def reply_age() -> float:
                if not health.holder or health.last_ok is None:
                    return float("nan")
                return health.lost_for(time.monotonic())

            self.metrics.peer_reply_age.set_function(reply_age)
            self.metrics.peer_armed.set_function(lambda: 1.0 if health.armed else 0.0)
        self._reported: set[tuple[str, str, str]] = set()

    # -- watches -------------------------------------------------------------------------------

    def _parse_vs(self, obj: dict[str, Any]) -> VirtualServer | None:
        try:
            return VirtualServer.from_object(obj)
        except ValidationError as exc:
            ns, name = _ref(obj)
            log.warning(
                "VirtualServer ignored: %s", exc, extra={"vs": f"{ns}/{name}"}
            )  # the controller only labels valid ones; an old controller or a hand edit
            return None

    def _reset_vs(self, items: list[dict[str, Any]]) -> None:
        self.virtual_servers = {}
        for obj in items:
            vs = self._parse_vs(obj)
            if vs is not None:
                self.virtual_servers[_ref(obj)] = vs
                self.known_vips.add(_canonical_ip(vs.spec.vip))
        self.vs_synced.set()
        self.dirty.set()

    def _apply_vs(self, kind: str, obj: dict[str, Any]) -> None:
        key = _ref(obj)
        if kind == "DELETED":
            self.virtual_servers.pop(key, None)
        elif kind in ("ADDED", "MODIFIED"):
            vs = self._parse_vs(obj)
            if vs is None:
                self.virtual_servers.pop(key, None)
            else:
                self.virtual_servers[key] = vs
                self.known_vips.add(_canonical_ip(vs.spec.vip))
        else:
            return
        log.debug("VirtualServer %s", kind.lower(), extra={"vs": "/".join(key)})
        self.dirty.set()

    def dirty_set(self) -> None:
        self.dirty.set()

    @staticmethod
    def _check(obj: Mapping[str, Any]) -> HealthCheck | None:
        try:
            return RealServerPool.from_object(obj).spec.health_check
        except (ValidationError, TypeError, ValueError, KeyError):
            return None

    @staticmethod
    def _members(obj: Mapping[str, Any]) -> tuple[PoolMember, ...]:
        try:
            return RealServerPoolStatus.from_object(obj.get("status")).members
        except (TypeError, ValueError, KeyError) as exc:
            ns, name = _ref(obj)
            log.warning("pool status unreadable: %s", exc, extra={"pool": f"{ns}/{name}"})
            return ()

    def _reset_pools(self, items: list[dict[str, Any]]) -> None:
        self.pools = {_ref(obj): self._members(obj) for obj in items}
        self.pool_checks = {_ref(obj): self._check(obj) for obj in items}
        self.pools_synced.set()
        self.dirty.set()

    def _apply_pool(self, kind: str, obj: dict[str, Any]) -> None:
        key = _ref(obj)
        if kind == "DELETED":
            self.pools.pop(key, None)
            self.pool_checks.pop(key, None)
        elif kind in ("ADDED", "MODIFIED"):
            members, check = self._members(obj), self._check(obj)
            if self.pools.get(key) == members and self.pool_checks.get(key) == check:
                return  # nothing the agent uses changed
            self.pools[key] = members
            self.pool_checks[key] = check
        else:
            return
        if any((vs.namespace, vs.spec.pool_name) == key for vs in self.virtual_servers.values()):
            self.dirty.set()

    # -- IPVS ----------------------------------------------------------------------------------

    async def _nl(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.netlink, fn, *args)

    async def _vt(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.vip_thread, fn, *args)

    def _owned(self) -> Callable[[ServiceKey], bool]:
        return owned_by_addresses(self.known_vips)

    async def converge(self) -> None:
        t0 = time.monotonic()
        want = desired_mod.build(self.virtual_servers.values(), self.pools)
        for problem in want.problems:
            key = (problem.namespace, problem.name, problem.message)
            if key not in self._reported:
                self._reported.add(key)
                log.warning(problem.message, extra={"vs": f"{problem.namespace}/{problem.name}"})
        self.known_vips |= set(want.vips)
        want = self._with_health(want)
        actual, connections = await self._nl(self.kernel.read)
        table = desired_mod.drain(want, actual, connections)
        changes = diff(table, actual, self._owned())
        await asyncio.to_thread(self.kernel.prepare, table, self.cfg.masquerade_snat)
        if changes:
            await self._nl(self.kernel.apply, changes)
            for change in changes:
                self.metrics.changes.labels(group=self.cfg.group, op=str(change.op)).inc()
            log.info(
                "IPVS converged: %d change(s)",
                len(changes),
                extra={"changes": [str(c) for c in changes[:50]], "group": self.cfg.group},
            )
        self.desired = want
        self.metrics.services.set(len(table))
        self.metrics.destinations.set(table.dest_count())
        self.metrics.quiesced.set(
            sum(1 for k, e in table.items() for d in e.destinations if (k, d.key) in want.quiesced)
        )
        self.metrics.converge_seconds.observe(time.monotonic() - t0)
        self.elector.set_annotation(
            PROGRAMMED_ANNOTATION, json.dumps(dict(sorted(want.generations.items())))
        )
        if len(changes) > 100 or len(table) > 100 or not self.ready:
            _trim_memory()  # the peak of a big read / converge back to the system
        if not self.ready:
            self.ready = True
            log.info(
                "ready: kernel converged",
                extra={"services": len(table), "destinations": table.dest_count()},
            )

    def _with_health(self, want: desired_mod.Desired) -> desired_mod.Desired:
        """Start/stop probes for the pools with a healthCheck; quiesce failing members."""
        checks: dict[ServiceKey, HealthCheck] = {}
        for vs in self.virtual_servers.values():
            check = self.pool_checks.get((vs.namespace, vs.spec.pool_name))
            if check is None:
                continue
            for vport in vs.spec.ports:
                checks[ServiceKey(IpProtocol(str(vport.protocol)), vs.spec.vip, vport.port)] = check
        decides, timings = health_mod.targets_for(want.table, checks)
        self.health.update(timings)
        table = health_mod.apply_health(want.table, decides, self.health.unhealthy())
        return dataclasses.replace(want, table=table)

    async def _reconcile_loop(self) -> None:
        await self.vs_synced.wait()
        await self.pools_synced.wait()
        while True:
            drain_pending = bool(self.desired and self.desired.quiesced)
            timeout = DRAIN_RECHECK if drain_pending else self.cfg.resync
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.dirty.wait(), timeout)
            self.dirty.clear()
            await asyncio.sleep(0.02)  # coalesce bursts of watch events
            try:
                await self.converge()
            except Exception:
                self.metrics.converge_errors.inc()
                log.exception("converging IPVS failed; retrying", extra={"group": self.cfg.group})
                await asyncio.sleep(1.0)
                self.dirty.set()
                continue
            try:
                await self.reconcile_vips()
            except Exception:
                log.exception("VIP reconcile failed; retrying", extra={"group": self.cfg.group})
                await asyncio.sleep(1.0)
                self.dirty.set()
                continue
            self._forget_retired_vips()

    def _forget_retired_vips(self) -> None:
        """After a converge and a VIP reconcile both succeeded, VIPs no VirtualServer of the
        group uses any more are gone from this node (services and address): stop owning
        them, so a VIP that moves to another director group is left to that group."""
        if self.desired is not None:
            self.known_vips = set(self.desired.vips)

    # -- VIPs ----------------------------------------------------------------------------------

    def _placements(self) -> dict[str, str]:
        """Where each VIP of the group goes (vip -> interface): one route dump for all.
        Computed by standbys too, so a takeover can add the VIPs without any dump first."""
        if self.desired is None:
            return {}
        from .vip import pick_interface

        routes = None
        placed: dict[str, str] = {}
        for vip, override in self.desired.vips.items():
            if override:
                placed[vip] = override
                continue
            if routes is None:
                routes = self.vipman.routes()
            name = pick_interface(vip, routes)
            if name is None:
                if vip not in self._unplaced:  # once, not on every reconcile
                    log.error(
                        "VIP cannot be placed: no route to it on this node; add a route to "
                        "its subnet, or set spec.directors.interface",
                        extra={"vip": vip},
                    )
                self._unplaced.add(vip)
            else:
                placed[vip] = name
                self._unplaced.discard(vip)
        return placed

    async def _link(self, ifname: str) -> Any:
        if ifname not in self._links:
            self._links[ifname] = await self._vt(self.vipman.link_info, ifname)
        return self._links[ifname]

    async def reconcile_vips(self, announce: bool = False) -> None:
        """Make the node hold exactly the VIPs it should; announce new ones (or all)."""
        from .vip import plan_vips

        async with self._vip_lock:
            self.placements = await self._vt(self._placements)
            await self._publish_peer_address()
            wanted = dict(self.placements) if self.elector.is_leader else {}
            present = await self._vt(self.vipman.present)
            # VIPs retired by a handover stay on lo until their connections are done
            present = {vip: i for vip, i in present.items() if vip not in self.retired}
            candidates = (self.known_vips | set(wanted)) - set(self.retired)
            plan = plan_vips(wanted, present, candidates)
            for vip, ifname in plan.remove.items():
                await self._vt(self.vipman.remove, vip, ifname)
                log.info("VIP dropped", extra={"vip": vip, "interface": ifname})
            for vip, ifname in plan.add.items():
                await self._vt(self.vipman.add, vip, ifname)
            self.held = dict(wanted)
            self.metrics.vips.set(len(wanted))
            new: list[tuple[str, str, Any]] = []
            again: list[tuple[str, str, Any]] = []
            for vip, ifname in (wanted if announce else plan.add).items():
                link = await self._link(ifname)
                if link is not None:
                    (new if vip in plan.add else again).append((vip, ifname, link))
            self._announce(new, None)
            self._announce(again, 1)

    async def _take_vips_fast(self) -> None:
        """On takeover: add the VIPs where they were last placed and announce them, before the
        full reconcile (which dumps routes and addresses: slow on a busy node)."""
        batch: list[tuple[str, str, Any]] = []
        for vip, ifname in dict(self.placements).items():
            if not self.elector.is_leader:
                break
            await self._vt(self.vipman.add, vip, ifname)
            self.held[vip] = ifname
            link = await self._link(ifname)
            if link is not None:
                batch.append((vip, ifname, link))
            if len(batch) >= 32:  # the first VIPs go out while the rest are being added
                self._announce(batch, None)
                batch = []
        self._announce(batch, None)

    def _announce(self, items: list[tuple[str, str, Any]], count: int | None) -> None:
        """Announce a batch (rounds over all of them, ``announce_interval`` apart) on a
        thread of its own: the rounds sleep, and a thousand VIPs must not wait in line."""
        if not items:
            return
        send = self.vipman.send_many
        task = asyncio.create_task(asyncio.to_thread(send, items, count))
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    async def _on_leader_change(self, leader: bool) -> None:
        self.metrics.leader.set(1 if leader else 0)
        self.metrics.transitions.inc()
        if leader:
            log.info(
                "leader: taking the VIPs",
                extra={"lease": f"{self.cfg.namespace}/{self.cfg.lease_name}"},
            )
            await self._start_relay()
            await self._take_vips_fast()
            self._background(self.reconcile_vips())
        else:
            log.info(
                "standby: dropping the VIPs",
                extra={"lease": f"{self.cfg.namespace}/{self.cfg.lease_name}"},
            )
            # The clock runs (the Lease expires for the others): remove what we hold first,
            # without the dumps of a full reconcile, then reconcile to catch anything else.
            held, self.held = dict(self.held), {}
            for vip, ifname in held.items():
                await self._vt(self.vipman.remove, vip, ifname)
                log.info("VIP dropped", extra={"vip": vip, "interface": ifname})
            self._background(self.reconcile_vips())

    def _background(self, coro: Any) -> None:
        """Run ``coro`` without holding up the election (it logs its own failure)."""

        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("VIP reconcile failed")

        task = asyncio.create_task(guarded())
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    # -- peer heartbeat (peer.py) --------------------------------------------------------------

    async def _publish_peer_address(self) -> None:
        """Put where this director answers heartbeats in its Lease annotations (written when
        it leads): --peer-address, else its address on the interface of the group's first
        VIP, the link the VIP moves over."""
        if self.peer_responder is None or self.peer_responder.address is None:
            return
        address = self.cfg.peer_address
        if not address and self.placements:
            vip = min(self.placements, key=ipaddress.ip_address)
            ifname = self.placements[vip]
            exclude = sorted(self.known_vips | set(self.placements))
            version = ipaddress.ip_address(vip).version
            found = await self._vt(self.handover_kernel.link_address, ifname, version, exclude)
            address = found or ""
        if not address or address == self._peer_published:
            return
        port = self.peer_responder.address[1]
        self.elector.set_annotation(
            peer_mod.HEARTBEAT_ANNOTATION, peer_mod.format_address((address, port))
        )
        self._peer_published = address
        log.info("heartbeat address published", extra={"address": address, "port": port})

    async def _start_peer(self) -> None:
        if not self.cfg.peer_port:
            return
        host = "::" if self.cfg.peer_address and ":" in self.cfg.peer_address else "0.0.0.0"
        responder = peer_mod.HeartbeatResponder(
            self.cfg.node_name, lambda: self.elector.serving, host=host, port=self.cfg.peer_port
        )
        try:
            await responder.start()
        except OSError as exc:
            log.error(
                "cannot listen for peer heartbeats on UDP port %s: %s; failover waits for the "
                "Lease to expire (free the port, or set --peer-port)",
                self.cfg.peer_port,
                exc,
            )
            return
        self.peer_responder = responder
        if self.peer_monitor is not None:
            await self.peer_monitor.start()

    async def _stop_peer(self) -> None:
        if self.peer_responder is not None:
            self.peer_responder.close()
        if self.peer_monitor is not None:
            await self.peer_monitor.close()

    # -- planned handover (handover.py) --------------------------------------------------------

    async def _start_relay(self) -> None:
        """New leader: when the Lease just taken carries a fresh handover note from another
        director, relay that director's connections in flight back to it (before the VIPs
        are announced here), for the note's drain time."""
        record = self.elector.record
        if record is None:
            return
        note = handover_mod.Handover.from_annotation(
            record.annotations.get(handover_mod.HANDOVER_ANNOTATION)
        )
        if note is None or not note.applies(self.cfg.node_name, handover_mod.wall_clock()):
            return
        self.elector.set_annotation(handover_mod.HANDOVER_ANNOTATION, "")  # used: clear it
        relays = handover_mod.plan_relays(note, self.placements)
        if not relays:
            return
        try:
            await self._vt(self.handover_kernel.install_relays, relays, note.drain + 60)
        except Exception as exc:
            log.warning(
                "cannot relay the old leader's connections (they may be reset): %s",
                exc,
                extra={"from": note.source},
            )
            return
        self.metrics.handover_relays.inc()
        log.info(
            "relaying the old leader's connections in flight",
            extra={
                "from": note.source,
                "vips": [v for r in relays for v in r.vips],
                "via": sorted({r.via for r in relays}),
                "seconds": note.drain,
            },
        )
        if self._relay_end is not None:
            self._relay_end.cancel()
        self._relay_end = asyncio.create_task(self._end_relay(note.drain))

    async def _end_relay(self, after: float) -> None:
        await asyncio.sleep(after)
        try:
            if await self._vt(self.handover_kernel.remove_relays):
                log.info("relay to the old leader ended")
        except Exception as exc:
            log.warning("cannot remove the relay table: %s", exc)

    async def _retire_vips(self) -> None:
        """Old leader, on SIGTERM: move each VIP to lo (added there before it leaves its
        interface, so it is never missing), stop answering ARP for it, and put the handover
        note (this node's address on each VIP's link) on the Lease for the release."""
        relays: dict[str, str] = {}
        async with self._vip_lock:
            exclude = sorted(self.known_vips | set(self.held))
            for vip, ifname in dict(self.held).items():
                version = ipaddress.ip_address(vip).version
                try:
                    via = await self._vt(
                        self.handover_kernel.link_address, ifname, version, exclude
                    )
                    if via is None:
                        log.warning(
                            "no address of this node on the VIP's interface: its connections "
                            "in flight are not relayed",
                            extra={"vip": vip, "interface": ifname},
                        )
                        continue
                    if version == 4 and ifname not in self._arp_saved:
                        self._arp_saved[ifname] = await self._vt(
                            self.handover_kernel.set_arp_sysctls, ifname
                        )
                    await self._vt(self.vipman.add, vip, handover_mod.LOOPBACK)
                    self.retired[vip] = ifname
                    await self._vt(self.vipman.remove, vip, ifname)
                except Exception as exc:
                    log.warning("handover: cannot move the VIP to lo: %s", exc, extra={"vip": vip})
                    continue
                del self.held[vip]
                relays[vip] = via
        if relays:
            note = handover_mod.Handover(
                source=self.cfg.node_name,
                at=handover_mod.wall_clock(),
                drain=self.cfg.handover_drain,
                relays=relays,
            )
            self.elector.set_annotation(handover_mod.HANDOVER_ANNOTATION, note.to_annotation())
            log.info(
                "handing over: VIPs moved to lo, connections in flight stay here",
                extra={"vips": sorted(relays), "seconds": self.cfg.handover_drain},
            )

    async def _drain_retired(self) -> None:
        """Old leader, after the release: wait until no connection to the retired VIPs is
        established (for a moment), at most ``handover_drain`` seconds; then drop them."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        end = t0 + self.cfg.handover_drain
        watch = handover_mod.DrainWatch(quiet=min(1.0, self.cfg.handover_drain / 4))
        vips = set(self.retired)
        established = 0
        while loop.time() < end:
            try:
                _, conns = await self._nl(self.kernel.read)
            except Exception as exc:
                log.warning("handover: cannot read the connections: %s", exc)
                break
            established = sum(
                n for (service, _), n in (conns or {}).items() if service.address in vips
            )
            if watch.observe(established, loop.time()):
                break
            await asyncio.sleep(0.2)
        log.info(
            "handover drained" if established == 0 else "handover drain time is up",
            extra={"seconds": round(loop.time() - t0, 2), "established": established},
        )
        for vip in list(self.retired):
            with contextlib.suppress(Exception):
                await self._vt(self.vipman.remove, vip, handover_mod.LOOPBACK)
            del self.retired[vip]
            log.info("VIP dropped", extra={"vip": vip, "interface": handover_mod.LOOPBACK})
        for ifname, previous in self._arp_saved.items():
            await self._vt(self.handover_kernel.restore_sysctls, ifname, previous)
        self._arp_saved.clear()

    async def _vip_refresh_loop(self) -> None:
        if self.cfg.vip_refresh <= 0:
            return
        while True:
            await asyncio.sleep(self.cfg.vip_refresh)
            try:
                await self.reconcile_vips(announce=True)
            except Exception:
                log.exception("VIP refresh failed")

    # -- lifecycle -----------------------------------------------------------------------------

    async def startup(self) -> None:
        """Take one election step; if not the leader, drop the group's VIPs left on this node.

        Both bounded by ``startup_grace`` (the informers are already listing): which VIPs
        are the group's comes from its VirtualServers. Without the list in time nothing is
        dropped here; the first converge's VIP reconcile does it."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self.cfg.startup_grace
        actual, _ = await self._nl(self.kernel.read)
        try:  # a relay left by an agent that died during a handover
            if await self._vt(self.handover_kernel.remove_relays):
                log.info("removed a relay table left from a handover")
        except Exception as exc:
            log.warning("cannot check for a handover relay table: %s", exc)
        log.info(
            "kernel read",
            extra={"services": len(actual), "addresses": sorted({k.address for k in actual})},
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.elector.tick(), max(0.05, end - loop.time()))
        if not self.elector.is_leader:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.vs_synced.wait(), max(0.05, end - loop.time()))
            await self.reconcile_vips()  # drops stale VIPs

    async def run(self) -> int:
        from lightkube.generic_resource import create_namespaced_resource

        vs_res = create_namespaced_resource("lvs.io", "v1alpha1", "VirtualServer", "virtualservers")
        pool_res = create_namespaced_resource(
            "lvs.io", "v1alpha1", "RealServerPool", "realserverpools"
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        servers = await self._serve_http()
        await self._start_peer()
        log.info(
            "director agent starting",
            extra={
                "identity": self.cfg.node_name,
                "group": self.cfg.group,
                "lease": f"{self.cfg.namespace}/{self.cfg.lease_name}",
            },
        )
        tasks = [
            asyncio.create_task(
                informer(
                    self.client,
                    vs_res,
                    {GROUP_LABEL: self.cfg.group},
                    self._apply_vs,
                    self._reset_vs,
                    "VirtualServers",
                ),
                name="watch-vs",
            ),
            asyncio.create_task(
                informer(
                    self.client,
                    pool_res,
                    None,
                    self._apply_pool,
                    self._reset_pools,
                    "RealServerPools",
                ),
                name="watch-pools",
            ),
            asyncio.create_task(self._reconcile_loop(), name="reconcile"),
            asyncio.create_task(self._vip_refresh_loop(), name="vip-refresh"),
        ]
        await self.startup()
        if not self.elector.is_leader:
            # A standby joins the election once its initial lists are in: an agent still
            # warming up (first decodes, first converge) must not take the VIPs and then miss
            # its renewals. A leader (restarted holder) keeps renewing from the start.
            synced = asyncio.gather(self.vs_synced.wait(), self.pools_synced.wait())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(synced, self.cfg.startup_sync)
        tasks.append(asyncio.create_task(self.elector.run(), name="election"))
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
            await self._retire_vips()
        await self.elector.release()  # drops the VIPs (on_change) before freeing the Lease
        for task in tasks:
            task.cancel()
        if self._relay_end is not None and not self._relay_end.done():
            self._relay_end.cancel()  # stopping while relaying: the relay goes with us
            with contextlib.suppress(Exception):
                await self._vt(self.handover_kernel.remove_relays)
        await asyncio.gather(*tasks, *self._announcing, return_exceptions=True)
        if self.retired:
            await self._drain_retired()
        await self.health.close()
        await self._stop_peer()
        for server in servers:
            server.close()
        with contextlib.suppress(Exception):
            await self.client.close()
        log.info("stopped", extra={"identity": self.cfg.node_name})
        return code

    # -- HTTP: health and metrics --------------------------------------------------------------

    async def _serve_http(self) -> list[asyncio.Server]:
        servers = []
        routes: dict[int, dict[str, Callable[[], tuple[int, bytes, str]]]] = {}
        if self.cfg.health_port:
            routes.setdefault(self.cfg.health_port, {}).update(
                {"/healthz": self._healthz, "/readyz": self._readyz}
            )
        if self.cfg.metrics_port:
            routes.setdefault(self.cfg.metrics_port, {})["/metrics"] = self._metrics
        for port, table in routes.items():
            servers.append(await asyncio.start_server(_http_handler(table), None, port))
        return servers

    def _healthz(self) -> tuple[int, bytes, str]:
        return 200, b"ok\n", "text/plain"

    def _readyz(self) -> tuple[int, bytes, str]:
        if self.ready:
            return 200, b"ok\n", "text/plain"
        body = b"not ready: waiting for the initial lists and the first converge\n"
        return 503, body, "text/plain"

    def _metrics(self) -> tuple[int, bytes, str]:
        return 200, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8"


def _http_handler(
    routes: Mapping[str, Callable[[], tuple[int, bytes, str]]],
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
    """A tiny HTTP/1.0 GET server: no web framework in the agent's memory budget."""
    reasons = {200: "OK", 404: "Not Found", 503: "Service Unavailable", 400: "Bad Request"}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            parts = line.decode("latin-1").split()
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            if len(parts) < 2:
                status, body, ctype = 400, b"bad request\n", "text/plain"
            else:
                handler = routes.get(parts[1].split("?", 1)[0])
                status, body, ctype = handler() if handler else (404, b"not found\n", "text/plain")
            head = (
                f"HTTP/1.0 {status} {reasons.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return handle


# -- entry point -------------------------------------------------------------------------------


def _kube_client(cfg: AgentConfig) -> Any:
    from lightkube import AsyncClient, KubeConfig

    config = KubeConfig.from_file(cfg.kubeconfig) if cfg.kubeconfig else KubeConfig.from_env()
    return AsyncClient(config, field_manager="lvs-director")


def warm_up() -> None:
    """Import and exercise the API models before the event loop runs: the first decode of a
    type builds its decoder (seconds under emulation), which would otherwise stall the first
    Lease renewals."""
    from lightkube.generic_resource import create_namespaced_resource
    from lightkube.resources.coordination_v1 import Lease

    meta = {"name": "warm-up", "namespace": "default", "resourceVersion": "1"}
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
             "spec": {"holderIdentity": "x", "leaseDurationSeconds": 2, "leaseTransitions": 0,
                      "renewTime": "2026-01-01T00:00:00.000000Z",
                      "acquireTime": "2026-01-01T00:00:00.000000Z"}}  # fmt: skip
    Lease.from_dict(lease).to_dict()
    for kind, plural in (
        ("VirtualServer", "virtualservers"),
        ("RealServerPool", "realserverpools"),
    ):
        res = create_namespaced_resource("lvs.io", "v1alpha1", kind, plural)
        res.from_dict({"apiVersion": "lvs.io/v1alpha1", "kind": kind, "metadata": meta,
                       "spec": {}, "status": {}}).to_dict()  # fmt: skip


def _default_kernel() -> Kernel:
    from .kernel import IpvsKernel

    return IpvsKernel()


def _default_vips(cfg: AgentConfig) -> Any:
    from .vip import VipManager

    return VipManager(announce_count=cfg.announce_count, announce_interval=cfg.announce_interval)


def run(argv: list[str]) -> int:
    cfg = parse_args(argv)
    setup_logging(cfg.log_level)
    netlink = ThreadPoolExecutor(1, thread_name_prefix="ipvs")
    vip_thread = ThreadPoolExecutor(1, thread_name_prefix="vip")
    warm_up()

    try:
        kernel = netlink.submit(_default_kernel).result()
        vips = vip_thread.submit(_default_vips, cfg).result()
    except Exception as exc:
        log.error("cannot open the kernel's IPVS or rtnetlink: %s (the agent needs root or "
                  "CAP_NET_ADMIN, and the ip_vs module)", exc)  # fmt: skip
        return 1

    async def main() -> int:
        agent = Agent(cfg, _kube_client(cfg), kernel, vips, netlink=netlink, vip_thread=vip_thread)
        return await agent.run()

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return 0
