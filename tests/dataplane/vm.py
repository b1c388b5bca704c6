"""Boot a virtme-ng VM with an IPVS-capable kernel once and drive it from host-side tests.

The host kernel here has no IPVS, so data-plane tests run in a VM: Debian's stock kernel
(installed by ``hack/vm/setup.sh``) booted by virtme-ng under TCG over the host's root
filesystem (read-only in the guest). One directory is shared read-write (``--rwdir``); the
guest-side ``guest_driver.py`` serves requests dropped there, so one boot serves a whole test
session: run commands, start/stop background processes (agents, HTTP servers), and call
Python functions in the guest (``Vm.call("tests.dataplane.x:func", ...)``) whose JSON-able
return value comes back to the host.

Facts that shaped this (measured on the project's 2-core Debian test machines): KVM is
slower than TCG here (no EPT), the
guest's console only reaches the host with ``--verbose``, vng's own ``--network user`` hangs on
DHCP (so the driver configures 10.0.2.15/24 via 10.0.2.2 itself), and the guest's ``/tmp`` is an
overlay on a guest tmpfs: files written there are invisible to the host.

    with Vm() as vm:
        print(vm.run(["uname", "-r"]).stdout)
        print(vm.call("tests.dataplane.scenarios:smoke_rr", requests=30))
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("LVS_VM_CACHE", Path.home() / ".cache/lvs-operator/vm"))
SETUP_HINT = "run hack/vm/setup.sh"
DEFAULT_MODULES = ("ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "ip_vs_mh", "veth", "bridge")
# Imported once by the guest's fork server, so calls start warm. Missing ones are skipped.
DEFAULT_PRELOAD = (
    "json",
    "socket",
    "subprocess",
    "http.client",
    "http.server",
    "ctypes",
    "pyroute2",
    "pyroute2.ipvs",
    "tests.dataplane.topology",
    "lvs_operator.director.kernel.ipvs",
    "tests.dataplane.scenarios_ipvs",
)


class VmError(RuntimeError):
    """The VM did not boot, died, or did not answer in time."""


class GuestCallError(AssertionError):
    """A function called in the guest raised; the message carries the guest's traceback."""


@dataclass(frozen=True)
class CommandResult:
    argv: list[str]
    returncode: int | None  # None: timed out in the guest
    stdout: str
    stderr: str
    duration: float

    def check(self) -> CommandResult:
        if self.returncode != 0:
            raise VmError(
                f"guest command {self.argv} -> {self.returncode}\n"
                f"stdout: {self.stdout[-2000:]}\nstderr: {self.stderr[-2000:]}"
            )
        return self


def kernel_path() -> Path | None:
    """The kernel image hack/vm/setup.sh installed (or $LVS_VM_KERNEL), if its modules exist."""
    env = os.environ.get("LVS_VM_KERNEL")
    cand = Path(env) if env else CACHE / "vmlinuz"
    if not cand.exists():
        return None
    version = cand.resolve().name.removeprefix("vmlinuz-")
    if not (Path("/lib/modules") / version / "modules.dep").exists():
        return None
    return cand


def vng_path() -> str | None:
    found = shutil.which("vng")
    if found:
        return found
    # pip may install the script next to the interpreter without that being on PATH
    near = Path(sys.executable).parent / "vng"
    return str(near) if near.exists() else None


def missing_requirements() -> list[str]:
    """Why the VM cannot boot here (empty when it can)."""
    missing = []
    if not shutil.which("qemu-system-x86_64"):
        missing.append("qemu-system-x86_64 not found")
    if not vng_path():
        missing.append("virtme-ng (vng) not found")
    if kernel_path() is None:
        missing.append(f"no VM kernel with modules under {CACHE} and /lib/modules")
    for tool in ("ipvsadm", "nft", "ip", "busybox"):
        if not shutil.which(tool):
            missing.append(f"{tool} not found")
    return missing


