"""The kernel side of the director: read the IPVS table, apply changes, converge; sysctls and
the nftables source NAT that masquerade forwarding needs in Kubernetes.

IPVS is programmed over generic netlink, by default with the lean client in
``ipvs_netlink.py`` (``backend="netlink"``), or with pyroute2's ``IPVS``
(``backend="pyroute2"``, the reference the lean one is tested against). Notes:

* pyroute2 0.9's ``"update"`` command sends IPVS_CMD_DEL_*: edits use ``"set"`` (and the
  diff in ``table.py`` never asks for delete + add to change a setting).
* ``netns``: every function takes the name of a network namespace (``ip netns`` name, under
  /run/netns). IPVS state is per namespace, so tests run two directors in one VM. The agent
  itself runs in the node's namespace (hostNetwork) and passes ``None``. The netlink socket
  is created with the calling thread switched into the namespace (it stays bound there);
  pyroute2 does it from a short-lived child. Neither creates a missing namespace.
* The persistence netmask attribute is an IPv4 mask for IPv4 services but a prefix length
  (a host-order u32) for IPv6 ones.
* Cost, measured in the TCG VM on a loaded 2-core host (DESIGN.md has earlier figures):
  pyroute2 spends ~40 ms of Python per request and ~130 ms per destination dump (100
  services x 10 destinations: 42 s to program cold, 12.8 s to read). The netlink backend
  sends up to 1,024 requests per ``send`` with only the last acknowledged (failures are
  answered anyway): 1,000 x 10 programmed cold in 6.9 s (11,000 requests; ipvsadm-restore:
  5.7 s), read in ~20 s. A read is one service dump plus one destination dump per service
  (the kernel has no dump of all destinations, and allows one dump in flight per socket);
  its cost is Python parsing, so an agent at that scale should keep its own copy of the table
  (``table.apply_to_table``) and read the kernel back now and then, not on every event.
* fwmark services are not represented in ``IpvsTable`` and so are never touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvs_operator.director import ipvs_netlink as nl
from lvs_operator.director.table import (
    IP_VS_SVC_F_PERSISTENT,
    SETTABLE_FLAGS,
    Change,
    DestKey,
    Forwarding,
    IpvsDestination,
    IpvsService,
    IpvsTable,
    Op,
    Ownership,
    Protocol,
    ServiceEntry,
    ServiceKey,
    bits_to_flags,
    diff,
)

log = logging.getLogger(__name__)

AF_INET, AF_INET6 = socket.AF_INET.value, socket.AF_INET6.value
CLONE_NEWNET = 0x40000000

# The sysctls the data plane needs, per namespace.
#   conntrack: IPVS keeps conntrack entries for its connections, which the nftables
#     masquerade (SNAT) of masquerade forwarding needs, as do stateful firewalls.
#   expire_nodest_conn: a connection to a removed destination is dropped at its next packet
#     instead of hanging until it times out.
#   expire_quiescent_template: persistence templates pointing at a weight-0 (draining)
#     destination expire, so sticky clients move on instead of being pinned to it.
#   ip_forward: masquerade forwards; direct/tunnel need it off for nothing, on is harmless.
REQUIRED_SYSCTLS: dict[str, str] = {
    "net.ipv4.ip_forward": "1",
    "net.ipv4.vs.conntrack": "1",
    "net.ipv4.vs.expire_nodest_conn": "1",
    "net.ipv4.vs.expire_quiescent_template": "1",
}
IPV6_SYSCTLS: dict[str, str] = {"net.ipv6.conf.all.forwarding": "1"}

NFT_TABLE = "lvs_operator"


class IpvsError(RuntimeError):
    """A kernel operation failed; ``applied`` are the changes that succeeded before it."""

    def __init__(self, message: str, change: Change | None = None,
                 applied: Sequence[Change] = ()) -> None:  # fmt: skip
        super().__init__(message)
        self.change = change
        self.applied = list(applied)


# -- namespaces ---------------------------------------------------------------------------------


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(netns: str | None) -> Iterator[None]:
    """Run the block with the *calling thread* in ``netns`` (/proc/sys/net and new sockets
    follow the thread's namespace), and switch back after."""
    if netns is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    except BaseException:
        os.close(own)
        raise
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)


