"""``lvs-operator director``: flags (each defaulting to an ``LVS_*`` or downward-API
variable), logging, the kernel and the API client, then the agent (agent.py).

The agent's heavier modules (the API client, the agent itself) are imported after logging is
set up, and the first log lines say how long the interpreter and the imports took: in the TCG
test VM a start-up took 15-40 s, nearly all of it there, and a silent log cannot tell a slow
start from a hung one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import ipaddress
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lvs_operator.api.contract import lease_name

from ..api import contract
from ..api.network import parse_ranges
from ..heap import fix_mmap_threshold, limit_arenas
from ..logs import setup_logging
from . import brake as brake_mod
from . import early as early_mod
from . import handover as handover_mod
from . import peer as peer_mod
from .config import (
    DEFAULT_ANNOUNCE_COUNT,
    DEFAULT_HEALTH_PORT,
    DEFAULT_METRICS_PORT,
    DEFAULT_RESYNC,
    DEFAULT_STARTUP_GRACE,
    DEFAULT_VIP_LIFETIME,
    DEFAULT_VIP_REFRESH,
    AgentConfig,
)
from .election import (
    DEFAULT_LEASE_DURATION,
    DEFAULT_OUTAGE_HOLD,
    DEFAULT_RENEW_DEADLINE,
    DEFAULT_RETRY_PERIOD,
)
from .traffic import DEFAULT_INTERVAL as DEFAULT_TRAFFIC_INTERVAL

if TYPE_CHECKING:
    from ..listwatch import KubeClient
    from .kernel.dataplane import DataPlane
    from .traffic import StatsReader
    from .vip_owner import VipNode

log = logging.getLogger("lvs_operator.director.main")
# Chatty at INFO (a line per request); their warnings still show.
QUIET_LOGGERS = ("httpx", "httpx2", "httpcore", "pyroute2")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def parse_args(argv: list[str], env: Mapping[str, str] | None = None) -> AgentConfig:
    env = os.environ if env is None else env
    p = argparse.ArgumentParser(
        prog="lvs-operator director",
        description="Director agent: programs IPVS for its director group and, when it holds "
        "the group's Lease, owns the VIPs. Every option defaults to the environment variable "
        "named in its help.",
    )

    def option(flag: str, var: str, default: Any = None, help: str = "", **kw: Any) -> None:
        # an empty variable counts as unset
        value = env.get(var) or default
        if "type" in kw and value is not None:
            try:
                value = kw["type"](value)
            except ValueError:  # exit 2 naming both, as argparse does for the flag itself
                p.error(f"argument {flag}: {value!r} is not a valid {kw['type'].__name__} "
                        f"(from the environment variable {var})")  # fmt: skip
        p.add_argument(flag, default=value, help=f"{var}{': ' + help if help else ''}", **kw)

    option("--node-name", contract.ENV_NODE_NAME, help="identity")
    option("--pod-name", contract.ENV_POD_NAME, "")
    option("--namespace", contract.ENV_POD_NAMESPACE, help="the Lease's")
    option("--group", contract.ENV_DIRECTOR_GROUP)
    option("--lease-name", contract.ENV_LEASE_NAME)
    option("--health-port", contract.ENV_HEALTH_PORT, DEFAULT_HEALTH_PORT,
           "/healthz, /readyz (0: off)", type=int)  # fmt: skip
    option("--metrics-port", contract.ENV_METRICS_PORT, DEFAULT_METRICS_PORT, "/metrics (0: off)",
           type=int)  # fmt: skip
    option("--lease-duration", contract.ENV_LEASE_DURATION_SECONDS, DEFAULT_LEASE_DURATION,
           "integer >= 1", type=int)  # fmt: skip
    option("--renew-deadline", contract.ENV_RENEW_DEADLINE_SECONDS, DEFAULT_RENEW_DEADLINE,
           "< lease duration", type=float)  # fmt: skip
    option("--retry-period", contract.ENV_RETRY_PERIOD_SECONDS, DEFAULT_RETRY_PERIOD,
           "< renew deadline", type=float)  # fmt: skip
    option("--outage-hold", contract.ENV_OUTAGE_HOLD_SECONDS, DEFAULT_OUTAGE_HOLD,
           "longest time the leader keeps the VIPs while no Lease write succeeds (the API server "
           "is down or slow), as long as every standby hears it lead", type=float)  # fmt: skip
    option("--vip-lifetime", contract.ENV_VIP_LIFETIME_SECONDS, DEFAULT_VIP_LIFETIME,
           "integer seconds: a VIP lapses (the kernel removes it) this long after its agent last "
           "renewed it, so a dead agent's VIPs leave its node; 0: they stay until removed",
           type=int)  # fmt: skip
    option("--withdrawal-share", contract.ENV_WITHDRAWAL_SHARE, brake_mod.DEFAULT_SHARE,
           "a converge that would remove more than this share of the group's services (and at "
           "least 2) keeps them, with their VIPs, for --withdrawal-hold", type=float)  # fmt: skip
    option("--withdrawal-hold", contract.ENV_WITHDRAWAL_HOLD_SECONDS, brake_mod.DEFAULT_HOLD,
           "seconds a mass withdrawal waits; it goes ahead if still wanted then (0: no brake)",
           type=float)  # fmt: skip
    option("--vip-refresh-interval", contract.ENV_VIP_REFRESH_SECONDS, DEFAULT_VIP_REFRESH,
           "re-check and re-announce held VIPs (0: off)", type=float)  # fmt: skip
    option("--announce-count", contract.ENV_ANNOUNCE_COUNT, DEFAULT_ANNOUNCE_COUNT,
           "gratuitous ARPs / NAs sent on takeover", type=int)  # fmt: skip
    option("--resync-interval", contract.ENV_RESYNC_SECONDS, DEFAULT_RESYNC,
           "re-read the kernel and repair drift", type=float)  # fmt: skip
    p.add_argument(
        "--no-masquerade-snat",
        action="store_true",
        default=(env.get(contract.ENV_MASQUERADE_SNAT) or "true").lower() in ("0", "false", "no"),
        help="LVS_MASQUERADE_SNAT=false: no nftables masquerade for masquerade-mode services "
        "(the real servers route back through the director)",
    )
    option("--startup-grace", contract.ENV_STARTUP_GRACE_SECONDS, DEFAULT_STARTUP_GRACE,
           "bound of the first election step at start-up; a restarted agent that is not the "
           "holder after it drops any stale VIP", type=float)  # fmt: skip
    option("--handover-drain", contract.ENV_HANDOVER_DRAIN_SECONDS, handover_mod.DEFAULT_DRAIN,
           "on SIGTERM the leader keeps serving its connections in flight, relayed by the new "
           "leader, for at most this long (0: drop the VIPs at once); keep it below the pod's "
           "terminationGracePeriodSeconds", type=float)  # fmt: skip
    option("--peer-port", contract.ENV_PEER_PORT, peer_mod.DEFAULT_PEER_PORT,
           "UDP port of the heartbeat between the directors of a group; a standby takes the "
           "Lease when the leader stops answering, before the Lease expires (0: off, failover "
           "at Lease expiry)", type=int)  # fmt: skip
    option("--peer-interval", contract.ENV_PEER_INTERVAL_SECONDS, peer_mod.DEFAULT_PEER_INTERVAL,
           "heartbeat probe interval", type=float)  # fmt: skip
    option("--peer-timeout", contract.ENV_PEER_TIMEOUT_SECONDS, peer_mod.DEFAULT_PEER_TIMEOUT,
           "silence after which a standby takes over", type=float)  # fmt: skip
    option("--peer-address", contract.ENV_PEER_ADDRESS, "",
           "the address the other directors probe (default: this node's address on the "
           "interface of the group's first VIP)")  # fmt: skip
    p.add_argument(
        "--no-connection-sync",
        action="store_true",
        default=(env.get(contract.ENV_CONNECTION_SYNC) or "true").lower() in ("0", "false", "no"),
        help="LVS_CONNECTION_SYNC=false: no IPVS sync daemons (established connections are "
        "then reset by a crash failover)",
    )
    option("--traffic-interval", contract.ENV_TRAFFIC_INTERVAL, DEFAULT_TRAFFIC_INTERVAL,
           "read the IPVS traffic counters for /metrics this often, on a thread and socket of "
           "their own (0: no traffic metrics)", type=float)  # fmt: skip
    option("--sync-interface", contract.ENV_SYNC_INTERFACE, "",
           "the link the IPVS sync daemons multicast on (default: the interface of the "
           "group's first VIP)")  # fmt: skip
    option("--peer-key-file", contract.ENV_PEER_KEY_FILE, contract.DEFAULT_PEER_KEY_FILE,
           "the group's heartbeat key (>= 16 bytes, the same on every director of the group; "
           "the DaemonSet mounts the group's Secret here); every probe and reply is signed "
           "with it and unsigned ones are dropped. Missing at the default path: the heartbeat "
           "runs unauthenticated (a warning says so); missing elsewhere: an error")  # fmt: skip
    option("--vip-ranges", contract.ENV_VIP_RANGES, "",
           "comma-separated CIDRs: a VirtualServer whose VIP lies outside is not programmed, "
           "whatever its status says (the controller sets its own --vip-ranges here); empty: "
           "not checked by the agent")  # fmt: skip
    option("--kubeconfig", "KUBECONFIG")
    option("--log-level", contract.ENV_LOG_LEVEL, "INFO",
           "DEBUG, INFO, WARNING or ERROR")  # fmt: skip
    a = p.parse_args(argv)
    missing = [
        f"{flag} ({var})"
        for flag, var, value in (
            ("--node-name", contract.ENV_NODE_NAME, a.node_name),
            ("--namespace", contract.ENV_POD_NAMESPACE, a.namespace),
            ("--group", contract.ENV_DIRECTOR_GROUP, a.group),
        )
        if not value
    ]
    if missing:
        p.error("missing " + ", ".join(missing) + ": the DaemonSet sets them from the downward API")
    try:
        vip_ranges = tuple(parse_ranges(a.vip_ranges.split(","))) if a.vip_ranges else None
    except ValueError as exc:
        p.error(f"--vip-ranges ({contract.ENV_VIP_RANGES}): {exc}")
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
        outage_hold=a.outage_hold,
        vip_refresh=a.vip_refresh_interval,
        vip_lifetime=a.vip_lifetime,
        announce_count=a.announce_count,
        resync=a.resync_interval,
        masquerade_snat=not a.no_masquerade_snat,
        startup_grace=a.startup_grace,
        handover_drain=max(0.0, a.handover_drain),
        peer_port=a.peer_port,
        peer_interval=a.peer_interval,
        peer_timeout=a.peer_timeout,
        peer_address=a.peer_address,
        connection_sync=not a.no_connection_sync,
        sync_interface=a.sync_interface,
        traffic_interval=max(0.0, a.traffic_interval),
        peer_key_file=a.peer_key_file,
        vip_ranges=vip_ranges,
        brake=brake_mod.BrakeConfig(share=a.withdrawal_share, hold=max(0.0, a.withdrawal_hold)),
        kubeconfig=a.kubeconfig,
        log_level=a.log_level,
    )
    if cfg.log_level.upper() not in LOG_LEVELS:
        p.error(f"argument --log-level: {cfg.log_level!r} is not one of {', '.join(LOG_LEVELS)} "
                f"(flag or the environment variable {contract.ENV_LOG_LEVEL})")  # fmt: skip
    try:
        cfg.election()
        if cfg.peer_address:
            ipaddress.ip_address(cfg.peer_address)
    except ValueError as exc:
        p.error(str(exc))
    if not 0 <= cfg.brake.share < 1:
        p.error(f"--withdrawal-share ({cfg.brake.share}) must be at least 0 and below 1")
    if cfg.vip_lifetime != 0 and cfg.vip_lifetime < 2:
        p.error(
            f"--vip-lifetime ({cfg.vip_lifetime}s) must be 0 (off) or at least 2 seconds (it "
            "is renewed every quarter of it)"
        )
    if cfg.peer_port and not 0 < cfg.peer_interval < cfg.peer_timeout:
        p.error(
            f"--peer-interval ({cfg.peer_interval}s) must be > 0 and shorter than "
            f"--peer-timeout ({cfg.peer_timeout}s)"
        )
    return cfg


def kube_client(cfg: AgentConfig) -> KubeClient:
    from lightkube import AsyncClient, KubeConfig

    config = KubeConfig.from_file(cfg.kubeconfig) if cfg.kubeconfig else KubeConfig.from_env()
    client: KubeClient = AsyncClient(config, field_manager="lvs-director")
    return client


class KubeEventPoster:
    """Events through the agent's API client (lightkube's ``create``)."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client

    async def post(self, event: dict[str, Any]) -> None:
        from lightkube.resources.core_v1 import Event

        await self.client.create(Event.from_dict(event))


