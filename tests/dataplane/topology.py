"""Guest-side helpers: a small LVS network of namespaces, HTTP real servers and clients.

Runs inside the VM (tests/dataplane/vm.py), as root. Everything stays inside these
namespaces; nothing is routed outside the VM except through ``connect_uplink`` (for agents
that must reach an API server on the host at 10.0.2.2).

    front 10.10.0.0/24 (bridge in ns lvs-sw)      back 10.20.0.0/24 (bridge in ns lvs-sw)
      lvs-client   10.10.0.2  (default via .1)       lvs-dir-a   10.20.0.11
      lvs-dir-a    10.10.0.11                        lvs-dir-b   10.20.0.12
      lvs-dir-b    10.10.0.12                        lvs-rs1..3  10.20.0.21..23 (default via .1)
      lvs-router   10.10.0.1   <── forwards ──>      lvs-router  10.20.0.1
      VIP          10.10.0.100 (on a director's "front", added by the test or the agent)

    IPv6 beside it (dual stack, ``nodad``: usable at once): front fd10::/64, back fd20::/64,
    the same last digits (client fd10::2 and fd10::3, a second source in its /64; directors
    fd10::11/12 and fd20::11/12; real servers fd20::21..23; router fd10::1 / fd20::1,
    forwarding both families); IPv6 VIPs fd10::100 and up.

Interfaces inside each namespace are called ``front`` and ``back``. The router lets real
servers answer clients directly (direct routing, tunnel) and is *not* the directors: so
masquerade needs either SNAT on the director (what the operator does in Kubernetes) or the
real servers' default route via the director (``route_back_via``).

HTTP servers (both families, one socket) answer ``GET /`` with their name (plus a newline)
over HTTP/1.1 keep-alive, headers ``X-Server`` (the name), ``X-Host`` (the Host header
received) and ``X-Client`` (the source address the server saw).
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CLONE_NEWNET = 0x40000000
STATE = Path("/run/lvs-topology")

SWITCH = "lvs-sw"
CLIENT = "lvs-client"
ROUTER = "lvs-router"
DIRECTORS = ("lvs-dir-a", "lvs-dir-b")
REAL_SERVERS = ("lvs-rs1", "lvs-rs2", "lvs-rs3")
VIP = "10.10.0.100"
FRONT_PREFIX = "10.10.0"
BACK_PREFIX = "10.20.0"
FRONT6_PREFIX = "fd10::"
BACK6_PREFIX = "fd20::"
VIP6_RANGE = "fd10::100/120"  # the tests' IPv6 VIPs (reset() drops them)
CLIENT6_SECOND = "fd10::3"  # the client's second IPv6 source, in the same /64
HTTP_PORT = 8080


@dataclass(frozen=True)
class Topology:
    """Names and addresses of the namespaces; see the module docstring."""

    client: str = CLIENT
    router: str = ROUTER
    directors: tuple[str, ...] = DIRECTORS
    real_servers: tuple[str, ...] = REAL_SERVERS
    vip: str = VIP
    front: dict[str, str] = field(default_factory=dict)  # ns -> address on the front segment
    back: dict[str, str] = field(default_factory=dict)  # ns -> address on the back segment
    front6: dict[str, str] = field(default_factory=dict)  # ns -> IPv6 address, front segment
    back6: dict[str, str] = field(default_factory=dict)  # ns -> IPv6 address, back segment

    def rs_name(self, ns: str) -> str:
        return ns.removeprefix("lvs-")

    def to_json(self) -> dict[str, object]:
        return {
            "client": self.client, "router": self.router, "directors": list(self.directors),
            "real_servers": list(self.real_servers), "vip": self.vip,
            "front": self.front, "back": self.back, "front6": self.front6, "back6": self.back6,
        }  # fmt: skip


def default_topology() -> Topology:
    front = {ROUTER: f"{FRONT_PREFIX}.1", CLIENT: f"{FRONT_PREFIX}.2"}
    back = {ROUTER: f"{BACK_PREFIX}.1"}
    for i, d in enumerate(DIRECTORS):
        front[d] = f"{FRONT_PREFIX}.{11 + i}"
        back[d] = f"{BACK_PREFIX}.{11 + i}"
    for i, r in enumerate(REAL_SERVERS):
        back[r] = f"{BACK_PREFIX}.{21 + i}"
    # the same last digits in IPv6 (decimal digits read as hex: fd10::11 for 10.10.0.11)
    front6 = {ns: FRONT6_PREFIX + a.rsplit(".", 1)[1] for ns, a in front.items()}
    back6 = {ns: BACK6_PREFIX + a.rsplit(".", 1)[1] for ns, a in back.items()}
    return Topology(front=front, back=back, front6=front6, back6=back6)


# -- commands ---------------------------------------------------------------------------------


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> {r.returncode}: {r.stderr.strip()}")
    return r


def nsexec(ns: str, *argv: str, check: bool = True, timeout: float = 30) -> str:
    return sh("ip", "netns", "exec", ns, *argv, check=check, timeout=timeout).stdout


def sysctl(ns: str, key: str, value: str | int) -> None:
    """Set a sysctl inside ``ns`` (/proc/sys/net follows the opener's namespace)."""
    with in_netns(ns):
        Path("/proc/sys", key.replace(".", "/")).write_text(f"{value}\n")


def _setns_fd(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def in_netns(ns: str | None) -> Iterator[None]:
    """Switch the *calling thread* into ``ns`` and back. Sockets keep the namespace they
    were created in, so this creates sockets "inside" a namespace without a subprocess."""
    if ns is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        _setns_fd(target)
        yield
    finally:
        _setns_fd(own)
        os.close(own)
        os.close(target)


# -- build / teardown -------------------------------------------------------------------------


def ip_batch(lines: list[str], ns: str | None = None) -> None:
    """Run many ``ip`` commands in one process: each exec costs ~0.1 s under TCG."""
    argv = ["ip", *(["-n", ns] if ns else []), "-batch", "-"]
    r = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> {r.returncode}: {r.stderr.strip()}")


def build(topo: Topology | None = None) -> dict[str, object]:
    """Create the namespaces, bridges and veths (tearing down a previous build first)."""
    topo = topo or default_topology()
    teardown(topo)
    nodes = [topo.client, topo.router, *topo.directors, *topo.real_servers]
    ip_batch([f"netns add {ns}" for ns in [SWITCH, *nodes]])
    switch = ["link set lo up"]
    per_ns: dict[str, list[str]] = {ns: ["link set lo up"] for ns in nodes}
    for br in ("br-front", "br-back"):
        switch += [f"link add {br} type bridge", f"link set {br} up"]
    for segment, addrs in (("front", topo.front), ("back", topo.back)):
        for ns, addr in addrs.items():
            peer = f"{segment[0]}-{ns.removeprefix('lvs-')}"[:15]
            switch += [
                f"link add {peer} type veth peer name {segment} netns {ns}",
                f"link set {peer} master br-{segment} up",
            ]
            per_ns[ns] += [f"addr add {addr}/24 dev {segment}", f"link set {segment} up"]
    for segment, addrs6 in (("front", topo.front6), ("back", topo.back6)):
        for ns, addr in addrs6.items():
            # nodad: no second of "tentative" before the address can be used
            per_ns[ns].append(f"addr add {addr}/64 dev {segment} nodad")
    per_ns[topo.client].append(f"addr add {CLIENT6_SECOND}/64 dev front nodad")
    per_ns[topo.client].append(f"route add default via {topo.front[topo.router]}")
    per_ns[topo.client].append(f"route add ::/0 via {topo.front6[topo.router]}")
    for rs in topo.real_servers:
        per_ns[rs].append(f"route add default via {topo.back[topo.router]}")
        per_ns[rs].append(f"route add ::/0 via {topo.back6[topo.router]}")
    ip_batch(switch, SWITCH)
    for ns, lines in per_ns.items():
        ip_batch(lines, ns)
    sysctl(topo.router, "net.ipv4.ip_forward", 1)
    sysctl(topo.router, "net.ipv6.conf.all.forwarding", 1)
    for d in topo.directors:
        # a crash case takes a director's link down and up again: keep its IPv6 addresses
        # as IPv4 keeps its own (by default the kernel flushes IPv6 ones on link down)
        sysctl(d, "net.ipv6.conf.all.keep_addr_on_down", 1)
    return topo.to_json()


def teardown(topo: Topology | None = None) -> None:
    topo = topo or default_topology()
    stop_http_servers()
    existing = set(sh("ip", "netns", "list").stdout.split())
    gone = [ns for ns in [SWITCH, topo.client, topo.router, *topo.directors, *topo.real_servers]
            if ns in existing]  # fmt: skip
    if gone:
        ip_batch([f"netns del {ns}" for ns in gone])


def route_back_via(director: str, topo: Topology | None = None) -> None:
    """Classic LVS-NAT without SNAT: real servers' default route through ``director``."""
    topo = topo or default_topology()
    for rs in topo.real_servers:
        ip_batch([f"route replace default via {topo.back[director]}",
                  f"route replace ::/0 via {topo.back6[director]}"], rs)  # fmt: skip


def route_back_via_router(topo: Topology | None = None) -> None:
    topo = topo or default_topology()
    for rs in topo.real_servers:
        ip_batch([f"route replace default via {topo.back[topo.router]}",
                  f"route replace ::/0 via {topo.back6[topo.router]}"], rs)  # fmt: skip


def add_vip(director: str, vip: str = VIP, dev: str = "front") -> None:
    sh("ip", "-n", director, "addr", "replace", f"{vip}/32", "dev", dev)


def del_vip(director: str, vip: str = VIP, dev: str = "front") -> None:
    sh("ip", "-n", director, "addr", "del", f"{vip}/32", "dev", dev, check=False)


def connect_uplink(ns: str, index: int) -> str:
    """Give ``ns`` a way to the host (10.0.2.2, e.g. an API server) through the guest's root
    namespace: a veth 10.99.<index>.1 <-> .2, default route, and masquerade on eth0."""
    root_end, ns_end = f"up-{index}", "uplink"
    sh("ip", "link", "del", root_end, check=False)
    sh("ip", "link", "add", root_end, "type", "veth", "peer", "name", ns_end, "netns", ns)
    sh("ip", "addr", "add", f"10.99.{index}.1/30", "dev", root_end)
    sh("ip", "link", "set", root_end, "up")
    sh("ip", "-n", ns, "addr", "add", f"10.99.{index}.2/30", "dev", ns_end)
    sh("ip", "-n", ns, "link", "set", ns_end, "up")
    sh("ip", "-n", ns, "route", "replace", "default", "via", f"10.99.{index}.1")
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    rules = (
        "table ip lvs_uplink {\n"
        " chain post { type nat hook postrouting priority srcnat; policy accept;\n"
        '  ip saddr 10.99.0.0/16 oifname "eth0" masquerade\n'
        " }\n"
        "}\n"
    )
    if sh("nft", "list", "table", "ip", "lvs_uplink", check=False).returncode != 0:
        subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)
    return f"10.99.{index}.2"


# -- HTTP real servers -------------------------------------------------------------------------


class DualStackHTTPServer(ThreadingHTTPServer):
    """Both families on one socket ([::]:port, IPV6_V6ONLY off)."""

    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def _client_address(address: str) -> str:
    """An IPv4 client as IPv4 (a dual-stack socket sees ::ffff:a.b.c.d)."""
    return address.removeprefix("::ffff:")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: lets a test hold an established connection
    server_name_label = "?"

    def do_GET(self) -> None:
        body = f"{self.server_name_label}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Server", self.server_name_label)
        self.send_header("X-Host", self.headers.get("Host", ""))
        self.send_header("X-Client", _client_address(self.client_address[0]))  # shows SNAT
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def start_http_server(ns: str, name: str | None = None, port: int = HTTP_PORT,
                      addr: str = "::") -> int:  # fmt: skip
    """Start a daemon serving HTTP in ``ns``; returns its pid (also in /run/lvs-topology)."""
    name = name or ns.removeprefix("lvs-")
    STATE.mkdir(parents=True, exist_ok=True)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: detach, serve, never return
        try:
            os.close(r)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            handler = type("H", (_Handler,), {"server_name_label": name})
            with in_netns(ns):
                server: ThreadingHTTPServer = (
                    DualStackHTTPServer((addr, port), handler)
                    if ":" in addr
                    else ThreadingHTTPServer((addr, port), handler)
                )
            server.daemon_threads = True
            os.write(w, f"{os.getpid()}\n".encode())
            os.close(w)
            server.serve_forever()
        finally:
            os._exit(1)
    os.close(w)
    with os.fdopen(r) as f:
        line = f.readline().strip()
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    if not line:
        raise RuntimeError(f"HTTP server {name} in {ns} did not start")
    server_pid = int(line)
    (STATE / f"http-{name}.pid").write_text(str(server_pid))
    return server_pid