# -- encoding -----------------------------------------------------------------------------------


def _encode_netmask(service: IpvsService) -> str:
    assert service.netmask is not None
    if service.family == 4:
        return str(ipaddress.IPv4Network(f"0.0.0.0/{service.netmask}").netmask)
    # IPv6: the kernel reads a u32 prefix length in host order from the 4 bytes
    return socket.inet_ntoa(service.netmask.to_bytes(4, "little"))


def _decode_netmask(value: str | None, family: int) -> int | None:
    if not value:
        return None
    if family == AF_INET:
        return ipaddress.IPv4Network(f"0.0.0.0/{value}").prefixlen
    return int.from_bytes(socket.inet_aton(value), "little")


def _service_key_spec(service: IpvsService) -> dict[str, Any]:
    return {
        "af": AF_INET if service.family == 4 else AF_INET6,
        "protocol": service.protocol.number,
        "addr": service.address,
        "port": service.port,
    }


def _service_spec(service: IpvsService) -> dict[str, Any]:
    return {
        **_service_key_spec(service),
        "sched_name": service.scheduler,
        # mask: which bits this request sets; all of ours, so an edit also clears flags
        "flags": {"flags": service.flag_bits, "mask": 0xFFFF},
        "timeout": service.persistence_timeout,
        "netmask": _encode_netmask(service),
    }


def _dest_spec(dest: IpvsDestination) -> dict[str, Any]:
    return {
        "addr": dest.address,
        "port": dest.port,
        "fwd_method": dest.forwarding.kernel_value,
        "weight": dest.weight,
        "u_thresh": dest.upper_threshold,
        "l_thresh": dest.lower_threshold,
    }


def _attr(nla: Any, name: str, default: Any = None) -> Any:
    value = nla.get_attr(name)
    return default if value is None else value


def _service_from_nla(nla: Any) -> IpvsService | None:
    if _attr(nla, "IPVS_SVC_ATTR_FWMARK", 0):
        return None  # fwmark services: not modelled, never touched
    af = _attr(nla, "IPVS_SVC_ATTR_AF", AF_INET)
    flags = _attr(nla, "IPVS_SVC_ATTR_FLAGS", {}) or {}
    bits = int(flags.get("flags", 0)) if isinstance(flags, Mapping) else int(flags)
    sched = _attr(nla, "IPVS_SVC_ATTR_SCHED_NAME", "")
    timeout = int(_attr(nla, "IPVS_SVC_ATTR_TIMEOUT", 0))
    return IpvsService(
        address=_attr(nla, "IPVS_SVC_ATTR_ADDR"),
        port=int(_attr(nla, "IPVS_SVC_ATTR_PORT", 0)),
        protocol=Protocol.from_number(int(_attr(nla, "IPVS_SVC_ATTR_PROTOCOL"))),
        scheduler=sched,
        flags=bits_to_flags(bits & SETTABLE_FLAGS, sched),
        persistence_timeout=timeout if bits & IP_VS_SVC_F_PERSISTENT else 0,
        netmask=_decode_netmask(_attr(nla, "IPVS_SVC_ATTR_NETMASK"), af),
    )


def _dest_from_nla(nla: Any) -> IpvsDestination:
    return IpvsDestination(
        address=_attr(nla, "IPVS_DEST_ATTR_ADDR"),
        port=int(_attr(nla, "IPVS_DEST_ATTR_PORT", 0)),
        weight=int(_attr(nla, "IPVS_DEST_ATTR_WEIGHT", 0)),
        forwarding=Forwarding.from_kernel(int(_attr(nla, "IPVS_DEST_ATTR_FWD_METHOD", 0))),
        upper_threshold=int(_attr(nla, "IPVS_DEST_ATTR_U_THRESH", 0)),
        lower_threshold=int(_attr(nla, "IPVS_DEST_ATTR_L_THRESH", 0)),
    )