def warm_up() -> None:
    """Import and exercise the API models before the event loop runs: the first decode of a
    type builds its decoder (seconds under emulation), which would otherwise stall the first
    Lease renewals."""
    from lightkube.resources.coordination_v1 import Lease

    meta = {"name": "warm-up", "namespace": "default", "resourceVersion": "1"}
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
             "spec": {"holderIdentity": "x", "leaseDurationSeconds": 2, "leaseTransitions": 0,
                      "renewTime": "2026-01-01T00:00:00.000000Z",
                      "acquireTime": "2026-01-01T00:00:00.000000Z"}}  # fmt: skip
    Lease.from_dict(lease).to_dict()
    from .watches import resources

    for kind, res in resources().items():
        res.from_dict({"apiVersion": "lvs.io/v1alpha1", "kind": kind, "metadata": meta,
                       "spec": {}, "status": {}}).to_dict()  # fmt: skip
    # the HTTP client's async backend and anyio's asyncio one, which it imports at its first
    # request: on the event loop, 0.4-0.5 s under TCG (the stall sampler caught both there)
    backends = ("httpcore2._backends.anyio", "httpcore._backends.anyio", "anyio._backends._asyncio")
    for backend in backends:
        with contextlib.suppress(ImportError):
            importlib.import_module(backend)