def guest_python() -> str:
    # In a virtualenv, its own interpreter (the link is what makes it the venv's); otherwise
    # the interpreter's real path: shims (pyenv) need an environment the guest does not have.
    if sys.prefix != sys.base_prefix:
        return sys.executable
    return os.path.realpath(sys.executable)


class GuestProcess:
    """A background process in the guest (its own process group)."""

    def __init__(self, vm: Vm, pid: int, log: Path | None) -> None:
        self.vm, self.pid, self.log = vm, pid, log

    def signal(self, sig: int = signal.SIGTERM) -> bool:
        return bool(self.vm.request({"kind": "signal", "pid": self.pid, "signal": int(sig)})["ok"])

    def kill(self) -> bool:
        return self.signal(signal.SIGKILL)

    def wait(self, timeout: float = 10.0) -> int | None:
        res = self.vm.request(
            {"kind": "wait", "pid": self.pid, "timeout": timeout}, timeout=timeout + 30
        )
        return res["returncode"]

    def running(self) -> bool:
        """Still running (not exited, not reaped)."""
        res = self.vm.request({"kind": "wait", "pid": self.pid, "timeout": 0}, timeout=30)
        return res["returncode"] is None and not res.get("unknown")

    def output(self) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")

    def records(self) -> list[dict[str, Any]]:
        """The JSON log lines the process wrote so far (the agents' log format)."""
        out = []
        for line in self.output().splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if isinstance(rec, dict):
                    out.append(rec)
        return out

    def wait_log(self, msg: str, within: float) -> dict[str, Any] | None:
        """The first log record whose msg starts with ``msg``, waiting up to ``within``
        seconds for it (None: not within, or the process ended without it)."""
        deadline = time.monotonic() + within
        while True:
            found = next((r for r in self.records() if str(r.get("msg", "")).startswith(msg)),
                         None)  # fmt: skip
            if found is not None:
                return found
            if time.monotonic() > deadline or not self.running():
                return None
            time.sleep(0.2)


# How long an agent may take to start in the TCG guest before a test gives up on it. A bound
# of the harness, not of the product (there the agent starts in about a second): Python's
# start-up and imports are CPU-bound, and under TCG on a busy 2-core host they were seen to
# take 15-50 s (the agent's first log line says how long: seconds_since_exec).
AGENT_STARTUP_LIMIT = 300.0


def agent_startup(proc: GuestProcess, within: float = AGENT_STARTUP_LIMIT) -> dict[str, Any]:
    """Wait until a director agent has read the kernel (its start-up is done), then say how
    long each step took: ``since_exec`` (interpreter and first imports, before its first log
    line), ``modules`` (the agent's own imports), ``kernel_read_after_start`` (seconds from the
    first log line to the kernel read). ``ok`` False when it did not get there ``within``."""
    read = proc.wait_log("kernel read", within)
    recs = proc.records()

    def first(msg: str) -> dict[str, Any] | None:
        return next((r for r in recs if str(r.get("msg", "")).startswith(msg)), None)

    started = first("director agent process started")
    modules = first("agent modules loaded")
    return {
        "ok": read is not None,
        "since_exec": started.get("seconds_since_exec") if started else None,
        "modules": modules.get("seconds") if modules else None,
        "kernel_read_after_start": (
            round(float(read["ts"]) - float(started["ts"]), 2) if read and started else None
        ),
        "kernel_read_ts": float(read["ts"]) if read else None,
        "log_tail": "" if read else proc.output()[-2000:],
    }