# -- lean netlink encoding (ipvs_netlink.py) -----------------------------------------------------


def _nl_family(address: str) -> int:
    return AF_INET6 if ":" in address else AF_INET


def _nl_netmask(service: IpvsService) -> bytes:
    assert service.netmask is not None
    if service.family == 4:
        return ipaddress.IPv4Network(f"0.0.0.0/{service.netmask}").netmask.packed
    return service.netmask.to_bytes(4, sys.byteorder)  # a host-order u32 prefix length


def _nl_service_key(service: IpvsService) -> bytes:
    return nl.service_key_attrs(
        _nl_family(service.address), service.protocol.number, service.address, service.port
    )


def _nl_request(change: Change) -> tuple[int, bytes]:
    svc = change.service
    key = _nl_service_key(svc)
    if change.op is Op.ADD_SERVICE or change.op is Op.EDIT_SERVICE:
        body = nl.service_full_attrs(
            key, svc.scheduler, svc.flag_bits, svc.persistence_timeout, _nl_netmask(svc)
        )
        cmd = nl.CMD_NEW_SERVICE if change.op is Op.ADD_SERVICE else nl.CMD_SET_SERVICE
        return cmd, nl.nested(nl.ATTR_SERVICE, body)
    if change.op is Op.DEL_SERVICE:
        return nl.CMD_DEL_SERVICE, nl.nested(nl.ATTR_SERVICE, key)
    d = change.dest
    assert d is not None
    cmd = {Op.ADD_DEST: nl.CMD_NEW_DEST, Op.EDIT_DEST: nl.CMD_SET_DEST,
           Op.DEL_DEST: nl.CMD_DEL_DEST}[change.op]  # fmt: skip
    dest = nl.dest_attrs(
        _nl_family(d.address), d.address, d.port, d.forwarding.kernel_value, d.weight,
        d.upper_threshold, d.lower_threshold, full=change.op is not Op.DEL_DEST,
    )  # fmt: skip
    return cmd, nl.nested(nl.ATTR_SERVICE, key) + nl.nested(nl.ATTR_DEST, dest)


def _nl_service(attrs: dict[int, bytes]) -> IpvsService | None:
    if nl.u32(attrs.get(nl.SVC_FWMARK)):
        return None  # fwmark services: not modelled, never touched
    af = nl.u16(attrs.get(nl.SVC_AF), AF_INET)
    bits = nl.flags_of(attrs.get(nl.SVC_FLAGS))
    sched = nl.cstr(attrs.get(nl.SVC_SCHED_NAME))
    mask = attrs.get(nl.SVC_NETMASK)
    netmask: int | None = None
    if mask:
        netmask = (
            bin(int.from_bytes(mask[:4], "big")).count("1")
            if af == AF_INET
            else int.from_bytes(mask[:4], sys.byteorder)
        )
    return IpvsService(
        address=nl.addr_str(af, attrs.get(nl.SVC_ADDR)),
        port=nl.be16(attrs.get(nl.SVC_PORT)),
        protocol=Protocol.from_number(nl.u16(attrs.get(nl.SVC_PROTOCOL))),
        scheduler=sched,
        flags=bits_to_flags(bits & SETTABLE_FLAGS, sched),
        persistence_timeout=nl.u32(attrs.get(nl.SVC_TIMEOUT))
        if bits & IP_VS_SVC_F_PERSISTENT
        else 0,
        netmask=netmask,
    )


