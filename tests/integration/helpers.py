"""Helpers for tests that run against the real control plane (hack/test-cluster).

Import them relatively from a test module in this package::

    from .helpers import wait_for, apply_yaml, kubectl

The cluster itself is managed by :class:`TestCluster`, which the session fixture in
``conftest.py`` uses; other tiers (e2e) can use it directly.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lightkube import ApiError, Client, codecs
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO / "hack" / "test-cluster" / "cluster.sh"
CRDS_DIR = REPO / "crds"
FIELD_MANAGER = "lvs-operator-tests"

T = TypeVar("T")


# ----------------------------------------------------------------------------- waiting


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 30.0,
    interval: float = 0.2,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Exceptions from the predicate count as "not yet" (the last one is reported on timeout),
    so a predicate may simply ``client.get`` an object that does not exist yet.
    Raises ``TimeoutError`` after ``timeout`` seconds; ``message`` (or a callable producing
    it, evaluated at timeout) says what was awaited.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
            last_exc = None
        except AssertionError as exc:  # assertion-style predicates
            last_exc = exc
        except Exception as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(_timeout_message(message, timeout, last_exc)) from last_exc
        time.sleep(interval)


async def async_wait_for(
    predicate: Callable[[], Awaitable[T | None] | T | None],
    timeout: float = 30.0,
    interval: float = 0.2,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Like :func:`wait_for`, for a predicate that may be a coroutine function."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result  # type: ignore[return-value]
            last_exc = None
        except Exception as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(_timeout_message(message, timeout, last_exc)) from last_exc
        await asyncio.sleep(interval)


def _timeout_message(
    message: str | Callable[[], str], timeout: float, exc: BaseException | None
) -> str:
    text = message() if callable(message) else message
    suffix = f" (last error: {type(exc).__name__}: {exc})" if exc else ""
    return f"timed out after {timeout:g} s waiting for {text}{suffix}"


# ----------------------------------------------------------------------------- objects


def pod_ready(pod: Any) -> bool:
    """A Pod (lightkube model) is Running and its Ready condition is True."""
    status = pod.status
    if status is None or status.phase != "Running":
        return False
    return any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])


def ready_pods(client: Client, namespace: str, labels: dict[str, str]) -> list[Any]:
    from lightkube.resources.core_v1 import Pod

    return [p for p in client.list(Pod, namespace=namespace, labels=labels) if pod_ready(p)]


def load_yaml(source: str | Path) -> list[Any]:
    """Parse YAML (a path or a text) into lightkube objects; custom kinds need their CRD known
    to lightkube first (see :func:`register_crds`)."""
    text = Path(source).read_text() if isinstance(source, Path) else source
    return list(codecs.load_all_yaml(text))


def apply_yaml(
    client: Client,
    source: str | Path,
    namespace: str | None = None,
    field_manager: str = FIELD_MANAGER,
) -> list[Any]:
    """Server-side apply every object in a YAML file or text (forcing conflicts)."""
    out = []
    for obj in load_yaml(source):
        kwargs: dict[str, Any] = {"field_manager": field_manager, "force": True}
        if namespace is not None and getattr(obj.metadata, "namespace", None) is None:
            kwargs["namespace"] = namespace
        out.append(client.apply(obj, **kwargs))
    return out


def crd_files(crds_dir: Path = CRDS_DIR) -> list[Path]:
    if not crds_dir.is_dir():
        return []
    return sorted(p for p in crds_dir.iterdir() if p.suffix in (".yaml", ".yml"))


class CrdApplyError(RuntimeError):
    """Some CRD manifests were rejected by the server; the others were applied."""

    def __init__(self, errors: dict[str, str], applied: list[str]):
        self.errors = errors
        self.applied = applied
        lines = [f"{name}: {msg}" for name, msg in errors.items()]
        super().__init__("the API server rejected CRD manifests:\n" + "\n".join(lines))


def apply_crds(client: Client, crds_dir: Path = CRDS_DIR, timeout: float = 60) -> list[str]:
    """Server-side apply ``crds/*.yaml``, wait until each CRD is Established, and make
    lightkube know its kinds. Returns the CRD names (empty when there are none yet).

    Every manifest is tried; if any is rejected, :class:`CrdApplyError` names each rejection
    (with the server's message) after the others have been applied.
    """
    names: list[str] = []
    errors: dict[str, str] = {}
    for path in crd_files(crds_dir):
        for obj in load_yaml(path):
            if not isinstance(obj, CustomResourceDefinition):
                continue
            try:
                client.apply(obj, field_manager=FIELD_MANAGER, force=True)
            except ApiError as exc:
                errors[f"{path.name} ({obj.metadata.name})"] = api_error_message(exc)
                continue
            names.append(obj.metadata.name)
    for name in names:
        wait_for(
            lambda n=name: _established(client, n),
            timeout=timeout,
            message=f"CRD {name} to be Established",
        )
    register_crds(client, names)
    if errors:
        raise CrdApplyError(errors, names)
    return names


def _established(client: Client, name: str) -> bool:
    crd = client.get(CustomResourceDefinition, name)
    conds = (crd.status.conditions if crd.status else None) or []
    return any(c.type == "Established" and c.status == "True" for c in conds)


def register_crds(client: Client, names: Iterable[str]) -> None:
    """Create lightkube generic resource classes for the given CRDs (all served versions),
    so that codecs.load_all_yaml and client.apply work for their kinds."""
    from lightkube.generic_resource import create_resources_from_crd

    for name in names:
        create_resources_from_crd(client.get(CustomResourceDefinition, name))


def custom_resource(group: str, version: str, kind: str, plural: str) -> Any:
    """A lightkube class for a namespaced custom resource, e.g.
    ``custom_resource("lvs.io", "v1alpha1", "VirtualServer", "virtualservers")``."""
    return create_namespaced_resource(group, version, kind, plural)


def api_error_message(exc: ApiError) -> str:
    """The server's message of a rejected request (what the schema/CEL checks said)."""
    return str(exc.status.message or exc)


# ----------------------------------------------------------------------------- cluster


@dataclass
class TestCluster:
    """A cluster started with hack/test-cluster/cluster.sh, or an existing one.

    ``dir`` is None for an existing cluster (USE_EXISTING_CLUSTER=1) that cluster.sh did not
    start: it can't add nodes. One that cluster.sh started (its DIR/kubeconfig) keeps ``dir``.
    """

    __test__ = False  # not a pytest test class

    kubeconfig: Path
    dir: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    crds: list[str] = field(default_factory=list)
    crd_error: str | None = None  # the server's rejection of crds/ manifests, if any

    # -- lifecycle ----------------------------------------------------------------

    @staticmethod
    def run_script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CLUSTER_SH), *args],
            text=True,
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    @classmethod
    def build(cls, timeout: float = 3600) -> str:
        """Build the binaries (quick when cached); returns the script's output."""
        r = cls.run_script("build", timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"cluster.sh build failed:\n{r.stdout}\n{r.stderr}")
        return r.stdout

    @staticmethod
    def is_built() -> bool:
        """True when every binary is in the cache (without building anything)."""
        r = subprocess.run(
            [sys.executable, "-c", "import cluster; cluster.require_built()"],
            cwd=CLUSTER_SH.parent,
            capture_output=True,
            timeout=60,
        )
        return r.returncode == 0

    @classmethod
    def up(
        cls,
        cluster_dir: Path,
        nodes: int = 3,
        node_labels: dict[str, str] | None = None,
        timeout: float = 300,
        owner_pid: int | None = None,
    ) -> TestCluster:
        """Start a cluster in ``cluster_dir``; with ``owner_pid`` it also stops by itself when
        that process ends (so a killed test run leaves nothing behind)."""
        args = ["up", str(cluster_dir), "--nodes", str(nodes)]
        if owner_pid:
            args += ["--owner-pid", str(owner_pid)]
        if node_labels:
            args += ["--node-labels", ",".join(f"{k}={v}" for k, v in node_labels.items())]
        r = cls.run_script(*args, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"cluster.sh up failed:\n{r.stdout}\n{r.stderr}")
        info = json.loads((cluster_dir / "cluster.json").read_text())
        return cls(kubeconfig=Path(info["kubeconfig"]), dir=cluster_dir, info=info)

    @classmethod
    def existing(cls) -> TestCluster:
        kubeconfig = os.environ.get("KUBECONFIG", "")
        if not kubeconfig:
            raise RuntimeError("USE_EXISTING_CLUSTER=1 needs KUBECONFIG to name a kubeconfig")
        path = Path(kubeconfig.split(os.pathsep)[0]).resolve()
        info_file = path.parent / "cluster.json"
        if info_file.exists():  # started by cluster.sh: adding nodes etc. works too
            info = json.loads(info_file.read_text())
            if Path(info.get("kubeconfig", "")) == path:
                return cls(kubeconfig=path, dir=path.parent, info=info)
        return cls(kubeconfig=path)

    def down(self, timeout: float = 120) -> None:
        if self.dir is not None:
            self.run_script("down", str(self.dir), timeout=timeout)

    def add_node(
        self, name: str, labels: dict[str, str] | None = None, ip: str | None = None
    ) -> None:
        """Register one more fake (kwok) node, e.g. a director with its labels; waits until it
        is Ready. ``ip`` is its InternalIP (default: derived from the name)."""
        if self.dir is None:
            raise RuntimeError("add_node needs a cluster started by cluster.sh")
        args = ["add-node", str(self.dir), name, *(f"{k}={v}" for k, v in (labels or {}).items())]
        if ip:
            args += ["--ip", ip]
        r = self.run_script(*args, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"cluster.sh add-node failed:\n{r.stdout}\n{r.stderr}")

    # -- clients ----------------------------------------------------------------

    @property
    def server(self) -> str:
        return str(self.info.get("server", ""))

    @property
    def nodes(self) -> list[str]:
        return list(self.info.get("nodes", []))

    @property
    def tools(self) -> Path | None:
        return Path(self.info["tools"]) if "tools" in self.info else None

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl (the cached one from `cluster.sh build`, else the one on PATH)."""
        exe = "kubectl"
        if self.tools and (self.tools / "kubectl").exists():
            exe = str(self.tools / "kubectl")
        r = subprocess.run(
            [exe, f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            text=True,
            capture_output=True,
            timeout=timeout,
        )
        if check and r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
        return r


class ControllerProcess:
    """``lvs-operator controller`` as a subprocess on the host, logging to a file (the
    integration tier's and the e2e system's). Each start appends a banner to the log, so
    ``log`` and the writes of one run can be told from the previous run's."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.argv, self.log_path = argv, log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("KUBECONFIG", None)  # the controller gets its own --kubeconfig
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start #{self.starts + 1} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
            )
        self.starts += 1
        time.sleep(0.5)
        if self.proc.poll() is not None:
            raise RuntimeError(f"the controller exited at once:\n{self.log()}")

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self, tail: int = 80) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-tail:])

    def writes(self) -> list[str]:
        """The writes of the current run (the controller logs each as "write: ...", in a
        JSON line's msg)."""
        text = self.log_path.read_text(errors="replace")
        current = text.rsplit("===== start #", 1)[-1]
        out = []
        for line in current.splitlines():
            try:
                msg = json.loads(line).get("msg", "")
            except (ValueError, AttributeError):
                continue
            if isinstance(msg, str) and msg.startswith("write: "):
                out.append(msg.removeprefix("write: "))
        return out
