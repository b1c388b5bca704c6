"""A self-check of the web and database tiers: ``sudo python -m e2e.three_tier.check
[--keep] [--nfs]`` from the repository's root (with ``--nfs`` the content comes from the real
NFS server at the example's address: needs the ``nfsd`` module, so in the test VM only).

Builds a small network of namespaces (``tt-sw`` holding a bridge; ``tt-db``, ``tt-web1``,
``tt-web2``, ``tt-client`` on 10.99.0.0/24), starts MariaDB and two Apache+PHP web servers
with everything the example declares (ports, virtual hosts, credentials, schema, page, seed),
the content from a plain directory standing in for the NFS share, and checks from the client:

- both web servers serve the example's virtual hosts and health check on the example's port;
- the page names the server that answered and shows the message from the content;
- the visit counter in MySQL rises by exactly the number of requests (and per server);
- a PHP session counts on (cookie), and is local to its web server;
- a file written in one web server's mount namespace is served by the other;
- a crash of the database loses no acknowledged visit (every X-Visit id is in the table).

Then stops every daemon and deletes the namespaces (``--keep``: leaves the work directory).
Not collected by pytest: needs root, network namespaces and Debian's packages (README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from e2e.three_tier import guest
from e2e.three_tier import services as s
from e2e.three_tier.client import get, session_cookie
from e2e.three_tier.example import ThreeTierExample, load

PREFIX = "10.99.0"
SWITCH = "tt-sw"
CLIENT = "tt-client"
DB_NS = "tt-db"
WEBS = {"tt-web1": "web-1", "tt-web2": "web-2"}  # namespace -> the page's server name
ADDRESS = {CLIENT: f"{PREFIX}.100", DB_NS: f"{PREFIX}.2", "tt-web1": f"{PREFIX}.11"}
ADDRESS["tt-web2"] = f"{PREFIX}.12"


def ip(*args: str) -> None:
    s.run(["ip", *args], 15)


NFS_NS = "tt-nfs"


def build_network(nfs_server: str = "") -> None:
    """A bridge in its own namespace and one veth per namespace (ends ``eth0``); with
    ``nfs_server``, namespace ``tt-nfs`` at that address too (a /32 on the same bridge, routes
    both ways on the link), as the e2e gives the web pods their way to it."""
    teardown_network()
    ip("netns", "add", SWITCH)
    ip("-n", SWITCH, "link", "add", "br0", "type", "bridge")
    ip("-n", SWITCH, "link", "set", "br0", "up")
    for i, (ns, addr) in enumerate(ADDRESS.items()):
        ip("netns", "add", ns)
        ip(
            "-n",
            SWITCH,
            "link",
            "add",
            f"p{i}",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns,
        )
        ip("-n", SWITCH, "link", "set", f"p{i}", "master", "br0", "up")
        ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
    if nfs_server:
        ip("netns", "add", NFS_NS)
        ip("-n", SWITCH, "link", "add", "pnfs", "type", "veth", "peer", "name", "eth0",
           "netns", NFS_NS)  # fmt: skip
        ip("-n", SWITCH, "link", "set", "pnfs", "master", "br0", "up")
        ip("-n", NFS_NS, "addr", "add", f"{nfs_server}/32", "dev", "eth0")
        ip("-n", NFS_NS, "link", "set", "eth0", "up")
        ip("-n", NFS_NS, "link", "set", "lo", "up")
        ip("-n", NFS_NS, "route", "add", f"{PREFIX}.0/24", "dev", "eth0")
        for ns in ADDRESS:
            ip("-n", ns, "route", "add", f"{nfs_server}/32", "dev", "eth0")


def teardown_network() -> None:
    for ns in [*ADDRESS, NFS_NS, SWITCH]:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=15)


def check(ex: ThreeTierExample, work: Path, nfs: bool = False) -> dict[str, object]:
    out: dict[str, object] = {}
    port = ex.web_port
    www = ex.virtual_hosts[0].server_name
    db = s.Database(ADDRESS[DB_NS], ex.mysql_port, ex.database, ex.user, ex.password)

    def log(msg: str) -> None:
        print(f"[three-tier check] {msg}", flush=True)

    content = ""  # the web servers mount the NFS share
    if nfs:
        t0 = time.monotonic()
        server = guest.start_nfs(NFS_NS, f"{PREFIX}.0/24", str(work / "nfs"))
        log(f"nfs server at {ex.nfs_server}:{ex.nfs_path} (pid {server['pid']}), seeded, in "
            f"{time.monotonic() - t0:.1f} s (10 s of it the grace period)")  # fmt: skip
    else:
        content = str(work / "content")  # stands in for the NFS share
        guest.seed(content)

    # started as the VM's guest will start them (e2e/three_tier/guest.py)
    t0 = time.monotonic()
    mariadb = guest.start_database(DB_NS, db.host, str(work / "mariadb"))
    log(f"mariadb pid {mariadb['pid']} at {db.host}:{db.port} in {time.monotonic() - t0:.1f} s")
    webs: dict[str, int] = {}  # namespace -> apache's pid
    for ns, name in WEBS.items():
        t0 = time.monotonic()
        web = guest.start_web_pod(ns, ADDRESS[ns], name, str(work / ns), db.host, content)
        webs[ns] = int(str(web["pid"]))
        log(f"{name}: apache pid {webs[ns]} at {ADDRESS[ns]}:{port} in "
            f"{time.monotonic() - t0:.1f} s")  # fmt: skip

    def visits() -> int:
        return int(s.query(DB_NS, db.host, db.port, db.name, db.user, db.password,
                           "SELECT COUNT(*) FROM visits")[0][0])  # fmt: skip

    # every web server: its mount is private, the virtual hosts and the health check answer
    for ns, name in WEBS.items():
        fstype = s.mounted(webs[ns], ex.content_mount)
        assert fstype == ("nfs4" if nfs else fstype) and fstype, f"{name}: {fstype} mounted"
        uts = s.run(["nsenter", "-t", str(webs[ns]), "-u", "hostname"], 10).strip()
        assert uts == name, f"{name}: hostname {uts}"
        addr = ADDRESS[ns]
        health = get(CLIENT, addr, port, ex.healthz_path)
        assert (health.status, health.body) == (200, ex.healthz_body), health
        for vh in ex.virtual_hosts:
            index = ex.seed.get(f"{ex.docroot(vh)}/index.html")
            if index is not None:
                a = get(CLIENT, addr, port, "/index.html", host=vh.server_name)
                assert (a.status, a.body) == (200, index), (vh, a)
        page = get(CLIENT, addr, port, "/", host=www)
        assert page.status == 200, page
        assert page.headers["x-server"] == name, page.headers
        message = ex.seed[f"{ex.docroot(ex.virtual_hosts[0])}/message.txt"].strip()
        assert message in page.body, page.body
        assert "<?php" not in page.body
    assert not Path(ex.content_mount).exists(), "the content mount leaked into the host's"
    log("both servers: health check, virtual hosts, page (server name, message) ok")

    # the counter: exactly one visit per successful request, per server
    before = visits()
    n = 10
    receipts: list[int] = []
    for i in range(2 * n):
        ns = list(WEBS)[i % 2]
        a = get(CLIENT, ADDRESS[ns], port, "/", host=www)
        assert a.status == 200, a
        receipts.append(int(a.headers["x-visit"]))
        assert int(a.headers["x-visits"]) == before + i + 1, (i, a.headers)
    after = visits()
    assert after == before + 2 * n, (before, after)
    per_server = dict(
        s.query(DB_NS, db.host, db.port, db.name, db.user, db.password,
                f"SELECT server, COUNT(*) FROM visits WHERE id >= {min(receipts)} GROUP BY server")
    )  # fmt: skip
    assert per_server == {name: str(n) for name in WEBS.values()}, per_server
    log(f"counter: {before} -> {after} after {2 * n} requests; per server {per_server}")
    out["visits"] = {"before": before, "after": after, "per_server": per_server}

    # sessions: a cookie keeps counting on one server; another server does not know it
    first, second = list(WEBS)
    cookie = ""
    counts = []
    for _ in range(3):
        a = get(CLIENT, ADDRESS[first], port, "/", host=www, cookie=cookie)
        cookie = session_cookie(a, cookie)
        counts.append(int(a.headers["x-session-visits"]))
    other = get(CLIENT, ADDRESS[second], port, "/", host=www, cookie=cookie)
    assert counts == [1, 2, 3], counts
    assert other.headers["x-session-visits"] == "1", other.headers
    log(f"session {cookie}: {counts} on {WEBS[first]}; 1 on the other (sessions are local)")
    out["session"] = counts

    # a file written in one server's mount namespace is served by the other
    note = f"written by {WEBS[first]} at {time.time():.0f}\n"
    target = f"{ex.content_mount}/{ex.docroot(ex.virtual_hosts[0])}/note.txt"
    s.run(["nsenter", "-t", str(webs[first]), "-m", "sh", "-c", f"cat > {target}"], 10, note)
    a = get(CLIENT, ADDRESS[second], port, "/note.txt", host=www)
    assert (a.status, a.body) == (200, note), a
    log(f"a file written through {WEBS[first]}'s mount is served by {WEBS[second]}")

    # a database crash loses no acknowledged visit; the page says 503 while it is down
    guest.crash_database(str(work / "mariadb"))
    down = get(CLIENT, ADDRESS[first], port, "/", host=www)
    assert down.status == 503, down
    t0 = time.monotonic()
    guest.start_database(DB_NS, db.host, str(work / "mariadb"))
    ids = set(guest.visit_ids(DB_NS, db.host))
    lost = sorted(set(receipts) - ids)
    assert not lost, lost
    again = get(CLIENT, ADDRESS[first], port, "/", host=www)
    assert again.status == 200 and int(again.headers["x-visits"]) == len(ids) + 1, again
    log(f"mariadb crashed (SIGKILL) and restarted in {time.monotonic() - t0:.1f} s: "
        f"all {len(receipts)} acknowledged visits kept; a request while down got 503")  # fmt: skip
    return out


@contextlib.contextmanager
def environment(keep: bool, nfs_server: str = "") -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="tt-", dir="/tmp"))
    work.chmod(0o755)  # the web servers' user reads the content and health check below it
    try:
        build_network(nfs_server)
        yield work
    finally:
        for ns in WEBS:
            with contextlib.suppress(Exception):
                guest.stop_web_pod(str(work / ns))
        with contextlib.suppress(Exception):
            guest.stop_database(str(work / "mariadb"))
        if nfs_server:
            with contextlib.suppress(Exception):
                guest.stop_nfs(NFS_NS, str(work / "nfs"))
        teardown_network()
        if keep:
            print(f"[three-tier check] work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.three_tier.check", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--nfs", action="store_true", help="the real NFS server (needs nfsd: the test VM)"
    )
    a = parser.parse_args(argv)
    ex = load()
    t0 = time.monotonic()
    with environment(a.keep, ex.nfs_server if a.nfs else "") as work:
        check(ex, work, nfs=a.nfs)
    print(f"[three-tier check] all checks passed in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
