"""Guest side of the e2e tier: the cluster's network inside the VM.

Runs inside the data-plane VM (tests/dataplane/vm.py) as root; the host calls these functions
with ``Vm.call("e2e.guest:<function>", ...)`` and runs the long-lived helpers (request loop,
VIP-holder sampler, held connection) as processes: ``python -m e2e.guest loop|sampler|hold``.
Everything stays inside the VM's namespaces, except the directors' uplinks to the API server
on the host (10.0.2.2).

    front 192.0.2.0/24 (bridge in e2e-sw)        pod network 10.244.0.0/16 (bridge in e2e-sw)
      e2e-client  192.0.2.2                        e2e-dir-a  10.244.255.251
      e2e-dir-a   192.0.2.11 (+ uplink 10.99.1.2)  e2e-dir-b  10.244.255.252
      e2e-dir-b   192.0.2.12 (+ uplink 10.99.2.2)  e2e-pod-N  <the pod's IP, as kwok assigned it>
      VIP         192.0.2.10 (on the active director's "front")

    IPv6 beside it (``nodad``): front 2001:db8::/64 (client ::2, directors ::11/::12, VIP6
    2001:db8::10); pod network fd44::/64 (directors fd44::251/::252, static IPv6 servers
    e2e-static6-N at fd44::1:N, HTTP on 8080 naming ``static6-N``: kwok gives pods IPv4
    addresses only, so the IPv6 pool lists static servers).

A web pod is a namespace carrying its pod IP and an HTTP server on 8080 that answers with the
pod's name (tests/dataplane/topology.py's server: headers X-Server, X-Client). The directors
masquerade (IPVS NAT plus the agent's nftables SNAT), so a pod answers the director's
pod-network address, as it would in a cluster; the X-Client header therefore names the
director that forwarded a request.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.dataplane import topology as t

SWITCH = "e2e-sw"
CLIENT = "e2e-client"
DIRECTORS = ("e2e-dir-a", "e2e-dir-b")
VIP = "192.0.2.10"
FRONT = {CLIENT: "192.0.2.2", "e2e-dir-a": "192.0.2.11", "e2e-dir-b": "192.0.2.12"}
BACK = {"e2e-dir-a": "10.244.255.251", "e2e-dir-b": "10.244.255.252"}
VIP6 = "2001:db8::10"
FRONT6 = {CLIENT: "2001:db8::2", "e2e-dir-a": "2001:db8::11", "e2e-dir-b": "2001:db8::12"}
BACK6 = {"e2e-dir-a": "fd44::251", "e2e-dir-b": "fd44::252"}
DIRECTOR_OF_SOURCE = {addr: ns for by_ns in (BACK, BACK6) for ns, addr in by_ns.items()}
UPLINK_INDEX = {"e2e-dir-a": 1, "e2e-dir-b": 2}
CLIENT_UPLINK_INDEX = 3  # the client's way to the host (Prometheus scrapes the controller)
PROMETHEUS_PORT = 9090
POD_PREFIX = 16
POD_NETWORK = "10.244.0.0/16"  # the kwok pods' (hack/test-cluster: --cidr); br-pods
HTTP_PORT = 8080
STATE = Path("/run/lvs-e2e")
LOOPBACK_INDEX = 1  # lo is the first interface of every network namespace


def now() -> float:
    return time.monotonic()


def wall_minus_monotonic() -> float:
    """The guest's wall clock minus its monotonic one: turns the agents' log times (wall)
    into the loops' guest times (monotonic)."""
    return time.time() - time.monotonic()


def clocks() -> dict[str, float]:
    """The guest's monotonic and wall clocks (to line up agent log times with samples)."""
    return {"mono": time.monotonic(), "wall": time.time()}


# -- building -----------------------------------------------------------------------------------


def _existing() -> set[str]:
    return set(t.sh("ip", "netns", "list").stdout.split())


def namespaces() -> list[str]:
    return sorted(_existing())


