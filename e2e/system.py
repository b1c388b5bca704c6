"""Host side of the e2e tier and the demo: the whole system, put together.

``System`` starts and wires every piece, each the real thing:

- the control plane (hack/test-cluster: kube-apiserver, controller-manager, scheduler, etcd,
  kwok as the kubelet of fake nodes) on 127.0.0.1, with two director Nodes and web Nodes;
- the operator's CRDs and RBAC applied from the repo's manifests (``crds/``, ``deploy/rbac/``
  or the rendered bundle ``deploy/lvs-operator.yaml``);
- ``lvs-operator controller`` on the host, authenticated as its ServiceAccount (a
  TokenRequest token, so its RBAC is the shipped one), with a VIP range covering the VIP;
- the data-plane VM (tests/dataplane/vm.py) with the network of e2e/guest.py: a client, two
  director nodes, one namespace per web pod carrying the pod's IP as kwok assigned it;
- ``lvs-operator director`` once per director namespace, configured as the DaemonSet pod of
  that node would be: the environment of the controller's DaemonSet (fieldRefs resolved from
  the kwok pod on that node) and a kubeconfig for https://10.0.2.2:PORT with a token of the
  ``lvs-director`` ServiceAccount.

kwok plays the kubelet, so no container runs: the pods only look Running. What their
containers would do is done in the VM (the agents, the web servers), and where a kubelet
would report on a pod (readiness) the host does it through the status subresource.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import importlib
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from lightkube import ApiError, Client, KubeConfig, codecs  # noqa: E402
from lightkube.models.authentication_v1 import TokenRequestSpec  # noqa: E402
from lightkube.models.meta_v1 import ObjectMeta  # noqa: E402
from lightkube.resources.apps_v1 import DaemonSet, Deployment  # noqa: E402
from lightkube.resources.coordination_v1 import Lease  # noqa: E402
from lightkube.resources.core_v1 import Namespace, Pod, Secret, ServiceAccount  # noqa: E402
from tests.dataplane.deployed import PodTerms, agent_argv, init_argvs, pod_terms  # noqa: E402
from tests.dataplane.vm import (  # noqa: E402
    DEFAULT_PRELOAD,
    SETUP_HINT,
    GuestProcess,
    Vm,
    agent_startup,
    guest_python,
    missing_requirements,
)
from tests.integration.helpers import (  # noqa: E402
    CLUSTER_SH,
    ControllerProcess,
    TestCluster,
    apply_crds,
    custom_resource,
    wait_for,
)

from e2e.three_tier.services import missing_packages  # noqa: E402
from lvs_operator.api.contract import (  # noqa: E402
    DEFAULT_METRICS_PORT,
    ENV_METRICS_PORT,
    ENV_PEER_KEY_FILE,
    GROUP_LABEL,
    PEER_SECRET_KEY,
    peer_secret_name,
)
from lvs_operator.director.election import (  # noqa: E402
    DEFAULT_LEASE_DURATION,
    DEFAULT_RENEW_DEADLINE,
    DEFAULT_RETRY_PERIOD,
)
from lvs_operator.director.peer import DEFAULT_PEER_INTERVAL, DEFAULT_PEER_TIMEOUT  # noqa: E402

OPERATOR_NS = "lvs-system"
VIP = "192.0.2.10"
VIP_RANGES = "192.0.2.0/24,2001:db8::/64"
DIRECTOR_IMAGE = "registry.invalid/lvs-operator:e2e"  # never pulled: kwok is the kubelet
WEB_IMAGE = "registry.invalid/httpd:e2e"
GUEST = "e2e.guest"


@functools.cache
def _guest_parameters(fn: str) -> frozenset[str]:
    """The parameter names of guest function ``fn`` (the module imports on the host too)."""
    module = importlib.import_module(GUEST)
    return frozenset(inspect.signature(getattr(module, fn)).parameters)


# director namespace in the VM -> (Node name, InternalIP: its front address)
DIRECTORS = {"e2e-dir-a": ("director-a", "192.0.2.11"), "e2e-dir-b": ("director-b", "192.0.2.12")}
NODE_TO_NS = {node: ns for ns, (node, _) in DIRECTORS.items()}
OTHER = {"e2e-dir-a": "e2e-dir-b", "e2e-dir-b": "e2e-dir-a"}
VS = custom_resource("lvs.io", "v1alpha1", "VirtualServer", "virtualservers")
RSP = custom_resource("lvs.io", "v1alpha1", "RealServerPool", "realserverpools")
# guest functions (e2e/guest.py) that delete or re-create a director node's namespace
NODE_REPLACED_BY = frozenset({"add_director", "remove_director", "crash_node"})
CLUSTER_HINT = "run hack/test-cluster/cluster.sh build (or make setup)"
CLIENT = "e2e-client"  # e2e/guest.py's client namespace
PROMETHEUS_PORT = 9090  # = e2e/guest.py's


def free_port() -> int:
    """A TCP port free on the host's loopback now (the VM reaches it as 10.0.2.2)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Timings:
    """The agents' Lease timings (passed through the controller's flags into the DaemonSet's
    environment, as in production) and their start-up grace."""

    # The product's defaults (election.py, peer.py): the tiers test what ships. With outage
    # tolerance a slow Lease write no longer steps a leader down, and a standby never takes a
    # VIP that still answers ARP, so a stalled agent under TCG is no longer a failover.
    lease_duration: int = DEFAULT_LEASE_DURATION
    renew_deadline: float = DEFAULT_RENEW_DEADLINE
    retry_period: float = DEFAULT_RETRY_PERIOD
    startup_grace: float = 1.0
    peer_interval: float = DEFAULT_PEER_INTERVAL
    peer_timeout: float = DEFAULT_PEER_TIMEOUT

    @classmethod
    def parse(cls, text: str | None, peer: str | None = None) -> Timings:
        """ "duration,deadline,retry[,grace]" (e.g. LVS_E2E_LEASE) and "interval,timeout"
        (LVS_E2E_PEER), or the defaults."""
        out = cls()
        if text:
            parts = [float(x) for x in text.split(",")]
            grace = parts[3] if len(parts) > 3 else cls.startup_grace
            out = cls(int(parts[0]), parts[1], parts[2], grace)
        if peer:
            interval, timeout = (float(x) for x in peer.split(","))
            out = dataclasses.replace(out, peer_interval=interval, peer_timeout=timeout)
        return out

    def __str__(self) -> str:
        return (
            f"Lease duration {self.lease_duration} s, renew deadline {self.renew_deadline} s, "
            f"retry {self.retry_period} s, start-up grace {self.startup_grace} s, peer "
            f"heartbeat every {self.peer_interval} s, timeout {self.peer_timeout} s"
        )


