"""The three tiers as the VM's guest calls them: JSON in, JSON out.

``Vm.call("e2e.three_tier.guest:<function>", **kwargs)`` passes JSON keyword arguments and
returns the JSON result; these functions take only what the cluster decides at run time (the
pod's network namespace, IP and name, a work directory) and read everything else from the
example itself (``example.load()``: the repository is in the VM too), so the example stays
the single source. ``check.py`` starts the tiers through these very functions on a host.
"""

from __future__ import annotations

from pathlib import Path

from e2e.three_tier import services as s
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