def build() -> dict[str, Any]:
    """Switch, client and both directors (with uplinks to the host); removes a previous run."""
    teardown()
    t.ip_batch([f"netns add {ns}" for ns in (SWITCH, CLIENT)])
    t.ip_batch(
        [
            "link set lo up",
            "link add br-front type bridge",
            "link set br-front up",
            "link add br-pods type bridge",
            "link set br-pods up",
            "link add f-client type veth peer name front netns e2e-client",
            "link set f-client master br-front up",
        ],
        SWITCH,
    )
    t.ip_batch(
        [
            "link set lo up",
            f"addr add {FRONT[CLIENT]}/24 dev front",
            f"addr add {FRONT6[CLIENT]}/64 dev front nodad",
            "link set front up",
        ],
        CLIENT,
    )
    for ns in DIRECTORS:
        add_director(ns)
    return {"vip": VIP, "front": FRONT, "back": BACK}


def add_director(ns: str) -> str:
    """A director node's network: front (client side), back (pod network), uplink (API)."""
    short = ns.removeprefix("e2e-")
    t.ip_batch([f"netns add {ns}"])
    t.ip_batch(
        [
            f"link add f-{short} type veth peer name front netns {ns}",
            f"link set f-{short} master br-front up",
            f"link add b-{short} type veth peer name back netns {ns}",
            f"link set b-{short} master br-pods up",
        ],
        SWITCH,
    )
    t.ip_batch(
        [
            "link set lo up",
            f"addr add {FRONT[ns]}/24 dev front",
            f"addr add {FRONT6[ns]}/64 dev front nodad",
            "link set front up",
            f"addr add {BACK[ns]}/{POD_PREFIX} dev back",
            f"addr add {BACK6[ns]}/64 dev back nodad",
            "link set back up",
        ],
        ns,
    )
    return t.connect_uplink(ns, UPLINK_INDEX[ns])


def remove_director(ns: str) -> float:
    """The node is gone: its namespace (addresses, IPVS, VIP) deleted. Returns the guest time."""
    at = now()
    t.sh("ip", "netns", "del", ns, check=False)
    return at


def crash_node(ns: str, pid: int) -> float:
    """Power a director node off: cut its wires (the switch-side ends of its veths: its
    interfaces, addresses and VIP go with them), SIGKILL its daemon, delete its namespace.
    Returns the guest time of the cut."""
    short = ns.removeprefix("e2e-")
    at = now()
    t.ip_batch([f"link del f-{short}", f"link del b-{short}"], SWITCH)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    for _ in range(100):  # the namespace outlives its last process only by a moment
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split()[2] == "Z":
                break
        time.sleep(0.01)
    remove_director(ns)
    return at


def kill_agent(pid: int, sig: int) -> float:
    at = now()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    return at


def add_pod(name: str, ip: str, index: int, http: bool = True) -> str:
    """A web pod: namespace ``e2e-pod-<index>`` with the pod's IP, HTTP on 8080 naming it
    (without ``http``: only the namespace, for a server the caller starts, e2e/three_tier)."""
    ns = f"e2e-pod-{index}"
    remove_pod(ns)
    t.ip_batch([f"netns add {ns}"])
    t.ip_batch(
        [
            f"link add p-{index} type veth peer name eth0 netns {ns}",
            f"link set p-{index} master br-pods up",
        ],
        SWITCH,
    )
    t.ip_batch(["link set lo up", f"addr add {ip}/{POD_PREFIX} dev eth0", "link set eth0 up"], ns)
    if http:
        pid = t.start_http_server(ns, name=name, port=HTTP_PORT)
        STATE.mkdir(parents=True, exist_ok=True)
        (STATE / f"{ns}.pid").write_text(str(pid))
    return ns


def add_static6(index: int) -> str:
    """A static IPv6 real server: namespace ``e2e-static6-<index>`` at fd44::1:<index>, HTTP
    on 8080 naming ``static6-<index>``. Returns its address."""
    ns, address = f"e2e-static6-{index}", f"fd44::1:{index}"
    remove_pod(ns)
    t.ip_batch([f"netns add {ns}"])
    t.ip_batch(
        [f"link add s6-{index} type veth peer name eth0 netns {ns}",
         f"link set s6-{index} master br-pods up"],
        SWITCH,
    )  # fmt: skip
    t.ip_batch(["link set lo up", f"addr add {address}/64 dev eth0 nodad", "link set eth0 up"], ns)
    pid = t.start_http_server(ns, name=f"static6-{index}", port=HTTP_PORT)
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / f"{ns}.pid").write_text(str(pid))
    return address