def missing() -> list[str]:
    """Why the whole system cannot run here, each with the command that fixes it."""
    out = []
    if not TestCluster.is_built():
        out.append(f"the local control plane is not built ({CLUSTER_HINT})")
    vm_missing = missing_requirements()
    if vm_missing:
        out.append(f"data-plane VM unavailable: {'; '.join(vm_missing)} ({SETUP_HINT})")
    packages = missing_packages()
    if packages:
        out.append(f"examples/three-tier's packages missing: {' '.join(packages)} ({SETUP_HINT})")
    return out


def web_deployment(name: str, namespace: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    # web pods on the web nodes (the director nodes are labelled separately)
                    "nodeSelector": {"lvs-e2e/role": "web"},
                    "terminationGracePeriodSeconds": 30,
                    "containers": [
                        {
                            "name": "httpd",
                            "image": WEB_IMAGE,
                            "ports": [{"name": "http", "containerPort": 8080}],
                        }
                    ],
                },
            },
        },
    }


class System:
    """The whole system; see the module docstring. ``say`` prints progress and figures."""

    def __init__(
        self,
        workdir: Path,
        *,
        app_namespace: str = "web",
        timings: Timings | None = None,
        say: Callable[[str], None] = print,
        web_nodes: int = 2,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.app_ns = app_namespace
        self.timings = timings or Timings()
        self.say = say
        self.web_nodes = web_nodes
        self.cluster: TestCluster | None = None
        self.admin: Client | None = None
        self.vm: Vm | None = None
        self.controller: ControllerProcess | None = None
        self.agents: dict[str, GuestProcess] = {}  # director namespace -> running agent
        # director namespaces whose init step ran (call() forgets a node it replaces)
        self.initialised: set[str] = set()
        self.agent_history: list[tuple[str, GuestProcess]] = []
        self.pod_ns: dict[str, str] = {}  # pod name -> its namespace in the VM
        self._pod_index = 0
        self.group = ""
        self.lease_name = ""
        self.vm_api: dict[str, str] = {}  # admin API access for guest code (server, ca, token)
        self._vm_error: BaseException | None = None
        self._vm_thread: threading.Thread | None = None
        self.sampler: GuestProcess | None = None
        self.sampler_out = ""
        self.controller_metrics_port = 0  # chosen when the controller starts

    # -- lifecycle ------------------------------------------------------------------------------

    def start_cluster(self, owner_pid: int | None = None) -> TestCluster:
        if not TestCluster.is_built():
            self.say(
                "building the local control plane from Go modules (first time only; minutes) ..."
            )
            self._stream([str(CLUSTER_SH), "build"])
        t0 = time.monotonic()
        cluster_dir = self.workdir / "cluster"
        self.cluster = TestCluster.up(
            cluster_dir,
            nodes=self.web_nodes,
            node_labels={"lvs-e2e/role": "web"},
            owner_pid=owner_pid if owner_pid is not None else os.getpid(),
        )
        self.admin = Client(KubeConfig.from_file(self.cluster.kubeconfig), field_manager="lvs-e2e")
        self.say(
            f"control plane up in {time.monotonic() - t0:.1f} s: {self.cluster.server} "
            f"({self.web_nodes} web nodes)"
        )
        return self.cluster

    def boot_vm_async(self) -> None:
        """Boot the VM in a thread (it takes ~20-40 s under TCG): overlaps the cluster set-up."""

        def boot() -> None:
            try:
                preload = (*DEFAULT_PRELOAD, "tests.dataplane.scenarios_agent", GUEST)
                keep = os.environ.get("LVS_VM_KEEP") == "1"
                vm = Vm(
                    preload=preload,
                    keep_shared=keep,
                    max_lifetime=3 * 3600,
                    boot_timeout=float(os.environ.get("LVS_VM_BOOT_TIMEOUT", 300)),
                )
                self.vm = vm
                vm.start()
            except BaseException as exc:
                self._vm_error = exc

        self._vm_thread = threading.Thread(target=boot, name="vm-boot", daemon=True)
        self._vm_thread.start()

    def wait_vm(self, progress: bool = False) -> Vm:
        assert self._vm_thread is not None
        t0 = time.monotonic()
        while self._vm_thread.is_alive():
            self._vm_thread.join(10)
            if progress and self._vm_thread.is_alive():
                self.say(f"  ... VM still booting ({time.monotonic() - t0:.0f} s)")
        if self._vm_error is not None or self.vm is None:
            raise RuntimeError(f"the VM did not boot: {self._vm_error}")
        return self.vm

    def bring_up(self, manifest: str, replicas: int = 3) -> dict[str, float]:
        """Everything up to two ready agents: cluster (VM booting meanwhile), operator RBAC,
        controller, director Nodes, the VM's network, the web Deployment, ``manifest`` (the
        pool and VirtualServer), the VIP sampler and both agents. Returns the agents'
        seconds to ready."""
        t0 = time.monotonic()
        self.boot_vm_async()
        self.start_cluster()
        self.install_operator()
        self.start_controller()
        self.add_director_nodes()
        vm = self.wait_vm(progress=True)
        self.say(f"VM booted in {vm.boot_seconds:.1f} s (kernel {vm.guest_info.get('kernel')})")
        self.build_network()
        pods = self.deploy_web(replicas)
        self.say(f"web pods in the VM: {', '.join(f'{p} {self.pod_ip(p)}' for p in pods)}")
        self.say("applied:\n" + _indent(self.apply(manifest).rstrip()))
        group, lease = self.wait_group()
        self.say(
            f"director group {group}: DaemonSet {OPERATOR_NS}/lvs-director-{group}, Lease {lease}"
        )
        self.start_sampler()
        for ns in DIRECTORS:
            self.start_agent(ns)
        ready = self.wait_agents_ready(list(DIRECTORS))
        if len(ready) != 2:
            raise RuntimeError(f"agents not ready: {ready}\n{self.logs()}")
        self.say(f"agents ready after {ready} s; set-up took {time.monotonic() - t0:.0f} s")
        return ready

    def close(self) -> None:
        for proc in [self.sampler, *self.agents.values()]:
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.kill()
        self.agents.clear()
        if self._vm_thread is not None:
            self._vm_thread.join(600)
        if self.vm is not None:
            with contextlib.suppress(Exception):
                self.vm.stop()
        if self.controller is not None:
            self.controller.stop()
        if self.admin is not None:
            self.admin.close()
        if self.cluster is not None and os.environ.get("LVS_KEEP_CLUSTER") != "1":
            self.cluster.down()

    def _stream(self, argv: list[str]) -> None:
        """Run a set-up command, its output passed through (progress of slow steps)."""
        r = subprocess.run(argv, cwd=REPO, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed with {r.returncode}")

    # -- the operator -----------------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        assert self.cluster is not None
        return self.cluster.kubectl(*args, input=input, check=check).stdout

    def install_operator(self, bundle: bool = False) -> None:
        """CRDs from crds/, then either the RBAC manifests (deploy/rbac/) or the rendered
        bundle (deploy/lvs-operator.yaml) without its Deployment: no container runs under kwok,
        so the controller runs on this host, as that Deployment's ServiceAccount."""
        assert self.admin is not None
        names = apply_crds(self.admin)
        self.say(f"applied CRDs: {', '.join(names)}")
        if not bundle:
            self.kubectl("create", "namespace", OPERATOR_NS, check=False)
            out = self.kubectl("apply", "--server-side", "-f", str(REPO / "deploy/rbac"))
        else:
            docs = [
                d
                for d in yaml.safe_load_all((REPO / "deploy/lvs-operator.yaml").read_text())
                if d and d.get("kind") != "Deployment"
            ]
            out = self.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(docs))
        self.say("installed the operator's RBAC:\n" + _indent(out))

    def token_kubeconfig(
        self,
        account: str,
        server: str,
        path: Path,
        namespace: str = OPERATOR_NS,
        relative_ca: bool = False,
    ) -> Path:
        """A kubeconfig authenticating as ServiceAccount ``account`` of ``namespace``. Its CA
        is a file beside it, named by an absolute path, or with ``relative_ca`` by its name
        alone (resolved against the kubeconfig's directory): the agents read it from the image's
        tree too (tests/dataplane/deployed.py), where the shared directory has another path.
        Not inline: a client writes inline CA data to a temporary file, which a read-only root
        file system refuses."""
        assert self.admin is not None and self.cluster is not None
        wait_for(
            lambda: self.admin.get(ServiceAccount, account, namespace=namespace),  # type: ignore[union-attr]
            timeout=30,
            message=f"ServiceAccount {account}",
        )
        request = ServiceAccount.Token(
            metadata=ObjectMeta(name=account, namespace=namespace),
            spec=TokenRequestSpec(audiences=[], expirationSeconds=24 * 3600),
        )
        token = self.admin.create(request, account, namespace=namespace).status.token
        ca = path.parent / f"{path.stem}.ca.crt"
        shutil.copyfile(self.cluster.info["ca"], ca)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "e2e",
                    "cluster": {
                        "server": server,
                        "certificate-authority": ca.name if relative_ca else str(ca),
                    },
                }
            ],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [
                {
                    "name": account,
                    "context": {"cluster": "e2e", "user": account, "namespace": namespace},
                }
            ],
            "current-context": account,
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def start_controller(self, vip_ranges: str = VIP_RANGES) -> ControllerProcess:
        assert self.cluster is not None
        if not self.controller_metrics_port:
            self.controller_metrics_port = free_port()
        kubeconfig = self.token_kubeconfig(
            "lvs-operator", self.cluster.server, self.workdir / "controller.kubeconfig"
        )
        t = self.timings
        argv = [
            sys.executable,
            "-m",
            "lvs_operator.cli",
            "controller",
            f"--kubeconfig={kubeconfig}",
            f"--namespace={OPERATOR_NS}",
            f"--vip-ranges={vip_ranges}",
            f"--director-image={DIRECTOR_IMAGE}",
            f"--lease-duration-seconds={t.lease_duration}",
            # the controller's flags take whole seconds; other values reach the agents
            # through agent_env() alone
            *(
                [f"--renew-deadline-seconds={int(t.renew_deadline)}"]
                if t.renew_deadline == int(t.renew_deadline)
                else []
            ),
            *(
                [f"--retry-period-seconds={int(t.retry_period)}"]
                if t.retry_period == int(t.retry_period)
                else []
            ),
            "--liveness=none",
            # a free port (the host's 9640 may be taken): the e2e's Prometheus scrapes it
            f"--metrics-port={self.controller_metrics_port}",
            "--log-level=info",
        ]
        self.controller = ControllerProcess(argv, self.workdir / "controller.log")
        self.controller.start()
        self.say(
            f"controller running on the host as ServiceAccount {OPERATOR_NS}/lvs-operator "
            f"(VIP ranges {vip_ranges}; log {self.controller.log_path})"
        )
        return self.controller

    def start_prometheus(self) -> GuestProcess:
        """Debian's Prometheus (the host's binary: the VM shares its root filesystem) in the
        client's namespace, scraping both agents (their metrics port, on the front
        addresses) and the controller (on the host, through the client's uplink) every
        2 s, with the chart's alert rules (charts/lvs-operator/files/alerts.yaml, as
        shipped) evaluated every second. Query it with ``call("prom_query", expr=...)``."""
        assert self.vm is not None
        self.call("connect_client_uplink")
        env = self.agent_env(next(iter(DIRECTORS)))
        port = int(env.get(ENV_METRICS_PORT, DEFAULT_METRICS_PORT))
        agents = [f"{ip}:{port}" for _, ip in DIRECTORS.values()]
        # scrapes every 2 s (an agent's render under TCG on a loaded host can pass 1 s),
        # rules evaluated every second
        every_second = dict(scrape_interval="2s", evaluation_interval="1s", scrape_timeout="2s")
        controller = [f"10.0.2.2:{self.controller_metrics_port}"]
        config = {
            "global": every_second,
            "rule_files": [str(REPO / "charts" / "lvs-operator" / "files" / "alerts.yaml")],
            "scrape_configs": [
                {"job_name": "lvs-director", "static_configs": [{"targets": agents}]},
                {"job_name": "lvs-operator", "static_configs": [{"targets": controller}]},
            ],
        }
        conf = self.vm.shared / "prometheus.yml"
        conf.write_text(yaml.safe_dump(config))
        data = "/run/e2e-prometheus"
        argv = ["sh", "-c", f"rm -rf {data} && mkdir -p {data} && exec prometheus "
                f"--config.file={conf} --storage.tsdb.path={data} "
                f"--web.listen-address=0.0.0.0:{PROMETHEUS_PORT}"]  # fmt: skip
        return self.vm.spawn(argv, netns=CLIENT, name="prometheus")

    def add_director_nodes(self) -> None:
        assert self.cluster is not None
        for node, ip in DIRECTORS.values():
            self.cluster.add_node(node, {"lvs.io/director": "true"}, ip=ip)
        self.say("director Nodes: " + ", ".join(f"{n} ({ip})" for n, ip in DIRECTORS.values()))

    # -- the VM's network ---------------------------------------------------------------------

    def call(self, fn: str, timeout: float = 120, **kwargs: Any) -> Any:
        assert self.vm is not None
        if fn in NODE_REPLACED_BY:
            # the node's network namespace goes (and comes back new): a new pod, whose
            # init containers run again before its agent
            self.initialised.discard(kwargs["ns"])
        if fn.startswith("wait_") and "timeout" in _guest_parameters(fn):
            # a guest wait gets the same bound and returns what it saw when it runs out; the
            # call is cut off only 30 s later, so a failure says why rather than "timed out"
            return self.vm.call(
                f"{GUEST}:{fn}", timeout=timeout + 30, arguments={"timeout": timeout}, **kwargs
            )
        return self.vm.call(f"{GUEST}:{fn}", timeout=timeout, **kwargs)

    def build_network(self) -> None:
        vm = self.vm
        assert vm is not None and self.cluster is not None
        self.call("build", timeout=180)
        ca = vm.shared / "api-ca.crt"
        shutil.copyfile(self.cluster.info["ca"], ca)
        token = vm.shared / "api-admin.token"
        token.write_text(self.cluster.info["token"])
        self.vm_api = {"server": self.cluster.info["server_vm"], "ca": str(ca), "token": str(token)}

    def sync_pods(self, app: str = "web") -> list[str]:
        """Give every web pod with an IP its namespace in the VM (HTTP on 8080 answering with
        the pod's name), and remove the namespaces of pods that are gone. Returns new pods."""
        assert self.admin is not None
        pods = {
            p.metadata.name: p
            for p in self.admin.list(Pod, namespace=self.app_ns, labels={"app": app})
        }
        new = []
        for name, pod in sorted(pods.items()):
            ip = pod.status.podIP if pod.status else None
            if name in self.pod_ns or not ip:
                continue
            self._pod_index += 1
            self.pod_ns[name] = self.call("add_pod", name=name, ip=ip, index=self._pod_index)
            new.append(name)
        for name in [n for n in self.pod_ns if n not in pods]:
            self.call("remove_pod", ns=self.pod_ns.pop(name))
        return new

    def pod_ip(self, name: str) -> str:
        assert self.admin is not None
        return str(self.admin.get(Pod, name, namespace=self.app_ns).status.podIP)

    def web_pods(self, app: str = "web") -> list[Any]:
        assert self.admin is not None
        pods = self.admin.list(Pod, namespace=self.app_ns, labels={"app": app})
        return sorted(pods, key=lambda p: p.metadata.name)

    # -- the application --------------------------------------------------------------------------

    def deploy_web(self, replicas: int = 3, app: str = "web") -> list[str]:
        """The web Deployment; waits until its pods run with IPs and gives them namespaces."""
        assert self.admin is not None
        with contextlib.suppress(ApiError):
            self.admin.create(Namespace(metadata=ObjectMeta(name=self.app_ns)))
        wait_for(
            lambda: self.admin.get(ServiceAccount, "default", namespace=self.app_ns),  # type: ignore[union-attr]
            timeout=30,
            message=f"the default ServiceAccount in {self.app_ns}",
        )
        self.admin.apply(codecs.from_dict(web_deployment(app, self.app_ns, replicas)), force=True)
        self.wait_pods(replicas, app)
        return self.sync_pods(app)

    def wait_pods(self, count: int, app: str = "web", timeout: float = 60) -> list[Any]:
        def running() -> list[Any] | None:
            pods = [
                p
                for p in self.web_pods(app)
                if p.status
                and p.status.podIP
                and p.status.phase == "Running"
                and not p.metadata.deletionTimestamp
            ]
            return pods if len(pods) == count else None

        result: list[Any] = wait_for(running, timeout=timeout, message=f"{count} running web pods")
        return result

    def scale(self, replicas: int, app: str = "web") -> None:
        assert self.admin is not None
        self.admin.patch(Deployment, app, {"spec": {"replicas": replicas}}, namespace=self.app_ns)

    def apply(self, manifest: str) -> str:
        return self.kubectl(
            "apply", "--server-side", "--field-manager=lvs-e2e", "-f", "-", input=manifest
        )

    def virtual_server(self, name: str = "web") -> dict[str, Any]:
        assert self.admin is not None
        return self.admin.get(VS, name, namespace=self.app_ns).to_dict()  # type: ignore[no-any-return]

    def pool(self, name: str = "web") -> dict[str, Any]:
        assert self.admin is not None
        return self.admin.get(RSP, name, namespace=self.app_ns).to_dict()  # type: ignore[no-any-return]

    def members(self, pool: str = "web") -> dict[str, dict[str, Any]]:
        status = self.pool(pool).get("status") or {}
        return {m.get("pod") or m["address"]: m for m in status.get("members") or []}

    def status_table(self) -> str:
        return self.kubectl("get", "lvs,rsp", "-n", self.app_ns, "-o", "wide", check=False)

    def show_status(self, title: str) -> None:
        self.say(
            f"--- kubectl get lvs,rsp -n {self.app_ns} -o wide ({title})\n"
            + _indent(self.status_table().rstrip())
        )

    def wait_group(self, vs: str = "web", timeout: float = 60) -> tuple[str, str]:
        """The director group the controller gave ``vs``, once its DaemonSet exists."""
        assert self.admin is not None

        def grouped() -> str | None:
            labels = self.virtual_server(vs)["metadata"].get("labels") or {}
            return labels.get(GROUP_LABEL)

        self.group = wait_for(
            grouped,
            timeout=timeout,
            message=f"VirtualServer {vs} accepted "
            f"(label {GROUP_LABEL}); controller log:\n{self._ctl_log()}",
        )
        ds = wait_for(
            lambda: self.admin.get(
                DaemonSet,
                f"lvs-director-{self.group}",  # type: ignore[union-attr]
                namespace=OPERATOR_NS,
            ),
            timeout=timeout,
            message="the group's DaemonSet",
        )
        env = {e.name: e.value for e in ds.spec.template.spec.containers[0].env or []}
        self.lease_name = env.get("LVS_LEASE_NAME") or f"lvs-director-{self.group}"
        return self.group, self.lease_name

    def _ctl_log(self) -> str:
        return self.controller.log(30) if self.controller else ""

    # -- the director agents ----------------------------------------------------------------------

    def agent_env(self, ns: str) -> dict[str, str]:
        """The agent's environment as the group's DaemonSet gives its pod on that node."""
        assert self.admin is not None and self.vm is not None
        node = DIRECTORS[ns][0]
        ds = self.admin.get(DaemonSet, f"lvs-director-{self.group}", namespace=OPERATOR_NS)
        pods = wait_for(
            lambda: [
                p
                for p in self.admin.list(
                    Pod,
                    namespace=OPERATOR_NS,  # type: ignore[union-attr]
                    labels={GROUP_LABEL: self.group},
                )
                if p.spec.nodeName == node
            ],
            timeout=60,
            message=f"the DaemonSet's pod on {node}",
        )
        pod = pods[0]
        fields = {
            "spec.nodeName": node,
            "metadata.name": pod.metadata.name,
            "metadata.namespace": OPERATOR_NS,
        }
        env: dict[str, str] = {}
        for e in ds.spec.template.spec.containers[0].env or []:
            if e.value is not None:
                env[e.name] = e.value
            elif e.valueFrom is not None and e.valueFrom.fieldRef is not None:
                env[e.name] = fields[e.valueFrom.fieldRef.fieldPath]
        kubeconfig = self.vm.shared / "director.kubeconfig"
        if not kubeconfig.exists():
            assert self.cluster is not None
            self.token_kubeconfig(
                "lvs-director", self.cluster.info["server_vm"], kubeconfig, relative_ca=True
            )
        env["KUBECONFIG"] = str(kubeconfig)
        t = self.timings
        env["LVS_STARTUP_GRACE_SECONDS"] = str(t.startup_grace)
        # the same as the DaemonSet's where the controller's whole-second flags could say it
        env["LVS_LEASE_DURATION_SECONDS"] = str(t.lease_duration)
        env["LVS_RENEW_DEADLINE_SECONDS"] = str(t.renew_deadline)
        env["LVS_RETRY_PERIOD_SECONDS"] = str(t.retry_period)
        env["LVS_PEER_INTERVAL_SECONDS"] = str(t.peer_interval)
        env["LVS_PEER_TIMEOUT_SECONDS"] = str(t.peer_timeout)
        # the group's heartbeat key, from the Secret the controller made and the DaemonSet
        # mounts: the agents sign their heartbeats as in production (a path other than the
        # default must exist, so a missing key fails the agent's start, not the assertion)
        env[ENV_PEER_KEY_FILE] = str(self.peer_key_file())
        return env

    def peer_key_file(self) -> Path:
        assert self.admin is not None and self.vm is not None
        secret = wait_for(
            lambda: self.admin.get(  # type: ignore[union-attr]
                Secret, peer_secret_name(self.group), namespace=OPERATOR_NS
            ),
            timeout=30,
            message="the group's heartbeat-key Secret (the controller creates it)",
        )
        path = self.vm.shared / f"peer-{self.group}.key"  # this cluster's: written each time
        path.write_bytes(base64.b64decode(secret.data[PEER_SECRET_KEY]))
        return path

    def pod_terms(self) -> PodTerms:
        """The group's DaemonSet's terms for the agent, as the API server holds it."""
        assert self.admin is not None
        ds = self.admin.get(DaemonSet, f"lvs-director-{self.group}", namespace=OPERATOR_NS)
        return pod_terms(ds.to_dict()["spec"]["template"]["spec"])

    def start_agent(self, ns: str) -> GuestProcess:
        """The agent of node ``ns`` as the group's DaemonSet runs it (tests/dataplane/
        deployed.py): its init containers first, once per node (kubelet: once per pod)."""
        assert self.vm is not None
        env = self.agent_env(ns)
        node = DIRECTORS[ns][0]
        terms = self.pod_terms()
        if ns not in self.initialised:
            for init in init_argvs(terms, self.vm.shared, guest_python()):
                res = self.vm.run(init, netns=ns, timeout=240)
                assert res.returncode == 0, f"init step {init} on {ns}: {res}"
            self.initialised.add(ns)
        argv, env = agent_argv(terms, [], env, self.vm.shared, guest_python())
        proc = self.vm.spawn(argv, netns=ns, name=f"agent-{node}", env=env)
        self.agents[ns] = proc
        self.agent_history.append((node, proc))
        return proc

    def wait_agents_ready(self, namespaces: list[str], timeout: float = 60) -> dict[str, float]:
        """Until each agent has started (its kernel read, observed in its log: Python's
        start-up under TCG takes 15-50 s, up to AGENT_STARTUP_LIMIT) and then its /readyz
        answers 200 (lists done, kernel converged once) within ``timeout`` seconds."""
        assert self.vm is not None
        for ns in namespaces:
            if ns in self.agents:
                startup = agent_startup(self.agents[ns])
                assert startup["ok"], f"agent {ns} did not start: {startup}"
        ready: dict[str, float] = self.vm.call(
            "tests.dataplane.scenarios_agent:wait_ready",
            namespaces=namespaces,
            timeout=timeout,
        )
        return ready

    def leader(self) -> str:
        """The node holding the group's Lease ("" if none)."""
        assert self.admin is not None
        try:
            lease = self.admin.get(Lease, self.lease_name, namespace=OPERATOR_NS)
        except ApiError:
            return ""
        return str(lease.spec.holderIdentity or "") if lease.spec else ""

    def leader_ns(self, timeout: float = 60) -> str:
        node = wait_for(lambda: self.leader() or None, timeout=timeout, message="a Lease holder")
        return NODE_TO_NS[node]

    def start_sampler(self, max_seconds: float = 1800) -> None:
        assert self.vm is not None
        self.sampler_out = str(self.vm.shared / "vip-sampler.jsonl")
        self.sampler = self.vm.spawn(
            [
                guest_python(),
                "-m",
                GUEST,
                "sampler",
                "--out",
                self.sampler_out,
                "--interval",
                "0.1",
                "--max-seconds",
                str(max_seconds),
            ],
            name="vip-sampler",
        )

    def samples(self) -> list[dict[str, Any]]:
        path = Path(self.sampler_out)
        if not self.sampler_out or not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
        return rows

    def start_loop(
        self,
        name: str,
        interval: float = 0.05,
        timeout: float = 2.0,
        max_seconds: float = 120,
        concurrent: bool = False,
    ) -> tuple[GuestProcess, str]:
        """A request loop in the client (see e2e/guest.py), after its first answer;
        ``concurrent``: a request every ``interval`` even while others hang."""
        assert self.vm is not None
        out = str(self.vm.shared / f"loop-{name}.jsonl")
        proc = self.vm.spawn(
            [
                guest_python(),
                "-m",
                GUEST,
                "loop",
                "--out",
                out,
                "--interval",
                str(interval),
                "--timeout",
                str(timeout),
                "--max-seconds",
                str(max_seconds),
                *(["--concurrent"] if concurrent else []),
            ],
            name=f"loop-{name}",
        )
        deadline = time.monotonic() + 90
        while not any(r[1] for r in _read_jsonl(out)):
            if time.monotonic() > deadline:
                raise AssertionError(f"request loop {name} got no answer:\n{proc.output()}")
            time.sleep(0.2)
        time.sleep(1.0)  # a second of steady traffic before the event
        return proc, out

    def stop_loop(self, proc: GuestProcess, out: str) -> list[list[Any]]:
        proc.signal(signal.SIGTERM)
        proc.wait(30)
        return _read_jsonl(out)

    def logs(self, tail: int = 60) -> str:
        """The controller's and every agent's log (tails), for a failure report."""
        ctl = self.controller
        parts = [f"===== controller ({ctl.log_path if ctl else '-'})", ctl.log(tail) if ctl else ""]
        for node, proc in self.agent_history:
            parts.append(f"===== agent {node} (pid {proc.pid}, {proc.log})")
            parts.extend(proc.output().splitlines()[-tail:])
        if self.vm is not None:
            parts.append("===== VM console (tail)")
            parts.append(self.vm.console_tail(15))
        return "\n".join(parts)


