"""Guest side of bench/ipvs_read.py (runs in the data-plane VM, as root, in the namespace
whose table it reads)."""

from __future__ import annotations

import cProfile
import io
import pstats
import subprocess
import threading
import time
from typing import Any

from lvs_operator.director.kernel import ipvs as kipvs
from lvs_operator.director.kernel import ipvs_netlink as nl


def load(rules: str) -> float:
    """``ipvsadm-restore`` of ``rules`` into this namespace; its seconds."""
    t0 = time.monotonic()
    subprocess.run(["ipvsadm-restore"], input=rules, text=True, check=True, timeout=1200)
    return round(time.monotonic() - t0, 3)


def measure(runs: int = 3) -> dict[str, Any]:
    """Seconds of: ``ipvsadm -Ln`` (C: the same dumps, its own parse and print), the agent's
    whole read (``IpvsKernel.read``), that read's time inside recv (the kernel's dump work
    plus the syscall), and a profile's top entries of one read."""
    out: dict[str, Any] = {"ipvsadm": [], "read": [], "recv": [], "services": 0}
    for _ in range(runs):
        t0 = time.monotonic()
        subprocess.run(["ipvsadm", "-Ln"], stdout=subprocess.DEVNULL, check=True, timeout=600)
        out["ipvsadm"].append(round(time.monotonic() - t0, 3))
    kernel = kipvs.IpvsKernel()
    sock = kernel._nl
    real_recv = sock.recv_answers
    in_recv = [0.0]

    def timed_recv() -> bytes:
        t = time.perf_counter()
        try:
            return real_recv()
        finally:
            in_recv[0] += time.perf_counter() - t

    sock.recv_answers = timed_recv  # type: ignore[method-assign]
    for _ in range(runs):
        in_recv[0] = 0.0
        t0 = time.monotonic()
        table, _counts = kernel.read()
        out["read"].append(round(time.monotonic() - t0, 3))
        out["recv"].append(round(in_recv[0], 3))
        out["services"] = len(table)
    prof = cProfile.Profile()
    prof.enable()
    kernel.read()
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(12)
    out["profile"] = text.getvalue()[-3500:]
    kernel.close()
    return out


def parallel(threads: int = 2, runs: int = 3) -> list[float]:
    """The same read split over ``threads`` sockets and threads (services dumped once, their
    destinations by slices): does the kernel's dump work overlap the Python parse?"""
    seconds = []
    for _ in range(runs):
        kernels = [kipvs.IpvsKernel() for _ in range(threads)]
        t0 = time.monotonic()
        services = [kipvs._nl_service(a) for a in kernels[0]._nl.dump_services()]
        found = [s for s in services if s is not None]
        parts: list[Any] = [None] * threads
        ts = [threading.Thread(target=_read_slice, args=(kernels[i], found[i::threads], parts, i))
              for i in range(threads)]  # fmt: skip
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        seconds.append(round(time.monotonic() - t0, 3))
        for k in kernels:
            k.close()
        assert sum(len(p[0]) for p in parts) == len(found)
    return seconds


def _read_slice(kernel: Any, services: list[Any], parts: list[Any], i: int) -> None:
    parts[i] = kernel.read_destinations(services)


_ = nl  # the module the reads use