def remove_pod(ns: str) -> None:
    pidfile = STATE / f"{ns}.pid"
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        pidfile.unlink()
    if ns in _existing():
        t.sh("ip", "netns", "del", ns, check=False)


def teardown() -> None:
    for ns in sorted(_existing()):
        if ns.startswith(("e2e-pod-", "e2e-static6-", "e2e-nfs")):
            remove_pod(ns)
    gone = [ns for ns in (SWITCH, CLIENT, *DIRECTORS) if ns in _existing()]
    if gone:
        t.ip_batch([f"netns del {ns}" for ns in gone])


def prepare_keepalived_node(ns: str, vip: str, pods: list[str]) -> dict[str, Any]:
    """For bench/e2e_failover.py: what a keepalived director needs besides keepalived, made
    the way the agent makes it (sysctls, nftables SNAT for masquerade)."""
    from lvs_operator.director.kernel import nft, sysctl

    changed = sysctl.ensure_sysctls(netns=ns)
    nft.ensure_masquerade_snat([vip], pods, netns=ns)
    return {"sysctls": {k: list(v) for k, v in changed.items()}}


# -- looking ------------------------------------------------------------------------------------


def holds(ns: str, vip: str = VIP) -> bool:
    """Whether ``ns`` has ``vip`` as a local address: a bind() to it succeeds (cheap: no
    subprocess, no netlink dump; a deleted namespace holds nothing). Only a namespace whose
    name is bound to a network namespace counts (`ip netns add` creates the file first, then
    binds it), and the bind() is checked to have run in that very namespace."""
    path = f"/run/netns/{ns}"
    try:
        st = os.stat(path)
        nsfs = os.stat("/proc/self/ns/net")
    except OSError:
        return False
    if st.st_dev != nsfs.st_dev or st.st_ino == nsfs.st_ino:
        return False
    try:
        with t.in_netns(ns):
            inside = os.stat("/proc/thread-self/ns/net").st_ino
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return False
    try:
        if inside != st.st_ino:
            return False
        s.bind((vip, 0))
    except OSError:
        return False
    finally:
        s.close()
    return _announced(ns, vip)


def _announced(ns: str, vip: str) -> bool:
    """Whether ``vip`` is on an interface other than lo in ``ns``: during a planned handover
    the old director keeps the VIP on lo to serve its connections in flight (relayed to it by
    the new one) but no longer answers ARP for it; that is not holding it."""
    from lvs_operator.director.kernel.addresses import Rtnl

    try:
        with t.in_netns(ns):
            rt = Rtnl()  # the socket belongs to the namespace it was made in
    except OSError:
        return False
    try:
        entries = rt.addresses()
    except OSError:
        return False
    finally:
        rt.close()
    return any(e.address == vip and e.index != LOOPBACK_INDEX for e in entries)


def holds_anywhere(ns: str, vip: str = VIP) -> bool:
    """Whether ``ns`` has ``vip`` on any interface, lo included."""
    return f" {vip}/" in t.nsexec(ns, "ip", "-o", "addr", "show", check=False)


def holders(vip: str = VIP) -> list[str]:
    return [ns for ns in DIRECTORS if holds(ns, vip)]


def wait_holder(
    vip: str = VIP, timeout: float = 60, exclude: str | None = None, only: bool = True
) -> dict[str, Any]:
    """Until exactly one director (ignoring ``exclude``) holds ``vip`` (``only``: and no other
    director at all)."""
    t0 = now()
    found: list[str] = []
    while now() - t0 < timeout:
        found = holders(vip)
        live = [h for h in found if h != exclude]
        if len(live) == 1 and (not only or len(found) == 1):
            return {"holder": live[0], "seconds": round(now() - t0, 2), "at": now()}
        time.sleep(0.05)
    return {"holder": None, "holders": found, "seconds": round(now() - t0, 2)}


