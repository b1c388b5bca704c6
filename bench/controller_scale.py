"""The controller against the real control plane at scale (issue 19's controller figures).

    python bench/controller_scale.py [--virtualservers 1000] [--pods-per-pool 10]
                                     [--samples 50] [--steady-seconds 60] [--timeout 900]

Needs the test control plane built (``hack/test-cluster/cluster.sh build``). Starts it (its
own directory, stopped at the end), applies the CRDs and the shipped RBAC, and runs
``lvs-operator controller`` on the host as its ServiceAccount, as the integration tier does.
No director agent runs: the script plays the director group's leader, writing the group's
Lease as an agent would (holder: a director node whose agent pod kwok shows Ready, renewed
every 2 s, ``lvs.io/programmed`` listing every VirtualServer at its generation, in the
agent's own format). Then, in one namespace:

1. ``--virtualservers`` RealServerPools, each selecting its own ``--pods-per-pool`` bare pods
   (placed on fake nodes, at most 100 a node, which kwok shows Running and Ready), and as
   many VirtualServers (one VIP each in 10.200.0.0/16, each using its own pool), all created
   concurrently. Figure: the time from the last create to every VirtualServer showing
   ``Ready`` and ``Programmed`` True (seen through a watch), and from the first create, with
   the controller's CPU time over it.
2. ``--samples`` pods, one per pool spread over the pools, each made not Ready then Ready
   again through the status subresource (Ready and ContainersReady, as a kubelet would):
   the time from that write until the pool's ``status.members`` shows it (watched).
   Median and p99 of every flip, and of each direction.
3. Nothing changes for ``--steady-seconds`` but the Lease renewals: the controller's writes
   (its own ``lvs_controller_writes_total``, every kind, Events included; its reconcile
   passes and CPU time beside) and the API server's count of writes to what the controller
   writes (VirtualServers, pools, Services, DaemonSets, Secrets, Events; any client), per
   minute.
4. The controller's RSS (VmRSS) after the convergence and after the steady phase.

The script's own work (creating, watching) shares the machine with the control plane and the
controller, so every time is an upper bound of the controller's. Figures, not asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "operator"))

import yaml  # noqa: E402
from lightkube import ApiError, AsyncClient, Client, KubeConfig  # noqa: E402
from lightkube.models.coordination_v1 import LeaseSpec  # noqa: E402
from lightkube.models.meta_v1 import ObjectMeta  # noqa: E402
from lightkube.resources.coordination_v1 import Lease  # noqa: E402
from lightkube.resources.core_v1 import Namespace, Pod  # noqa: E402
from lightkube.types import PatchType  # noqa: E402
from tests.integration.helpers import (  # noqa: E402
    CLUSTER_SH,
    ControllerProcess,
    TestCluster,
    apply_crds,
    custom_resource,
    wait_for,
)

from lvs_operator.api.contract import (  # noqa: E402
    DIRECTOR_NODE_LABEL,
    PROGRAMMED_ANNOTATION,
    format_programmed,
    group_name,
    lease_name,
    programmed_key,
)

VS = custom_resource("lvs.io", "v1alpha1", "VirtualServer", "virtualservers")
RSP = custom_resource("lvs.io", "v1alpha1", "RealServerPool", "realserverpools")
OPERATOR_NS = "lvs-system"
NS = "bench"
VIP_RANGES = "10.200.0.0/16"
DIRECTOR_IMAGE = "registry.invalid/lvs-operator:bench"  # never pulled: kwok is the kubelet
WEB_IMAGE = "registry.invalid/web:bench"
DIRECTORS = ("bench-director-a", "bench-director-b")
GROUP = group_name({DIRECTOR_NODE_LABEL: "true"})  # VirtualServers without spec.directors
PODS_PER_NODE = 100  # fake nodes take 110
LEASE_SECONDS = 10  # the agent's default (director/election.py)
RENEW_EVERY = 2.0  # the agent's retry period
CREATORS = 16  # concurrent creates
WRITE_VERBS = {"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"}
# what the controller writes (docs/controller.md); DaemonSets' status is the DaemonSet
# controller's, not the operator's
CONTROLLER_RESOURCES = {
    "virtualservers",
    "realserverpools",
    "services",
    "daemonsets",
    "secrets",
    "events",
}


def say(msg: str) -> None:
    print(msg, flush=True)


def vip(i: int) -> str:
    return f"10.200.{i // 250}.{1 + i % 250}"


def name(i: int) -> str:
    return f"web-{i:05d}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def condition(obj: dict[str, Any], type_: str) -> str:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return str(c.get("status"))
    return ""


# ----------------------------------------------------------------------------- metrics


_SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? ([^ ]+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(text: str, metric: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line.startswith(metric):
            continue
        m = _SAMPLE.match(line)
        if m and m.group(1) == metric:
            out.append((dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def controller_counts(port: int) -> tuple[float, float]:
    """(API writes, reconcile passes) the controller counted (its /metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return (
        sum(v for _, v in samples(text, "lvs_controller_writes_total")),
        sum(v for _, v in samples(text, "lvs_controller_reconcile_passes_total")),
    )


def controller_writes(port: int) -> float:
    return controller_counts(port)[0]


def apiserver_writes(cluster: TestCluster) -> tuple[float, float]:
    """(writes to what the controller writes, every write), counted by the API server."""
    text = cluster.kubectl("get", "--raw", "/metrics", timeout=60).stdout
    ours = total = 0.0
    for labels, value in samples(text, "apiserver_request_total"):
        if labels.get("verb") not in WRITE_VERBS:
            continue
        total += value
        resource, sub = labels.get("resource"), labels.get("subresource", "")
        if resource in CONTROLLER_RESOURCES and not (resource == "daemonsets" and sub):
            ours += value
    return ours, total


# ----------------------------------------------------------------------------- set-up


def token_kubeconfig(cluster: TestCluster, out: Path) -> Path:
    """A kubeconfig of the controller's ServiceAccount (a TokenRequest token)."""
    wait_for(
        lambda: (
            cluster.kubectl("-n", OPERATOR_NS, "get", "sa", "lvs-operator", check=False).returncode
            == 0
        ),
        timeout=30,
        message="ServiceAccount lvs-operator",
    )
    token = cluster.kubectl(
        "-n", OPERATOR_NS, "create", "token", "lvs-operator", "--duration=24h"
    ).stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "bench",
                "cluster": {"server": cluster.server, "certificate-authority": cluster.info["ca"]},
            }
        ],
        "users": [{"name": "lvs-operator", "user": {"token": token}}],
        "contexts": [
            {
                "name": "controller",
                "context": {"cluster": "bench", "user": "lvs-operator", "namespace": OPERATOR_NS},
            }
        ],
        "current-context": "controller",
    }
    out.write_text(yaml.safe_dump(config))
    out.chmod(0o600)
    return out


