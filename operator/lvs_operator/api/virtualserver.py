"""VirtualServer: what clients reach — a VIP, its ports, the pool behind it, how to balance.

``VirtualServer.from_object`` parses a Kubernetes object, applies the CRD's defaults and
raises one ``ValidationError`` listing every bad field (path + reason), matching what the
CRD's schema and CEL rules reject (tests/unit/api prove they agree case by case).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from . import network
from .common import Condition, NamedObject, ObjectMeta
from .contract import DIRECTOR_NODE_LABEL
from .ipvs_catalog import API_SCHEDULER_FLAGS, Forwarding, Protocol, Scheduler, flags_match_message
from .validation import Errors, ValidationError, get_int, get_list, get_map, get_str

E = TypeVar("E", bound=StrEnum)

KIND = "VirtualServer"
PLURAL = "virtualservers"


DEFAULT_SCHEDULER = Scheduler.WLC  # as ipvsadm
DEFAULT_FORWARDING = Forwarding.MASQUERADE
DEFAULT_PROTOCOL = Protocol.TCP
DEFAULT_PERSISTENCE_TIMEOUT = 300  # ipvsadm's default for -p
DEFAULT_DIRECTOR_NODE_SELECTOR: dict[str, str] = {DIRECTOR_NODE_LABEL: "true"}
MAX_PORTS = 64

# CEL messages: the CRD carries these exact strings, the models report them.
MSG_VIP_INVALID = "vip must be an IPv4 or IPv6 address (no zone, not IPv4-mapped)"
MSG_VIP_NOT_UNICAST = (
    "vip must be a unicast address (not unspecified, loopback, multicast, link-local or broadcast)"
)
MSG_PORTS_UNIQUE = "each port/protocol pair must be unique"
MSG_PORT_NAMES_UNIQUE = "port names must be unique"
MSG_TARGET_PORT = (
    "targetPort must be a port number 1-65535 or an IANA service name (a named container port)"
)
MSG_FLAGS_MATCH = flags_match_message()
MSG_PORT_REMAP = (
    "direct and tunnel forwarding cannot change the port: targetPort must equal port "
    "(or be left out)"
)
MSG_NETMASK_FAMILY = (
    "persistence.netmask applies to IPv4 VIPs; use persistence.prefixLength for an IPv6 VIP"
)
MSG_PREFIX_FAMILY = (
    "persistence.prefixLength applies to IPv6 VIPs; use persistence.netmask for an IPv4 VIP"
)
MSG_MASQUERADE_SOURCE = (
    "masqueradeSource applies to masquerade forwarding only "
    "(direct and tunnel keep the client's address)"
)
MSG_NODE_SELECTOR_EMPTY = (
    "directors.nodeSelector must not be empty: it would make every node a director"
)


class MasqueradeSource(StrEnum):
    """The source address a masqueraded connection reaches its real server with."""

    # the director's own address on the link to the real server (nftables masquerade): the
    # real server answers whichever director forwarded, so a crash failover resets the
    # established connections (the new director never saw them)
    DIRECTOR = "Director"
    # the VIP itself, source port kept: the same on any director, so the new director's
    # connection tracking picks a synced connection up mid-stream; the real servers must
    # route to the VIP (as pods do through their node when the VIP is on the node network)
    VIP = "VIP"


@dataclass(frozen=True)
class VirtualPort:
    port: int
    protocol: Protocol = DEFAULT_PROTOCOL
    target_port: int | str | None = None  # None: same as port
    name: str | None = None

    @property
    def effective_target_port(self) -> int | str:
        return self.port if self.target_port is None else self.target_port

    def key(self) -> tuple[int, Protocol]:
        return (self.port, self.protocol)


@dataclass(frozen=True)
class Persistence:
    """Sticky sessions: a client (masked by netmask/prefix) stays on one real server."""

    timeout_seconds: int = DEFAULT_PERSISTENCE_TIMEOUT
    netmask: str | None = None  # IPv4 VIPs: dotted netmask
    prefix_length: int | None = None  # IPv6 VIPs

    def mask_bits(self, family: int) -> int:
        if family == 4:
            if self.netmask is None:
                return 32
            return ipaddress.IPv4Network(f"0.0.0.0/{self.netmask}").prefixlen
        return 128 if self.prefix_length is None else self.prefix_length


@dataclass(frozen=True)
class DirectorPlacement:
    node_selector: Mapping[str, str] = field(
        default_factory=lambda: dict(DEFAULT_DIRECTOR_NODE_SELECTOR)
    )
    interface: str | None = None

    def selector_key(self) -> tuple[tuple[str, str], ...]:
        """Stable identity of the director group this placement belongs to."""
        return tuple(sorted(self.node_selector.items()))


@dataclass(frozen=True)
class VirtualServerSpec:
    vip: str
    ports: tuple[VirtualPort, ...]
    pool_name: str
    scheduler: Scheduler = DEFAULT_SCHEDULER
    scheduler_flags: tuple[str, ...] = ()
    forwarding: Forwarding = DEFAULT_FORWARDING
    persistence: Persistence | None = None
    directors: DirectorPlacement = field(default_factory=DirectorPlacement)
    masquerade_source: MasqueradeSource | None = None  # None: Director (left out, no default)

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.vip).version

    @property
    def source_nat_to_vip(self) -> bool:
        """Masquerade whose real servers see the VIP as the source (``masqueradeSource: VIP``)."""
        return (
            self.forwarding == Forwarding.MASQUERADE
            and self.masquerade_source == MasqueradeSource.VIP
        )

    def to_object(self) -> dict[str, Any]:
        """The spec as the API server stores it after defaulting."""
        ports = []
        for p in self.ports:
            item: dict[str, Any] = {"port": p.port, "protocol": str(p.protocol)}
            if p.name is not None:
                item["name"] = p.name
            if p.target_port is not None:
                item["targetPort"] = p.target_port
            ports.append(item)
        out: dict[str, Any] = {
            "vip": self.vip,
            "ports": ports,
            "poolRef": {"name": self.pool_name},
            "scheduler": str(self.scheduler),
            "forwarding": str(self.forwarding),
            "directors": {"nodeSelector": dict(self.directors.node_selector)},
        }
        if self.directors.interface is not None:
            out["directors"]["interface"] = self.directors.interface
        if self.scheduler_flags:
            out["schedulerFlags"] = list(self.scheduler_flags)
        if self.masquerade_source is not None:
            out["masqueradeSource"] = str(self.masquerade_source)
        if self.persistence is not None:
            pers: dict[str, Any] = {"timeoutSeconds": self.persistence.timeout_seconds}
            if self.persistence.netmask is not None:
                pers["netmask"] = self.persistence.netmask
            if self.persistence.prefix_length is not None:
                pers["prefixLength"] = self.persistence.prefix_length
            out["persistence"] = pers
        return out


@dataclass(frozen=True)
class DirectorStatus:
    node: str
    role: str  # "active" | "standby"


@dataclass(frozen=True)
class VirtualServerStatus:
    observed_generation: int = 0
    director_group: str = ""
    accepted_vip: str = ""  # the VIP the controller accepted for director_group
    # the group it moves to (make-before-break): programmed there without the VIP meanwhile
    next_director_group: str = ""
    active_director: str = ""
    directors: tuple[DirectorStatus, ...] = ()
    ready_real_servers: int = 0
    total_real_servers: int = 0
    conditions: tuple[Condition, ...] = ()

    @classmethod
    def from_object(cls, obj: Mapping[str, Any] | None) -> VirtualServerStatus:
        obj = obj or {}
        return cls(
            observed_generation=int(obj.get("observedGeneration") or 0),
            director_group=str(obj.get("directorGroup", "")),
            accepted_vip=str(obj.get("acceptedVIP", "")),
            next_director_group=str(obj.get("nextDirectorGroup", "")),
            active_director=str(obj.get("activeDirector", "")),
            directors=tuple(
                DirectorStatus(str(d.get("node", "")), str(d.get("role", "")))
                for d in obj.get("directors") or []
            ),
            ready_real_servers=int(obj.get("readyRealServers") or 0),
            total_real_servers=int(obj.get("totalRealServers") or 0),
            conditions=tuple(Condition.from_object(c) for c in obj.get("conditions") or []),
        )

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


@dataclass(frozen=True)
class VirtualServer(NamedObject):
    meta: ObjectMeta
    spec: VirtualServerSpec
    status: VirtualServerStatus = field(default_factory=VirtualServerStatus)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> VirtualServer:
        meta = ObjectMeta.from_object(obj)
        spec = parse_spec(obj.get("spec"), name=f"{meta.namespace}/{meta.name}")
        return cls(meta, spec, VirtualServerStatus.from_object(obj.get("status")))


def parse_spec(raw: Any, name: str = "") -> VirtualServerSpec:
    """Parse and default a VirtualServer spec; raise ValidationError listing every bad field."""
    errors = Errors()
    if not isinstance(raw, Mapping):
        errors.required("spec")
        raise ValidationError(KIND, name, errors.items)

    vip = _parse_vip(errors, raw)
    ports = _parse_ports(errors, raw)

    pool_name: str | None = None
    pool_ref = get_map(errors, raw, "poolRef", "spec.poolRef")
    if pool_ref is None:
        errors.required("spec.poolRef")
    else:
        pool_name = get_str(errors, pool_ref, "name", "spec.poolRef.name")
        if pool_name is None:
            errors.required("spec.poolRef.name")
        elif not network.is_dns_subdomain(pool_name):
            errors.invalid(
                "spec.poolRef.name",
                pool_name,
                f"should match '{network.DNS_SUBDOMAIN_PATTERN}' (a DNS-1123 subdomain)",
            )
            pool_name = None

    scheduler = _enum(errors, raw, "scheduler", "spec.scheduler", Scheduler, DEFAULT_SCHEDULER)
    forwarding = _enum(errors, raw, "forwarding", "spec.forwarding", Forwarding, DEFAULT_FORWARDING)

    flags: list[str] = []
    for i, flag in enumerate(get_list(errors, raw, "schedulerFlags", "spec.schedulerFlags") or []):
        fpath = f"spec.schedulerFlags[{i}]"
        if flag not in API_SCHEDULER_FLAGS:
            errors.unsupported(fpath, flag, API_SCHEDULER_FLAGS)
        elif flag in flags:
            errors.add(fpath, f'Duplicate value: "{flag}"')
        else:
            flags.append(flag)
    if scheduler is not None and any(
        API_SCHEDULER_FLAGS[f].scheduler not in (None, scheduler) for f in flags
    ):
        errors.add("spec.schedulerFlags", f'Invalid value: "array": {MSG_FLAGS_MATCH}')

    if forwarding in (Forwarding.DIRECT, Forwarding.TUNNEL) and any(
        p.target_port is not None and p.target_port != p.port for p in ports
    ):
        errors.add("spec.ports", f'Invalid value: "array": {MSG_PORT_REMAP}')

    masquerade_source: MasqueradeSource | None = None
    if raw.get("masqueradeSource") is not None:
        masquerade_source = _enum(
            errors, raw, "masqueradeSource", "spec.masqueradeSource", MasqueradeSource,
            MasqueradeSource.DIRECTOR,
        )  # fmt: skip
        if (
            masquerade_source == MasqueradeSource.VIP
            and forwarding is not None
            and forwarding != Forwarding.MASQUERADE
        ):
            errors.add("spec.masqueradeSource", f'Invalid value: "string": {MSG_MASQUERADE_SOURCE}')

    persistence = _parse_persistence(errors, raw, vip)
    directors = _parse_directors(errors, raw)

    if errors or vip is None or pool_name is None or scheduler is None or forwarding is None:
        raise ValidationError(KIND, name, errors.items)
    return VirtualServerSpec(
        vip=vip,
        ports=tuple(ports),
        pool_name=pool_name,
        scheduler=scheduler,
        scheduler_flags=tuple(flags),
        forwarding=forwarding,
        persistence=persistence,
        directors=directors,
        masquerade_source=masquerade_source,
    )


def _enum(
    errors: Errors, raw: Mapping[str, Any], key: str, path: str, enum: type[E], default: E
) -> E | None:
    value = raw.get(key)
    if value is None:
        return default
    try:
        return enum(value)
    except ValueError:
        errors.unsupported(path, value, [str(m) for m in enum])
        return None


def _parse_vip(errors: Errors, raw: Mapping[str, Any]) -> str | None:
    vip = get_str(errors, raw, "vip", "spec.vip")
    if vip is None:
        if "vip" not in raw:
            errors.required("spec.vip")
        return None
    address = network.parse_ip(vip)
    if address is None:
        errors.add("spec.vip", f'Invalid value: "string": {MSG_VIP_INVALID}')
        return None
    if not network.is_global_unicast(address):
        errors.add("spec.vip", f'Invalid value: "string": {MSG_VIP_NOT_UNICAST}')
        return None
    return vip


def _parse_ports(errors: Errors, raw: Mapping[str, Any]) -> list[VirtualPort]:
    items = get_list(errors, raw, "ports", "spec.ports")
    if items is None:
        if "ports" not in raw:
            errors.required("spec.ports")
        return []
    if not items:
        errors.invalid("spec.ports", items, "should have at least 1 items")
        return []
    if len(items) > MAX_PORTS:
        errors.add("spec.ports", f"Too many: {len(items)}: must have at most {MAX_PORTS} items")
        return []
    ports: list[VirtualPort] = []
    for i, item in enumerate(items):
        path = f"spec.ports[{i}]"
        if not isinstance(item, Mapping):
            errors.invalid(path, item, "must be an object")
            continue
        port = get_int(errors, item, "port", f"{path}.port", network.PORT_MIN, network.PORT_MAX)
        if "port" not in item:
            errors.required(f"{path}.port")
        protocol = _enum(errors, item, "protocol", f"{path}.protocol", Protocol, DEFAULT_PROTOCOL)
        name = get_str(errors, item, "name", f"{path}.name")
        if name is not None and not network.is_port_name(name):
            errors.invalid(
                f"{path}.name", name, "must be an IANA service name (1-15 of a-z, 0-9, '-')"
            )
            name = None
        target = item.get("targetPort")
        target_port: int | str | None = None
        if target is not None:
            ok = (
                isinstance(target, int)
                and not isinstance(target, bool)
                and network.PORT_MIN <= target <= network.PORT_MAX
            ) or (isinstance(target, str) and network.is_port_name(target))
            if ok:
                target_port = target
            else:
                errors.add(f"{path}.targetPort", f'Invalid value: "string": {MSG_TARGET_PORT}')
        if port is not None and protocol is not None:
            ports.append(VirtualPort(port, protocol, target_port, name))
    keys = [p.key() for p in ports]
    if len(set(keys)) != len(keys):
        errors.add("spec.ports", f'Invalid value: "array": {MSG_PORTS_UNIQUE}')
    names = [p.name for p in ports if p.name is not None]
    if len(set(names)) != len(names):
        errors.add("spec.ports", f'Invalid value: "array": {MSG_PORT_NAMES_UNIQUE}')
    return ports


def _parse_persistence(
    errors: Errors, raw: Mapping[str, Any], vip: str | None
) -> Persistence | None:
    obj = get_map(errors, raw, "persistence", "spec.persistence")
    if obj is None:
        return None
    path = "spec.persistence"
    timeout = get_int(
        errors, obj, "timeoutSeconds", f"{path}.timeoutSeconds", 1, network.PERSISTENCE_TIMEOUT_MAX
    )
    netmask = get_str(errors, obj, "netmask", f"{path}.netmask")
    if netmask is not None and netmask not in network.IPV4_NETMASKS:
        errors.unsupported(f"{path}.netmask", netmask, network.IPV4_NETMASKS)
        netmask = None
    prefix = get_int(errors, obj, "prefixLength", f"{path}.prefixLength", 1, 128)
    family = None if vip is None else ipaddress.ip_address(vip).version
    if netmask is not None and family == 6:
        errors.add(path, f'Invalid value: "object": {MSG_NETMASK_FAMILY}')
    if prefix is not None and family == 4:
        errors.add(path, f'Invalid value: "object": {MSG_PREFIX_FAMILY}')
    return Persistence(
        timeout_seconds=DEFAULT_PERSISTENCE_TIMEOUT if timeout is None else timeout,
        netmask=netmask,
        prefix_length=prefix,
    )


def _parse_directors(errors: Errors, raw: Mapping[str, Any]) -> DirectorPlacement:
    obj = get_map(errors, raw, "directors", "spec.directors")
    if obj is None:
        return DirectorPlacement()
    selector = get_map(errors, obj, "nodeSelector", "spec.directors.nodeSelector")
    if selector is None:
        selector = dict(DEFAULT_DIRECTOR_NODE_SELECTOR)
    elif not selector:
        errors.add(
            "spec.directors.nodeSelector", f'Invalid value: "object": {MSG_NODE_SELECTOR_EMPTY}'
        )
    for key, value in selector.items():
        if not isinstance(value, str):
            errors.invalid(f"spec.directors.nodeSelector.{key}", value, "must be a string")
    interface = get_str(errors, obj, "interface", "spec.directors.interface")
    if interface is not None and len(interface) > network.INTERFACE_MAX:
        errors.add(
            "spec.directors.interface",
            f"Too long: may not be more than {network.INTERFACE_MAX} bytes",
        )
        interface = None
    if interface is not None and not network.is_interface_name(interface):
        errors.invalid(
            "spec.directors.interface", interface, f"should match '{network.INTERFACE_PATTERN}'"
        )
        interface = None
    return DirectorPlacement(
        node_selector={k: str(v) for k, v in selector.items()}, interface=interface
    )
