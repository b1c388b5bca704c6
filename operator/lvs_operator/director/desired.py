"""Pure: (VirtualServers, their pools' members) -> the desired IPVS table.

One IPVS service per VirtualServer port (VIP, port, protocol, scheduler and flags,
persistence timeout and netmask), one destination per pool member:

- **port**: a static server's own ``port``; else ``member.ports[key]`` where ``key`` is the
  targetPort's name, or the decimal string of a numeric targetPort (pod members carry their
  container ports under both); else a numeric targetPort itself. A member whose port cannot
  be resolved (a named targetPort the pod does not declare) is left out and reported.
- **weight**: the member's weight when it is ready and not terminating; otherwise 0
  (*quiesced*: no new connections, established ones continue). Quiesced destinations are
  listed in ``Desired.quiesced``; ``drain()`` drops those without connections, so they leave
  the kernel once idle (and at once when they leave the pool's status).
- **forwarding**: the VirtualServer's method for every destination; with masquerade and
  ``masqueradeSource: VIP`` the service is in ``Desired.vip_sourced`` (the nftables source
  NAT is then to the VIP, kernel/nft.py).

A VirtualServer whose pool is missing or has no members still gets its services (clients get
a reset instead of a timeout, and adding members later is a small change). Members of another
address family than the VIP are left out (IPVS cannot NAT between families). Two
VirtualServers claiming one VIP:port/protocol (the controller prevents it): the first by
namespace/name keeps it, the other is reported.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import operator
import threading
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field

from lvs_operator.api.network import canonical_ip
from lvs_operator.api.realserverpool import PoolMember
from lvs_operator.api.virtualserver import VirtualPort, VirtualServer

from .table import (
    DestKey,
    IpvsDestination,
    IpvsService,
    IpvsTable,
    ServiceEntry,
    ServiceKey,
)

PoolKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Problem:
    """Something left out of the table, with the object it concerns (for logs and Events)."""

    namespace: str
    name: str
    message: str


@dataclass(frozen=True)
class Desired:
    table: IpvsTable
    quiesced: frozenset[tuple[ServiceKey, DestKey]] = frozenset()
    # "<ns>/<name>" -> metadata.generation of each VirtualServer in the table
    generations: Mapping[str, int] = field(default_factory=dict)
    vips: Mapping[str, str | None] = field(default_factory=dict)  # vip -> interface override
    problems: tuple[Problem, ...] = ()
    # masquerade services whose real servers see the VIP as the source (masqueradeSource: VIP)
    vip_sourced: frozenset[ServiceKey] = frozenset()
    # VIPs whose services are programmed without the address: their VirtualServers are
    # moving to this group, another still announces them (watches.staged)
    staged_vips: frozenset[str] = frozenset()


def resolve_port(member: PoolMember, vport: VirtualPort) -> int | None:
    """The destination port of ``member`` for ``vport`` (None: cannot be resolved)."""
    if member.port is not None:
        return int(member.port)
    target = vport.effective_target_port
    key = target if isinstance(target, str) else str(target)
    if key in member.ports:
        return int(member.ports[key])
    if isinstance(target, int):
        return target
    return None


def member_weight(member: PoolMember) -> int:
    return member.weight if member.ready and not member.terminating else 0


def _family(address: str) -> int | None:
    try:
        return 6 if ":" in canonical_ip(address) else 4
    except ValueError:
        return None


@dataclass(frozen=True)
class _Part:
    """What one VirtualServer adds to the table, from its spec and its pool's members alone
    (the checks across VirtualServers, a service claimed twice, are the assembly's)."""

    entries: tuple[ServiceEntry, ...]
    quiesced: frozenset[tuple[ServiceKey, DestKey]]
    problems: tuple[tuple[int, str], ...]  # (index of the entry it concerns, message)
    vip_sourced: bool
    keys: tuple[ServiceKey, ...]  # of ``entries`` (a key is made anew at each ``.key``)
    vip: str  # canonical


def _build_part(vs: VirtualServer, members: tuple[PoolMember, ...]) -> _Part:
    spec = vs.spec
    family = spec.family
    fwd = spec.forwarding
    persistence = spec.persistence
    entries: list[ServiceEntry] = []
    quiesced: set[tuple[ServiceKey, DestKey]] = set()
    problems: list[tuple[int, str]] = []
    for vport in spec.ports:
        service = IpvsService(
            address=spec.vip,
            port=vport.port,
            protocol=vport.protocol,
            scheduler=str(spec.scheduler),
            flags=frozenset(spec.scheduler_flags),
            persistence_timeout=persistence.timeout_seconds if persistence else 0,
            netmask=persistence.mask_bits(family) if persistence else None,
        )
        dests: dict[DestKey, IpvsDestination] = {}
        for member in members:
            if _family(member.address) != family:
                problems.append((len(entries), f"member {member.address} is not IPv{family} "
                                 "like the VIP; left out"))  # fmt: skip
                continue
            port = resolve_port(member, vport)
            if port is None:
                what = f"{member.address} ({member.pod or member.source})"
                name = vport.effective_target_port
                problems.append(
                    (len(entries), f"member {what} has no port named {name!r}; left out")
                )
                continue
            dest = IpvsDestination(
                address=member.address, port=port, weight=member_weight(member), forwarding=fwd
            )
            # the same endpoint twice: keep the larger weight
            if dest.key in dests and dests[dest.key].weight >= dest.weight:
                continue
            dests[dest.key] = dest
        for key, dest in dests.items():
            if dest.weight == 0 and not _ready(list(members), dest):
                quiesced.add((service.key, key))
        entries.append(ServiceEntry(service, tuple(dests.values())))
    return _Part(
        tuple(entries),
        frozenset(quiesced),
        tuple(problems),
        spec.source_nat_to_vip,
        tuple(e.key for e in entries),
        str(ipaddress.ip_address(spec.vip)),
    )


class DesiredBuilder:
    """``build`` that remembers each VirtualServer's part of the table: a converge after one
    pool's change rebuilds that pool's VirtualServers only, and every other service keeps
    its very ``ServiceEntry`` object (the diff skips an entry identical to the kernel copy's:
    ipvs_sync.py). At 1,000 x 10 a whole build took ~0.45 s of the event loop's CPU, on
    every pod event. Thread-safe (the agent builds in a thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (namespace, name) -> (the VirtualServer, its pool's members, its part)
        self._parts: dict[PoolKey, tuple[VirtualServer, tuple[PoolMember, ...], _Part]] = {}
        self._order: tuple[ServiceKey, ...] = ()  # the last table's keys, sorted
        self._order_set: frozenset[ServiceKey] = frozenset()
        self._last: _LastBuild | None = None

    def _part(self, vs: VirtualServer, members: tuple[PoolMember, ...]) -> _Part:
        key = (vs.namespace, vs.name)
        cached = self._parts.get(key)
        if cached is not None:
            was_vs, was_members, part = cached
            # equal inputs (a relist makes new objects of the same state) give an equal part
            if (was_vs is vs or was_vs == vs) and (
                was_members is members or was_members == members
            ):
                if was_vs is not vs or was_members is not members:
                    self._parts[key] = (vs, members, part)
                return part
        part = _build_part(vs, members)
        self._parts[key] = (vs, members, part)
        return part

    def build(
        self,
        virtual_servers: Iterable[VirtualServer],
        pools: Mapping[PoolKey, Iterable[PoolMember]],
        staged: Set[tuple[str, str]] = frozenset(),
    ) -> Desired:
        """``staged``: the VirtualServers (namespace, name) moving in: their services are in
        the table, their VIPs not in ``vips`` (in ``staged_vips``)."""
        servers = list(virtual_servers)
        with self._lock:
            patched = self._patch(servers, pools, staged)
            if patched is not None:
                return patched
            return self._build(servers, pools, staged)

    def _patch(
        self,
        servers: list[VirtualServer],
        pools: Mapping[PoolKey, Iterable[PoolMember]],
        staged: Set[tuple[str, str]],
    ) -> Desired | None:
        """The last build with the parts of the VirtualServers whose members changed put in
        place, when nothing else changed (the same VirtualServer objects, nothing staged
        anew, each changed part with the same services and problems as before): a pod event
        then costs its VirtualServers, not a pass over all of them. None: build anew."""
        last = self._last
        if last is None or last.staged != staged or len(servers) != len(last.servers):
            return None
        if not all(map(operator.is_, servers, last.servers)):
            return None
        now = [pools.get(key, ()) for key in last.pool_keys]
        changed = [
            (i, raw)
            for i, (raw, was) in enumerate(zip(now, last.members, strict=True))
            if raw is not was
        ]
        if not changed:
            return last.desired
        entries = dict(last.desired.table.entries)
        quiesced = set(last.desired.quiesced)
        members = list(last.members)
        parts = list(last.parts)
        for i, raw in changed:
            vs, was = servers[i], parts[i]
            part = self._part(vs, raw if isinstance(raw, tuple) else tuple(raw))
            if part.keys != was.keys or part.problems != was.problems:
                return None  # services or problems differ: the assembly's checks again
            ref = f"{vs.namespace}/{vs.name}"
            for key, entry in zip(part.keys, part.entries, strict=True):
                if last.owner.get(key) == ref:
                    entries[key] = entry
            quiesced.difference_update(q for q in was.quiesced if last.owner.get(q[0]) == ref)
            quiesced.update(q for q in part.quiesced if last.owner.get(q[0]) == ref)
            members[i], parts[i] = raw, part
        desired = dataclasses.replace(
            last.desired, table=IpvsTable(entries), quiesced=frozenset(quiesced)
        )
        self._last = _LastBuild(last.servers, last.pool_keys, tuple(members), tuple(parts),
                                last.owner, last.staged, desired)  # fmt: skip
        return desired

    def _build(
        self,
        virtual_servers: Iterable[VirtualServer],
        pools: Mapping[PoolKey, Iterable[PoolMember]],
        staged: Set[tuple[str, str]],
    ) -> Desired:
        entries: dict[ServiceKey, ServiceEntry] = {}
        owner: dict[ServiceKey, str] = {}
        quiesced: set[tuple[ServiceKey, DestKey]] = set()
        generations: dict[str, int] = {}
        vips: dict[str, str | None] = {}
        staged_vips: set[str] = set()
        problems: list[Problem] = []
        vip_sourced: set[ServiceKey] = set()
        present: set[PoolKey] = set()

        servers = list(virtual_servers)
        used: dict[int, tuple[Iterable[PoolMember], _Part]] = {}  # by id of the VirtualServer
        for vs in sorted(servers, key=lambda v: (v.namespace, v.name)):
            spec = vs.spec
            ref = f"{vs.namespace}/{vs.name}"
            present.add((vs.namespace, vs.name))
            raw = pools.get((vs.namespace, spec.pool_name), ())
            members = raw if isinstance(raw, tuple) else tuple(raw)
            part = self._part(vs, members)
            used[id(vs)] = (raw, part)
            added = False
            for i, (key, entry) in enumerate(zip(part.keys, part.entries, strict=True)):
                if key in entries:
                    problems.append(Problem(vs.namespace, vs.name,
                                            f"{key} is already served by {owner[key]}; not "
                                            "programmed"))  # fmt: skip
                    continue
                problems.extend(Problem(vs.namespace, vs.name, m) for at, m in part.problems
                                if at == i)  # fmt: skip
                entries[key] = entry
                owner[key] = ref
                if part.vip_sourced:
                    vip_sourced.add(key)
                added = True
            if part.quiesced:
                quiesced.update(q for q in part.quiesced if owner.get(q[0]) == ref)
            if added:
                generations[ref] = vs.meta.generation or 0
                vip = part.vip
                if (vs.namespace, vs.name) in staged:
                    staged_vips.add(vip)
                else:
                    vips.setdefault(vip, spec.directors.interface)
        for gone in self._parts.keys() - present:
            del self._parts[gone]
        if entries.keys() == self._order_set:
            # the same services as the last build: its order stands (no sort of 1,000 keys)
            table = IpvsTable({k: entries[k] for k in self._order})
        else:
            table = IpvsTable.of(entries.values())
            self._order, self._order_set = tuple(table), frozenset(table)
        desired = Desired(
            table=table,
            quiesced=frozenset(quiesced),
            generations=generations,
            vips=vips,
            problems=tuple(problems),
            vip_sourced=frozenset(vip_sourced),
            # a VIP one VirtualServer serves is served (the controller moves a VIP whole)
            staged_vips=frozenset(staged_vips - set(vips)),
        )
        self._last = _LastBuild(
            tuple(servers),
            tuple((vs.namespace, vs.spec.pool_name) for vs in servers),
            tuple(used[id(vs)][0] for vs in servers),
            tuple(used[id(vs)][1] for vs in servers),
            owner,
            frozenset(staged),
            desired,
        )
        return desired


@dataclass(frozen=True)
class _LastBuild:
    """What ``DesiredBuilder._patch`` starts from: the last build's inputs (the
    VirtualServers in the order given, each one's pool members as given: compared by
    identity) and what it made of them."""

    servers: tuple[VirtualServer, ...]
    pool_keys: tuple[PoolKey, ...]  # each one's pool
    members: tuple[Iterable[PoolMember], ...]
    parts: tuple[_Part, ...]
    owner: Mapping[ServiceKey, str]  # service -> the "<ns>/<name>" that has it
    staged: frozenset[tuple[str, str]]
    desired: Desired


def build(
    virtual_servers: Iterable[VirtualServer],
    pools: Mapping[PoolKey, Iterable[PoolMember]],
    staged: Set[tuple[str, str]] = frozenset(),
) -> Desired:
    """The desired table (a ``DesiredBuilder`` of its own: nothing remembered).
    ``staged``: the VirtualServers (namespace, name) moving in: their services are in
    the table, their VIPs not in ``vips`` (in ``staged_vips``)."""
    return DesiredBuilder().build(virtual_servers, pools, staged)


def _ready(members: list[PoolMember], dest: IpvsDestination) -> bool:
    """True if a ready, non-terminating member maps to ``dest`` (weight 0 by configuration)."""
    return any(
        m.ready and not m.terminating and str(ipaddress.ip_address(m.address)) == dest.address
        for m in members
    )


def needs_counts(desired: Desired, actual: IpvsTable) -> bool:
    """True if ``drain(desired, actual, ...)`` looks at connection counts: a quiesced
    destination that ``actual`` still has (one it does not have is left out whatever its
    count). Without one, a converge can drain against a table it did not just read."""
    return bool(draining_services(desired, actual))


def draining_services(desired: Desired, actual: IpvsTable) -> list[ServiceKey]:
    """The services of ``actual`` that still have a quiesced destination: the only ones
    whose connection counts ``drain`` reads (sorted, each once)."""
    out = set()
    for key, dest in desired.quiesced:
        entry = actual.get(key)
        if entry is not None and any(d.key == dest for d in entry.destinations):
            out.add(key)
    return sorted(out)


def drain(
    desired: Desired,
    actual: IpvsTable,
    connections: Mapping[tuple[ServiceKey, DestKey], int] | None,
) -> IpvsTable:
    """The table to program: ``desired.table`` minus quiesced destinations that are idle.

    A quiesced destination stays while the kernel has it with connections (so established
    ones finish); it is never added (a member that was never programmed needs no draining).
    ``connections`` (active connections per destination) None means unknown: keep every
    quiesced destination the kernel still has."""
    if not desired.quiesced:
        return desired.table
    draining = {key for key, _ in desired.quiesced}
    entries = dict(desired.table.entries)
    for key in draining:
        entry = entries.get(key)
        if entry is None:
            continue
        have = actual.get(key)
        have_dests = have.dest_map() if have is not None else {}
        kept = []
        for dest in entry.destinations:
            if (key, dest.key) in desired.quiesced:
                if dest.key not in have_dests:
                    continue
                if connections is not None and connections.get((key, dest.key), 0) <= 0:
                    continue
            kept.append(dest)
        if len(kept) != len(entry.destinations):
            entries[key] = ServiceEntry(entry.service, tuple(kept))
    # only the services with a quiesced destination are rebuilt: the others stay the very
    # entries of the desired table (the diff skips them), in its order
    return IpvsTable(entries)
