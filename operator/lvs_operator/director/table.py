"""A pure model of an IPVS table and the diff that converges the kernel to a desired one.

No kernel, no Kubernetes here: ``director/desired.py`` builds the desired table from the API
models, ``director/ipvs.py`` reads the kernel's table and applies the changes computed here.

The diff never flushes and only touches services this agent owns: every service in the
desired table, plus those the caller says it owns (e.g. every service on the director group's
VIPs, so a restarted agent adopts what its predecessor programmed and removes what is no longer
wanted, while a service someone else added by hand on another address stays untouched).
Changes of a service's scheduler, flags or persistence, and of a destination's weight or
forwarding method, are edits in place ("set"): a delete and re-add would drop the
connections and persistence templates of everybody using it.
"""

from __future__ import annotations

import enum
import itertools
import operator
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from lvs_operator.api import ipvs_catalog
from lvs_operator.api.network import canonical_ip

# The IPVS vocabulary and its kernel encoding are declared once, in api/ipvs_catalog.py;
# the names below are this model's view of it.
Protocol = ipvs_catalog.Protocol
Forwarding = ipvs_catalog.Forwarding
IP_VS_CONN_F_FWD_MASK: Final = ipvs_catalog.IP_VS_CONN_F_FWD_MASK
IP_VS_SVC_F_PERSISTENT: Final = ipvs_catalog.IP_VS_SVC_F_PERSISTENT
IP_VS_SVC_F_HASHED: Final = ipvs_catalog.IP_VS_SVC_F_HASHED
IP_VS_SVC_F_ONEPACKET: Final = ipvs_catalog.IP_VS_SVC_F_ONEPACKET
IP_VS_SVC_F_SCHED1: Final = ipvs_catalog.IP_VS_SVC_F_SCHED1
IP_VS_SVC_F_SCHED2: Final = ipvs_catalog.IP_VS_SVC_F_SCHED2
IP_VS_SVC_F_SCHED3: Final = ipvs_catalog.IP_VS_SVC_F_SCHED3
# The flags a service's settings carry (persistence is its own field: timeout > 0).
SETTABLE_FLAGS: Final = ipvs_catalog.SETTABLE_FLAG_BITS
FLAG_BITS: Final[Mapping[str, int]] = {f.name: f.bit for f in ipvs_catalog.SCHEDULER_FLAGS}
flags_to_bits = ipvs_catalog.flag_bits
bits_to_flags = ipvs_catalog.flag_names


def _family(address: str) -> int:
    """4 or 6, for an address already canonical (IPv6 ones always contain a colon)."""
    return 6 if ":" in address else 4


