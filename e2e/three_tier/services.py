"""The three tiers' daemons, real and private, each in a network namespace (issue 20).

Runs as root: in the data-plane VM for the e2e tier (the VM shares the host's root file system,
read-only, so every daemon keeps its state under a work directory it is given), or on a host
for development (``python -m e2e.three_tier.services check``; see README.md here).

- ``start_mariadb``: a private ``mariadbd`` (own datadir, socket, pid file and log under the work
  directory) bound to one address in a network namespace, with the example's database, user
  and schema;
- ``start_nfs_server``: the kernel NFS server (NFSv4 only) in a network namespace, exporting a
  directory under the work directory as the example's NFS path (VM only: needs ``nfsd``);
- ``start_web``: a private Apache httpd with mod_php (its own generated config under the work
  directory) in a web pod's network namespace *and its own mount namespace*, where the content
  (the NFS share, or a plain directory standing in for it) is mounted at the example's mount
  path, so the example's document roots hold unchanged.

Each start returns plain data (a frozen dataclass with the pid, address, port, log path and
work directory; ``asdict`` for JSON), each stop takes the work directory (reads the pid file),
is idempotent, and every subprocess and wait is bounded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tests.dataplane.topology import in_netns

MARIADB_USER = "root"  # the daemons run as root: a private test instance in a throw-away dir
WEB_USER = "www-data"  # Apache's children (and so PHP) run as Debian's web user
APACHE_MODULES = Path("/usr/lib/apache2/modules")
SOCKET_PATH_MAX = 107  # sun_path: 108 bytes with the NUL


# What each tier runs, and the Debian package it comes from (hack/vm/setup.sh installs them)
PROGRAMS = {
    "/usr/sbin/apache2": "apache2",
    "/usr/sbin/mariadbd": "mariadb-server",
    "/usr/bin/mariadb": "mariadb-client",
    "/usr/sbin/rpc.nfsd": "nfs-kernel-server",
    "/usr/sbin/mount.nfs4": "nfs-common",
}


def missing_packages() -> list[str]:
    """The Debian packages of the three tiers that are not installed here (PHP: its Apache
    module and mysqli)."""
    out = [pkg for path, pkg in PROGRAMS.items() if not os.path.exists(path)]
    if not glob.glob(str(APACHE_MODULES / "libphp*.so")):
        out.append("libapache2-mod-php")
    if not glob.glob("/etc/php/*/mods-available/mysqli.ini"):
        out.append("php-mysql")
    return out


class ServiceError(RuntimeError):
    """A daemon did not start or stop; the message carries its log's tail."""


@dataclass(frozen=True)
class Daemon:
    """A started daemon: what a caller needs to reach, check and stop it."""

    name: str
    pid: int
    netns: str
    address: str
    port: int
    log: str
    workdir: str

    def asdict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Database:
    """Where the web servers find the database (the page's DB_* environment)."""

    host: str
    port: int
    name: str
    user: str
    password: str


@dataclass(frozen=True)
class VirtualHostConf:
    """A name-based virtual host: names and the document root (a path in the web server's
    mount namespace, under the content's mount point)."""

    server_name: str
    document_root: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class NfsShare:
    """The content from an NFS export (what the example's PersistentVolume names)."""

    server: str
    path: str
    options: tuple[str, ...] = ("nfsvers=4.1", "hard")


@dataclass(frozen=True)
class LocalDir:
    """The content from a plain directory, standing in for the NFS share (development on a
    host without ``nfsd``)."""

    path: str


# -- helpers ----------------------------------------------------------------------------------


def run(argv: Sequence[str], timeout: float = 30, input: str | None = None) -> str:
    """Run a command to completion within ``timeout`` seconds; its stdout, or ServiceError."""
    try:
        r = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(f"{shlex.join(argv)}: no end within {timeout} s") from exc
    if r.returncode != 0:
        raise ServiceError(
            f"{shlex.join(argv)} -> {r.returncode}: {(r.stderr or r.stdout).strip()[-2000:]}"
        )
    return r.stdout


