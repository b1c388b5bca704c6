"""Guest side of tests/dataplane/vm.py: runs as PID 1's child inside the VM.

The host and the guest share one directory (virtme-ng ``--rwdir``, 9p, uncached), so the
protocol is files: the host drops ``req/<id>.json`` (written elsewhere, then renamed, so a
request is never seen half-written), this driver answers with ``resp/<id>.json`` the same way.
Each request runs in its own thread, so a long ``run`` does not block a ``signal``.

Only the standard library is used here: this must start even if the project is broken.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

POLL_SECONDS = 0.05

_procs: dict[int, subprocess.Popen[bytes]] = {}
_procs_lock = threading.Lock()
_forkserver: subprocess.Popen[bytes] | None = None
_forkserver_lock = threading.Lock()
CLONE_NEWNET = 0x40000000


def _log(shared: Path, msg: str) -> None:
    with open(shared / "driver.log", "a") as f:
        f.write(f"{time.monotonic():10.3f} {msg}\n")


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _sh(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _setup(shared: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = {"kernel": os.uname().release, "errors": []}
    for mod in cfg.get("modules", []):
        r = _sh(["modprobe", mod])
        if r.returncode != 0:
            info["errors"].append(f"modprobe {mod}: {r.stderr.strip()}")
    _sh(["ip", "link", "set", "lo", "up"])
    if cfg.get("network"):
        # qemu user-mode networking: the host's loopback is 10.0.2.2 from here. Static
        # addressing, because DHCP in the guest was seen to hang (see DESIGN.md).
        steps = [
            ["modprobe", "virtio_net"],
            ["ip", "link", "set", "eth0", "up"],
            ["ip", "addr", "add", "10.0.2.15/24", "dev", "eth0"],
            ["ip", "route", "add", "default", "via", "10.0.2.2"],
        ]
        for step in steps:
            for _ in range(50):  # eth0 appears a moment after the module loads
                r = _sh(step)
                if r.returncode == 0 or "File exists" in r.stderr:
                    break
                time.sleep(0.1)
            else:
                info["errors"].append(f"{' '.join(step)}: {r.stderr.strip()}")
    # /tmp in the guest is an overlay on a tmpfs: fine for scratch, invisible to the host.
    return info


def _env(req: dict[str, Any], cfg: dict[str, Any]) -> dict[str, str]:
    env = dict(cfg.get("env", {}))
    env.update(req.get("env") or {})
    return env


def _argv(req: dict[str, Any]) -> list[str]:
    argv = list(req["argv"])
    if req.get("netns"):
        argv = ["ip", "netns", "exec", req["netns"], *argv]
    return argv


def _handle(req: dict[str, Any], cfg: dict[str, Any], shared: Path) -> dict[str, Any]:
    kind = req["kind"]
    if kind == "run":
        t0 = time.monotonic()
        try:
            r = subprocess.run(
                _argv(req),
                input=(req.get("input") or "").encode(),
                capture_output=True,
                timeout=req.get("timeout", 60),
                env=_env(req, cfg),
                cwd=req.get("cwd") or cfg.get("cwd"),
            )
            rc: int | None = r.returncode
            out, err = r.stdout, r.stderr
        except subprocess.TimeoutExpired as e:
            rc = None
            out = e.stdout or b""
            err = (e.stderr or b"") + b"\n[guest_driver] timed out"
        return {
            "returncode": rc,
            "stdout": out.decode(errors="replace"),
            "stderr": err.decode(errors="replace"),
            "duration": time.monotonic() - t0,
        }
    if kind == "spawn":
        log = open(req["log"], "ab") if req.get("log") else subprocess.DEVNULL  # noqa: SIM115
        p = subprocess.Popen(
            _argv(req),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(req, cfg),
            cwd=req.get("cwd") or cfg.get("cwd"),
            start_new_session=True,  # its own group: signal the whole tree at once
        )
        with _procs_lock:
            _procs[p.pid] = p
        return {"pid": p.pid}
    if kind == "signal":
        pid, sig = int(req["pid"]), int(req["signal"])
        try:
            if req.get("group", True):
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            return {"ok": False}
        return {"ok": True}
    if kind == "wait":
        with _procs_lock:
            waited = _procs.get(int(req["pid"]))
        if waited is None:
            return {"returncode": None, "unknown": True}
        try:
            return {"returncode": waited.wait(timeout=req.get("timeout", 10))}
        except subprocess.TimeoutExpired:
            return {"returncode": None}
    if kind == "call":
        return _call(req, cfg, shared)
    if kind == "ping":
        return {"ok": True, "uptime": float(Path("/proc/uptime").read_text().split()[0])}
    raise ValueError(f"unknown request kind {kind!r}")


def _call(req: dict[str, Any], cfg: dict[str, Any], shared: Path) -> dict[str, Any]:
    """Run module:function in a child forked from the warm fork server (see _forkserver_main).

    A fresh interpreter costs seconds under TCG over 9p (pyroute2's import alone ~15 s), a
    fork of one that has imported everything already costs a fraction of a second.
    """
    out = Path(req["out"])
    with _forkserver_lock:
        fs = _forkserver
        if fs is None or fs.poll() is not None or fs.stdin is None:
            raise RuntimeError("fork server is not running")
        fs.stdin.write((json.dumps(req) + "\n").encode())
        fs.stdin.flush()
    t0 = time.monotonic()
    deadline = t0 + float(req.get("timeout", 300))
    pid_file = out.with_name(out.name + ".pid")
    while not out.exists():
        if time.monotonic() > deadline:
            with contextlib.suppress(Exception):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            return {"timed_out": True, "duration": time.monotonic() - t0}
        time.sleep(0.02)
    return {"timed_out": False, "duration": time.monotonic() - t0}


def _setns(netns: str) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({netns})")
    finally:
        os.close(fd)


def _forkserver_main() -> int:
    """Import the heavy modules once, then fork one child per call read from stdin."""
    import importlib

    cfg = json.loads(sys.stdin.readline())
    t0 = time.monotonic()
    for mod in cfg.get("preload", []):
        try:
            importlib.import_module(mod)
        except Exception as e:  # a broken module must surface in the call, not here
            print(f"[forkserver] preload {mod}: {e!r}", file=sys.stderr, flush=True)
    print(
        f"[forkserver] ready, preload took {time.monotonic() - t0:.1f}s",
        file=sys.stderr,
        flush=True,
    )
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # auto-reap the call children
    for line in sys.stdin:
        req = json.loads(line)
        if os.fork() != 0:
            continue
        # child: never return into the loop
        code = 1
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # subprocess.wait needs it back
            os.setsid()
            out = Path(req["out"])
            out.with_name(out.name + ".pid").write_text(str(os.getpid()))
            try:
                if req.get("netns"):
                    _setns(req["netns"])
                module_name, func_name = req["ref"].split(":", 1)
                func = getattr(importlib.import_module(module_name), func_name)
                result: dict[str, Any] = {"ok": True, "value": func(**req.get("kwargs", {}))}
                code = 0
            except BaseException:
                result = {"ok": False, "error": traceback.format_exc()}
            _write_json_default(out, result)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return 0


def _write_json_default(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)


def _start_forkserver(cfg: dict[str, Any], shared: Path) -> None:
    global _forkserver
    env = dict(os.environ)
    env.update(cfg.get("env", {}))
    log = open(shared / "forkserver.log", "ab")  # noqa: SIM115
    _forkserver = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--forkserver"],
        stdin=subprocess.PIPE,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cfg.get("cwd"),
    )
    assert _forkserver.stdin is not None
    _forkserver.stdin.write((json.dumps({"preload": cfg.get("preload", [])}) + "\n").encode())
    _forkserver.stdin.flush()


def _serve_one(path: Path, cfg: dict[str, Any], shared: Path) -> None:
    rid = path.stem
    try:
        req = json.loads(path.read_text())
        resp: dict[str, Any] = {"ok": True, "result": _handle(req, cfg, shared)}
    except Exception:
        resp = {"ok": False, "error": traceback.format_exc()}
    _write_json(shared / "resp" / f"{rid}.json", resp)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def main() -> int:
    shared = Path(sys.argv[1])
    cfg = json.loads((shared / "config.json").read_text())
    deadline = time.monotonic() + float(cfg.get("max_lifetime", 3600))
    (shared / "resp").mkdir(exist_ok=True)
    info = _setup(shared, cfg)
    _start_forkserver(cfg, shared)
    info["uptime"] = float(Path("/proc/uptime").read_text().split()[0])
    _write_json(shared / "ready.json", info)
    _log(shared, f"ready {info}")
    seen: set[str] = set()
    req_dir = shared / "req"
    while time.monotonic() < deadline and not (shared / "stop").exists():
        for path in sorted(req_dir.glob("*.json")):
            if path.name in seen:
                continue
            seen.add(path.name)
            threading.Thread(target=_serve_one, args=(path, cfg, shared), daemon=True).start()
        # reap finished background processes' zombies only when asked (wait); nothing here
        time.sleep(POLL_SECONDS)
    _log(shared, "stopping")
    with _procs_lock:
        for p in _procs.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--forkserver"]:
        sys.exit(_forkserver_main())
    sys.exit(main())