def _read_jsonl(path: str) -> list[Any]:
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def agent_started_at(proc: GuestProcess) -> float | None:
    """The guest wall-clock time of the agent's "director agent starting" log line."""
    for line in proc.output().splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if rec.get("msg") == "director agent starting":
                return float(rec["ts"])
    return None


def overlaps(
    samples: list[dict[str, Any]], start: float | None = None, end: float | None = None
) -> list[dict[str, float]]:
    """Windows (guest monotonic) when more than one director held the VIP."""
    out = []
    opened: float | None = None
    for s in samples:
        many = len(s.get("holders") or []) > 1
        if many and opened is None:
            opened = s["mono"]
        elif not many and opened is not None:
            out.append({"from": opened, "to": s["mono"], "seconds": round(s["mono"] - opened, 2)})
            opened = None
    if opened is not None and samples:
        out.append(
            {
                "from": opened,
                "to": samples[-1]["mono"],
                "seconds": round(samples[-1]["mono"] - opened, 2),
                "open": 1.0,
            }
        )
    return [
        o for o in out if (start is None or o["to"] >= start) and (end is None or o["from"] <= end)
    ]


@contextlib.contextmanager
def timed(say: Callable[[str], None], what: str) -> Iterator[None]:
    t0 = time.monotonic()
    say(f"{what} ...")
    yield
    say(f"{what}: done in {time.monotonic() - t0:.1f} s")
