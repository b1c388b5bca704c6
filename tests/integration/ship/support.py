"""What the shipping tests share: helm/kubectl runners, the example, a host-run controller.

The controller cannot run inside the test cluster (kwok plays the kubelet: pods become Ready
but no container runs), so :class:`HostController` runs ``lvs-operator controller`` on this
machine with the flags and environment of the *deployed* Deployment and the token of the
chart's ServiceAccount: the chart's flags and its RBAC are what is exercised.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import pytest
import yaml
from lightkube import ApiError, codecs
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.apps_v1 import DaemonSet, Deployment, ReplicaSet
from lightkube.resources.core_v1 import Namespace, PersistentVolume

from ..helpers import REPO, TestCluster, wait_for

CHART = REPO / "charts" / "lvs-operator"
EXAMPLE = REPO / "examples" / "three-tier"
OPERATOR_NS = "lvs-system"
EXAMPLE_NS = "three-tier"
VIP_RANGE = "192.0.2.0/24"
DIRECTOR_LABEL = "lvs.io/director"
CLUSTER_SCOPED = {
    "ClusterRole": ["lvs-operator", "lvs-director"],
    "ClusterRoleBinding": ["lvs-operator", "lvs-director"],
}

VirtualServer = create_namespaced_resource("lvs.io", "v1alpha1", "VirtualServer", "virtualservers")
RealServerPool = create_namespaced_resource(
    "lvs.io", "v1alpha1", "RealServerPool", "realserverpools"
)


def _render_module() -> ModuleType:
    path = REPO / "hack" / "ship" / "render.py"
    spec = importlib.util.spec_from_file_location("lvs_ship_render_it", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _render_module()


def need_tool(name: str) -> str:
    found = render.find_tool(name)
    if found is None:
        pytest.skip(f"{name} is not installed; get it with: {render.HOW_TO_GET_HELM}")
    return str(found)


def run(
    cmd: list[str], timeout: float = 180, check: bool = True
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


class Helm:
    def __init__(self, cluster: TestCluster):
        self.exe = need_tool("helm")
        self.kubeconfig = str(cluster.kubeconfig)

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([self.exe, f"--kubeconfig={self.kubeconfig}", *args], check=check)


class Kubectl:
    def __init__(self, cluster: TestCluster):
        self.exe = need_tool("kubectl")
        self.kubeconfig = str(cluster.kubeconfig)

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([self.exe, f"--kubeconfig={self.kubeconfig}", *args], check=check)


@contextlib.contextmanager
def cluster_rbac_set_aside(client: Any) -> Iterator[list[str]]:
    """The operator's cluster-scoped RBAC has fixed names, and other tests of the session
    (tests/integration/controller) apply the same ClusterRoles/Bindings from deploy/rbac. Helm
    refuses to install over objects it does not own, and an uninstall must be seen removing
    them; so copies found here are set aside for the test and put back afterwards."""
    from lightkube.resources.rbac_authorization_v1 import ClusterRole, ClusterRoleBinding

    kinds = {"ClusterRole": ClusterRole, "ClusterRoleBinding": ClusterRoleBinding}
    saved: list[dict[str, Any]] = []
    for kind_name, names in CLUSTER_SCOPED.items():
        for name in names:
            try:
                obj = client.get(kinds[kind_name], name)
            except ApiError as exc:
                if exc.status.code == 404:
                    continue
                raise
            doc = obj.to_dict()
            meta = doc["metadata"]
            for key in ("resourceVersion", "uid", "managedFields", "creationTimestamp"):
                meta.pop(key, None)
            saved.append(doc)
            client.delete(kinds[kind_name], name)
            wait_gone(client, kinds[kind_name], name)
    try:
        yield [f"{d['kind']}/{d['metadata']['name']}" for d in saved]
    finally:
        for doc in saved:
            client.apply(codecs.from_dict(doc), field_manager="lvs-operator-tests", force=True)


# ----------------------------------------------------------------------------- waiting


def deployment_available(client: Any, name: str, namespace: str = OPERATOR_NS) -> Any:
    def check() -> Any:
        dep = client.get(Deployment, name, namespace=namespace)
        st = dep.status
        if st is None or (st.observedGeneration or 0) < (dep.metadata.generation or 0):
            return None
        ok = any(c.type == "Available" and c.status == "True" for c in st.conditions or [])
        done = (st.updatedReplicas or 0) == dep.spec.replicas == (st.availableReplicas or 0)
        return dep if ok and done and not (st.unavailableReplicas or 0) else None

    return wait_for(check, timeout=120, message=f"Deployment {namespace}/{name} available")


def replica_sets(client: Any, namespace: str = OPERATOR_NS) -> list[Any]:
    return list(
        client.list(
            ReplicaSet, namespace=namespace, labels={"app.kubernetes.io/name": "lvs-operator"}
        )
    )


def wait_gone(client: Any, kind: Any, name: str, namespace: str | None = None) -> None:
    def gone() -> bool:
        try:
            if namespace is None:
                client.get(kind, name)
            else:
                client.get(kind, name, namespace=namespace)
        except ApiError as exc:
            return exc.status.code == 404
        return False

    wait_for(gone, timeout=120, message=f"{kind.__name__} {name} to be deleted")


def crds_present(client: Any) -> list[str]:
    names = ["virtualservers.lvs.io", "realserverpools.lvs.io"]
    return [n for n in names if client.get(CustomResourceDefinition, n)]


# ----------------------------------------------------------------------------- example


def mysql_volume() -> dict[str, Any]:
    """The example's MySQL claim needs a volume; the test cluster has no provisioner, so
    a pre-bound one stands in for the default StorageClass (kwok mounts nothing)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": "three-tier-mysql-data-0", "labels": {"lvs-operator.test/ship": "1"}},
        "spec": {
            "capacity": {"storage": "5Gi"},
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "persistentVolumeReclaimPolicy": "Delete",
            "hostPath": {"path": "/var/lib/three-tier/mysql-0"},
            "claimRef": {"namespace": EXAMPLE_NS, "name": "data-mysql-0"},
        },
    }


