"""RealServerPool: who serves — pods selected by labels and/or static addresses, with weights.

``RealServerPool.from_object`` parses a Kubernetes object, applies the CRD's defaults and
raises one ``ValidationError`` listing every bad field, matching the CRD (see
tests/unit/api for the case-by-case agreement).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from . import network
from .common import Condition, LabelSelector, NamedObject, ObjectMeta
from .validation import Errors, ValidationError, get_int, get_list, get_map, get_str

KIND = "RealServerPool"
PLURAL = "realserverpools"

DEFAULT_WEIGHT = 1
MAX_SERVERS = 256
# Members a pool's status lists (the CRD's maxItems): the agents read the members from it,
# and at ~250 bytes each this keeps the object well under the API server's 1.5 MiB.
MAX_MEMBERS = 4096
# A pod annotation that overrides the pool's weight for that pod.
WEIGHT_ANNOTATION = "lvs.io/weight"

MSG_POOL_EMPTY = "a pool needs a selector or at least one server"
MSG_SELECTOR_EMPTY = "selector must not be empty: it would select every pod in the namespace"
MSG_SERVERS_UNIQUE = "each server address/port pair must be unique"
MSG_SERVER_ADDRESS = "address must be a unicast IPv4 or IPv6 address"
MSG_HTTP_ONLY = "path, expectedStatus and host apply to http health checks only"
MSG_TIMEOUT_INTERVAL = "timeoutSeconds must not exceed intervalSeconds"
MSG_HTTP_PATH = (
    "path must be an absolute URI path: '/' then letters, digits, -._~!$&'()*+,;=:@/ or "
    "%XX escapes, optionally ?query (no spaces, CR/LF or other control characters)"
)
MSG_HTTP_HOST = (
    "host must be a hostname (RFC 1123) or an IP address (IPv6 in brackets), optionally "
    "with :port (no spaces, CR/LF or other control characters)"
)


class HealthCheckType(StrEnum):
    """How a director probes a real server. A type the agent cannot run is refused here and
    by the CRD's enum, never treated as another type."""

    TCP = "tcp"  # connect succeeds
    HTTP = "http"  # GET path answers expectedStatus


# The spec.healthCheck fields that only an http check uses (the model and the CRD's rule).
HTTP_ONLY_FIELDS = ("path", "expectedStatus", "host")


DEFAULT_HEALTH_INTERVAL = 5
DEFAULT_HEALTH_TIMEOUT = 2
DEFAULT_RISE = 2
DEFAULT_FALL = 3
DEFAULT_HTTP_PATH = "/"
DEFAULT_HTTP_STATUS = 200


@dataclass(frozen=True)
class HealthCheck:
    type: HealthCheckType = HealthCheckType.TCP
    port: int | None = None  # None: the member's target port
    path: str | None = None
    expected_status: int | None = None
    host: str | None = None
    interval_seconds: int = DEFAULT_HEALTH_INTERVAL
    timeout_seconds: int = DEFAULT_HEALTH_TIMEOUT
    rise_threshold: int = DEFAULT_RISE
    fall_threshold: int = DEFAULT_FALL

    def __post_init__(self) -> None:
        # A HealthCheck built in code must not carry a type the agent would not know.
        object.__setattr__(self, "type", HealthCheckType(self.type))

    @property
    def http_path(self) -> str:
        return self.path or DEFAULT_HTTP_PATH

    @property
    def http_status(self) -> int:
        return self.expected_status or DEFAULT_HTTP_STATUS


@dataclass(frozen=True)
class StaticServer:
    address: str
    port: int | None = None  # None: the VirtualServer's targetPort
    weight: int = DEFAULT_WEIGHT
    name: str | None = None


@dataclass(frozen=True)
class RealServerPoolSpec:
    selector: LabelSelector | None = None
    weight: int = DEFAULT_WEIGHT
    servers: tuple[StaticServer, ...] = ()
    health_check: HealthCheck | None = None

    def to_object(self) -> dict[str, Any]:
        out: dict[str, Any] = {"weight": self.weight}
        if self.selector is not None:
            out["selector"] = self.selector.to_object()
        if self.servers:
            out["servers"] = []
            for s in self.servers:
                item: dict[str, Any] = {"address": s.address, "weight": s.weight}
                if s.port is not None:
                    item["port"] = s.port
                if s.name is not None:
                    item["name"] = s.name
                out["servers"].append(item)
        if self.health_check is not None:
            hc = self.health_check
            check: dict[str, Any] = {
                "type": str(hc.type),
                "intervalSeconds": hc.interval_seconds,
                "timeoutSeconds": hc.timeout_seconds,
                "riseThreshold": hc.rise_threshold,
                "fallThreshold": hc.fall_threshold,
            }
            for key, value in (
                ("port", hc.port),
                ("path", hc.path),
                ("expectedStatus", hc.expected_status),
                ("host", hc.host),
            ):
                if value is not None:
                    check[key] = value
            out["healthCheck"] = check
        return out