def start_http_servers(topo: Topology | None = None, port: int = HTTP_PORT) -> dict[str, int]:
    topo = topo or default_topology()
    return {topo.rs_name(rs): start_http_server(rs, port=port) for rs in topo.real_servers}


def stop_http_servers() -> None:
    if not STATE.exists():
        return
    for pidfile in STATE.glob("http-*.pid"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        pidfile.unlink()


# -- clients -----------------------------------------------------------------------------------


def connect(ns: str | None, host: str, port: int, timeout: float = 2.0,
            source: str | None = None) -> socket.socket:  # fmt: skip
    """A TCP connection from namespace ``ns`` (no subprocess; see in_netns)."""
    with in_netns(ns):
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        if source:
            s.bind((source, 0))
        s.connect((host, port))
    except BaseException:
        s.close()
        raise
    return s


class NsHTTPConnection(http.client.HTTPConnection):
    """http.client over a socket made in a network namespace; keeps the connection alive."""

    def __init__(self, ns: str | None, host: str, port: int, timeout: float = 2.0,
                 source: str | None = None) -> None:  # fmt: skip
        super().__init__(host, port, timeout=timeout)
        self._ns, self._source = ns, source

    def connect(self) -> None:
        self.sock = connect(self._ns, self.host, self.port or 80, self.timeout or 2.0,
                            self._source)  # fmt: skip

    def get_name(self, path: str = "/", host_header: str | None = None) -> str:
        return self.get(path, host_header)[0]

    def get(self, path: str = "/", host_header: str | None = None) -> tuple[str, dict[str, str]]:
        """(server name, response headers)"""
        headers = {"Host": host_header} if host_header else {}
        self.request("GET", path, headers=headers)
        resp = self.getresponse()
        body = resp.read().decode().strip()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {body}")
        return body, dict(resp.getheaders())


def http_get(ns: str | None, host: str, port: int, timeout: float = 2.0,
             source: str | None = None) -> str:  # fmt: skip
    """One request on a new connection; returns the answering server's name."""
    conn = NsHTTPConnection(ns, host, port, timeout=timeout, source=source)
    try:
        return conn.get_name()
    finally:
        conn.close()


def count_answers(ns: str | None = CLIENT, host: str = VIP, port: int = 80, n: int = 30,
                  timeout: float = 2.0, deadline: float = 120.0,
                  source: str | None = None,
                  failures: list[str] | None = None) -> dict[str, int]:  # fmt: skip
    """Send ``n`` requests, each on a new connection; count answers per server name.
    Failures are counted under ``"error"`` (and described in ``failures``: which request,
    the exception, how long it took). Bounded by ``timeout`` each and ``deadline`` all."""
    counts: Counter[str] = Counter()
    end = time.monotonic() + deadline
    for i in range(n):
        start = time.monotonic()
        if start > end:
            counts["error"] += 1
            continue
        try:
            counts[http_get(ns, host, port, timeout=timeout, source=source)] += 1
        except (OSError, http.client.HTTPException, RuntimeError) as e:
            counts["error"] += 1
            if failures is not None:
                took = time.monotonic() - start
                failures.append(f"request {i}/{n}: {type(e).__name__}: {e} after {took:.2f}s")
    return dict(counts)


class RequestLoop:
    """Requests in a background thread until stopped: for failover/restart checks.
    Records (monotonic time, server name or None) per request."""

    def __init__(self, ns: str | None = CLIENT, host: str = VIP, port: int = 80,
                 interval: float = 0.05, timeout: float = 1.0) -> None:  # fmt: skip
        self.ns, self.host, self.port = ns, host, port
        self.interval, self.timeout = interval, timeout
        self.results: list[tuple[float, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                name: str | None = http_get(self.ns, self.host, self.port, self.timeout)
            except (OSError, http.client.HTTPException, RuntimeError):
                name = None
            self.results.append((time.monotonic(), name))
            self._stop.wait(self.interval)

    def __enter__(self) -> RequestLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def failures(self) -> int:
        return sum(1 for _, n in self.results if n is None)


# -- ipvsadm (hand-programmed IPVS, for tests that must not depend on the project's code) ------


def ipvsadm(ns: str, *args: str) -> str:
    return nsexec(ns, "ipvsadm", *args)


def ipvs_list(ns: str) -> str:
    return nsexec(ns, "ipvsadm", "-Ln")


def dump_state(path: str) -> None:
    """Debug aid: write addresses, routes and IPVS tables of all namespaces to ``path``."""
    out = {}
    for ns in sh("ip", "netns", "list").stdout.split():
        out[ns] = {
            "addr": nsexec(ns, "ip", "-br", "addr", check=False),
            "route": nsexec(ns, "ip", "route", check=False),
            "ipvs": nsexec(ns, "ipvsadm", "-Ln", check=False),
        }
    Path(path).write_text(json.dumps(out, indent=1))


# The client's ephemeral ports per test: the kernel's default range (32768-60999) for the
# agent tests, and for each reset the next of these windows below it. The directors' IPVS
# connection entries outlive a test (TIME_WAIT 2 min, ESTABLISHED 15 min) and the next
# test's table revives their destinations (IPVS keeps removed ones in its trash): a new
# connection from a port such an entry still holds went into the stale entry and timed out
# (seen twice in the masquerade case: "request 39/60: TimeoutError after 2.01s").
DEFAULT_PORT_RANGE = (32768, 60999)
PORT_WINDOWS = [(10000 + i * 2048, 10000 + i * 2048 + 2047) for i in range(11)]
PORT_RANGE_KEY = "net.ipv4.ip_local_port_range"


def client_port_range(ns: str) -> tuple[int, int]:
    with in_netns(ns):
        low, high = Path("/proc/sys", PORT_RANGE_KEY.replace(".", "/")).read_text().split()
    return int(low), int(high)


def next_client_ports(ns: str) -> tuple[int, int]:
    """Move ``ns``'s ephemeral ports to the next window: ports no director tracks."""
    low, _ = client_port_range(ns)
    index = next((i for i, (a, _) in enumerate(PORT_WINDOWS) if a == low), -1)
    window = PORT_WINDOWS[(index + 1) % len(PORT_WINDOWS)]
    sysctl(ns, PORT_RANGE_KEY, f"{window[0]} {window[1]}")
    return window


def reset(topo: Topology | None = None) -> None:
    """Between tests: empty the directors' IPVS tables and nft rules, drop VIPs, restore the
    real servers' routes via the router, give the client fresh ephemeral ports. Namespaces
    and HTTP servers stay."""
    topo = topo or default_topology()
    for d in topo.directors:
        nsexec(d, "ipvsadm", "-C", check=False)
        # a killed agent's sync daemons outlive it (kernel threads of the namespace)
        for state in ("master", "backup"):
            nsexec(d, "ipvsadm", "--stop-daemon", state, check=False)
        nsexec(d, "nft", "flush", "ruleset", check=False)
        sh("ip", "-n", d, "addr", "flush", "dev", "front", "to", f"{topo.vip}/32", check=False)
        sh("ip", "-n", d, "-6", "addr", "flush", "dev", "front", "to", VIP6_RANGE, check=False)
    route_back_via_router(topo)
    next_client_ports(topo.client)