def pool_obj(i: int) -> Any:
    return RSP.from_dict(
        {
            "apiVersion": "lvs.io/v1alpha1",
            "kind": "RealServerPool",
            "metadata": {"name": name(i), "namespace": NS},
            "spec": {"selector": {"matchLabels": {"app": name(i)}}},
        }
    )


def vs_obj(i: int) -> Any:
    return VS.from_dict(
        {
            "apiVersion": "lvs.io/v1alpha1",
            "kind": "VirtualServer",
            "metadata": {"name": name(i), "namespace": NS},
            "spec": {
                "vip": vip(i),
                "ports": [{"port": 80, "targetPort": "http"}],
                "poolRef": {"name": name(i)},
            },
        }
    )


def pod_obj(i: int, j: int, node: str) -> Any:
    return Pod.from_dict(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{name(i)}-{j}", "namespace": NS, "labels": {"app": name(i)}},
            "spec": {
                "nodeName": node,  # placed: the scheduler has nothing to do
                "terminationGracePeriodSeconds": 0,
                "containers": [
                    {
                        "name": "web",
                        "image": WEB_IMAGE,
                        "ports": [{"name": "http", "containerPort": 8080}],
                    }
                ],
            },
        }
    )


# ----------------------------------------------------------------------------- watching


class Watched:
    """The latest of each object of a kind in NS, from a watch; ``changed`` is set at each
    event (with its arrival time)."""

    def __init__(
        self, client: AsyncClient, res: Any, track: Callable[[dict[str, Any]], bool] | None = None
    ) -> None:
        self.client, self.res, self.track = client, res, track
        self.objects: dict[str, dict[str, Any]] = {}
        self.matching: set[str] = set()  # the names of the objects ``track`` holds for
        self.failure = ""  # set (by the guard) when waiting is pointless
        self.changed = asyncio.Event()
        self.at = 0.0
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                async for kind, obj in self.client.watch(self.res, namespace=NS):
                    d = obj.to_dict()
                    key = d["metadata"]["name"]
                    if kind == "DELETED":
                        self.objects.pop(key, None)
                        self.matching.discard(key)
                    else:
                        self.objects[key] = d
                        if self.track and self.track(d):
                            self.matching.add(key)
                        else:
                            self.matching.discard(key)
                    self.at = time.monotonic()
                    self.changed.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a dropped watch: list + watch again
                say(f"  (watch of {self.res.__name__} restarted: {type(exc).__name__}: {exc})")
                await asyncio.sleep(0.5)

    async def until(self, pred: Callable[[], bool], timeout: float, what: str) -> float:
        """Wait until ``pred()`` holds; returns the arrival time of the event that made it."""
        deadline = time.monotonic() + timeout
        while not pred():
            if self.failure:
                raise RuntimeError(f"{self.failure} (while waiting for {what})")
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)
        return self.at

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


