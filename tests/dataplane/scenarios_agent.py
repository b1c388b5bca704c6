"""Guest side of test_agent.py and bench/failover.py: traffic checks around the real agents.

Runs inside the VM. Functions here are called with ``Vm.call`` (from a warm fork of the guest
Python) and return JSON-able results; ``python -m tests.dataplane.scenarios_agent loop ...``
is a request loop run as its own process (``Vm.spawn``) so it spans kills and restarts the
host performs. Times are the guest's CLOCK_MONOTONIC, shared by every process in the VM.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.dataplane import topology as t

HEALTH_PORT = 9641


def now() -> float:
    return time.monotonic()


def setup(api_host: str = "10.0.2.2") -> dict[str, Any]:
    """Uplinks from the directors to the API server on the host."""
    topo = t.default_topology()
    t.reset(topo)
    # the agent tests' client loops make thousands of connections: the whole default range
    low, high = t.DEFAULT_PORT_RANGE
    t.sysctl(topo.client, t.PORT_RANGE_KEY, f"{low} {high}")
    out = {}
    for i, d in enumerate(topo.directors, start=1):
        out[d] = t.connect_uplink(d, i)
    return out


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def process_terms(pid: int) -> dict[str, Any]:
    """What a process runs under: its capability bounding and effective sets (hex), its
    no_new_privs flag, and whether /proc/sys and / are read-only in its mount namespace."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if ":" in line
    )  # fmt: skip
    read_only: dict[str, bool] = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        mount_point, options = fields[4], fields[5].split(",")
        if mount_point.endswith("/proc/sys") or mount_point == "/":
            read_only["/proc/sys" if mount_point.endswith("/proc/sys") else "/"] = "ro" in options
    return {
        "cap_bnd": status["CapBnd"].strip(),
        "cap_eff": status["CapEff"].strip(),
        "no_new_privs": status.get("NoNewPrivs", "").strip() == "1",
        "proc_sys_read_only": read_only.get("/proc/sys", False),
        "root_read_only": read_only.get("/", False),
    }


def cleanup(vips: dict[str, list[str]]) -> None:
    """After the agent tests: real servers back to plain, directors emptied (other test
    modules share the VM). ``vips``: mode -> VIPs set up with ``realserver``."""
    for mode, addresses in vips.items():
        if addresses:
            realserver(addresses, mode, cleanup=True)
    t.reset()


def realserver(vips: list[str], mode: str, cleanup: bool = False) -> dict[str, Any]:
    """Run the real `lvs-operator realserver` command in every real-server namespace."""
    topo = t.default_topology()
    results = {}
    for rs in topo.real_servers:
        argv = ["ip", "netns", "exec", rs, sys.executable, "-m", "lvs_operator.cli",
                "realserver", "--mode", mode]  # fmt: skip
        for vip in vips:
            argv += ["--vip", vip]
        if cleanup:
            argv.append("--cleanup")
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        results[rs] = {"rc": r.returncode, "err": r.stderr[-2000:]}
        results[rs]["addr"] = t.nsexec(rs, "ip", "-br", "addr", check=False)
    return results