class Vm:
    """One booted guest. Use as a context manager, or call start()/stop()."""

    def __init__(
        self,
        *,
        memory: str = "2G",
        cpus: int = 2,
        network: bool = True,
        modules: tuple[str, ...] = DEFAULT_MODULES,
        preload: tuple[str, ...] = DEFAULT_PRELOAD,
        boot_timeout: float = 300.0,
        max_lifetime: float = 3600.0,
        keep_shared: bool = False,
    ) -> None:
        self.memory, self.cpus, self.network = memory, cpus, network
        self.modules = modules
        self.preload = preload
        self.boot_timeout = boot_timeout
        self.max_lifetime = max_lifetime  # the guest powers off by itself after this
        self.keep_shared = keep_shared
        # Host-visible and guest-writable; under /tmp on the host, same path in the guest.
        self.shared = Path(tempfile.mkdtemp(prefix="lvs-vm-"))
        self.boot_seconds: float | None = None
        self.guest_info: dict[str, Any] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._ids = itertools.count(1)

    # -- lifecycle ---------------------------------------------------------------------------

    def command(self) -> list[str]:
        kernel = kernel_path()
        vng = vng_path()
        if kernel is None or vng is None:
            raise VmError("; ".join(missing_requirements()) + f" ({SETUP_HINT})")
        cmd = [
            vng, "--verbose", "--disable-kvm", "--disable-microvm",
            "--run", str(kernel.resolve()),
            "--memory", self.memory, "--cpus", str(self.cpus),
            "--rwdir", str(self.shared),
            "--exec", f"{guest_python()} {REPO / 'tests/dataplane/guest_driver.py'} {self.shared}",
        ]  # fmt: skip
        if self.network:
            cmd.insert(-2, "--qemu-opts=-netdev user,id=n0 -device virtio-net-pci,netdev=n0")
        return cmd

    def start(self) -> Vm:
        (self.shared / "req").mkdir()
        (self.shared / "resp").mkdir()
        (self.shared / "calls").mkdir()
        (self.shared / "logs").mkdir()
        env = {
            "PATH": f"{Path(guest_python()).parent}:/usr/local/sbin:/usr/local/bin:"
            "/usr/sbin:/usr/bin:/sbin:/bin",
            # This checkout's code first, whatever an editable install elsewhere points to.
            "PYTHONPATH": f"{REPO / 'operator'}:{REPO}",
            "PYTHONDONTWRITEBYTECODE": "1",  # the root filesystem is read-only in the guest
            "PYTHONUNBUFFERED": "1",
            "HOME": "/tmp",
            "LANG": "C.UTF-8",
            "LVS_VM_SHARED": str(self.shared),
            "LVS_IN_VM": "1",
        }
        config = {
            "modules": list(self.modules),
            "preload": list(self.preload),
            "network": self.network,
            "env": env,
            "cwd": str(REPO),
            "max_lifetime": self.max_lifetime,
        }
        (self.shared / "config.json").write_text(json.dumps(config))
        console = open(self.shared / "console.log", "wb")  # noqa: SIM115
        t0 = time.monotonic()
        host_env = dict(os.environ)
        virtiofsd = CACHE / "virtiofsd/bin"
        if (virtiofsd / "virtiofsd").exists():
            # vng shares the root filesystem over virtio-fs when it finds virtiofsd (built by
            # hack/vm/setup.sh), else over 9p, whose uncached lookups make every Python import
            # in the guest slow.
            host_env["PATH"] = f"{virtiofsd}:{host_env.get('PATH', '')}"
        self._proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            env=host_env,
            cwd=REPO,
            start_new_session=True,  # stop() kills vng and qemu together
        )
        console.close()
        atexit.register(self.stop)  # never leave a qemu behind, even if the caller crashes
        ready = self.shared / "ready.json"
        while not ready.exists():
            if self._proc.poll() is not None:
                raise VmError(
                    f"VM exited during boot (rc={self._proc.returncode}):\n" + self.console_tail()
                )
            if time.monotonic() - t0 > self.boot_timeout:
                self.stop()
                raise VmError(
                    f"VM did not boot within {self.boot_timeout:.0f}s:\n" + self.console_tail()
                )
            time.sleep(0.1)
        self.boot_seconds = time.monotonic() - t0
        self.guest_info = json.loads(ready.read_text())
        if self.guest_info.get("errors"):
            raise VmError(f"guest set-up failed: {self.guest_info['errors']}")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            (self.shared / "stop").touch()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if not self.keep_shared:
            shutil.rmtree(self.shared, ignore_errors=True)

    def __enter__(self) -> Vm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def console_tail(self, lines: int = 40) -> str:
        path = self.shared / "console.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # -- requests ----------------------------------------------------------------------------

    def request(self, req: dict[str, Any], timeout: float = 120.0) -> Any:
        if self._proc is None:
            raise VmError("VM not started")
        rid = f"{next(self._ids):06d}"
        tmp = self.shared / f"req-{rid}.tmp"
        tmp.write_text(json.dumps(req))
        os.replace(tmp, self.shared / "req" / f"{rid}.json")
        resp_path = self.shared / "resp" / f"{rid}.json"
        deadline = time.monotonic() + timeout
        while not resp_path.exists():
            if self._proc.poll() is not None:
                raise VmError(f"VM died (rc={self._proc.returncode}):\n" + self.console_tail())
            if time.monotonic() > deadline:
                raise VmError(f"guest did not answer {req.get('kind')} within {timeout:.0f}s")
            time.sleep(0.02)
        resp = json.loads(resp_path.read_text())
        resp_path.unlink()
        if not resp["ok"]:
            raise VmError(f"guest driver failed on {req}:\n{resp['error']}")
        return resp["result"]

    def run(
        self,
        argv: list[str],
        *,
        netns: str | None = None,
        timeout: float = 60.0,
        check: bool = False,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> CommandResult:
        """Run a command in the guest (optionally in a network namespace) and wait for it."""
        res = self.request(
            {
                "kind": "run",
                "argv": argv,
                "netns": netns,
                "timeout": timeout,
                "input": input,
                "env": env,
            },
            timeout=timeout + 60,
        )
        out = CommandResult(argv, res["returncode"], res["stdout"], res["stderr"], res["duration"])
        return out.check() if check else out

    def sh(self, script: str, **kwargs: Any) -> CommandResult:
        return self.run(["sh", "-ec", script], **kwargs)

    def spawn(
        self,
        argv: list[str],
        *,
        netns: str | None = None,
        name: str | None = None,
        env: dict[str, str] | None = None,
    ) -> GuestProcess:
        """Start a background process; its output goes to a log file readable on the host."""
        log = self.shared / "logs" / f"{name or 'proc'}-{next(self._ids):06d}.log"
        res = self.request(
            {"kind": "spawn", "argv": argv, "netns": netns, "env": env, "log": str(log)}
        )
        return GuestProcess(self, int(res["pid"]), log)

    def call(
        self,
        ref: str,
        *,
        timeout: float = 300.0,
        netns: str | None = None,
        arguments: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Call ``module:function(**kwargs)`` in the guest and return its JSON-able result.
        ``arguments``: more keyword arguments, for names this method takes itself (a guest
        function's own ``timeout``).

        The function runs as root in a child forked from a warm guest Python that has already
        imported the heavy modules (``preload``): a fresh interpreter costs seconds under TCG.
        It runs in network namespace ``netns`` if given, with the repo on PYTHONPATH, so it can
        use the project's code and tests/dataplane/topology.py. Its prints go to
        ``<shared>/forkserver.log``.
        """
        kwargs = {**kwargs, **(arguments or {})}
        cid = f"{next(self._ids):06d}"
        out_path = self.shared / "calls" / f"{cid}.out.json"
        res = self.request(
            {
                "kind": "call",
                "ref": ref,
                "kwargs": kwargs,
                "netns": netns,
                "out": str(out_path),
                "timeout": timeout,
            },
            timeout=timeout + 60,
        )
        if res["timed_out"] or not out_path.exists():
            raise GuestCallError(f"{ref} did not finish within {timeout:.0f}s")
        out = json.loads(out_path.read_text())
        if not out["ok"]:
            raise GuestCallError(f"{ref} failed in the guest:\n{out['error']}")
        return out["value"]