@dataclass(frozen=True, slots=True)
class PoolMember:
    """One resolved real server, as the controller writes it to the pool's status (slots:
    the controller keeps one per member of every pool, the agents one per member of the
    pools they serve)."""

    address: str
    weight: int
    ready: bool
    serving: bool = True
    terminating: bool = False
    port: int | None = None  # static servers with their own port
    ports: Mapping[str, int] = field(default_factory=dict)  # named ports (pod members)
    pod: str = ""
    node: str = ""
    source: str = "pod"  # "pod" | "static"

    def to_object(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "address": self.address,
            "weight": self.weight,
            "ready": self.ready,
            "serving": self.serving,
            "terminating": self.terminating,
            "source": self.source,
        }
        if self.port is not None:
            out["port"] = self.port
        if self.ports:
            out["ports"] = [{"name": k, "port": v} for k, v in sorted(self.ports.items())]
        if self.pod:
            out["pod"] = self.pod
        if self.node:
            out["node"] = self.node
        return out

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> PoolMember:
        return cls(
            address=str(obj.get("address", "")),
            weight=int(obj.get("weight", DEFAULT_WEIGHT)),
            ready=bool(obj.get("ready", False)),
            serving=bool(obj.get("serving", obj.get("ready", False))),
            terminating=bool(obj.get("terminating", False)),
            port=obj.get("port"),
            ports={str(p["name"]): int(p["port"]) for p in obj.get("ports") or []},
            pod=str(obj.get("pod", "")),
            node=str(obj.get("node", "")),
            source=str(obj.get("source", "pod")),
        )


@dataclass(frozen=True)
class RealServerPoolStatus:
    observed_generation: int = 0
    members: tuple[PoolMember, ...] = ()
    ready_members: int = 0
    total_members: int = 0
    conditions: tuple[Condition, ...] = ()

    @classmethod
    def from_object(cls, obj: Mapping[str, Any] | None) -> RealServerPoolStatus:
        obj = obj or {}
        return cls(
            observed_generation=int(obj.get("observedGeneration") or 0),
            members=tuple(PoolMember.from_object(m) for m in obj.get("members") or []),
            ready_members=int(obj.get("readyMembers") or 0),
            total_members=int(obj.get("totalMembers") or 0),
            conditions=tuple(Condition.from_object(c) for c in obj.get("conditions") or []),
        )


@dataclass(frozen=True)
class RealServerPool(NamedObject):
    meta: ObjectMeta
    spec: RealServerPoolSpec
    status: RealServerPoolStatus = field(default_factory=RealServerPoolStatus)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> RealServerPool:
        meta = ObjectMeta.from_object(obj)
        spec = parse_spec(obj.get("spec"), name=f"{meta.namespace}/{meta.name}")
        return cls(meta, spec, RealServerPoolStatus.from_object(obj.get("status")))


def parse_spec(raw: Any, name: str = "") -> RealServerPoolSpec:
    """Parse and default a RealServerPool spec; raise ValidationError listing every bad field."""
    errors = Errors()
    if not isinstance(raw, Mapping):
        errors.required("spec")
        raise ValidationError(KIND, name, errors.items)

    selector: LabelSelector | None = None
    selector_raw = get_map(errors, raw, "selector", "spec.selector")
    if selector_raw is not None:
        selector = LabelSelector.parse(errors, selector_raw, "spec.selector")
        if not selector_raw.get("matchLabels") and not selector_raw.get("matchExpressions"):
            errors.add("spec.selector", f'Invalid value: "object": {MSG_SELECTOR_EMPTY}')

    weight = get_int(errors, raw, "weight", "spec.weight", network.WEIGHT_MIN, network.WEIGHT_MAX)
    servers = _parse_servers(errors, raw)
    if selector_raw is None and not servers and not _has_server_items(raw):
        errors.add("spec", f'Invalid value: "object": {MSG_POOL_EMPTY}')
    health = _parse_health_check(errors, raw)

    if errors:
        raise ValidationError(KIND, name, errors.items)
    return RealServerPoolSpec(
        selector=selector,
        weight=DEFAULT_WEIGHT if weight is None else weight,
        servers=tuple(servers),
        health_check=health,
    )


def _has_server_items(raw: Mapping[str, Any]) -> bool:
    items = raw.get("servers")
    return isinstance(items, list) and len(items) > 0