def _fmt_endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@dataclass(frozen=True, order=True)
class ServiceKey:
    """What identifies a virtual service in the kernel: protocol, VIP and port."""

    protocol: Protocol
    address: str
    port: int
    # computed once: tables are dicts keyed by these, and a converge at 1,000 services looks
    # keys up ~10,000 times (the generated __hash__ builds a tuple each time)
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "protocol", Protocol(self.protocol))
        object.__setattr__(self, "address", canonical_ip(self.address))
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port out of range: {self.port}")
        object.__setattr__(self, "_hash", hash((self.protocol, self.address, self.port)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def family(self) -> int:
        """4 or 6."""
        return _family(self.address)

    def __str__(self) -> str:
        return f"{self.protocol}/{_fmt_endpoint(self.address, self.port)}"


@dataclass(frozen=True, order=True, slots=True)
class DestKey:
    address: str
    port: int

    def __str__(self) -> str:
        return _fmt_endpoint(self.address, self.port)


@dataclass(frozen=True)
class IpvsService:
    """A virtual service. ``persistence_timeout`` 0 means no persistence; ``netmask`` is the
    persistence granularity as a prefix length (IPv4: 32 = per client address; IPv6: 128)."""

    address: str
    port: int
    protocol: Protocol = Protocol.TCP
    scheduler: str = "wlc"
    flags: frozenset[str] = frozenset()
    persistence_timeout: int = 0
    netmask: int | None = None  # None: the family's full length

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", canonical_ip(self.address))
        object.__setattr__(self, "protocol", Protocol(self.protocol))
        object.__setattr__(self, "flags", frozenset(self.flags))
        flags_to_bits(self.flags)  # validates the names
        full = 32 if self.family == 4 else 128
        netmask = full if self.netmask is None else self.netmask
        if not 0 <= netmask <= full:
            raise ValueError(f"netmask /{netmask} out of range for IPv{self.family}")
        object.__setattr__(self, "netmask", netmask)
        if self.persistence_timeout < 0:
            raise ValueError("persistence_timeout must be >= 0")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port out of range: {self.port}")

    @property
    def key(self) -> ServiceKey:
        return ServiceKey(self.protocol, self.address, self.port)

    @property
    def family(self) -> int:
        return _family(self.address)

    @property
    def flag_bits(self) -> int:
        """The kernel's flags for this service (persistence included)."""
        bits = flags_to_bits(self.flags)
        if self.persistence_timeout:
            bits |= IP_VS_SVC_F_PERSISTENT
        return bits

    def settings(self) -> tuple[str, int, int, int | None]:
        """What an edit ("set") can change; two services with the same key and settings are
        the same service to the kernel (flag names may be spelled differently)."""
        return (self.scheduler, self.flag_bits, self.persistence_timeout, self.netmask)

    def __str__(self) -> str:
        extra = f" persistent {self.persistence_timeout}s/{self.netmask}" * bool(
            self.persistence_timeout
        )
        flags = f" flags {','.join(sorted(self.flags))}" if self.flags else ""
        return f"{self.key} {self.scheduler}{flags}{extra}"


@dataclass(frozen=True)
class IpvsDestination:
    """A real server of a service. Weight 0 quiesces it: no new connections, existing ones
    continue. Thresholds 0 mean no limit."""

    address: str
    port: int
    weight: int = 1
    forwarding: Forwarding = Forwarding.MASQUERADE
    upper_threshold: int = 0
    lower_threshold: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", canonical_ip(self.address))
        object.__setattr__(self, "forwarding", Forwarding(self.forwarding))
        if not 0 <= self.weight <= 0x7FFFFFFF:
            raise ValueError(f"weight out of range: {self.weight}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port out of range: {self.port}")

    @classmethod
    def trusted(cls, address: str, port: int, weight: int, forwarding: Forwarding,
                upper_threshold: int, lower_threshold: int) -> IpvsDestination:  # fmt: skip
        """One made without ``__post_init__``'s checks, for values known canonical and in
        range: read back from the kernel, 10,000s per whole read."""
        dest = object.__new__(cls)
        dest.__dict__.update(address=address, port=port, weight=weight, forwarding=forwarding,
                             upper_threshold=upper_threshold,
                             lower_threshold=lower_threshold)  # fmt: skip
        return dest

    @property
    def key(self) -> DestKey:
        return DestKey(self.address, self.port)

    def __str__(self) -> str:
        return f"-> {self.key} {self.forwarding} w{self.weight}"


def _endpoint(dest: IpvsDestination) -> tuple[str, int]:
    return dest.address, dest.port


@dataclass(frozen=True)
class ServiceEntry:
    """A service and its destinations (kept sorted, so equal entries compare equal)."""

    service: IpvsService
    destinations: tuple[IpvsDestination, ...] = ()

    def __post_init__(self) -> None:
        # by (address, port): DestKey's order, without a DestKey made for each destination
        dests = tuple(sorted(self.destinations, key=_endpoint))
        for a, b in itertools.pairwise(dests):
            if a.address == b.address and a.port == b.port:
                raise ValueError(f"duplicate destination {a.key} in {self.service.key}")
        object.__setattr__(self, "destinations", dests)

    @property
    def key(self) -> ServiceKey:
        return self.service.key

    def dest_map(self) -> dict[DestKey, IpvsDestination]:
        return {d.key: d for d in self.destinations}


@dataclass(frozen=True)
class IpvsTable(Mapping[ServiceKey, ServiceEntry]):
    """Service key -> (service, destinations). Immutable; build with ``IpvsTable.of``."""

    entries: Mapping[ServiceKey, ServiceEntry] = field(default_factory=dict)

    @classmethod
    def of(
        cls, items: Iterable[ServiceEntry | tuple[IpvsService, Iterable[IpvsDestination]]]
    ) -> IpvsTable:
        entries: dict[ServiceKey, ServiceEntry] = {}
        for item in items:
            entry = (
                item if isinstance(item, ServiceEntry) else ServiceEntry(item[0], tuple(item[1]))
            )
            if entry.key in entries:
                raise ValueError(f"duplicate service {entry.key}")
            entries[entry.key] = entry
        return cls(dict(sorted(entries.items())))

    def __getitem__(self, key: ServiceKey) -> ServiceEntry:
        return self.entries[key]

    def __iter__(self) -> Iterator[ServiceKey]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IpvsTable):
            return dict(self.entries) == dict(other.entries)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self.entries.items()))

    def only(self, keys: Callable[[ServiceKey], bool]) -> IpvsTable:
        """The sub-table of the services ``keys`` accepts."""
        return IpvsTable({k: v for k, v in self.entries.items() if keys(k)})

    def sharing(self, other: IpvsTable) -> IpvsTable:
        """This table with the entries of ``other`` in place of its own under the same keys
        (the caller knows them equivalent; the order stays this table's)."""
        entries = dict(self.entries)
        for key, entry in other.entries.items():
            if key in entries:
                entries[key] = entry
        return IpvsTable(entries)

    def dest_count(self) -> int:
        return sum(len(e.destinations) for e in self.entries.values())

    def with_destinations(
        self, updates: Mapping[ServiceKey, tuple[IpvsDestination, ...]]
    ) -> IpvsTable:
        """This table with the destinations of the services in ``updates`` replaced (a
        partial read of the kernel); a key this table lacks is left out."""
        entries = dict(self.entries)
        for key, dests in updates.items():
            entry = entries.get(key)
            if entry is not None:
                entries[key] = ServiceEntry(entry.service, tuple(dests))
        return IpvsTable(entries)

    def describe(self) -> str:
        lines = []
        for entry in self.entries.values():
            lines.append(str(entry.service))
            lines.extend(f"  {d}" for d in entry.destinations)
        return "\n".join(lines)