def freeze_startup() -> None:
    """Move every object made so far (modules, the warmed-up decoders) out of the garbage
    collector's sight (``gc.freeze``; collected first, so no garbage is frozen). A full
    collection holds the GIL, so stalls the event loop from any thread; the agent runs one
    after each big converge (ipvs_sync.trim_memory), and it then walks only what was made
    since: 18 ms -> 3 ms at 1,000 services x 10 destinations here (bench/loop_stall.py)."""
    from .ipvs_sync import freeze_survivors

    gc.collect()
    gc.freeze()
    # and what survives each big converge's collection from now on (ipvs_sync.trim_memory)
    freeze_survivors()


# The GIL's switch interval for the agent (CPython's default: 5 ms). The event loop runs the
# Lease renewals and the heartbeat; its other threads parse netlink dumps in Python (the
# traffic poller, the resync read, the lifetime renewals). Each time the loop wakes it waits
# for the GIL until the interval of the thread holding it is up: with two busy threads,
# wake-ups were late by 8 ms (median) and 50 ms (worst) at 5 ms, 2.6 ms and 15 ms at 1 ms
# (bench/gil_convoy.py on the 2-core host).
SWITCH_INTERVAL = 0.001
AGENT_ARENAS = early_mod.AGENT_ARENAS  # glibc malloc arenas (heap.limit_arenas)