def _parse_servers(errors: Errors, raw: Mapping[str, Any]) -> list[StaticServer]:
    items = get_list(errors, raw, "servers", "spec.servers")
    if items is None:
        return []
    if len(items) > MAX_SERVERS:
        errors.add("spec.servers", f"Too many: {len(items)}: must have at most {MAX_SERVERS} items")
        return []
    servers: list[StaticServer] = []
    for i, item in enumerate(items):
        path = f"spec.servers[{i}]"
        if not isinstance(item, Mapping):
            errors.invalid(path, item, "must be an object")
            continue
        address = get_str(errors, item, "address", f"{path}.address")
        if address is None:
            if "address" not in item:
                errors.required(f"{path}.address")
        else:
            parsed = network.parse_ip(address)
            if parsed is None or not network.is_global_unicast(parsed):
                errors.add(f"{path}.address", f'Invalid value: "string": {MSG_SERVER_ADDRESS}')
                address = None
        port = get_int(errors, item, "port", f"{path}.port", network.PORT_MIN, network.PORT_MAX)
        weight = get_int(
            errors, item, "weight", f"{path}.weight", network.WEIGHT_MIN, network.WEIGHT_MAX
        )
        name = get_str(errors, item, "name", f"{path}.name")
        if address is not None:
            servers.append(
                StaticServer(
                    address=address,
                    port=port,
                    weight=DEFAULT_WEIGHT if weight is None else weight,
                    name=name,
                )
            )
    keys = [(s.address, s.port or 0) for s in servers]
    if len(set(keys)) != len(keys):
        errors.add("spec.servers", f'Invalid value: "array": {MSG_SERVERS_UNIQUE}')
    return servers


def _parse_health_check(errors: Errors, raw: Mapping[str, Any]) -> HealthCheck | None:
    obj = get_map(errors, raw, "healthCheck", "spec.healthCheck")
    if obj is None:
        return None
    path = "spec.healthCheck"
    kind_raw = obj.get("type", str(HealthCheckType.TCP))
    kind: HealthCheckType | None
    try:
        kind = HealthCheckType(kind_raw)
    except ValueError:
        errors.unsupported(f"{path}.type", kind_raw, [str(t) for t in HealthCheckType])
        kind = None
    port = get_int(errors, obj, "port", f"{path}.port", network.PORT_MIN, network.PORT_MAX)
    http_path = get_str(errors, obj, "path", f"{path}.path")
    if http_path is not None and len(http_path) > network.HTTP_PATH_MAX:
        errors.add(f"{path}.path", f"Too long: may not be more than {network.HTTP_PATH_MAX} bytes")
        http_path = None
    elif http_path is not None and not network.is_http_path(http_path):
        errors.add(f"{path}.path", f'Invalid value: "string": {MSG_HTTP_PATH}')
        http_path = None
    status = get_int(errors, obj, "expectedStatus", f"{path}.expectedStatus", 100, 599)
    host = get_str(errors, obj, "host", f"{path}.host")
    if host is not None and len(host) > network.HTTP_HOST_MAX:
        errors.add(f"{path}.host", f"Too long: may not be more than {network.HTTP_HOST_MAX} bytes")
        host = None
    elif host is not None and not network.is_http_host(host):
        errors.add(f"{path}.host", f'Invalid value: "string": {MSG_HTTP_HOST}')
        host = None
    interval = get_int(errors, obj, "intervalSeconds", f"{path}.intervalSeconds", 1, 3600)
    timeout = get_int(errors, obj, "timeoutSeconds", f"{path}.timeoutSeconds", 1, 3600)
    rise = get_int(errors, obj, "riseThreshold", f"{path}.riseThreshold", 1, 100)
    fall = get_int(errors, obj, "fallThreshold", f"{path}.fallThreshold", 1, 100)
    interval = DEFAULT_HEALTH_INTERVAL if interval is None else interval
    timeout = DEFAULT_HEALTH_TIMEOUT if timeout is None else timeout
    if kind == HealthCheckType.TCP and any(k in obj for k in HTTP_ONLY_FIELDS):
        errors.add(path, f'Invalid value: "object": {MSG_HTTP_ONLY}')
    if timeout > interval:
        errors.add(path, f'Invalid value: "object": {MSG_TIMEOUT_INTERVAL}')
    return HealthCheck(
        type=kind or HealthCheckType.TCP,
        port=port,
        path=http_path,
        expected_status=status,
        host=host,
        interval_seconds=interval,
        timeout_seconds=timeout,
        rise_threshold=DEFAULT_RISE if rise is None else rise,
        fall_threshold=DEFAULT_FALL if fall is None else fall,
    )