class Op(enum.StrEnum):
    ADD_SERVICE = "add-service"
    EDIT_SERVICE = "edit-service"
    ADD_DEST = "add-dest"
    EDIT_DEST = "edit-dest"
    DEL_DEST = "del-dest"
    DEL_SERVICE = "del-service"


@dataclass(frozen=True)
class Change:
    """One kernel operation. ``service`` is the desired service (the actual one for deletes);
    ``dest`` is set for destination operations."""

    op: Op
    service: IpvsService
    dest: IpvsDestination | None = None

    def __str__(self) -> str:
        what = f"{self.service.key} {self.dest}" if self.dest else str(self.service)
        return f"{self.op} {what}"


Ownership = Callable[[ServiceKey], bool] | Collection[ServiceKey] | None


def owned_by_addresses(addresses: Iterable[str]) -> Callable[[ServiceKey], bool]:
    """Ownership for adoption: every service on one of these addresses (the director group's
    VIPs) belongs to the agent, whoever programmed it."""
    vips = frozenset(canonical_ip(a) for a in addresses)
    return lambda key: key.address in vips


def _owns(owned: Ownership) -> Callable[[ServiceKey], bool]:
    if owned is None:
        return lambda key: False
    if callable(owned):
        return owned
    keys = frozenset(owned)
    return lambda key: key in keys