def _nl_dest(attrs: dict[int, bytes], service_af: int) -> tuple[IpvsDestination, ConnCounts]:
    af = nl.u16(attrs.get(nl.DEST_ADDR_FAMILY), service_af)
    dest = IpvsDestination(
        address=nl.addr_str(af, attrs.get(nl.DEST_ADDR)),
        port=nl.be16(attrs.get(nl.DEST_PORT)),
        weight=nl.u32(attrs.get(nl.DEST_WEIGHT)),
        forwarding=Forwarding.from_kernel(nl.u32(attrs.get(nl.DEST_FWD_METHOD))),
        upper_threshold=nl.u32(attrs.get(nl.DEST_U_THRESH)),
        lower_threshold=nl.u32(attrs.get(nl.DEST_L_THRESH)),
    )
    conns = ConnCounts(
        active=nl.u32(attrs.get(nl.DEST_ACTIVE_CONNS)),
        inactive=nl.u32(attrs.get(nl.DEST_INACT_CONNS)),
        persistent=nl.u32(attrs.get(nl.DEST_PERSIST_CONNS)),
    )
    return dest, conns


# -- the kernel ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnCounts:
    """A destination's connection counters: ``active`` (established TCP), ``inactive``
    (other states, e.g. TIME_WAIT), ``persistent`` (persistence templates)."""

    active: int = 0
    inactive: int = 0
    persistent: int = 0


@dataclass
class ApplyStats:
    requests: int = 0
    seconds: float = 0.0
    by_op: dict[str, int] = field(default_factory=dict)


