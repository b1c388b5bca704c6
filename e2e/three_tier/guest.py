"""The three tiers as the VM's guest calls them: JSON in, JSON out.

``Vm.call("e2e.three_tier.guest:<function>", **kwargs)`` passes JSON keyword arguments and
returns the JSON result; these functions take only what the cluster decides at run time (the
pod's network namespace, IP and name, a work directory) and read everything else from the
example itself (``example.load()``: the repository is in the VM too), so the example stays
the single source. ``check.py`` starts the tiers through these very functions on a host.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from tests.dataplane import topology as t

from e2e import guest as net
from e2e.three_tier import services as s
from e2e.three_tier.client import get
from e2e.three_tier.example import ThreeTierExample, load


def _example() -> ThreeTierExample:
    return load()


def start_database(netns: str, address: str, workdir: str) -> dict[str, object]:
    """MariaDB for the example's MySQL pod: its Service port, database, user, schema."""
    ex = _example()
    return s.start_mariadb(
        netns, address, ex.mysql_port, workdir, ex.database, ex.user, ex.password, ex.schema_sql
    ).asdict()


def stop_database(workdir: str) -> bool:
    return s.stop_mariadb(workdir)


def crash_database(workdir: str) -> bool:
    return s.crash_mariadb(workdir)


def start_nfs(netns: str, clients: str, workdir: str) -> dict[str, object]:
    """The NFS server at the example's PersistentVolume address and path (VM only), the
    export seeded as the web pods' init container would. Adds ``export_dir``."""
    ex = _example()
    daemon = s.start_nfs_server(netns, ex.nfs_server, ex.nfs_path, clients, workdir)
    export_dir = s.nfs_paths(Path(workdir))["root"] / ex.nfs_path.lstrip("/")
    s.seed_content(export_dir, ex.seed)
    return {**daemon.asdict(), "export_dir": str(export_dir)}


def stop_nfs(netns: str, workdir: str) -> bool:
    return s.stop_nfs_server(netns, workdir)


def seed(content_dir: str) -> list[str]:
    """The example's seed files into a directory standing in for the share."""
    return s.seed_content(content_dir, _example().seed)


def start_web_pod(
    netns: str, address: str, name: str, workdir: str, db_host: str, content_dir: str = ""
) -> dict[str, object]:
    """Apache+PHP for web pod ``name`` at ``address`` on the example's container port, with
    the example's virtual hosts and health check; the content from the example's NFS share
    (or ``content_dir`` standing in for it); the database at ``db_host`` (the MySQL pod's IP:
    no cluster DNS in the VM) on the example's Service port."""
    ex = _example()
    content: s.NfsShare | s.LocalDir = (
        s.LocalDir(content_dir)
        if content_dir
        else s.NfsShare(ex.nfs_server, ex.nfs_path, ex.nfs_mount_options)
    )
    vhosts = [
        s.VirtualHostConf(v.server_name, v.document_root, v.aliases) for v in ex.virtual_hosts
    ]
    db = s.Database(db_host, ex.mysql_port, ex.database, ex.user, ex.password)
    return s.start_web(
        netns, address, ex.web_port, name, workdir, content, ex.content_mount, vhosts, db,
        ex.healthz_path, ex.healthz_body,
    ).asdict()  # fmt: skip


def stop_web_pod(workdir: str) -> bool:
    return s.stop_web(workdir)


def visit_ids(netns: str, db_host: str) -> list[int]:
    """Every visit's id in the database (a receipt the page gave must be among them)."""
    ex = _example()
    rows = s.query(
        netns, db_host, ex.mysql_port, ex.database, ex.user, ex.password, "SELECT id FROM visits"
    )
    return [int(r[0]) for r in rows]


# -- in the e2e's network (e2e/guest.py) --------------------------------------------------------

NFS_NS = "e2e-nfs"