def wait_no_holder(vip: str = VIP, timeout: float = 60) -> float | None:
    t0 = now()
    while now() - t0 < timeout:
        if not holders(vip):
            return round(now() - t0, 2)
        time.sleep(0.1)
    return None


def ipvs(ns: str) -> str:
    if ns not in _existing():
        return ""
    return t.nsexec(ns, "ipvsadm", "-Ln", check=False)


def weights(ns: str) -> dict[str, dict[str, int]]:
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


def wait_weights(
    namespaces: list[str], service: str, want: dict[str, int | None], timeout: float = 60
) -> dict[str, Any]:
    """Until each director's ``service`` has the wanted weight per destination (None: absent;
    ``want`` empty with the service absent: ``{"": None}``)."""
    t0 = now()
    seen: dict[str, Any] = {}
    while now() - t0 < timeout:
        ok = True
        for ns in namespaces:
            table = weights(ns)
            seen[ns] = table
            dests = table.get(service)
            for dest, weight in want.items():
                if dest == "":
                    ok = ok and dests is None
                elif (dests or {}).get(dest) != weight:
                    ok = False
        if ok:
            return {"ok": True, "seconds": round(now() - t0, 2)}
        time.sleep(0.1)
    return {"ok": False, "tables": seen}


# -- clients ------------------------------------------------------------------------------------


def _get(vip: str, port: int, timeout: float) -> tuple[str, str | None]:
    """One request on a new connection from the client: (pod name, director namespace)."""
    conn = t.NsHTTPConnection(CLIENT, vip, port, timeout=timeout)
    try:
        name, headers = conn.get()
    finally:
        conn.close()
    return name, DIRECTOR_OF_SOURCE.get(headers.get("X-Client", ""))


def sequence(vip: str = VIP, port: int = 80, n: int = 30, timeout: float = 2.0) -> list[str]:
    """``n`` requests, each on a new connection: the answering pods in order ("error" on a
    failure). Bounded: n x timeout."""
    out = []
    for _ in range(n):
        try:
            out.append(_get(vip, port, timeout)[0])
        except (OSError, http.client.HTTPException, RuntimeError):
            out.append("error")
    return out


def wait_answers(vip: str = VIP, port: int = 80, timeout: float = 90) -> dict[str, Any]:
    t0 = now()
    last = ""
    while now() - t0 < timeout:
        try:
            name, director = _get(vip, port, 1.0)
            return {"ok": True, "name": name, "director": director, "seconds": round(now() - t0, 2)}
        except (OSError, http.client.HTTPException, RuntimeError) as exc:
            last = repr(exc)
        time.sleep(0.2)
    return {"ok": False, "error": last}