class FakeLeader:
    """The director group's leader, as far as its Lease goes: holder, renewals every 2 s,
    and the programmed record (director/agent.py, election.py)."""

    def __init__(self, client: AsyncClient, holder: str) -> None:
        self.client, self.holder = client, holder
        self.programmed: dict[str, int] = {}
        self.lease: Lease | None = None
        self.renewals = 0
        self.failures = 0
        self.task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def _obj(self, now: datetime) -> Lease:
        annotations = {PROGRAMMED_ANNOTATION: format_programmed(self.programmed)}
        rv = self.lease.metadata.resourceVersion if self.lease and self.lease.metadata else None
        acquired = self.lease.spec.acquireTime if self.lease and self.lease.spec else now
        return Lease(
            metadata=ObjectMeta(
                name=lease_name(GROUP),
                namespace=OPERATOR_NS,
                annotations=annotations,
                resourceVersion=rv,
            ),
            spec=LeaseSpec(
                holderIdentity=self.holder,
                leaseDurationSeconds=LEASE_SECONDS,
                acquireTime=acquired,
                renewTime=now,
                leaseTransitions=0,
            ),
        )

    async def write(self) -> None:
        # one write at a time (the renewal task and a phase's own write), and a conflict
        # read again and retried, as an agent does
        async with self._lock:
            for attempt in range(3):
                now = datetime.now(UTC)
                try:
                    if self.lease is None:
                        self.lease = await self.client.create(self._obj(now))
                    else:  # a PUT of the whole record, as the agent's renewals are
                        self.lease = await self.client.replace(self._obj(now))
                    break
                except ApiError as exc:
                    if exc.status.code != 409 or attempt == 2:
                        raise
                    self.lease = await self.client.get(
                        Lease, lease_name(GROUP), namespace=OPERATOR_NS
                    )
            self.renewals += 1

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            try:
                await self.write()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                say(f"  (Lease renewal failed: {type(exc).__name__}: {exc})")
                with contextlib.suppress(Exception):
                    self.lease = await self.client.get(
                        Lease, lease_name(GROUP), namespace=OPERATOR_NS
                    )

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