def add_nfs_node() -> str:
    """The NFS server's machine: namespace ``e2e-nfs`` on the pod network's bridge at the
    example's PersistentVolume address (a /32, with the pod network routed on the link), as a
    storage host the nodes reach. Returns the namespace."""
    ex = _example()
    net.remove_pod(NFS_NS)
    t.ip_batch([f"netns add {NFS_NS}"])
    t.ip_batch(
        [f"link add p-nfs type veth peer name eth0 netns {NFS_NS}",
         "link set p-nfs master br-pods up"],
        net.SWITCH,
    )  # fmt: skip
    t.ip_batch(
        ["link set lo up", f"addr add {ex.nfs_server}/32 dev eth0", "link set eth0 up",
         f"route add {net.POD_NETWORK} dev eth0"],
        NFS_NS,
    )  # fmt: skip
    return NFS_NS


def route_to_nfs(netns: str) -> None:
    """A pod's way to the NFS server: on the link (the server's /32 is on the same bridge)."""
    t.ip_batch([f"route replace {_example().nfs_server}/32 dev eth0"], netns)


def page(
    ns: str = "",
    address: str = "",
    port: int = 0,
    path: str = "/",
    host: str = "",
    cookie: str = "",
    timeout: float = 10,
    source: str = "",
) -> dict[str, object]:
    """One GET of the example's page: by default from the e2e's client through the example's
    VIP and port with its first virtual host's name; error answers come back too."""
    ex = _example()
    answer = get(
        ns or net.CLIENT, address or ex.vip, port or ex.port, path,
        host or ex.virtual_hosts[0].server_name, cookie, timeout, source,
    )  # fmt: skip
    return answer.asdict()


def write_in_pod(pid: int, relative: str, text: str) -> str:
    """Write ``text`` to ``relative`` (below the content's mount) as web server ``pid`` sees
    its share: in its mount namespace. Returns the path written."""
    target = f"{_example().content_mount}/{relative}"
    s.run(["nsenter", "-t", str(pid), "-m", "sh", "-c", 'cat > "$1"', "sh", target], 15, text)
    return target


def mounted_in(pid: int) -> str | None:
    """The file system type at the content's mount point in web server ``pid``'s namespace."""
    return s.mounted(pid, _example().content_mount)


def count_visits(netns: str, db_host: str) -> int:
    ex = _example()
    rows = s.query(
        netns, db_host, ex.mysql_port, ex.database, ex.user, ex.password,
        "SELECT COUNT(*) FROM visits",
    )  # fmt: skip
    return int(rows[0][0])


def loop_main(argv: list[str]) -> int:
    """``python -m e2e.three_tier.guest loop --out F [--interval --timeout --max-seconds]``:
    a request for the page through the VIP every interval (a new connection each), one JSON
    line each: [guest time, status or null, server, visit receipt, error, seconds]. Bounded
    by --max-seconds and SIGTERM."""
    p = argparse.ArgumentParser(prog="python -m e2e.three_tier.guest loop")
    p.add_argument("--out", required=True)
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--max-seconds", type=float, default=300)
    a = p.parse_args(argv)
    stop = [False]

    def on_term(*_: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    end = net.now() + a.max_seconds
    with open(a.out, "a", buffering=1) as out:
        while not stop[0] and net.now() < end:
            ts = net.now()
            row: list[object]
            try:
                answer = page(timeout=a.timeout)
                headers = answer["headers"]
                assert isinstance(headers, dict)
                visit = headers.get("x-visit")
                row = [round(ts, 4), answer["status"], headers.get("x-server"),
                       int(visit) if visit else None, None]  # fmt: skip
            except Exception as exc:  # every failure is a row
                row = [round(ts, 4), None, None, None, f"{type(exc).__name__}: {exc}"[:120]]
            row.append(round(net.now() - ts, 4))
            out.write(json.dumps(row) + "\n")
            time.sleep(max(0.0, a.interval - (net.now() - ts)))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["loop"]:
        sys.exit("usage: python -m e2e.three_tier.guest loop --out FILE [...]")
    sys.exit(loop_main(sys.argv[2:]))