class IpvsKernel:
    """The IPVS table of one network namespace (``netns``, or the current one).
    Not thread-safe; keep one for the agent's lifetime.

    ``backend="netlink"`` (default) uses the lean client in ipvs_netlink.py: requests batched
    per ``send``, acknowledgements read in bulk. ``backend="pyroute2"`` uses pyroute2's
    ``IPVS`` one request at a time (the reference the lean one is tested against)."""

    def __init__(self, netns: str | None = None, backend: str = "netlink") -> None:
        if backend not in ("netlink", "pyroute2"):
            raise ValueError(f"unknown IPVS backend {backend!r}")
        self.netns = netns
        self.backend = backend
        self.stats = ApplyStats()
        self._pyroute2: Any = None
        self._nl: nl.IpvsNetlink | None = None
        if backend == "netlink":
            with in_netns(netns):  # the socket stays in the namespace it was made in
                self._nl = nl.IpvsNetlink()
        else:
            self._ipvs  # noqa: B018  (open now: fail early)

    @property
    def _ipvs(self) -> Any:
        """pyroute2's IPVS socket (opened on first use)."""
        if self._pyroute2 is None:
            from pyroute2 import IPVS  # deferred: ~30 MiB and seconds to import under TCG

            # flags=0: open an existing namespace only (pyroute2's default would create it)
            self._pyroute2 = IPVS(netns=self.netns, flags=0) if self.netns else IPVS()
        return self._pyroute2

    def close(self) -> None:
        if self._nl is not None:
            self._nl.close()
        if self._pyroute2 is not None:
            self._pyroute2.close()

    def __enter__(self) -> IpvsKernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _svc(spec: dict[str, Any]) -> Any:
        from pyroute2 import IPVSService

        return IPVSService(**spec)

    @staticmethod
    def _dst(spec: dict[str, Any]) -> Any:
        from pyroute2 import IPVSDest

        return IPVSDest(**spec)

    def read(self) -> tuple[IpvsTable, dict[tuple[ServiceKey, DestKey], ConnCounts]]:
        """The kernel's table and every destination's connection counters: one service
        dump, then one destination dump per service."""
        if self._nl is None:
            return self._read_pyroute2()
        entries = []
        counts: dict[tuple[ServiceKey, DestKey], ConnCounts] = {}
        for attrs in self._nl.dump_services():
            service = _nl_service(attrs)
            if service is None:
                continue
            af = AF_INET if service.family == 4 else AF_INET6
            dests = []
            for dattrs in self._nl.dump_dests(_nl_service_key(service)):
                dest, conns = _nl_dest(dattrs, af)
                dests.append(dest)
                counts[(service.key, dest.key)] = conns
            entries.append(ServiceEntry(service, tuple(dests)))
        return IpvsTable.of(entries), counts

    def _read_pyroute2(self) -> tuple[IpvsTable, dict[tuple[ServiceKey, DestKey], ConnCounts]]:
        entries = []
        counts: dict[tuple[ServiceKey, DestKey], ConnCounts] = {}
        for msg in self._ipvs.service("dump"):
            service = _service_from_nla(msg.get_attr("IPVS_CMD_ATTR_SERVICE"))
            if service is None:
                continue
            key = self._svc(_service_key_spec(service))
            dests = []
            for d in self._ipvs.dest("dump", service=key):
                nla = d.get_attr("IPVS_CMD_ATTR_DEST")
                dest = _dest_from_nla(nla)
                dests.append(dest)
                counts[(service.key, dest.key)] = ConnCounts(
                    int(_attr(nla, "IPVS_DEST_ATTR_ACTIVE_CONNS", 0)),
                    int(_attr(nla, "IPVS_DEST_ATTR_INACT_CONNS", 0)),
                    int(_attr(nla, "IPVS_DEST_ATTR_PERSIST_CONNS", 0)),
                )
            entries.append(ServiceEntry(service, tuple(dests)))
        return IpvsTable.of(entries), counts

    def read_table(self) -> IpvsTable:
        return self.read()[0]

    def apply_one(self, change: Change) -> None:
        """One change through pyroute2 (the reference path)."""
        svc = self._svc(
            _service_key_spec(change.service)
            if change.op is not Op.ADD_SERVICE and change.op is not Op.EDIT_SERVICE
            else _service_spec(change.service)
        )
        if change.op is Op.ADD_SERVICE:
            self._ipvs.service("add", service=svc)
        elif change.op is Op.EDIT_SERVICE:
            self._ipvs.service("set", service=svc)
        elif change.op is Op.DEL_SERVICE:
            self._ipvs.service("del", service=svc)
        else:
            assert change.dest is not None
            dst = self._dst(_dest_spec(change.dest))
            command = {Op.ADD_DEST: "add", Op.EDIT_DEST: "set", Op.DEL_DEST: "del"}[change.op]
            self._ipvs.dest(command, service=svc, dest=dst)

    def apply(self, changes: Iterable[Change]) -> list[Change]:
        """Apply in order. On failure, IpvsError names the first failed change and carries
        the ones that succeeded. A failure usually means someone changed the table meanwhile:
        read and diff again. (The netlink backend sends a batch at once and the kernel goes on
        after a failed request, so later independent changes may have succeeded too.)"""
        changes = list(changes)
        t0 = time.monotonic()
        applied: list[Change] = []
        try:
            if self._nl is None:
                for change in changes:
                    try:
                        self.apply_one(change)
                    except Exception as e:
                        raise IpvsError(f"{change}: {e}", change, applied) from e
                    applied.append(change)
                return applied
            try:
                results = self._nl.execute([_nl_request(c) for c in changes])
            except OSError as e:
                raise IpvsError(f"IPVS netlink: {e}", None, []) from e
            failed: list[tuple[Change, int]] = []
            for change, err in zip(changes, results, strict=True):
                if err:
                    failed.append((change, err))
                else:
                    applied.append(change)
            if failed:
                first, err = failed[0]
                raise IpvsError(
                    f"{first}: {os.strerror(err)} ({len(failed)} of {len(changes)} failed)",
                    first,
                    applied,
                )
            return applied
        finally:
            self.stats.requests += len(applied)
            self.stats.seconds += time.monotonic() - t0
            for c in applied:
                self.stats.by_op[c.op.value] = self.stats.by_op.get(c.op.value, 0) + 1

    def converge(self, desired: IpvsTable, owned: Ownership = None) -> list[Change]:
        """Read, diff, apply: the kernel's owned services become ``desired``. Returns the
        changes applied (empty when the kernel already matched)."""
        changes = diff(desired, self.read_table(), owned)
        if changes:
            log.info("ipvs: applying %d change(s)", len(changes))
            for ch in changes:
                log.debug("ipvs: %s", ch)
        return self.apply(changes)