# ----------------------------------------------------------------------------- phases


async def create_all(client: AsyncClient, objs: list[Any]) -> list[Any]:
    sem = asyncio.Semaphore(CREATORS)

    async def one(obj: Any) -> Any:
        async with sem:
            for attempt in range(5):
                try:
                    return await client.create(obj)
                except Exception:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.5 * (attempt + 1))

    return await asyncio.gather(*(one(o) for o in objs))


async def set_ready(client: AsyncClient, pod: str, ready: bool) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    value = "True" if ready else "False"
    conditions = [
        {"type": t, "status": value, "lastTransitionTime": now}
        for t in ("Ready", "ContainersReady")
    ]
    await client.patch(
        Pod.Status,
        pod,
        {"status": {"conditions": conditions}},  # merged by type (strategic merge)
        namespace=NS,
        patch_type=PatchType.STRATEGIC,
    )


def member_ready(pools: Watched, pool: str, pod: str) -> bool | None:
    for m in (pools.objects.get(pool, {}).get("status") or {}).get("members") or []:
        if m.get("pod") == pod:
            return bool(m.get("ready"))
    return None


async def wait_quiet(port: int, quiet: float, timeout: float) -> float:
    """Wait until the controller's write count stays still for ``quiet`` seconds (bounded)."""
    t0 = time.monotonic()
    last, since = controller_writes(port), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() - t0 < timeout:
        await asyncio.sleep(1)
        now = controller_writes(port)
        if now != last:
            last, since = now, time.monotonic()
    return time.monotonic() - t0


