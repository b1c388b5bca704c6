"""The IPVS table of a network namespace over generic netlink (ipvs_netlink.py): read it
(with connection counters), apply changes, converge. Notes:

* ``netns``: every function takes the name of a network namespace (netns.py); the socket
  is created with the calling thread switched into it (it stays bound there).
* The persistence netmask attribute is an IPv4 mask for IPv4 services but a prefix length
  (a host-order u32) for IPv6 ones.
* Cost, measured in the TCG VM on a loaded 2-core host: up to 1,024 requests per ``send``
  with only the last acknowledged (failures are answered anyway): 1,000 x 10 programmed
  cold in 6.9 s (11,000 requests; ipvsadm-restore: 5.7 s), read in ~20 s. A read is one
  service dump plus one destination dump per service (the kernel has no dump of all
  destinations, and allows one dump in flight per socket); its cost is Python parsing, so
  the agent keeps its own copy of the table (``table.apply_to_table``, ipvs_sync.py) and
  reads the kernel back now and then, not on every event.
* pyroute2's encoder is the reference this one is tested against in the data-plane tests
  (tests/dataplane/pyroute2_ipvs.py); the package does not use it.
* fwmark services are not represented in ``IpvsTable`` and so are never touched.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from lvs_operator.api.ipvs_catalog import FORWARDING_KERNEL_VALUES
from lvs_operator.api.network import canonical_ip
from lvs_operator.director.table import (
    IP_VS_CONN_F_FWD_MASK,
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

from . import ipvs_netlink as nl
from .netns import in_netns

log = logging.getLogger(__name__)

AF_INET, AF_INET6 = socket.AF_INET.value, socket.AF_INET6.value


class IpvsError(RuntimeError):
    """A kernel operation failed; ``applied`` are the changes that succeeded before it."""

    def __init__(self, message: str, change: Change | None = None,
                 applied: Sequence[Change] = ()) -> None:  # fmt: skip
        super().__init__(message)
        self.change = change
        self.applied = list(applied)


# -- encoding -----------------------------------------------------------------------------------


# -- encoding (ipvs_netlink.py) -----------------------------------------------------------------


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


_FORWARDING_BY_KERNEL = {value: fwd for fwd, value in FORWARDING_KERNEL_VALUES.items()}


def _row_dest(row: nl.DestRow, service_af: int) -> tuple[IpvsDestination, ConnCounts]:
    """``_nl_dest`` for a row (``IpvsNetlink.dest_rows``): the kernel's values are in range
    and an IPv4 address from inet_ntop is canonical, so the destination is made without
    its checks (10,000s per whole read)."""
    af, addr, port, fwd, weight, upper, lower, active, inactive, persistent = row
    af = af or service_af
    if not addr:
        address = "0.0.0.0" if af == AF_INET else "::"
    elif af == AF_INET:
        address = socket.inet_ntop(AF_INET, addr[:4])
    else:
        address = canonical_ip(socket.inet_ntop(AF_INET6, addr[:16]))
    forwarding = _FORWARDING_BY_KERNEL.get(fwd & IP_VS_CONN_F_FWD_MASK)
    if forwarding is None:
        raise ValueError(f"unsupported IPVS forwarding method {fwd}")
    dest = IpvsDestination.trusted(address, port, weight, forwarding, upper, lower)
    return dest, ConnCounts(active, inactive, persistent)


# -- the kernel ---------------------------------------------------------------------------------


# slots: a reading at 1,000 x 10 holds 10,000 of each (5.6 -> 3.9 MiB with the counters'
# and keys' slots), and a read makes the next one while the last is still served
@dataclass(frozen=True, slots=True)
class DestinationStats:
    key: DestKey
    counters: nl.Counters
    active: int  # established TCP connections now
    inactive: int  # in other states (e.g. TIME_WAIT)


@dataclass(frozen=True, slots=True)
class ServiceStats:
    key: ServiceKey
    counters: nl.Counters
    destinations: tuple[DestinationStats, ...]


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
    """The IPVS table of one network namespace (``netns``, or the current one): requests
    batched per ``send``, acknowledgements read in bulk. Not thread-safe; keep one for the
    agent's lifetime."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self.stats = ApplyStats()
        with in_netns(netns):  # the socket stays in the namespace it was made in
            self._nl = nl.IpvsNetlink()

    def close(self) -> None:
        self._nl.close()

    def __enter__(self) -> IpvsKernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # the sync daemons (sync.py): at most a master and a backup per namespace
    def daemons(self) -> list[nl.SyncDaemon]:
        return self._nl.daemons()

    def start_daemon(self, daemon: nl.SyncDaemon) -> int:
        return self._nl.start_daemon(daemon)

    def stop_daemon(self, state: int) -> int:
        return self._nl.stop_daemon(state)

    def read(
        self, between: Callable[[], object] | None = None
    ) -> tuple[IpvsTable, dict[tuple[ServiceKey, DestKey], ConnCounts]]:
        """The kernel's table and every destination's connection counters: one service
        dump, then one destination dump per service (``between`` called after each: a
        background read steps aside there, ipvs_sync.py)."""
        entries = []
        counts: dict[tuple[ServiceKey, DestKey], ConnCounts] = {}
        for attrs in self._nl.dump_services():
            service = _nl_service(attrs)
            if service is None:
                continue
            af = AF_INET if service.family == 4 else AF_INET6
            key = service.key  # made once: a key is built anew at each ``.key``
            dests = []
            for row in self._nl.dest_rows(_nl_service_key(service)):
                dest, conns = _row_dest(row, af)
                dests.append(dest)
                counts[(key, DestKey(dest.address, dest.port))] = conns
            entries.append(ServiceEntry(service, tuple(dests)))
            if between is not None:
                between()
        return IpvsTable.of(entries), counts

    def read_services(self) -> list[IpvsService]:
        """The services without their destinations: one dump."""
        found = (_nl_service(attrs) for attrs in self._nl.dump_services())
        return [s for s in found if s is not None]

    def read_destinations(
        self, services: Iterable[IpvsService]
    ) -> tuple[dict[ServiceKey, tuple[IpvsDestination, ...]], dict[tuple[ServiceKey, DestKey],
                                                                   ConnCounts]]:  # fmt: skip
        """The destinations and their connection counters of ``services`` only: one
        destination dump each (a drain needs a few services' counts, not the whole table).
        A service the kernel no longer has raises (the caller reads everything next)."""
        dests: dict[ServiceKey, tuple[IpvsDestination, ...]] = {}
        counts: dict[tuple[ServiceKey, DestKey], ConnCounts] = {}
        for service in services:
            af = AF_INET if service.family == 4 else AF_INET6
            found = []
            for row in self._nl.dest_rows(_nl_service_key(service)):
                dest, conns = _row_dest(row, af)
                found.append(dest)
                counts[(service.key, dest.key)] = conns
            dests[service.key] = tuple(found)
        return dests, counts

    def read_stats(self, between: Callable[[], object] | None = None) -> list[ServiceStats]:
        """Every service's and destination's traffic counters (the same dumps as ``read``;
        the kernel sends the counters with every entry; ``between`` as there)."""
        out = []
        for attrs in self._nl.dump_services():
            service = _nl_service(attrs)
            if service is None:
                continue
            af = AF_INET if service.family == 4 else AF_INET6
            dests = []
            for dattrs in self._nl.dump_dests(_nl_service_key(service)):
                dest, conns = _nl_dest(dattrs, af)
                dests.append(DestinationStats(dest.key, nl.parse_counters(dattrs),
                                              conns.active, conns.inactive))  # fmt: skip
            out.append(ServiceStats(service.key, nl.parse_counters(attrs), tuple(dests)))
            if between is not None:
                between()
        return out

    def read_table(self) -> IpvsTable:
        return self.read()[0]

    def apply(self, changes: Iterable[Change]) -> list[Change]:
        """Apply in order. On failure, IpvsError names the first failed change and carries
        the ones that succeeded. A failure usually means someone changed the table meanwhile:
        read and diff again. (A batch is sent at once and the kernel goes on after a failed
        request, so later independent changes may have succeeded too.)"""
        changes = list(changes)
        t0 = time.monotonic()
        applied: list[Change] = []
        try:
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


def read_table(netns: str | None = None) -> IpvsTable:
    with IpvsKernel(netns) as k:
        return k.read_table()


def apply(changes: Iterable[Change], netns: str | None = None) -> list[Change]:
    with IpvsKernel(netns) as k:
        return k.apply(changes)


def converge(desired: IpvsTable, owned: Ownership = None, netns: str | None = None) -> list[Change]:
    with IpvsKernel(netns) as k:
        return k.converge(desired, owned)