def _api(
    api: dict[str, str], method: str, path: str, body: Any = None, ctype: str | None = None
) -> Any:
    ctx = ssl.create_default_context(cafile=api["ca"])
    headers = {"Authorization": f"Bearer {Path(api['token']).read_text().strip()}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = ctype or "application/json"
    req = urllib.request.Request(api["server"] + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
        return json.loads(resp.read() or b"{}")


def set_pod_ready(api: dict[str, str], namespace: str, pod: str, ready: bool) -> float:
    """Flip the pod's Ready/ContainersReady through the status subresource, as a kubelet's
    readiness probe would; returns the guest time the API server acknowledged it."""
    value = "True" if ready else "False"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    conds = [
        {"type": c, "status": value, "lastTransitionTime": stamp}
        for c in ("Ready", "ContainersReady")
    ]
    _api(
        api,
        "PATCH",
        f"/api/v1/namespaces/{namespace}/pods/{pod}/status",
        {"status": {"conditions": conds}},
        "application/strategic-merge-patch+json",
    )
    return now()


def ready_to_served(
    api: dict[str, str],
    namespace: str,
    pod: str,
    vip: str = VIP,
    port: int = 80,
    interval: float = 0.05,
    timeout: float = 60,
) -> dict[str, Any]:
    """Mark ``pod`` Ready (its server already answers in its namespace), then request through
    the VIP every ``interval`` until it answers: the seconds from Ready to its first answer."""
    t0 = set_pod_ready(api, namespace, pod, True)
    requests = failures = 0
    while now() - t0 < timeout:
        requests += 1
        try:
            if _get(vip, port, 1.0)[0] == pod:
                return {"seconds": round(now() - t0, 3), "requests": requests, "failures": failures}
        except (OSError, http.client.HTTPException, RuntimeError):
            failures += 1
        time.sleep(interval)
    return {"seconds": None, "requests": requests, "failures": failures}


# -- background processes: request loop, VIP sampler, held connection -----------------------------


def read_lines(path: str) -> list[Any]:
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def _stopper() -> list[bool]:
    flag = [False]

    def on_term(*_: object) -> None:
        flag[0] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    return flag


def loop_main(a: argparse.Namespace) -> int:
    """A request every ``interval`` (new connection, ``timeout``), one JSON line each:
    [guest time, pod or null, director namespace or null, error or null, seconds taken].
    Bounded by --max-seconds."""
    stop = _stopper()
    end = now() + a.max_seconds
    lock = threading.Lock()
    # --concurrent: a request starts every interval even while earlier ones hang (a bounded
    # number in flight), so the first answer after a failover is seen within one interval
    # instead of after the hung request's timeout.
    slots = threading.BoundedSemaphore(int(a.timeout / a.interval) + 2)

    def one(ts: float, out: Any) -> None:
        try:
            name, director = _get(a.vip, a.port, a.timeout)
            row: list[Any] = [round(ts, 4), name, director, None]
        except (OSError, http.client.HTTPException, RuntimeError) as exc:
            row = [round(ts, 4), None, None, f"{type(exc).__name__}: {exc}"[:120]]
        row.append(round(now() - ts, 4))
        with lock:
            out.write(json.dumps(row) + "\n")

    def release_after(ts: float, out: Any) -> None:
        try:
            one(ts, out)
        finally:
            slots.release()

    threads: list[threading.Thread] = []
    with open(a.out, "a", buffering=1) as out:
        while not stop[0] and now() < end:
            ts = now()
            if not a.concurrent:
                one(ts, out)
            elif slots.acquire(timeout=a.timeout):
                th = threading.Thread(target=release_after, args=(ts, out), daemon=True)
                th.start()
                threads = [x for x in threads if x.is_alive()] + [th]
            time.sleep(max(0.0, a.interval - (now() - ts)))
        for th in threads:
            th.join(a.timeout + 1)
    return 0


def sampler_main(a: argparse.Namespace) -> int:
    """Every ``interval``: which directors hold the VIP; a JSON line at each change:
    {"mono", "wall", "holders"}. Bounded by --max-seconds."""
    stop = _stopper()
    end = now() + a.max_seconds
    last: list[str] | None = None
    with open(a.out, "a", buffering=1) as out:
        while not stop[0] and now() < end:
            ts = now()
            found = holders(a.vip)
            if found != last and len(found) > 1:
                # confirm two holders another way before recording them (bind() was seen to
                # succeed transiently in a namespace being created)
                found = [
                    ns
                    for ns in found
                    if f" {a.vip}/" in t.nsexec(ns, "ip", "-o", "addr", "show", check=False)
                ]
            if found != last:
                out.write(
                    json.dumps(
                        {"mono": round(ts, 3), "wall": round(time.time(), 3), "holders": found}
                    )
                    + "\n"
                )
                last = found
            time.sleep(max(0.0, a.interval - (now() - ts)))
        out.write(
            json.dumps(
                {
                    "mono": round(now(), 3),
                    "wall": round(time.time(), 3),
                    "holders": last or [],
                    "end": True,
                }
            )
            + "\n"
        )
    return 0


def hold_main(a: argparse.Namespace) -> int:
    """One keep-alive connection through the VIP, a request on it every ``interval`` until
    SIGTERM (or --max-seconds): JSON lines [guest time, pod or null]."""
    stop = _stopper()
    end = now() + a.max_seconds
    conn = t.NsHTTPConnection(None, a.vip, a.port, timeout=3.0)
    with open(a.out, "a", buffering=1) as out:
        while not stop[0] and now() < end:
            ts = now()
            try:
                row: list[Any] = [round(ts, 4), conn.get_name()]
            except (OSError, http.client.HTTPException, RuntimeError):
                row = [round(ts, 4), None]
            out.write(json.dumps(row) + "\n")
            time.sleep(a.interval)
    conn.close()
    return 0


def analyse(rows: list[list[Any]], at: float, old: str | None = None) -> dict[str, Any]:
    """Around an event at guest time ``at`` in a request loop's rows (see loop_main), with
    ``old`` the director that was active. Times are when answers *arrived* (start + seconds
    taken): ``to_new_director`` = event -> first answer through another director;
    ``old_to_new`` (the failover time) = last answer through ``old`` -> first answer through
    another director; ``first_success_after`` / ``outage`` the same without regard to the
    director."""

    def done(r: list[Any]) -> float:
        return float(r[0]) + (float(r[4]) if len(r) > 4 else 0.0)

    ok = [r for r in rows if r[1]]
    after = [r for r in rows if r[0] >= at]
    via_old = [done(r) for r in ok if old is not None and r[2] == old]
    via_new = [done(r) for r in ok if done(r) >= at and (old is None or r[2] != old)]
    before_ok = [done(r) for r in ok if done(r) < at]
    after_ok = [done(r) for r in ok if done(r) >= at]
    last_old = max(via_old, default=None) if old is not None else max(before_ok, default=None)
    first_new = min(via_new, default=None)
    last_ok, first_ok = max(before_ok, default=None), min(after_ok, default=None)

    def span(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(b - a, 3)

    return {
        "requests": len(rows),
        "failures": sum(1 for r in rows if r[1] is None),
        "failures_after": sum(1 for r in after if r[1] is None),
        "first_success_after": span(at, first_ok),
        "outage": span(last_ok, first_ok),
        "to_new_director": span(at, first_new),
        "old_to_new": span(last_old, first_new),
        "directors_after": sorted({r[2] for r in after if r[2]}),
        "errors": [[round(r[0] - at, 3), r[3] if len(r) > 3 else ""] for r in rows if r[1] is None],
        "longest_request": max((r[4] for r in rows if len(r) > 4), default=None),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m e2e.guest")
    p.add_argument("mode", choices=("loop", "sampler", "hold"))
    p.add_argument("--out", required=True)
    p.add_argument("--vip", default=VIP)
    p.add_argument("--port", type=int, default=80)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--max-seconds", type=float, default=300)
    p.add_argument("--concurrent", action="store_true", help="loop: do not wait for a hung request")
    a = p.parse_args(argv)
    return {"loop": loop_main, "sampler": sampler_main, "hold": hold_main}[a.mode](a)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


# -- Prometheus (in the client's namespace) ------------------------------------------------------


def connect_client_uplink() -> str:
    """The client's namespace gets a way to the host (10.0.2.2: the controller's /metrics);
    returns the client's uplink address, where Prometheus answers the root namespace."""
    return t.connect_uplink(CLIENT, CLIENT_UPLINK_INDEX)


def prom_query(expr: str, at: float | None = None, timeout: float = 10) -> list[dict[str, Any]]:
    """An instant query to the e2e's Prometheus (at wall time ``at``; None: now): its
    result vector. Raises on an error answer."""
    from urllib.parse import urlencode

    address = f"10.99.{CLIENT_UPLINK_INDEX}.2"
    query = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
    url = f"http://{address}:{PROMETHEUS_PORT}/api/v1/query?{urlencode(query)}"
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body = json.loads(resp.read())
    if body.get("status") != "success":
        raise RuntimeError(f"query {expr!r}: {body}")
    return list(body["data"]["result"])


def wall() -> float:
    return time.time()