def diff(desired: IpvsTable, actual: IpvsTable, owned: Ownership = None) -> list[Change]:
    """The operations that turn ``actual`` into ``desired`` for the services this agent owns.

    Owned = every service in ``desired`` plus those ``owned`` accepts (a predicate such as
    ``owned_by_addresses(vips)``, or a collection of keys, e.g. what was programmed before).
    Services in ``actual`` that are neither are never touched.

    Order: first new services, each followed by its destinations (the kernel needs the service
    first); then per existing service: its edit, new destinations, edited ones, removed ones
    (adds before removals, so a service being re-pointed never has zero destinations); last the
    services to remove, each after its destinations.
    """
    owns = _owns(owned)
    changes: list[Change] = []
    # the plain dicts: the Mapping methods cost a call each, for each of 1,000s of services
    want_entries, have_entries = desired.entries, actual.entries
    if len(want_entries) == len(have_entries) and all(
        map(operator.is_, want_entries, have_entries)
    ):
        # the usual converge: the very keys, in the same order (the agent's copy of the
        # kernel takes the desired table's: ipvs_sync.known_after), so no service comes or
        # goes, and only the entries that are not the copy's own need a look
        new, gone = [], []
        kept = [
            (e, h)
            for e, h in zip(want_entries.values(), have_entries.values(), strict=True)
            if e is not h
        ]
    else:
        new = [e for k, e in want_entries.items() if k not in have_entries]
        kept = [(e, have_entries[k]) for k, e in want_entries.items() if k in have_entries]
        gone = [e for k, e in have_entries.items() if k not in want_entries and owns(k)]

    for entry in new:
        changes.append(Change(Op.ADD_SERVICE, entry.service))
        changes.extend(Change(Op.ADD_DEST, entry.service, d) for d in entry.destinations)

    for want, have in kept:
        if want is have:
            continue  # the very entry the copy of the kernel has (ipvs_sync.py shares them)
        svc = want.service
        if svc.settings() != have.service.settings():
            changes.append(Change(Op.EDIT_SERVICE, svc))
        want_d, have_d = want.dest_map(), have.dest_map()
        changes.extend(Change(Op.ADD_DEST, svc, d) for k, d in want_d.items() if k not in have_d)
        changes.extend(
            Change(Op.EDIT_DEST, svc, d)
            for k, d in want_d.items()
            if k in have_d and have_d[k] != d
        )
        changes.extend(
            Change(Op.DEL_DEST, have.service, d) for k, d in have_d.items() if k not in want_d
        )

    for entry in gone:
        changes.extend(Change(Op.DEL_DEST, entry.service, d) for d in entry.destinations)
        changes.append(Change(Op.DEL_SERVICE, entry.service))
    return changes


def apply_to_table(table: IpvsTable, changes: Iterable[Change]) -> IpvsTable:
    """What ``changes`` do to ``table``, in memory (``table`` itself is left as it is): a
    model of the kernel for tests, and the agent's copy of the kernel's table after its own
    changes (ipvs_sync.py), so that a converge need not read the kernel back. A change the
    kernel would refuse (a service or destination that exists already, or does not) raises
    ValueError.

    Only the services the changes name are rebuilt, the other entries are shared with
    ``table``: a converge that changes one service of thousands costs one entry."""
    entries = dict(table.entries)
    # service key -> (service, destinations) as the changes so far leave it; None: absent
    touched: dict[ServiceKey, tuple[IpvsService, dict[DestKey, IpvsDestination]] | None] = {}
    for ch in changes:
        key = ch.service.key
        if key not in touched:
            entry = entries.get(key)
            touched[key] = None if entry is None else (entry.service, entry.dest_map())
        current = touched[key]
        if ch.op is Op.ADD_SERVICE:
            if current is not None:
                raise ValueError(f"{ch}: service exists")
            touched[key] = (ch.service, {})
            continue
        if current is None:
            raise ValueError(f"{ch}: no such service")
        _, dests = current
        if ch.op is Op.EDIT_SERVICE:
            touched[key] = (ch.service, dests)
        elif ch.op is Op.DEL_SERVICE:
            touched[key] = None
        else:
            assert ch.dest is not None
            dk = ch.dest.key
            if ch.op is Op.ADD_DEST:
                if dk in dests:
                    raise ValueError(f"{ch}: destination exists")
                dests[dk] = ch.dest
            elif dk not in dests:
                raise ValueError(f"{ch}: no such destination")
            elif ch.op is Op.EDIT_DEST:
                dests[dk] = ch.dest
            else:
                del dests[dk]
    added = False
    for key, state in touched.items():
        if state is None:
            entries.pop(key, None)
        else:
            added = added or key not in table.entries
            entries[key] = ServiceEntry(state[0], tuple(state[1].values()))
    # in key order, as ``IpvsTable.of`` builds them (the diff's order follows it)
    return IpvsTable(dict(sorted(entries.items())) if added else entries)
