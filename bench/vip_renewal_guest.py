"""Guest side of bench/vip_renewal.py (runs in the data-plane VM, as root, in a director's
namespace)."""

from __future__ import annotations

import cProfile
import io
import ipaddress
import pstats
import subprocess
import time
from typing import Any

from lvs_operator.director import vip as vip_mod

IFNAME = "front"


def _vips(count: int) -> list[tuple[str, str]]:
    base = ipaddress.IPv4Address("10.30.0.1")
    return [(str(base + i), IFNAME) for i in range(count)]


def _manager(lifetime: int) -> vip_mod.VipManager:
    return vip_mod.VipManager(lifetime=lifetime)


def setup(count: int = 1000, lifetime: int = 60) -> float:
    """Add ``count`` VIPs with a lifetime (one batch, as a takeover does); its seconds."""
    manager = _manager(lifetime)
    t0 = time.monotonic()
    errors = manager.add_many(_vips(count))
    assert not any(errors), [e for e in errors if e][:3]
    return round(time.monotonic() - t0, 3)


def measure(count: int = 1000, lifetime: int = 60, rounds: int = 5) -> dict[str, Any]:
    """Seconds of: a whole renewal round (``renew``), its address dump and parse
    (``_present``), its batch of replaces alone, ``ip -o addr show`` (the same dump in C), and
    a profile of one round."""
    manager = _manager(lifetime)
    items = _vips(count)
    out: dict[str, Any] = {"round": [], "present": [], "batch": [], "ip": []}
    from lvs_operator.director.kernel.addresses import Renewal, index_of

    index = index_of(IFNAME)
    assert index is not None
    requests = [Renewal(index, v, 32, 0, vip_mod.VIP_PROTO, lifetime) for v, _ in items]
    for _ in range(rounds):
        t0 = time.monotonic()
        failed = manager.renew(items)
        out["round"].append(round(time.monotonic() - t0, 3))
        assert not failed, failed[:3]
        t0 = time.monotonic()
        present = manager._present()
        out["present"].append(round(time.monotonic() - t0, 3))
        assert len(present) >= count, len(present)
        t0 = time.monotonic()
        codes = manager.rt.renew_addresses(requests)
        out["batch"].append(round(time.monotonic() - t0, 3))
        assert not any(codes), codes[:3]
        t0 = time.monotonic()
        subprocess.run(["ip", "-o", "addr", "show"], stdout=subprocess.DEVNULL, check=True,
                       timeout=120)  # fmt: skip
        out["ip"].append(round(time.monotonic() - t0, 3))
    prof = cProfile.Profile()
    prof.enable()
    manager.renew(items)
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(14)
    out["profile"] = text.getvalue()[-4000:]
    return out


def cpu() -> dict[str, float]:
    """This guest's CPU seconds so far (user, system) from /proc/stat, all CPUs."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    hz = 100.0
    return {"user": int(fields[1]) / hz, "system": int(fields[3]) / hz,
            "softirq": int(fields[7]) / hz}  # fmt: skip