def read_table(netns: str | None = None, backend: str = "netlink") -> IpvsTable:
    with IpvsKernel(netns, backend) as k:
        return k.read_table()


def apply(changes: Iterable[Change], netns: str | None = None,
          backend: str = "netlink") -> list[Change]:  # fmt: skip
    with IpvsKernel(netns, backend) as k:
        return k.apply(changes)


def converge(desired: IpvsTable, owned: Ownership = None, netns: str | None = None,
             backend: str = "netlink") -> list[Change]:  # fmt: skip
    with IpvsKernel(netns, backend) as k:
        return k.converge(desired, owned)


# -- sysctls ------------------------------------------------------------------------------------


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def ensure_sysctls(
    values: Mapping[str, str] | None = None,
    netns: str | None = None,
    *,
    ipv6: bool = False,
) -> dict[str, tuple[str, str]]:
    """Set the data plane's sysctls (REQUIRED_SYSCTLS, plus IPv6 forwarding if ``ipv6``) where
    they differ. Note: IPv6 forwarding makes the node ignore router advertisements unless its
    interfaces have accept_ra=2, so ask for it only when there are IPv6 masquerade services.
    Returns {key: (old, new)} for those changed. The net.ipv4.vs.* keys exist once the ip_vs
    module is loaded: opening an IPVS socket loads it where modules can be loaded."""
    wanted = dict(values if values is not None else REQUIRED_SYSCTLS)
    if ipv6 and values is None:
        wanted.update(IPV6_SYSCTLS)
    changed: dict[str, tuple[str, str]] = {}
    with in_netns(netns):
        if (
            any(k.startswith("net.ipv4.vs.") for k in wanted)
            and not _sysctl_path("net.ipv4.vs.conntrack").exists()
        ):
            # autoload ip_vs through its generic netlink family, as the agent would anyway
            with contextlib.suppress(Exception):
                IpvsKernel().close()
        failed: dict[str, str] = {}
        for key, value in wanted.items():
            path = _sysctl_path(key)
            try:
                old = path.read_text().strip()
                if old != str(value):
                    path.write_text(f"{value}\n")
                    changed[key] = (old, str(value))
            except OSError as exc:
                # An unprivileged container sees /proc/sys read-only: report every key at once.
                failed[key] = f"{value} ({exc.strerror or exc})"
        if failed:
            raise SysctlError(failed, changed)
    return changed


class SysctlError(OSError):
    """Some data-plane sysctls could not be set (typically: /proc/sys is read-only)."""

    def __init__(self, failed: Mapping[str, str], changed: Mapping[str, tuple[str, str]]):
        self.failed = dict(failed)
        self.changed = dict(changed)
        wanted = " ".join(f"{k}={v.split(' ')[0]}" for k, v in self.failed.items())
        super().__init__(
            f"cannot set sysctls {', '.join(f'{k}={v}' for k, v in self.failed.items())}; "
            f"set them on the node (sysctl -w {wanted}, or a file in /etc/sysctl.d), or run "
            "the director with a writable /proc/sys"
        )


# -- nftables source NAT for masquerade ----------------------------------------------------------


def _nft(args: list[str], netns: str | None, input: str | None = None) -> str:
    argv = ["nft", *args]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    r = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise IpvsError(f"{' '.join(argv)}: {r.stderr.strip()}")
    return r.stdout


def _split_families(addresses: Iterable[str]) -> tuple[list[str], list[str]]:
    v4: set[str] = set()
    v6: set[str] = set()
    for a in addresses:
        ip = ipaddress.ip_address(a)
        (v4 if ip.version == 4 else v6).add(str(ip))
    return sorted(v4, key=ipaddress.ip_address), sorted(v6, key=ipaddress.ip_address)