def in_ns(netns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


def tail(path: Path | str, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({path}: {exc})"


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (reaps it first if it is our exited child)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def terminate(pid: int, timeout: float = 20, sig: int = signal.SIGTERM) -> bool:
    """Signal ``pid``'s process group (each daemon leads its own), wait up to ``timeout``
    for ``pid`` to end, then SIGKILL the group. Whether it had to be killed."""
    if not alive(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return False
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return True


def spawn(argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> int:
    """Start a long-lived daemon in its own session (so its process group is its own, and a
    stop signals it and its children only); output appended to ``log``."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env) if env is not None else None,
        )
    return proc.pid


def wait_tcp(netns: str, address: str, port: int, pid: int, log: Path, timeout: float) -> float:
    """Until ``address:port`` accepts a connection from inside ``netns``; seconds waited.
    Fails at once if ``pid`` ends (its log's tail in the message)."""
    t0 = time.monotonic()
    while True:
        with in_netns(netns):
            sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
        with sock:
            sock.settimeout(1.0)
            try:
                sock.connect((address, port))
                return time.monotonic() - t0
            except OSError:
                pass
        if not alive(pid):
            raise ServiceError(f"pid {pid} ended before {address}:{port} answered:\n{tail(log)}")
        if time.monotonic() - t0 > timeout:
            raise ServiceError(f"{address}:{port} in {netns} not up in {timeout} s:\n{tail(log)}")
        time.sleep(0.2)


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# -- MariaDB ------------------------------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def mariadb_paths(workdir: Path) -> dict[str, Path]:
    return {
        "datadir": workdir / "data",
        "socket": workdir / "mysqld.sock",
        "pid": workdir / "mysqld.pid",
        "log": workdir / "mariadb.log",
    }


def start_mariadb(
    netns: str,
    address: str,
    port: int,
    workdir: str | Path,
    db: str,
    user: str,
    password: str,
    schema_sql: str,
    timeout: float = 180,
) -> Daemon:
    """A private mariadbd in ``netns`` at ``address:port``; its datadir (made by
    ``mariadb-install-db`` the first time: a restart keeps the data), socket, pid file and
    log under ``workdir``. Creates database ``db``, ``user``@'%' with ``password`` and all
    rights on it, and runs ``schema_sql`` (the example's init scripts) in it, then checks
    that ``user`` reaches it over TCP. root logs in through the socket only (unix_socket)."""
    if not (_NAME.match(db) and _NAME.match(user)):
        raise ServiceError(f"database {db!r} or user {user!r}: not a plain SQL name")
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    p = mariadb_paths(work)
    if len(str(p["socket"])) > SOCKET_PATH_MAX:
        raise ServiceError(f"socket path too long for a unix socket: {p['socket']}")
    old = read_pid(p["pid"])
    if old is not None and alive(old):
        raise ServiceError(f"mariadbd already runs from {work} (pid {old})")
    # small and quick: a test instance, not a tuned server (fsyncs kept: acknowledged
    # writes must survive a crash of the daemon)
    common = [
        "--no-defaults",
        f"--user={MARIADB_USER}",
        f"--datadir={p['datadir']}",
        "--innodb-log-file-size=16M",
        "--innodb-buffer-pool-size=32M",
    ]
    if not (p["datadir"] / "mysql").is_dir():
        run(
            [
                "mariadb-install-db",
                *common,
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
            timeout=timeout,
        )
    argv = in_ns(
        netns,
        [
            "mariadbd",
            *common,
            f"--socket={p['socket']}",
            f"--pid-file={p['pid']}",
            f"--bind-address={address}",
            f"--port={port}",
            f"--log-error={p['log']}",
            "--skip-name-resolve",  # grants by address; no DNS in the namespaces
            "--performance-schema=OFF",
            "--max-connections=100",
        ],
    )
    pid = spawn(argv, work / "mariadbd.out")
    try:
        wait_tcp(netns, address, port, pid, p["log"], timeout)
        setup = "\n".join(
            [
                f"CREATE DATABASE IF NOT EXISTS `{db}`;",
                f"CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY {_sql_string(password)};",
                f"ALTER USER '{user}'@'%' IDENTIFIED BY {_sql_string(password)};",
                f"GRANT ALL PRIVILEGES ON `{db}`.* TO '{user}'@'%';",
                f"USE `{db}`;",
                schema_sql,
            ]
        )
        run(["mariadb", "--no-defaults", f"--socket={p['socket']}", "-uroot"], 60, setup)
        # the way the web servers come: TCP to the address, as the user
        query(netns, address, port, db, user, password, "SELECT 1")
    except BaseException:
        terminate(pid, 20)
        raise
    return Daemon("mariadb", pid, netns, address, port, str(p["log"]), str(work))


def query(
    netns: str,
    address: str,
    port: int,
    db: str,
    user: str,
    password: str,
    sql: str,
    timeout: float = 30,
) -> list[list[str]]:
    """Run ``sql`` over TCP from inside ``netns`` with the mariadb client; the rows (tab-
    separated columns, no header). The password goes in the environment, not argv."""
    argv = in_ns(
        netns,
        [
            "env",
            f"MYSQL_PWD={password}",
            "mariadb",
            "--no-defaults",
            "--batch",
            "--skip-column-names",
            f"--connect-timeout={int(min(timeout, 10))}",
            f"--host={address}",
            f"--port={port}",
            f"--user={user}",
            db,
        ],
    )
    out = run(argv, timeout, sql)
    return [line.split("\t") for line in out.splitlines()]


def stop_mariadb(workdir: str | Path, timeout: float = 60) -> bool:
    """Stop the mariadbd of ``workdir`` (SIGTERM: a clean shutdown; SIGKILL after
    ``timeout``). False if none ran. The datadir stays (a restart keeps the data)."""
    pid = read_pid(mariadb_paths(Path(workdir))["pid"])
    if pid is None or not alive(pid):
        return False
    # mariadbd's pid is its session's: spawn() started it as the leader
    terminate(pid, timeout)
    return True


def crash_mariadb(workdir: str | Path) -> bool:
    """SIGKILL the mariadbd of ``workdir`` (a crash: InnoDB recovers on the next start)."""
    pid = read_pid(mariadb_paths(Path(workdir))["pid"])
    if pid is None or not alive(pid):
        return False
    terminate(pid, 10, signal.SIGKILL)
    return True


# -- NFS ----------------------------------------------------------------------------------------


def nfs_paths(workdir: Path) -> dict[str, Path]:
    return {
        "root": workdir / "root",  # the NFSv4 pseudo root (fsid=0)
        "state": workdir / "var-lib-nfs",
        "exports": workdir / "exports",
        "conf": workdir / "nfs.conf",
        "log": workdir / "nfs.log",
        "pid": workdir / "mountd.pid",
    }


def start_nfs_server(
    netns: str,
    address: str,
    export_path: str,
    clients: str,
    workdir: str | Path,
    grace_seconds: int = 10,
    threads: int = 4,
    timeout: float = 60,
    wait_grace: bool = True,
) -> Daemon:
    """The kernel NFS server, NFSv4 only, in ``netns`` at ``address``:2049, exporting
    ``export_path`` (the example's PersistentVolume path, e.g. /exports/three-tier/www) to
    ``clients`` (the web pods' network, e.g. 10.244.0.0/16). Returns the rpc.mountd daemon.

    Needs the ``nfsd`` kernel module (the test VM's kernel has it; this host's has not) and
    Debian's ``nfs-kernel-server``. How, and why so:

    - knfsd is per network namespace: ``rpc.nfsd``, ``exportfs`` and ``rpc.mountd`` run inside
      ``netns``, so the server listens there only and the export cache is that namespace's;
    - the root file system is read-only in the VM, and the example's path need not exist: they
      run in a mount namespace of their own (``unshare --mount``, which rpc.mountd keeps alive),
      where ``/var/lib/nfs``, ``/etc/exports`` and ``/etc/nfs.conf`` are the work directory's
      files bind-mounted over the originals;
    - the export is an NFSv4 pseudo root ``<workdir>/root`` (``fsid=0``: also what a tmpfs needs,
      having no UUID) holding ``export_path`` as a directory, so clients mount
      ``address:export_path`` exactly as the PersistentVolume says;
    - NFSv4 needs no rpcbind, statd or lockd; a short grace period (``grace_seconds``, the
      kernel's minimum 10) instead of 90 s, during which OPENs would stall the clients:
      ``wait_grace`` waits it out before returning (client recovery tracking is not set up:
      the kernel has none in a network namespace other than the first without nfsdcld, so
      a restarted server lets clients reclaim nothing; the scenario does not need it);
    - ``no_root_squash``: the scenario writes to the share as root from a web pod.

    Write the seed content into ``<workdir>/root/<export_path>`` directly (it is the export).
    """
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    p = nfs_paths(work)
    p["root"].mkdir(exist_ok=True)
    if not os.path.ismount(p["root"]):
        # knfsd exports only file systems that support it: the VM's /tmp does not
        # ("does not support NFS export"), a tmpfs does (with fsid=). Mounted here, in the
        # caller's mount namespace, so the seed written afterwards lands in the export.
        run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(p["root"])])
    content = p["root"] / PurePosixPath(export_path).relative_to("/")
    content.mkdir(parents=True, exist_ok=True)
    p["state"].mkdir(exist_ok=True)
    (p["state"] / "v4recovery").mkdir(exist_ok=True)
    for name in ("etab", "rmtab"):
        (p["state"] / name).touch()
    opts = "rw,sync,no_subtree_check,no_root_squash,insecure"
    p["exports"].write_text(f"{p['root']} {clients}(fsid=0,{opts})\n")
    p["conf"].write_text(
        "[nfsd]\nudp=n\ntcp=y\nvers3=n\nvers4=y\nvers4.0=n\nvers4.1=y\nvers4.2=y\n"
        f"threads={threads}\n[mountd]\nmanage-gids=n\n"
    )
    nfsd_fs = "/proc/fs/nfsd"
    script = "\n".join(
        [
            "set -e",
            f"mount --bind {shlex.quote(str(p['state']))} /var/lib/nfs",
            f"mount --bind {shlex.quote(str(p['exports']))} /etc/exports",
            f"mount --bind {shlex.quote(str(p['conf']))} /etc/nfs.conf",
            "modprobe nfsd",
            # the nfsd file system of this network namespace: mounted here, never the one a
            # parent mount namespace may show (the first network namespace's instance)
            f"mount -t nfsd nfsd {nfsd_fs}",
            "exportfs -ra",
            # mountd answers the kernel's export upcalls (no RPC service for v4-only);
            # foreground, so this shell's exec leaves it as the namespace's keeper
            f"rpc.nfsd -H {shlex.quote(address)} -N 3 -V 4 -U "
            f"-G {grace_seconds} -L {grace_seconds} {threads}",
            "exportfs -v",
            f"echo $$ > {shlex.quote(str(p['pid']))}",
            "exec rpc.mountd -N 2 -N 3 -F",
        ]
    )
    argv = in_ns(netns, ["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
    pid = spawn(argv, p["log"])
    try:
        wait_tcp(netns, address, 2049, pid, p["log"], timeout)
    except BaseException:
        stop_nfs_server(netns, work)
        raise
    if wait_grace:
        time.sleep(grace_seconds + 1)  # the grace period began when nfsd started
    return Daemon("nfs", pid, netns, address, 2049, str(p["log"]), str(work))


def stop_nfs_server(netns: str, workdir: str | Path, timeout: float = 30) -> bool:
    """Stop the NFS server of ``netns``: the kernel threads (``rpc.nfsd 0``) and rpc.mountd.
    Clients with the share mounted (``hard``) wait for it to come back.

    ``rpc.nfsd 0`` runs where the nfsd file system is this network namespace's: a fresh
    mount of it in a private mount namespace inside ``netns`` (in the caller's, it is absent or
    another namespace's), so it also stops threads a failed start left without mountd."""
    p = nfs_paths(Path(workdir))
    nfsd0 = "mount -t nfsd nfsd /proc/fs/nfsd && rpc.nfsd 0"
    with contextlib.suppress(ServiceError):  # no nfsd module, or the namespace is gone
        run(in_ns(netns, ["unshare", "--mount", "--propagation", "private", "sh", "-c", nfsd0]))
    pid = read_pid(p["pid"])
    running = pid is not None and alive(pid)
    if running:
        assert pid is not None
        terminate(pid, timeout)
    if os.path.ismount(p["root"]):
        subprocess.run(["umount", "-l", str(p["root"])], capture_output=True, timeout=30)
    return running


def share_mount_script(content: NfsShare | LocalDir, mountpoint: str) -> list[str]:
    """Shell lines that mount the content at ``mountpoint`` in the current mount namespace
    (a private one: see ``start_web``). The root file system may be read-only and lack
    ``mountpoint`` (the example's /srv/www): a tmpfs over its nearest existing ancestor (not
    /) makes room for it, visible in this mount namespace only."""
    mp = PurePosixPath(mountpoint)
    if not mp.is_absolute() or mp == PurePosixPath("/"):
        raise ServiceError(f"mount point {mountpoint}: must be an absolute path below /")
    existing = mp
    while not os.path.isdir(existing):
        existing = existing.parent
    lines = []
    if existing != mp:
        if existing == PurePosixPath("/"):
            raise ServiceError(f"no existing directory below / to hold {mountpoint}")
        lines.append(f"mount -t tmpfs -o mode=0755 tmpfs {shlex.quote(str(existing))}")
        lines.append(f"mkdir -p {shlex.quote(str(mp))}")
    if isinstance(content, NfsShare):
        opts = ",".join(content.options)
        source = f"{content.server}:{content.path}"
        # the NFS client's RPCs go through the mounting process's network namespace: the pod's
        lines.append(f"mount -t nfs4 -o {shlex.quote(opts)} {shlex.quote(source)} {mp}")
    else:
        lines.append(f"mount --bind {shlex.quote(content.path)} {shlex.quote(str(mp))}")
    return lines


def in_pod(
    netns: str,
    hostname: str,
    content: NfsShare | LocalDir,
    mountpoint: str,
    argv: Sequence[str],
) -> list[str]:
    """The command that runs ``argv`` as a pod's process would run: in ``netns``, with its own
    hostname (UTS namespace) and its own mount namespace, where ``content`` (the NFS share,
    or a directory standing in for it) is mounted at ``mountpoint``. ``argv`` is exec'd, so
    its pid is the command's.

    Why a mount namespace per web server: in the VM every pod shares one (read-only) root
    file system, while in Kubernetes each pod has the volume at its own mount path; so each
    web server mounts the share in a private mount namespace (``unshare --mount``, no
    propagation back), at the example's path, and the mount lives exactly as long as the
    server (the last process of the namespace). The mount is made from inside the pod's
    network namespace, so the NFS traffic goes the pod's way, as kubelet's mount would from
    the node. Why a hostname: a pod has one (its name), and the Linux NFSv4 client names
    itself to the server by hostname: web servers sharing the VM's would present one client
    owner from several addresses, and each EXCHANGE_ID would drop the others' state; the
    per-network-namespace NFS client identifier is set too where the kernel has it."""
    lines = ["set -e", f"hostname {shlex.quote(hostname)}"]
    if isinstance(content, NfsShare):
        ident = "/sys/fs/nfs/net/nfs_client/identifier"  # this network namespace's (5.18+)
        uid = uuid.uuid5(uuid.NAMESPACE_DNS, f"{hostname}.{netns}.lvs-e2e")
        lines += [
            "modprobe nfsv4 2>/dev/null || true",
            f"if [ -w {ident} ]; then echo {uid} > {ident}; fi",
        ]
    lines += [*share_mount_script(content, mountpoint), 'exec "$@"']
    unshare = ["unshare", "--mount", "--uts", "--propagation", "private"]
    return in_ns(netns, [*unshare, "sh", "-c", "\n".join(lines), "sh", *argv])


def mount_share(
    netns: str,
    server: str,
    path: str,
    mountpoint: str,
    argv: Sequence[str],
    hostname: str | None = None,
    options: Sequence[str] = NfsShare.options,
) -> list[str]:
    """The command that runs ``argv`` with the NFS share ``server:path`` mounted at
    ``mountpoint`` in a mount namespace of its own, in ``netns`` (see ``in_pod``)."""
    share = NfsShare(server, path, tuple(options))
    return in_pod(netns, hostname or netns, share, mountpoint, argv)


def mounted(pid: int, mountpoint: str) -> str | None:
    """The file system type mounted at ``mountpoint`` in ``pid``'s mount namespace, if any."""
    try:
        lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        left, _, right = line.partition(" - ")
        if left.split()[4] == mountpoint:
            found = right.split()[0]  # the last mount there is the visible one
    return found


# -- Apache httpd with PHP ----------------------------------------------------------------------


def php_module() -> Path:
    found = sorted(glob.glob(str(APACHE_MODULES / "libphp*.so")))
    if not found:
        raise ServiceError(f"no libphp*.so in {APACHE_MODULES}: apt-get install libapache2-mod-php")
    return Path(found[-1])


def web_paths(workdir: Path) -> dict[str, Path]:
    return {
        "conf": workdir / "httpd.conf",
        "run": workdir / "run",
        "pid": workdir / "run" / "httpd.pid",
        "sessions": workdir / "sessions",
        "healthz": workdir / "healthz",
        "log": workdir / "error.log",
        "access": workdir / "access.log",
        "php_log": workdir / "php.log",
        "out": workdir / "httpd.out",
    }


def _conf_quote(value: str) -> str:
    if any(c in value for c in '"\\\n'):
        raise ServiceError(f"not representable in an httpd config: {value!r}")
    return f'"{value}"'


def apache_config(
    workdir: Path,
    address: str,
    port: int,
    name: str,
    content_mount: str,
    vhosts: Sequence[VirtualHostConf],
    db: Database,
    healthz_path: str,
    max_workers: int = 8,
    php: Path | None = None,
) -> str:
    """The web server's httpd.conf: Debian's modules by absolute path (no ServerRoot-relative
    names), prefork (mod_php is not thread-safe), Listen on the pod's address only, the
    virtual hosts in order (the first is the default), PHP for ``*.php`` with sessions in
    this server's own directory, and the page's environment by SetEnv (mod_php's getenv
    reads it)."""
    p = web_paths(workdir)
    q = _conf_quote
    modules = [
        ("mpm_prefork_module", APACHE_MODULES / "mod_mpm_prefork.so"),
        ("authz_core_module", APACHE_MODULES / "mod_authz_core.so"),
        ("mime_module", APACHE_MODULES / "mod_mime.so"),
        ("dir_module", APACHE_MODULES / "mod_dir.so"),
        ("alias_module", APACHE_MODULES / "mod_alias.so"),
        ("env_module", APACHE_MODULES / "mod_env.so"),
        ("php_module", php or php_module()),
    ]
    listen = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    env = {
        "POD_NAME": name,
        "DB_HOST": db.host,
        "DB_PORT": str(db.port),
        "DB_NAME": db.name,
        "DB_USER": db.user,
        "DB_PASSWORD": db.password,
    }
    lines = [
        f"# {name}: generated by e2e/three_tier/services.py from examples/three-tier",
        f"ServerRoot {q(str(workdir))}",
        *(f"LoadModule {m} {q(str(path))}" for m, path in modules),
        f"Listen {listen}",
        f"User {WEB_USER}",
        f"Group {WEB_USER}",
        f"ServerName {name}",
        f"PidFile {q(str(p['pid']))}",
        f"DefaultRuntimeDir {q(str(p['run']))}",
        f"Mutex file:{p['run']} default",
        f"ErrorLog {q(str(p['log']))}",
        'LogFormat "%h %{Host}i \\"%r\\" %>s %b %D" vhost',
        f"CustomLog {q(str(p['access']))} vhost",
        "TypesConfig /etc/mime.types",
        # a few workers: two cores, several web servers and the directors share them
        "StartServers 2",
        "MinSpareServers 1",
        "MaxSpareServers 4",
        f"MaxRequestWorkers {max_workers}",
        "KeepAlive On",
        "Timeout 30",
        "DirectoryIndex index.php index.html",
        '<FilesMatch "\\.php$">',
        "    SetHandler application/x-httpd-php",
        "</FilesMatch>",
        # sessions local to this server (in Kubernetes: the pod's own file system), so a
        # session lives on one web server only: what persistence is for
        f"php_admin_value session.save_path {q(str(p['sessions']))}",
        f"php_admin_value error_log {q(str(p['php_log']))}",
        "php_admin_flag log_errors on",
        "php_admin_flag display_errors off",
        *(f"SetEnv {k} {q(v)}" for k, v in env.items()),
        "<Directory />",
        "    AllowOverride None",
        "    Require all denied",
        "</Directory>",
        f"<Directory {q(content_mount)}>",
        "    Require all granted",
        "</Directory>",
        # the pool's health check: from the server's own config, not the share (as the
        # example's ConfigMap alias)
        f"Alias {healthz_path} {q(str(p['healthz']))}",
        f"<Directory {q(str(workdir))}>",
        '    <Files "healthz">',
        "        Require all granted",
        "    </Files>",
        "</Directory>",
    ]
    for vh in vhosts:
        lines += [
            f"<VirtualHost {listen}>",
            f"    ServerName {vh.server_name}",
            *([f"    ServerAlias {' '.join(vh.aliases)}"] if vh.aliases else []),
            f"    DocumentRoot {q(vh.document_root)}",
            "</VirtualHost>",
        ]
    return "\n".join(lines) + "\n"


def start_web(
    netns: str,
    address: str,
    port: int,
    name: str,
    workdir: str | Path,
    content: NfsShare | LocalDir,
    content_mount: str,
    vhosts: Sequence[VirtualHostConf],
    db: Database,
    healthz_path: str = "/healthz",
    healthz_body: str = "ok\n",
    timeout: float = 60,
) -> Daemon:
    """A web pod's Apache httpd with mod_php in ``netns`` at ``address:port``, named ``name``
    (the page's POD_NAME), its config, logs, pid file and PHP sessions under ``workdir``.

    It runs in a mount namespace of its own (see ``mount_share``) where ``content`` (the NFS
    share, or a directory standing in for it) is mounted at ``content_mount`` (the example's
    /srv/www), so the virtual hosts' document roots are the example's. ``apache2
    -DFOREGROUND`` is the namespace's first process (``unshare`` and ``sh`` exec it): its pid
    is the returned one, and stopping it ends the mount with it. Its hostname is ``name``."""
    work = Path(workdir)
    p = web_paths(work)
    old = read_pid(p["pid"])
    if old is not None and alive(old):
        raise ServiceError(f"apache2 already runs from {work} (pid {old})")
    for d in (work, p["run"], p["sessions"]):
        d.mkdir(parents=True, exist_ok=True)
    # the web user reads the health check file here, and the content (a stand-in directory)
    readable = [work, *([Path(content.path)] if isinstance(content, LocalDir) else [])]
    blocked = [str(d) for d in readable if not _searchable_by_others(d)]
    if blocked:
        raise ServiceError(
            f"{WEB_USER} cannot reach {', '.join(blocked)}: a directory on the way lacks "
            "search permission for others (mkdtemp makes 0700)"
        )
    # PHP (as the web user) writes the sessions; nobody else reads them
    shutil.chown(p["sessions"], WEB_USER, WEB_USER)
    p["sessions"].chmod(0o700)
    p["healthz"].write_text(healthz_body)
    conf = apache_config(work, address, port, name, content_mount, vhosts, db, healthz_path)
    p["conf"].write_text(conf)
    apache = ["apache2", "-d", str(work), "-f", str(p["conf"]), "-DFOREGROUND"]
    run([*apache[:-1], "-t"], 30)  # the config parses (fails here with httpd's message)
    pid = spawn(in_pod(netns, name, content, content_mount, apache), p["out"])
    try:
        wait_tcp(netns, address, port, pid, p["out"], timeout)
    except BaseException:
        terminate(pid, 10)
        raise
    return Daemon(f"web-{name}", pid, netns, address, port, str(p["log"]), str(work))


def _searchable_by_others(path: Path) -> bool:
    """Whether every directory from / down to ``path`` has o+x."""
    return all(d.stat().st_mode & 0o001 for d in (path.resolve(), *path.resolve().parents))


def stop_web(workdir: str | Path, timeout: float = 30) -> bool:
    """Stop the Apache of ``workdir`` (SIGTERM to its process group: parent and children;
    SIGKILL after ``timeout``). Its mount namespace, and the share's mount, go with it."""
    pid = read_pid(web_paths(Path(workdir))["pid"])
    if pid is None or not alive(pid):
        return False
    terminate(pid, timeout)
    return True


def seed_content(root: str | Path, seed: Mapping[str, str], overwrite: bool = False) -> list[str]:
    """Write the example's seed files (relative path -> text) under ``root`` (the share, or
    the directory standing in for it), as the init container does (``cp -n``: an existing
    file wins unless ``overwrite``). World-readable, so the web user serves them."""
    written = []
    for rel, text in sorted(seed.items()):
        path = Path(root) / rel
        if path.exists() and not overwrite:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o755)
        path.write_text(text)
        path.chmod(0o644)
        written.append(rel)
    return written
