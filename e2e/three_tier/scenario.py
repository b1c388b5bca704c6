"""Host side: examples/three-tier/ run for real inside the e2e's system (e2e/system.py).

``ThreeTier(system).deploy()`` applies the example's manifests unchanged to the control plane
(plus a PersistentVolume standing in for the default StorageClass of MySQL's claim: the test
cluster has no provisioner), waits for the controller to put its VirtualServer in the
system's director group (the same director nodeSelector), and then does in the VM what the
pods' containers would do, each in the network namespace of its kwok pod:

- the NFS server (the example's PersistentVolume address, a namespace on the pod network's
  bridge) exporting the example's path, seeded as the web pods' init container would;
- MariaDB in ``mysql-0``'s namespace at its pod IP on the Service's port;
- Apache + PHP in each web pod's namespace on the container port, the share mounted at the
  example's mount path, the database at ``mysql-0``'s IP (the VM has no cluster DNS).

Everything else (VIP, ports, virtual hosts, persistence, credentials, schema, page) comes from
the example through ``example.load()``, on both sides, so the example cannot drift from what
runs. Work directories live under the VM's /tmp (``WORK``); ``logs()`` reads their tails.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lightkube import codecs
from lightkube.resources.core_v1 import Pod

from e2e.three_tier.example import ThreeTierExample, load

if TYPE_CHECKING:
    from e2e.system import System

GUEST = "e2e.three_tier.guest"
WORK = "/tmp/tt"  # in the VM (short: MariaDB's socket path has a 107-byte limit)
MYSQL_VOLUME = "three-tier-mysql-data-0"


@dataclass
class PodTier:
    """One kwok pod and what runs in its namespace in the VM."""

    name: str
    ip: str
    netns: str
    workdir: str
    pid: int = 0


@dataclass
class ThreeTier:
    system: System
    example: ThreeTierExample = field(default_factory=load)
    web: dict[str, PodTier] = field(default_factory=dict)  # pod name -> its tier
    database: PodTier | None = None
    nfs_workdir: str = f"{WORK}/nfs"
    timings: dict[str, float] = field(default_factory=dict)

    # -- set-up ------------------------------------------------------------------------------

    def call(self, fn: str, timeout: float = 180, **kwargs: Any) -> Any:
        assert self.system.vm is not None
        # all through ``arguments``: Vm.call takes ``netns`` and ``timeout`` itself
        return self.system.vm.call(f"{GUEST}:{fn}", timeout=timeout, arguments=kwargs)

    def mysql_volume(self) -> dict[str, Any]:
        """A pre-bound volume for the StatefulSet's claim (kwok mounts nothing)."""
        ex = self.example
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": MYSQL_VOLUME},
            "spec": {
                "capacity": {"storage": "5Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "persistentVolumeReclaimPolicy": "Delete",
                "hostPath": {"path": f"/var/lib/three-tier/{ex.mysql_pod}"},
                "claimRef": {"namespace": ex.namespace, "name": f"data-{ex.mysql_pod}"},
            },
        }

    def deploy(self) -> dict[str, float]:
        """Apply the example, wait for its pods, start its tiers in the VM; returns timings."""
        s, ex = self.system, self.example
        assert s.admin is not None
        t0 = time.monotonic()
        out = s.kubectl("apply", "--server-side", "--field-manager=lvs-e2e", "-f",
                        str(ex.directory))  # fmt: skip
        s.admin.apply(codecs.from_dict(self.mysql_volume()), field_manager="lvs-e2e", force=True)
        s.say(f"applied {ex.directory.name}/:\n" + _indent(out.rstrip()))
        pods = self.wait_pods()
        s.say("three-tier pods: " + ", ".join(f"{p.metadata.name} {p.status.podIP}" for p in pods))
        self.timings["apply_to_pods"] = round(time.monotonic() - t0, 1)

        t1 = time.monotonic()
        netns = self.call("add_nfs_node")
        nfs = self.call("start_nfs", netns=netns, clients=_pod_network(), workdir=self.nfs_workdir)
        self.timings["nfs"] = round(time.monotonic() - t1, 1)
        s.say(f"NFS server at {ex.nfs_server}:{ex.nfs_path} (namespace {netns}), seeded from "
              f"ConfigMap web-seed: {nfs['export_dir']}")  # fmt: skip

        by_name = {p.metadata.name: p for p in pods}
        t1 = time.monotonic()
        db_pod = by_name[ex.mysql_pod]
        self.database = self._pod_namespace(db_pod, f"{WORK}/db")
        started = self.call("start_database", netns=self.database.netns,
                            address=self.database.ip, workdir=self.database.workdir)  # fmt: skip
        self.database.pid = int(started["pid"])
        self.timings["database"] = round(time.monotonic() - t1, 1)
        s.say(f"MariaDB in pod {ex.mysql_pod}'s namespace at {self.database.ip}:{ex.mysql_port} "
              f"({self.timings['database']} s)")  # fmt: skip

        t1 = time.monotonic()
        for name in sorted(by_name):
            if name == ex.mysql_pod:
                continue
            tier = self._pod_namespace(by_name[name], f"{WORK}/{name[-5:]}")
            self.call("route_to_nfs", netns=tier.netns)
            web = self.call("start_web_pod", netns=tier.netns, address=tier.ip, name=name,
                            workdir=tier.workdir, db_host=self.database.ip)  # fmt: skip
            tier.pid = int(web["pid"])
            self.web[name] = tier
        self.timings["web"] = round(time.monotonic() - t1, 1)
        s.say(f"Apache+PHP in {len(self.web)} web pods' namespaces on :{ex.web_port}, the share "
              f"mounted at {ex.content_mount} ({self.timings['web']} s)")  # fmt: skip
        self.timings["total"] = round(time.monotonic() - t0, 1)
        return self.timings

    def wait_pods(self, timeout: float = 120) -> list[Any]:
        """The web Deployment's and MySQL StatefulSet's pods, running with IPs."""
        s, ex = self.system, self.example
        assert s.admin is not None
        deadline = time.monotonic() + timeout
        want = ex.web_replicas + ex.mysql_replicas
        running: list[Any] = []
        while time.monotonic() < deadline:
            running = [
                p
                for p in s.admin.list(Pod, namespace=ex.namespace)
                if p.status and p.status.podIP and p.status.phase == "Running"
                and p.metadata and not p.metadata.deletionTimestamp
            ]  # fmt: skip
            if len(running) == want:
                return sorted(running, key=lambda p: p.metadata.name)
            time.sleep(0.5)
        raise AssertionError(
            f"{want} running pods in {ex.namespace} expected, saw "
            f"{[(p.metadata.name, p.status.phase) for p in running]}:\n"
            + s.kubectl("get", "pods,pvc", "-n", ex.namespace, "-o", "wide", check=False)
        )

    def _pod_namespace(self, pod: Any, workdir: str) -> PodTier:
        s = self.system
        s._pod_index += 1  # one index space with the system's own pods (e2e-pod-N)
        netns = s.call("add_pod", name=pod.metadata.name, ip=pod.status.podIP,
                       index=s._pod_index, http=False)  # fmt: skip
        return PodTier(pod.metadata.name, pod.status.podIP, netns, workdir)

    # -- using it ----------------------------------------------------------------------------

    def page(self, **kwargs: Any) -> dict[str, Any]:
        """One GET through the VIP from the client (see guest.page for the arguments)."""
        result: dict[str, Any] = self.call("page", timeout=60, **kwargs)
        return result

    def visits(self) -> int:
        assert self.database is not None
        return int(self.call("count_visits", netns=self.database.netns, db_host=self.database.ip))

    def visit_ids(self) -> set[int]:
        assert self.database is not None
        ids = self.call("visit_ids", netns=self.database.netns, db_host=self.database.ip)
        return {int(i) for i in ids}

    def start_loop(self, name: str, interval: float = 0.1, timeout: float = 1.0,
                   max_seconds: float = 180) -> tuple[Any, str]:  # fmt: skip
        """The page requested through the VIP every ``interval`` (guest.loop_main)."""
        from tests.dataplane.vm import guest_python

        vm = self.system.vm
        assert vm is not None
        out = str(vm.shared / f"three-tier-loop-{name}.jsonl")
        proc = vm.spawn(
            [guest_python(), "-m", GUEST, "loop", "--out", out, "--interval", str(interval),
             "--timeout", str(timeout), "--max-seconds", str(max_seconds)],
            name=f"three-tier-loop-{name}",
        )  # fmt: skip
        return proc, out

    def logs(self, lines: int = 20) -> str:
        """The tails of every tier's logs in the VM (for a failure report)."""
        vm = self.system.vm
        if vm is None:
            return ""
        res = vm.sh(
            f"for f in {WORK}/*/*.log {WORK}/*/*/*.log; do [ -f $f ] && "
            f'echo "===== $f" && tail -n {lines} $f; done; true',
            timeout=60,
        )
        return res.stdout[-8000:]

    def stop(self) -> None:
        """Every tier's daemon in the VM (the namespaces go with the VM or e2e/guest teardown)."""
        for tier in self.web.values():
            self.call("stop_web_pod", workdir=tier.workdir)
        if self.database is not None:
            self.call("stop_database", workdir=self.database.workdir)
        self.call("stop_nfs", netns="e2e-nfs", workdir=self.nfs_workdir)


def _pod_network() -> str:
    from e2e.guest import POD_NETWORK

    return POD_NETWORK


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())
