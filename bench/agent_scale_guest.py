"""Guest side of bench/agent_scale.py (runs in the data-plane VM, as root).

Imported as ``bench.agent_scale_guest`` by the VM's call server (the repository is on the
guest's PYTHONPATH).
"""

from __future__ import annotations

import copy
import http.client
import json
import socket
import subprocess
import time
import urllib.parse
from typing import Any

from tests.dataplane import topology as t

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


def flips(api_url: str, samples: list[dict[str, Any]], within: float = 60, poll: float = 0.02,
          pause: float = 0.5) -> list[dict[str, Any]]:  # fmt: skip
    """For each sample (``pool``, ``address``, ``vip``, ``port``), run in the director's
    network namespace: mark pool member ``address`` not ready on the fake API server, then
    ready again, each after ``pause`` s of quiet; after each write, look at the kernel's
    service ``vip:port`` every ``poll`` s until the destination is gone (not ready: drained
    at once, it has no connections) or there with its weight (ready). The writes go over one
    kept-alive connection, as a controller's client keeps its connection to the API server
    (with a new connection per write, through the VM's user network, the write took 74 ms,
    median of one run, of a 154 ms sample). Returns per sample
    ``{"gone": ..., "back": ...}``, each with the seconds from the write to the kernel's
    change (None: not within ``within``), the write's own seconds (``put``: until the fake API
    answered) and its wall-clock start (``at``: to find the agent's converge in its log)."""
    url = urllib.parse.urlsplit(api_url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    out = []
    try:
        for sample in samples:
            answers = {}
            for ready, name in ((False, "gone"), (True, "back")):
                time.sleep(pause)
                answers[name] = _flip(conn, sample["pool"], sample["address"], ready,
                                      sample["vip"], sample["port"], within, poll)  # fmt: skip
            out.append(answers)
    finally:
        conn.close()
    return out


def _put(conn: http.client.HTTPConnection, obj: dict[str, Any]) -> None:
    meta = obj["metadata"]
    path = f"/apis/lvs.io/v1alpha1/namespaces/{meta['namespace']}/realserverpools/{meta['name']}"
    conn.request("PUT", path, body=json.dumps(obj).encode(),
                 headers={"Content-Type": "application/json"})  # fmt: skip
    answer = conn.getresponse()
    answer.read()
    if answer.status != 200:
        raise RuntimeError(f"PUT {path}: {answer.status}")


def _flip(conn: http.client.HTTPConnection, pool: dict[str, Any], address: str, ready: bool,
          vip: str, port: int, within: float, poll: float) -> dict[str, Any]:  # fmt: skip
    pool = copy.deepcopy(pool)
    for member in pool["status"]["members"]:
        if member["address"] == address:
            member["ready"] = ready
    sock = nl.IpvsNetlink()
    try:
        at, t0 = time.time(), time.monotonic()  # wall clock: the agent's log lines' ``ts``
        _put(conn, pool)
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


def rss_parts(pid: int) -> dict[str, float]:
    """Where a process's RSS is (MiB), from /proc/PID/smaps: ``file`` (the interpreter, the
    shared libraries), ``heap`` (glibc's main arena: blocks over 512 bytes the main thread
    allocates, below the mmap threshold) and ``anon`` (the rest: pymalloc's arenas, i.e.
    Python's small objects, glibc's thread arenas, the threads' stacks, big blocks mapped
    alone; the kernel merges adjacent mappings, so these are not told apart here)."""
    parts = dict.fromkeys(("file", "heap", "anon"), 0)
    kind = "anon"
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                name = head[5] if len(head) > 5 else ""
                kind = "heap" if name == "[heap]" else "file" if name.startswith("/") else "anon"
            elif head and head[0] == "Rss:":
                parts[kind] += int(head[1])
    return {k: round(v / 1024, 1) for k, v in parts.items()}


def metrics(ns: str, port: int = 9642, timeout: float = 60) -> str:
    """The agent's /metrics (a scrape of a big group's agent takes a while under TCG)."""
    from tests.dataplane.scenarios_agent import _get

    return _get(ns, port, "/metrics", timeout=timeout)[1]