def masquerade_targets(table: IpvsTable) -> tuple[list[str], list[str]]:
    """(VIPs, destination addresses) of the services with masquerade destinations."""
    vips, dests = set(), set()
    for entry in table.values():
        for d in entry.destinations:
            if d.forwarding is Forwarding.MASQUERADE:
                vips.add(entry.service.address)
                dests.add(d.address)
    return sorted(vips), sorted(dests)


def render_masquerade_snat(vips: Iterable[str], destinations: Iterable[str]) -> str:
    """The nftables table: source NAT (masquerade) for connections IPVS forwards from one of
    ``vips`` to one of ``destinations``, so real servers (pods) answer through the director
    without routing back through it. Matching the conntrack's original destination (a VIP) as
    well as the new one (a real server) leaves all other traffic alone, and the L4 protocol
    match keeps IPIP-encapsulated (tunnel) packets out. Needs net.ipv4.vs.conntrack=1."""
    vip4, vip6 = _split_families(vips)
    dst4, dst6 = _split_families(destinations)

    def elements(items: list[str]) -> str:
        return f" elements = {{ {', '.join(items)} }}" if items else ""

    return (
        f"table inet {NFT_TABLE} {{\n"
        f"  set vips4 {{ type ipv4_addr;{elements(vip4)} }}\n"
        f"  set vips6 {{ type ipv6_addr;{elements(vip6)} }}\n"
        f"  set dests4 {{ type ipv4_addr;{elements(dst4)} }}\n"
        f"  set dests6 {{ type ipv6_addr;{elements(dst6)} }}\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        "    meta l4proto { tcp, udp, sctp } ip daddr @dests4 ct original ip daddr @vips4"
        " masquerade\n"
        "    meta l4proto { tcp, udp, sctp } ip6 daddr @dests6 ct original ip6 daddr @vips6"
        " masquerade\n"
        "  }\n"
        "}\n"
    )


def _current_snat(netns: str | None) -> dict[str, set[str]] | None:
    """The elements of our table's sets, or None when the table or its rules are missing."""
    try:
        out = _nft(["-j", "list", "table", "inet", NFT_TABLE], netns)
    except IpvsError:
        return None
    sets: dict[str, set[str]] = {}
    rules = 0
    for item in json.loads(out).get("nftables", []):
        if "set" in item:
            elems = item["set"].get("elem", [])
            sets[item["set"]["name"]] = {str(e) for e in elems if isinstance(e, str)}
        elif "rule" in item:
            rules += 1
    if rules != 2:
        return None
    return sets


def ensure_masquerade_snat(
    vips: Iterable[str], destinations: Iterable[str], netns: str | None = None
) -> bool:
    """Make the ``inet lvs_operator`` nftables table match (idempotent; replaced atomically in
    one nft transaction when it differs). Returns whether anything changed. With nothing to
    masquerade the table stays, with empty sets."""
    vip4, vip6 = _split_families(vips)
    dst4, dst6 = _split_families(destinations)
    want = {"vips4": set(vip4), "vips6": set(vip6), "dests4": set(dst4), "dests6": set(dst6)}
    if _current_snat(netns) == want:
        return False
    script = (
        f"table inet {NFT_TABLE} {{}}\n"  # so the delete below never fails
        f"delete table inet {NFT_TABLE}\n" + render_masquerade_snat(vip4 + vip6, dst4 + dst6)
    )
    _nft(["-f", "-"], netns, input=script)
    return True


def remove_masquerade_snat(netns: str | None = None) -> bool:
    if _current_snat(netns) is None and not _table_exists(netns):
        return False
    _nft(["delete", "table", "inet", NFT_TABLE], netns)
    return True


def _table_exists(netns: str | None) -> bool:
    try:
        _nft(["list", "table", "inet", NFT_TABLE], netns)
    except IpvsError:
        return False
    return True