def prefer_the_loop() -> None:
    """The GIL handed over sooner (``SWITCH_INTERVAL``), so the event loop waits less for
    threads running Python code."""
    sys.setswitchinterval(SWITCH_INTERVAL)


def _open_stats() -> StatsReader:
    from .kernel.ipvs import IpvsKernel

    return IpvsKernel()


def _open_kernel() -> DataPlane:
    from .kernel.dataplane import DataPlane

    return DataPlane()


def process_age() -> float | None:
    """Seconds since this process was started (by the kernel's clock), if /proc says."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return round(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 2)
    except (OSError, ValueError, IndexError):
        return None


def load_peer_key(cfg: AgentConfig) -> bytes | None:
    """The heartbeat key (None: unauthenticated). A file missing at the default path is no
    key (a DaemonSet without the Secret); one named explicitly must exist."""
    if not cfg.peer_port:
        return None
    required = cfg.peer_key_file != contract.DEFAULT_PEER_KEY_FILE
    return peer_mod.load_key(cfg.peer_key_file, required=required)


def run(argv: list[str]) -> int:
    cfg = parse_args(argv)
    setup_logging(cfg.log_level, quiet=QUIET_LOGGERS)
    log.info("director agent process started", extra={
        "identity": cfg.node_name,
        "seconds_since_exec": process_age(),  # the interpreter, its site and the imports so far
    })  # fmt: skip
    t0 = time.monotonic()
    # before the first thread: two malloc arenas for all of the agent's threads (heap.py)
    limit_arenas(AGENT_ARENAS)
    fix_mmap_threshold(early_mod.AGENT_MMAP_THRESHOLD)
    # the renewal ``lvs-operator director`` started before its imports (early.py)
    early = early_mod.take(cfg.vip_lifetime)
    from .agent import Agent
    from .lanes import Lane

    netlink, vip_lane = Lane("ipvs"), Lane("vip")
    warm_up()
    log.info("agent modules loaded", extra={"seconds": round(time.monotonic() - t0, 2)})

    def open_vips() -> VipNode:
        from .vip import VipManager

        return VipManager(
            announce_count=cfg.announce_count,
            announce_interval=cfg.announce_interval,
            lifetime=cfg.vip_lifetime or None,
        )

    try:  # each socket opened on the thread that uses it
        kernel = netlink.call(_open_kernel)
        vips = vip_lane.call(open_vips)
    except Exception as exc:
        log.error("cannot open the kernel's IPVS or rtnetlink: %s (the agent needs root or "
                  "CAP_NET_ADMIN, and the ip_vs module)", exc)  # fmt: skip
        return 1

    try:
        peer_key = load_peer_key(cfg)
    except ValueError as exc:
        log.error("%s (--peer-key-file, %s)", exc, contract.ENV_PEER_KEY_FILE)
        return 1

    freeze_startup()
    prefer_the_loop()

    async def main() -> int:
        from .kernel.conntrack import KernelConntrack

        client = kube_client(cfg)
        agent = Agent(
            cfg, client, kernel, vips, netlink=netlink, vip_lane=vip_lane,
            peer_key=peer_key, early_renewal=early, daemons=kernel, traffic=_open_stats,
            events=KubeEventPoster(client), conntrack=KernelConntrack(),
        )  # fmt: skip
        return await agent.run()

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return 0