async def bench(args: argparse.Namespace, cluster: TestCluster, controller: ControllerProcess,
                metrics_port: int) -> None:  # fmt: skip
    n, m = args.virtualservers, args.pods_per_pool
    pid = controller.proc.pid if controller.proc else 0
    client = AsyncClient(KubeConfig.from_file(cluster.kubeconfig), field_manager="lvs-bench")
    vss = Watched(
        client,
        VS,
        lambda o: condition(o, "Ready") == "True" and condition(o, "Programmed") == "True",
    )
    pools = Watched(client, RSP)
    leader = FakeLeader(client, DIRECTORS[0])
    guarding: asyncio.Task[None] | None = None
    try:
        vss.start()
        pools.start()
        await leader.write()  # the group's leader exists before its VirtualServers do
        leader.start()
        nodes = [x for x in cluster.nodes if x not in DIRECTORS]

        say(f"creating {n} RealServerPools, {n} VirtualServers and {n * m} pods ...")
        t_first, cpu_first = time.monotonic(), cpu_seconds(pid)
        objs: list[Any] = []
        for i in range(n):
            objs.append(pool_obj(i))
            objs.append(vs_obj(i))
            for j in range(m):
                objs.append(pod_obj(i, j, nodes[(i * m + j) // PODS_PER_NODE]))
        created = await create_all(client, objs)
        t_created = time.monotonic()
        say(f"created in {t_created - t_first:.1f} s")
        # The leader programs them all at once, at the generations just created.
        leader.programmed = {
            programmed_key(NS, o.metadata.name): int(o.metadata.generation)
            for o in created
            if isinstance(o, VS)
        }
        await leader.write()

        reporting = True

        async def guard() -> None:
            """Every 10 s: the controller and every component of the control plane still
            run (else stop waiting, saying which); every 30 s while converging: progress."""
            ticks = 0
            while True:
                await asyncio.sleep(10)
                ticks += 1
                failure = ""
                if not controller.alive():
                    failure = f"the controller died:\n{controller.log(20)}"
                elif cluster.dir is not None:
                    r = await asyncio.to_thread(
                        TestCluster.run_script, "status", str(cluster.dir), timeout=60
                    )
                    if r.returncode:
                        failure = f"the control plane stopped:\n{r.stdout}{r.stderr}"
                if failure:
                    for w in (vss, pools):
                        w.failure = failure
                        w.changed.set()
                    return
                if reporting and ticks % 3 == 0:
                    say(f"  ... {len(vss.matching)}/{n} Ready and Programmed")

        guarding = asyncio.create_task(guard())
        try:
            t_ready = await vss.until(
                lambda: len(vss.matching) == n, args.timeout, "every VirtualServer Ready"
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}: {len(vss.matching)}/{n} Ready and Programmed") from None
        finally:
            reporting = False
        say(
            f"every VirtualServer Ready and Programmed {t_ready - t_created:.1f} s after the "
            f"last create ({t_ready - t_first:.1f} s after the first); the controller's CPU "
            f"time since the first create: {cpu_seconds(pid) - cpu_first:.1f} s"
        )
        rss_converged = rss_mib(pid)
        say(f"controller RSS after convergence: {rss_converged:.0f} MiB")
        settle = await wait_quiet(metrics_port, 5, 120)
        say(f"(controller quiet after {settle:.0f} s more)")

        k = min(args.samples, n)
        picks = [(name(i * n // k), f"{name(i * n // k)}-0") for i in range(k)]
        down: list[float] = []
        up: list[float] = []
        for pool, pod in picks:
            for ready, out in ((False, down), (True, up)):
                t0 = time.monotonic()
                await set_ready(client, pod, ready)
                t1 = await member_shows(pools, pool, pod, ready, 30)
                out.append(max(t1 - t0, 0.0))
        both = down + up
        say(
            f"pod readiness -> pool status.members, {len(both)} flips of {k} pods: median "
            f"{statistics.median(both) * 1000:.0f} ms, p99 {p99(both) * 1000:.0f} ms, max "
            f"{max(both) * 1000:.0f} ms (not Ready: median {statistics.median(down) * 1000:.0f} "
            f"ms, p99 {p99(down) * 1000:.0f} ms; Ready: median "
            f"{statistics.median(up) * 1000:.0f} ms, p99 {p99(up) * 1000:.0f} ms)"
        )

        settle = await wait_quiet(metrics_port, 5, 120)
        ours0, total0 = apiserver_writes(cluster)
        (writes0, passes0), renewals0 = controller_counts(metrics_port), leader.renewals
        t0, cpu0 = time.monotonic(), cpu_seconds(pid)
        await asyncio.sleep(args.steady_seconds)
        ours1, total1 = apiserver_writes(cluster)
        (writes1, passes1), renewals1 = controller_counts(metrics_port), leader.renewals
        minutes = (time.monotonic() - t0) / 60
        cpu = cpu_seconds(pid) - cpu0
        say(
            f"steady state, {args.steady_seconds:g} s with only the Lease renewing "
            f"({renewals1 - renewals0} renewals): the controller wrote "
            f"{(writes1 - writes0) / minutes:.1f}/min in {passes1 - passes0:.0f} reconcile "
            f"passes, using {cpu:.1f} s CPU ({100 * cpu / (minutes * 60):.1f}% of a core); "
            f"the API server counted "
            f"{(ours1 - ours0) / minutes:.1f}/min writes to VirtualServers, pools, Services, "
            f"DaemonSets, Secrets and Events (any client), "
            f"{(total1 - total0) / minutes:.0f}/min writes in all (kwok's node heartbeats "
            f"and the Lease included)"
        )
        say(
            f"controller RSS: {rss_converged:.0f} MiB after convergence, "
            f"{rss_mib(pid):.0f} MiB after the steady phase"
        )
        if leader.failures:
            say(f"({leader.failures} Lease renewals failed)")
    finally:
        if guarding is not None:
            guarding.cancel()
        await leader.stop()
        await vss.stop()
        await pools.stop()
        await client.close()


async def member_shows(pools: Watched, pool: str, pod: str, ready: bool, timeout: float) -> float:
    return await pools.until(
        lambda: member_ready(pools, pool, pod) is ready,
        timeout,
        f"pool {pool} to show {pod} {'ready' if ready else 'not ready'}",
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--virtualservers", type=int, default=1000)
    ap.add_argument("--pods-per-pool", type=int, default=10)
    ap.add_argument("--samples", type=int, default=50, help="pods whose readiness is flipped")
    ap.add_argument("--steady-seconds", type=float, default=60)
    ap.add_argument("--timeout", type=float, default=900, help="bound of the convergence")
    args = ap.parse_args()
    if not 1 <= args.virtualservers <= 250 * 250:
        ap.error("--virtualservers: 1 to 62500 (one VIP each in 10.200.0.0/16)")
    if not TestCluster.is_built():
        say(f"the test control plane is not built: run {CLUSTER_SH} build")
        return 1
    web_nodes = max(1, math.ceil(args.virtualservers * args.pods_per_pool / PODS_PER_NODE))
    if web_nodes > 240:
        ap.error("too many pods: at most 24,000 (fake node IPs)")
    work = Path(tempfile.mkdtemp(prefix="lvs-bench-controller-"))
    cluster: TestCluster | None = None
    controller: ControllerProcess | None = None
    try:
        t0 = time.monotonic()
        cluster = TestCluster.up(
            work / "cluster", nodes=web_nodes, node_labels={"lvs-bench/role": "web"},
            owner_pid=os.getpid(), timeout=600,
        )  # fmt: skip
        for node in DIRECTORS:
            cluster.add_node(node, {DIRECTOR_NODE_LABEL: "true"})
        say(
            f"control plane up in {time.monotonic() - t0:.0f} s: {web_nodes} web nodes, "
            f"{len(DIRECTORS)} director nodes"
        )
        admin = Client(KubeConfig.from_file(cluster.kubeconfig), field_manager="lvs-bench")
        apply_crds(admin)
        for ns in (OPERATOR_NS, NS):
            admin.create(Namespace(metadata=ObjectMeta(name=ns)))
        cluster.kubectl("apply", "--server-side", "-f", str(REPO / "deploy" / "rbac"))
        admin.close()
        metrics_port = free_port()
        # this tree's operator, whatever lvs_operator the interpreter has installed
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(REPO / "operator"), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        controller = ControllerProcess(
            [
                sys.executable, "-m", "lvs_operator.cli", "controller",
                f"--kubeconfig={token_kubeconfig(cluster, work / 'controller.kubeconfig')}",
                f"--namespace={OPERATOR_NS}",
                f"--vip-ranges={VIP_RANGES}",
                f"--director-image={DIRECTOR_IMAGE}",
                "--liveness=none",
                f"--metrics-port={metrics_port}",
                "--log-level=info",
            ],
            work / "controller.log",
        )  # fmt: skip
        controller.start()
        wait_for(lambda: controller_writes(metrics_port) >= 0, timeout=60, message="metrics")
        say(f"controller running as ServiceAccount {OPERATOR_NS}/lvs-operator (pid "
            f"{controller.proc.pid if controller.proc else '?'}, log {controller.log_path}); "
            f"RSS {rss_mib(controller.proc.pid) if controller.proc else math.nan:.0f} MiB "
            f"before any object")  # fmt: skip
        asyncio.run(bench(args, cluster, controller, metrics_port))
        if not controller.alive():
            say(f"the controller died:\n{controller.log()}")
            return 1
        return 0
    finally:
        if controller is not None:
            controller.stop()
        if cluster is not None:
            cluster.down()
        say(f"(work directory, with the controller's log: {work})")


if __name__ == "__main__":
    sys.exit(main())
