"""Guest side of bench/agent_scale.py (runs in the data-plane VM, as root).

Imported as ``bench.agent_scale_guest`` by the VM's call server (the repository is on the
guest's PYTHONPATH).
"""

from __future__ import annotations

import copy
import socket
import subprocess
import time
from typing import Any

from tests.dataplane import topology as t
from tests.dataplane.scenarios_agent import api_put

from lvs_operator.director.kernel import ipvs_netlink as nl


def restore(ns: str, rules: str) -> float:
    """``ipvsadm-restore`` of ``rules`` in ``ns``: seconds (the baseline); the table is
    cleared again afterwards."""
    t0 = time.monotonic()
    subprocess.run(["ip", "netns", "exec", ns, "ipvsadm-restore"], input=rules, text=True,
                   check=True, timeout=1200)  # fmt: skip
    seconds = time.monotonic() - t0
    t.nsexec(ns, "ipvsadm", "-C")
    return round(seconds, 3)


def _weights(sock: nl.IpvsNetlink, vip: str, port: int) -> dict[str, int]:
    """One service's destinations and weights, by a dump of that service only."""
    key = nl.service_key_attrs(socket.AF_INET, 6, vip, port)
    out = {}
    for attrs in sock.dump_dests(key):
        address = nl.addr_str(socket.AF_INET, attrs.get(nl.DEST_ADDR))
        out[address] = nl.u32(attrs.get(nl.DEST_WEIGHT))
    return out


def flip(api_url: str, pool: dict[str, Any], address: str, ready: bool, vip: str, port: int,
         within: float = 60, poll: float = 0.02) -> dict[str, Any]:  # fmt: skip
    """Mark pool member ``address`` ready (or not) on the fake API server, then look at the
    kernel's service ``vip:port`` every ``poll`` s until the destination is there with its
    weight (ready) or gone (not ready; drained at once: it has no connections). Run in the
    director's network namespace. Returns the seconds from the write to the kernel's change
    (None: not within ``within``), the write's own seconds (``put``: until the fake API
    answered) and its wall-clock start (``at``: to find the agent's converge in its log)."""
    pool = copy.deepcopy(pool)
    for member in pool["status"]["members"]:
        if member["address"] == address:
            member["ready"] = ready
    sock = nl.IpvsNetlink()
    try:
        at, t0 = time.time(), time.monotonic()  # wall clock: the agent's log lines' ``ts``
        api_put(api_url, pool)
        put = time.monotonic() - t0
        while time.monotonic() - t0 < within:
            weight = _weights(sock, vip, port).get(address)
            if (weight is not None and weight > 0) == ready:
                return {"seconds": round(time.monotonic() - t0, 4), "put": round(put, 4),
                        "at": at}  # fmt: skip
            time.sleep(poll)
        return {"seconds": None, "put": round(put, 4), "at": at}
    finally:
        sock.close()


def metrics(ns: str, port: int = 9642, timeout: float = 60) -> str:
    """The agent's /metrics (a scrape of a big group's agent takes a while under TCG)."""
    from tests.dataplane.scenarios_agent import _get

    return _get(ns, port, "/metrics", timeout=timeout)[1]