def apply_example(kubectl: Kubectl, client: Any) -> None:
    kubectl("apply", "--server-side", "-f", str(EXAMPLE))
    client.apply(codecs.from_dict(mysql_volume()), field_manager="lvs-operator-tests", force=True)


def delete_example(kubectl: Kubectl, client: Any) -> None:
    kubectl("delete", "--ignore-not-found", "--wait=false", "-f", str(EXAMPLE))
    for name in ("three-tier-mysql-data-0", "three-tier-web-content"):
        try:
            client.delete(PersistentVolume, name)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
    wait_gone(client, Namespace, EXAMPLE_NS)
    for name in ("three-tier-mysql-data-0", "three-tier-web-content"):
        wait_gone(client, PersistentVolume, name)


def example_pods_ready(client: Any) -> dict[str, list[Any]]:
    from ..helpers import ready_pods

    def check() -> dict[str, list[Any]] | None:
        web = ready_pods(client, EXAMPLE_NS, {"app": "web"})
        db = ready_pods(client, EXAMPLE_NS, {"app": "mysql"})
        return {"web": web, "mysql": db} if len(web) == 3 and len(db) == 1 else None

    return wait_for(check, timeout=120, message="3 web pods and mysql-0 Ready")


def director_daemonsets(client: Any) -> list[Any]:
    return list(
        client.list(
            DaemonSet,
            namespace=OPERATOR_NS,
            labels={"app.kubernetes.io/managed-by": "lvs-operator"},
        )
    )


# ----------------------------------------------------------------------------- controller


class HostController:
    """``lvs-operator controller`` on this machine, configured like the deployed pod."""

    def __init__(self, cluster: TestCluster, kubectl: Kubectl, client: Any, workdir: Path):
        self.cluster = cluster
        self.kubectl = kubectl
        self.client = client
        self.workdir = workdir
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = workdir / "controller.log"
        self._log: IO[str] | None = None

    def kubeconfig(self, service_account: str) -> Path:
        token = self.kubectl(
            "-n", OPERATOR_NS, "create", "token", service_account, "--duration=1h"
        ).stdout.strip()
        admin = yaml.safe_load(Path(self.cluster.kubeconfig).read_text())
        cluster = dict(admin["clusters"][0]["cluster"])
        ca = cluster.get("certificate-authority")
        if ca and not Path(ca).is_absolute():
            cluster["certificate-authority"] = str(Path(self.cluster.kubeconfig).parent / ca)
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": cluster}],
            "users": [{"name": service_account, "user": {"token": token}}],
            "contexts": [
                {
                    "name": "sa",
                    "context": {
                        "cluster": "test",
                        "user": service_account,
                        "namespace": OPERATOR_NS,
                    },
                }
            ],
            "current-context": "sa",
        }
        path = self.workdir / f"{service_account}.kubeconfig"
        path.write_text(yaml.safe_dump(cfg))
        path.chmod(0o600)
        return path

    def argv_and_env(self) -> tuple[list[str], dict[str, str], str]:
        dep = self.client.get(Deployment, "lvs-operator", namespace=OPERATOR_NS)
        pod = dep.spec.template.spec
        (c,) = pod.containers
        env = {e.name: e.value for e in c.env or [] if e.value is not None}
        env["POD_NAMESPACE"] = OPERATOR_NS
        args = [a.replace("$(POD_NAMESPACE)", OPERATOR_NS) for a in c.args]
        # The pod's health and metrics ports would collide with anything on this machine's
        # 8080 and 9640.
        args = [a for a in args if not a.startswith(("--liveness", "--metrics-port"))]
        args += ["--liveness=none", "--metrics-port=0"]
        return args, env, pod.serviceAccountName

    def start(self) -> None:
        args, env, sa = self.argv_and_env()
        assert args[0] == "controller", args
        kubeconfig = self.kubeconfig(sa)
        full_env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        full_env.update(env)
        full_env["KUBECONFIG"] = str(kubeconfig)
        full_env["PYTHONUNBUFFERED"] = "1"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lvs_operator.cli", *args, f"--kubeconfig={kubeconfig}"],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