def _get(ns: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    """GET over a socket made inside ``ns`` (http.client would connect outside it)."""
    sock = t.connect(ns, "127.0.0.1", port, timeout=timeout)
    try:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def readyz(ns: str, port: int = HEALTH_PORT) -> int | None:
    try:
        return _get(ns, port, "/readyz", timeout=1.0)[0]
    except (OSError, ValueError, IndexError):
        return None


def metrics(ns: str, port: int = 9642, timeout: float = 10.0) -> str:
    """One scrape (Prometheus's default scrape timeout: 10 s; under TCG a scrape of a
    director holding thousands of connections has taken over 2 s)."""
    return _get(ns, port, "/metrics", timeout=timeout)[1]


def wait_ready(namespaces: list[str], within: float = 120) -> dict[str, float]:
    t0 = now()
    ready: dict[str, float] = {}
    while now() - t0 < within and len(ready) < len(namespaces):
        for ns in namespaces:
            if ns not in ready and readyz(ns) == 200:
                ready[ns] = round(now() - t0, 2)
        time.sleep(0.2)
    return ready


def vip_holders(vip: str) -> list[str]:
    """Directors with ``vip`` on an interface other than lo (during a planned handover the
    old leader keeps it on lo, unannounced, for its connections in flight)."""
    topo = t.default_topology()
    return [
        d for d in topo.directors
        if any(f" {vip}/" in line and line.split()[1] != "lo"
               for line in t.nsexec(d, "ip", "-o", "addr", "show", check=False).splitlines())
    ]  # fmt: skip


def wait_vip(vip: str, within: float = 60, exclude: str | None = None) -> dict[str, Any]:
    """Until exactly one director, ignoring ``exclude`` (a dead one), holds ``vip``."""
    t0 = now()
    holders: list[str] = []
    while now() - t0 < within:
        holders = [h for h in vip_holders(vip) if h != exclude]
        if len(holders) == 1:
            return {"holder": holders[0], "seconds": round(now() - t0, 2)}
        time.sleep(0.1)
    return {"holder": None, "holders": holders, "seconds": round(now() - t0, 2)}


def vip_entries(ns: str, vip: str) -> list[dict[str, Any]]:
    """The kernel's records of ``vip`` in director ``ns``: interface index, prefix length,
    IFA_PROTO and seconds of lifetime left (None: forever)."""
    from lvs_operator.director.kernel.addresses import Rtnl
    from lvs_operator.director.kernel.netns import in_netns

    with in_netns(ns):
        rt = Rtnl()
    try:
        return [
            {"index": e.index, "prefixlen": e.prefixlen, "proto": e.proto, "valid_lft": e.valid_lft}
            for e in rt.addresses()
            if e.address == vip
        ]
    finally:
        rt.close()


def ipvs(ns: str) -> str:
    return t.nsexec(ns, "ipvsadm", "-Ln", check=False)


def ipvs_connections(ns: str) -> str:
    """The connection table (``ipvsadm -Lnc``), persistence templates included."""
    return t.nsexec(ns, "ipvsadm", "-Lnc", check=False)


def wait_ipvs(ns: str, needle: str, present: bool = True, within: float = 30) -> bool:
    t0 = now()
    while now() - t0 < within:
        if (needle in ipvs(ns)) == present:
            return True
        time.sleep(0.1)
    return False


def weights(ns: str) -> dict[str, dict[str, int]]:
    """``ipvsadm -Ln`` as {"TCP 10.10.0.100:80": {"10.20.0.21:8080": weight}}."""
    out: dict[str, dict[str, int]] = {}
    current = ""
    for line in ipvs(ns).splitlines():
        parts = line.split()
        if parts[:1] in (["TCP"], ["UDP"], ["SCTP"]):
            current = f"{parts[0]} {parts[1]}"
            out[current] = {}
        elif parts[:1] == ["->"] and current and parts[1] != "RemoteAddress:Port":
            out[current][parts[1]] = int(parts[3])
    return out


def wait_weight(ns: str, service: str, dest: str, weight: int | None,
                within: float = 60) -> bool:  # fmt: skip
    """Until ``dest`` of ``service`` has ``weight`` (None: until it is gone)."""
    t0 = now()
    while now() - t0 < within:
        if weights(ns).get(service, {}).get(dest) == weight:
            return True
        time.sleep(0.1)
    return False


def count(vip: str, port: int, n: int = 30, source: str | None = None) -> dict[str, int]:
    return t.count_answers(t.CLIENT, vip, port, n=n, timeout=2.0, deadline=60, source=source)


def wait_answers(vip: str, port: int, within: float = 60) -> dict[str, Any]:
    """Until a request through ``vip`` succeeds (the agents converged and the VIP is up)."""
    t0 = now()
    last = ""
    while now() - t0 < within:
        try:
            name = t.http_get(t.CLIENT, vip, port, timeout=1.0)
            return {"ok": True, "name": name, "seconds": round(now() - t0, 2)}
        except (OSError, http.client.HTTPException, RuntimeError) as exc:
            last = repr(exc)
        time.sleep(0.2)
    return {"ok": False, "error": last, "seconds": round(now() - t0, 2)}


def http_server(rs: str, up: bool) -> None:
    """Stop (SIGKILL) or start the HTTP server of real server namespace ``rs``."""
    name = rs.removeprefix("lvs-")
    pidfile = t.STATE / f"http-{name}.pid"
    if up:
        t.start_http_server(rs)
    elif pidfile.exists():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        pidfile.unlink()


def api_put(api_url: str, obj: dict[str, Any]) -> None:
    """Replace an object on the fake API server (no resourceVersion: a test's write)."""
    meta = obj["metadata"]
    plural = {"RealServerPool": "realserverpools", "VirtualServer": "virtualservers"}[obj["kind"]]
    url = f"{api_url}/apis/lvs.io/v1alpha1/namespaces/{meta['namespace']}/{plural}/{meta['name']}"
    req = urllib.request.Request(
        url, data=json.dumps(obj).encode(), method="PUT",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()


def quiesce(vip: str, port: int, api_url: str, pool: dict[str, Any], leader: str) -> dict[str, Any]:
    """Hold a keep-alive connection to server X, mark X not ready, check that new connections
    avoid X while the held one still gets answers from X; then close it and check that X's
    destination leaves the table. ``pool`` is the pool object to edit (all members ready)."""
    conn = t.NsHTTPConnection(t.CLIENT, vip, port, timeout=2.0)
    first = conn.get_name()
    topo = t.default_topology()
    address = topo.back[f"lvs-{first}"]
    edited = json.loads(json.dumps(pool))
    for m in edited["status"]["members"]:
        if m["address"] == address:
            m["ready"] = False
    api_put(api_url, edited)
    service, dest = f"TCP {vip}:{port}", f"{address}:{t.HTTP_PORT}"
    t0 = now()
    weight0 = wait_weight(leader, service, dest, 0, within=30)
    quiesce_seconds = round(now() - t0, 2)
    counts = count(vip, port, n=20)
    held = [conn.get_name() for _ in range(3)]  # established connection keeps working
    table_while_held = ipvs(leader)
    conn.close()
    removed = wait_weight(leader, service, dest, None, within=30)
    api_put(api_url, pool)  # restore
    back = wait_weight(leader, service, dest, 1, within=30)
    return {
        "server": first,
        "weight0": weight0,
        "quiesce_seconds": quiesce_seconds,
        "counts": counts,
        "held": held,
        "table_while_held": table_while_held,
        "removed_after_close": removed,
        "restored": back,
    }


def signal_process(pid: int, sig: int, link_down: str | None = None) -> float:
    """Signal ``pid``; with ``link_down``, first take that namespace's front link down (the
    director node is gone, not just its agent). Returns the guest time of the event: the
    signal, or the moment the link was down (no request can pass that director after it)."""
    if link_down:
        t.sh("ip", "-n", link_down, "link", "set", "front", "down")
    at = now()
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    return at


def takeover(pid: int, sig: int, vip: str, new: str, link_down: str | None = None,
             within: float = 60) -> dict[str, Any]:  # fmt: skip
    """``signal_process``, then poll until director ``new`` holds ``vip``: returns the event's
    guest time and how long the VIP took to move."""
    at = signal_process(pid, sig, link_down)
    wall_at = time.time() - (now() - at)  # the same moment on the wall clock
    while now() - at < within:
        if f" {vip}/" in t.nsexec(new, "ip", "-o", "addr", "show", "dev", "front", check=False):
            return {"at": at, "wall_at": wall_at, "vip_moved_after": round(now() - at, 3)}
        time.sleep(0.02)
    return {"at": at, "wall_at": wall_at, "vip_moved_after": None}


def link_mac(ns: str, dev: str = "front") -> str:
    """The MAC address of ``dev`` in namespace ``ns``."""
    return json.loads(t.nsexec(ns, "ip", "-j", "link", "show", "dev", dev))[0]["address"]


def neighbour(ns: str, address: str, dev: str = "front") -> dict[str, Any] | None:
    """``ns``'s neighbour-cache entry for ``address`` (lladdr and NUD state), if any."""
    entries = json.loads(t.nsexec(ns, "ip", "-j", "neigh", "show", address, "dev", dev) or "[]")
    if not entries:
        return None
    return {"lladdr": entries[0].get("lladdr"), "state": entries[0].get("state")}


def wait_neighbour(ns: str, address: str, mac: str, within: float = 30) -> dict[str, Any]:
    """Until ``ns``'s neighbour entry for ``address`` names ``mac``: the guest time it was
    first seen so (polled every 10 ms) and the entry, or None for the time."""
    t0 = now()
    entry = None
    while now() - t0 < within:
        entry = neighbour(ns, address)
        if entry and entry["lladdr"] == mac:
            return {"at": now(), "entry": entry}
        time.sleep(0.01)
    return {"at": None, "entry": entry}


def link_up(ns: str) -> None:
    t.sh("ip", "-n", ns, "link", "set", "front", "up")


def delay_answers(ms: int) -> None:
    """Every real server's packets leave ``ms`` late (netem; 0: the delay removed), so each
    held connection's answer is in flight most of the time: at a crash, many are lost with
    the old director and come back as the real servers' retransmissions."""
    for rs in t.REAL_SERVERS:
        if ms:
            t.sh("ip", "netns", "exec", rs, "tc", "qdisc", "replace", "dev", "back", "root",
                 "netem", "delay", f"{ms}ms")  # fmt: skip
        else:
            t.sh("ip", "netns", "exec", rs, "tc", "qdisc", "del", "dev", "back", "root",
                 check=False)  # fmt: skip


def wait_gone(pid: int, within: float = 20) -> float | None:
    t0 = now()
    while now() - t0 < within:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split()[2] == "Z":
                    return round(now() - t0, 3)
        except FileNotFoundError:
            return round(now() - t0, 3)
        time.sleep(0.02)
    return None


def wait_vip_dropped(ns: str, vip: str, within: float = 60) -> float | None:
    t0 = now()
    while now() - t0 < within:
        if f" {vip}/" not in t.nsexec(ns, "ip", "-o", "addr", "show", check=False):
            return round(now() - t0, 2)
        time.sleep(0.05)
    return None


def wait_synced(ns: str, vip: str, port: int, count: int, within: float = 30) -> float | None:
    """Until director ``ns``'s IPVS lists ``count`` established connections to vip:port
    (a backup's copy from the sync daemons): the seconds it took, or None."""
    t0 = now()
    needle = f" {vip}:{port} "
    while now() - t0 < within:
        table = t.nsexec(ns, "ipvsadm", "-Lnc", check=False)
        if sum(1 for line in table.splitlines() if "ESTABLISHED" in line and needle in line
               ) >= count:  # fmt: skip
            return round(now() - t0, 2)
        time.sleep(0.2)
    return None


def wait_template(ns: str, vip: str, port: int, within: float = 30) -> str | None:
    """Until director ``ns``'s IPVS lists a persistence template for vip:port: the entry
    whose client port is 0 (its state reads ASSURED on the VM's 6.1 kernel, NONE on older
    ones): the line, or None."""
    t0 = now()
    template = re.compile(rf"\s\S+:0\s+{re.escape(vip)}:{port}\s")
    while now() - t0 < within:
        for line in t.nsexec(ns, "ipvsadm", "-Lnc", check=False).splitlines():
            if template.search(line):
                return line.strip()
        time.sleep(0.2)
    return None


# -- the request loop (its own process) ---------------------------------------------------------


def analyse(results: list[tuple[float, str | None]], at: float) -> dict[str, Any]:
    """Around an event at guest time ``at`` (request start times; each request is a new
    connection, 0.5 s timeout, 50 ms apart):

    - ``first_success_after``: event -> first successful request started after it;
    - ``recovered_after``: event -> the first success after the last failure (when service
      was back for good; equals first_success_after without failures);
    - ``max_gap``: the longest time between two successful requests from the last success
      before the event on (the outage clients saw)."""
    before = [r for r in results if r[0] < at]
    after = [r for r in results if r[0] >= at]
    last_ok = max((ts for ts, n in before if n), default=None)
    first_ok = min((ts for ts, n in after if n), default=None)
    last_fail = max((ts for ts, n in after if n is None), default=None)
    recovered = min((ts for ts, n in after if n and (last_fail is None or ts > last_fail)),
                    default=None)  # fmt: skip
    oks = ([last_ok] if last_ok is not None else []) + [ts for ts, n in after if n]
    gaps = [b - a for a, b in itertools.pairwise(oks)]
    return {
        "requests": len(results),
        "failures": sum(1 for _, n in results if n is None),
        "failures_after": sum(1 for _, n in after if n is None),
        "first_success_after": None if first_ok is None else round(first_ok - at, 3),
        "recovered_after": None if recovered is None else round(recovered - at, 3),
        "max_gap": round(max(gaps), 3) if gaps else None,
    }


def agent_log_delay(log: str, first: str, then: str) -> float | None:
    """Seconds between the first JSON log line whose msg starts with ``first`` and the next
    whose msg starts with ``then`` (the agent's own clock: from its start, not its spawn)."""
    t0 = None
    for line in log.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        msg = str(rec.get("msg", ""))
        if t0 is None and msg.startswith(first):
            t0 = float(rec["ts"])
        elif t0 is not None and msg.startswith(then):
            return round(float(rec["ts"]) - t0, 3)
    return None


def read_loop(path: str) -> list[tuple[float, str | None]]:
    p = Path(path)
    if not p.exists():
        return []
    return [tuple(x) for x in json.loads(p.read_text())]  # type: ignore[misc]


def read_loop_failures(path: str, at: float = 0.0) -> list[dict[str, Any]]:
    """The loop's failed requests, ``ts`` made relative to guest time ``at``."""
    p = Path(path + ".failures")
    if not p.exists():
        return []
    rows: list[dict[str, Any]] = json.loads(p.read_text())
    return [r | {"ts": round(r["ts"] - at, 3)} for r in rows]


def loop_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--vip", default=t.VIP)
    p.add_argument("--port", type=int, default=80)
    p.add_argument("--out", required=True)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--timeout", type=float, default=0.5)
    p.add_argument("--max-seconds", type=float, default=120)
    a = p.parse_args(argv)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    results: list[tuple[float, str | None]] = []
    failures: list[dict[str, Any]] = []  # what each failed request saw (read_loop_failures)
    started = Path(a.out + ".started")
    end = now() + a.max_seconds
    while not stop and now() < end:
        ts = now()
        conn = t.NsHTTPConnection(None, a.vip, a.port, timeout=a.timeout)
        name: str | None = None
        try:
            name = conn.get_name()
        except (OSError, http.client.HTTPException, RuntimeError) as e:
            port = None
            with contextlib.suppress(OSError, AttributeError):
                port = conn.sock.getsockname()[1] if conn.sock else None
            failures.append({"ts": ts, "took": round(now() - ts, 3),
                             "error": f"{type(e).__name__}: {e}",
                             # None: the handshake never completed
                             "local_port": port})  # fmt: skip
        finally:
            conn.close()
        results.append((ts, name))
        if not started.exists() and name:
            started.write_text(str(ts))
        time.sleep(a.interval)
    Path(a.out + ".failures").write_text(json.dumps(failures))
    tmp = Path(a.out + ".tmp")
    tmp.write_text(json.dumps(results))
    os.replace(tmp, a.out)
    return 0


# -- faults (the fault tier) ---------------------------------------------------------------------


def _nft(ns: str, ruleset: str) -> None:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".nft") as f:
        f.write(ruleset)
        f.flush()
        t.nsexec(ns, "nft", "-f", f.name)


def cut_api(ns: str, cut: bool = True) -> None:
    """Drop (silently, as a dead network path does) every packet between director ``ns`` and
    the API server on the host: its uplink carries nothing else."""
    if cut:
        _nft(ns, (
            "table inet lvs_fault_api {\n"
            "  chain o { type filter hook output priority 0; oifname \"uplink\" drop; }\n"
            "  chain i { type filter hook input priority 0; iifname \"uplink\" drop; }\n"
            "}\n"
        ))  # fmt: skip
    else:
        t.nsexec(ns, "nft", "delete", "table", "inet", "lvs_fault_api", check=False)


def cut_heartbeat(ns: str, cut: bool = True, port: int = 9643) -> None:
    """Drop the UDP heartbeat (both ways) at director ``ns``; ARP and TCP still pass."""
    if cut:
        _nft(ns, (
            "table inet lvs_fault_hb {\n"
            f"  chain o {{ type filter hook output priority 0; udp dport {port} drop; "
            f"udp sport {port} drop; }}\n"
            f"  chain i {{ type filter hook input priority 0; udp dport {port} drop; "
            f"udp sport {port} drop; }}\n"
            "}\n"
        ))  # fmt: skip
    else:
        t.nsexec(ns, "nft", "delete", "table", "inet", "lvs_fault_hb", check=False)


def lossy_heartbeat(ns: str, percent: int = 5, on: bool = True, port: int = 9643) -> None:
    """Drop ``percent`` % of the UDP heartbeat at director ``ns``, at random, each way."""
    if on:
        drop = f"numgen random mod 100 < {int(percent)} drop"
        _nft(ns, (
            "table inet lvs_fault_loss {\n"
            f"  chain o {{ type filter hook output priority 0; udp dport {port} {drop}; }}\n"
            f"  chain i {{ type filter hook input priority 0; udp sport {port} {drop}; }}\n"
            "}\n"
        ))  # fmt: skip
    else:
        t.nsexec(ns, "nft", "delete", "table", "inet", "lvs_fault_loss", check=False)


def spoof_main(argv: list[str]) -> int:
    """Send heartbeat probes to ``--target`` with the source address ``--source`` (another
    director's) and its ``--identity``, ``--rate`` per second for ``--seconds`` (that many in
    all; a starved moment is made up for, within twice the time), from the
    client's namespace on the same link (raw IP: the spoofer has that address nowhere). They
    are well formed but signed with a key of the spoofer's own. Prints the number sent."""
    import socket
    import struct

    from lvs_operator.director.peer import make_probe

    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--identity", required=True)
    p.add_argument("--port", type=int, default=9643)
    p.add_argument("--rate", type=float, default=1000)
    p.add_argument("--seconds", type=float, default=10)
    a = p.parse_args(argv)
    topo = t.default_topology()
    with t.in_netns(topo.client):
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    key = os.urandom(32)
    src, dst = socket.inet_aton(a.source), socket.inet_aton(a.target)
    packets = []  # made before the clock starts: signing each one is slow under TCG
    for i in range(1000):
        payload = make_probe(os.urandom(8).hex(), a.identity, None, True, time.time_ns() + i, key)
        udp = struct.pack("!HHHH", 40000 + i, a.port, 8 + len(payload), 0) + payload
        # version/IHL, TOS, total length, id, flags/fragment, TTL, UDP, checksum (the kernel
        # fills in the checksum for IPPROTO_RAW)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0, src, dst)
        packets.append(ip + udp)
    # ``rate`` x ``seconds`` probes, paced; one starved for a moment (a loaded VM under TCG:
    # 8,672 in 10.8 s) catches up in a burst, for at most twice the time
    total = int(a.rate * a.seconds)
    sent, t0 = 0, now()
    while sent < total and now() - t0 < 2 * a.seconds:
        due = min(total, int((now() - t0) * a.rate))
        while sent < due:  # in bursts: the guest's sleep is coarse
            with contextlib.suppress(OSError):
                sock.sendto(packets[sent % len(packets)], (a.target, 0))
            sent += 1
        time.sleep(0.005)
    print(json.dumps({"sent": sent, "seconds": round(now() - t0, 2)}), flush=True)
    return 0


def sampler_main(argv: list[str]) -> int:
    """Every ``--interval`` (10 ms): which directors hold the VIP on an interface other than
    lo (netlink, in each director's namespace), and which answer ARP for it (an ARP probe
    from the client's namespace; each answer's MAC names its director). A JSON line at each
    change, and a last line with the sample count and the mean interval. Bounded in time."""
    import select
    import socket

    from lvs_operator.director.kernel.addresses import Rtnl, index_of, mac_of
    from lvs_operator.director.kernel.netns import in_netns
    from lvs_operator.director.vip import ETH_P_ARP, arp_probe_frame, parse_arp_reply

    p = argparse.ArgumentParser()
    p.add_argument("--vip", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--max-seconds", type=float, default=600)
    a = p.parse_args(argv)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    topo = t.default_topology()
    rtnl: dict[str, tuple[Rtnl, int]] = {}
    macs: dict[str, str] = {}
    for d in topo.directors:
        with in_netns(d):
            rtnl[d] = (Rtnl(), index_of("lo") or 1)
            macs[mac_of("front")] = d
    with in_netns(topo.client):
        arp = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        arp.bind(("front", 0))
        arp.setblocking(False)
        probe = arp_probe_frame(a.vip, mac_of("front"))
    end = now() + a.max_seconds
    last: tuple[list[str], list[str]] | None = None
    samples, t0 = 0, now()
    with open(a.out, "a", buffering=1) as out:
        while not stop and now() < end:
            tick = now()
            with contextlib.suppress(OSError):
                arp.send(probe)
            holders = sorted(
                d for d, (sock, lo) in rtnl.items()
                if any(e.address == a.vip and e.index != lo for e in sock.addresses())
            )  # fmt: skip
            answering: set[str] = set()
            while True:
                left = tick + a.interval - now()
                ready, _, _ = select.select([arp], [], [], max(0.0, left))
                if not ready:
                    break
                with contextlib.suppress(BlockingIOError):
                    while True:
                        parsed = parse_arp_reply(arp.recv(128))
                        if parsed and parsed[0] == a.vip and parsed[1] in macs:
                            answering.add(macs[parsed[1]])
            samples += 1
            state = (holders, sorted(answering))
            if state != last:
                out.write(json.dumps({"t": round(tick, 3), "addr": holders,
                                      "arp": sorted(answering)}) + "\n")  # fmt: skip
                last = state
        out.write(json.dumps({"end": round(now(), 3), "samples": samples,
                              "mean_interval": round((now() - t0) / max(1, samples), 4)})
                  + "\n")  # fmt: skip
    return 0


def read_samples(path: str) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return []
    rows = []
    for line in p.read_text().splitlines():
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return rows


def two_holders(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The intervals during which two directors held the VIP or answered ARP for it."""
    out: list[dict[str, Any]] = []
    changes = [r for r in rows if "t" in r]
    end = next((r["end"] for r in rows if "end" in r), changes[-1]["t"] if changes else 0.0)
    for row, nxt in itertools.zip_longest(changes, changes[1:]):
        until = nxt["t"] if nxt else end
        for key in ("addr", "arp"):
            if len(row[key]) > 1:
                out.append({"by": key, "from": row["t"], "seconds": round(until - row["t"], 3),
                            "who": row[key]})  # fmt: skip
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["loop"]:
        sys.exit(loop_main(sys.argv[2:]))
    if sys.argv[1:2] == ["sampler"]:
        sys.exit(sampler_main(sys.argv[2:]))
    if sys.argv[1:2] == ["spoof"]:
        sys.exit(spoof_main(sys.argv[2:]))
    sys.exit(f"usage: {sys.argv[0]} loop|sampler|spoof ...")


def connection_diagnostics(new: str, vip: str, ports: list[int]) -> dict[str, str]:
    """What the new leader, the real servers and the client know of some connections through
    ``vip`` (client ports ``ports``): the IPVS entries, the conntrack entries, the nftables
    counters, the real servers' and the client's sockets (retransmissions, back-off)."""
    out: dict[str, str] = {}
    wanted = [str(p) for p in ports]

    def keep(text: str) -> str:
        lines = [line for line in text.splitlines() if vip in line]
        return "\n".join(line for line in lines if any(p in line for p in wanted)) or text[-3000:]

    out["ipvs"] = keep(t.nsexec(new, "ipvsadm", "-Lnc", check=False))
    out["conntrack"] = keep(t.nsexec(new, "cat", "/proc/net/nf_conntrack", check=False))
    out["nft"] = t.nsexec(new, "nft", "list", "table", "inet", "lvs_operator", check=False)
    for rs in ("lvs-rs1", "lvs-rs2", "lvs-rs3", t.CLIENT):
        out[f"ss {rs}"] = "\n".join(
            line
            for line in t.nsexec(rs, "ss", "-tnio", check=False).splitlines()
            if any(p in line for p in wanted)
        )
    return out
