"""RealServerPools: EndpointSlices (of the pool's headless Service) + static servers →
members → the pool's status.

Pure functions take typed inputs; ``register`` wires the kopf indexes and event handlers
that feed them (thin: they only record and wake the reconciler).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import sys
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import kopf

from lvs_operator import GROUP, VERSION
from lvs_operator.api import realserverpool as rsp
from lvs_operator.api.common import Condition
from lvs_operator.api.contract import COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL
from lvs_operator.api.network import WEIGHT_MAX, WEIGHT_MIN
from lvs_operator.api.realserverpool import (
    MAX_MEMBERS,
    WEIGHT_ANNOTATION,
    PoolMember,
    RealServerPool,
)

from . import conditions as c
from .conditions import EventSpec, ObjectRef
from .manifests import POOL_COMPONENT

SERVICE_NAME_LABEL = "kubernetes.io/service-name"

# Ready reasons of a pool.
MEMBERS_READY = "MembersReady"
NO_MEMBERS = "NoMembers"
NO_READY_MEMBERS = "NoReadyMembers"
SELECTOR_UNSUPPORTED = "SelectorUnsupported"
SERVICE_REJECTED = "ServiceRejected"
TOO_MANY_MEMBERS = "TooManyMembers"
INVALID = "Invalid"

MSG_SELECTOR_UNSUPPORTED = (
    "spec.selector has only matchExpressions: the pool's headless Service selects pods by "
    "equality, so add at least one matchLabels entry (e.g. app: web); the expressions are "
    "then applied on top"
)

PodKey = tuple[str, str]


@dataclass(frozen=True, slots=True, weakref_slot=True)
class PodInfo:
    """What the controller keeps of a pod: its labels and its weight annotation."""

    labels: Mapping[str, str] = field(default_factory=dict)
    weight: str | None = None


# The pods of a ReplicaSet have the same labels (and weight): one PodInfo for them all,
# held as long as an index holds it (one each for 10,000 pods: 2.6 MiB more, in the bench).
_pod_infos: weakref.WeakValueDictionary[tuple[tuple[tuple[str, str], ...], str | None], PodInfo] = (
    weakref.WeakValueDictionary()
)


def pod_info(body: Mapping[str, Any]) -> PodInfo:
    meta = body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    weight = annotations.get(WEIGHT_ANNOTATION)
    labels = meta.get("labels") or {}
    key = (tuple(sorted(labels.items())), weight)
    info = _pod_infos.get(key)
    if info is None:
        info = _pod_infos[key] = PodInfo(labels=dict(labels), weight=weight)
    return info


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    """What membership reads of one endpoint of an EndpointSlice (its conditions as the
    API documents their defaults: ready unknown is ready, serving unknown is ready)."""

    addresses: tuple[str, ...]
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    pod: str = ""  # the targetRef's name when it is a Pod
    node: str = ""


@dataclass(frozen=True, slots=True)
class SliceInfo:
    """What the controller keeps of an EndpointSlice of a pool's Service: its endpoints
    and its named ports (a record, not the body: 1,000 slices' bodies were ~13 MiB)."""

    endpoints: tuple[SliceEndpoint, ...] = ()
    ports: tuple[tuple[str, int], ...] = ()  # (name, number): the targetPort keys


def slice_info(body: Mapping[str, Any]) -> SliceInfo:
    ports = tuple(
        (sys.intern(str(p["name"])), int(p["port"]))
        for p in body.get("ports") or []
        if p.get("name") and p.get("port") is not None
    )
    endpoints = []
    for ep in body.get("endpoints") or []:
        ref = ep.get("targetRef") or {}
        cond = ep.get("conditions") or {}
        ready = cond.get("ready")
        ready = True if ready is None else bool(ready)
        serving = cond.get("serving")
        endpoints.append(
            SliceEndpoint(
                addresses=tuple(str(a) for a in ep.get("addresses") or []),
                ready=ready,
                serving=ready if serving is None else bool(serving),
                terminating=bool(cond.get("terminating") or False),
                pod=str(ref.get("name", "")) if ref.get("kind", "Pod") == "Pod" else "",
                # node names repeat across slices: one string each
                node=sys.intern(str(ep.get("nodeName") or "")),
            )
        )
    return SliceInfo(tuple(endpoints), ports)


def parse_weight(raw: str | None, default: int) -> tuple[int, str | None]:
    """The weight a pod annotation asks for, or ``default`` and a message saying why not."""
    if raw is None:
        return default, None
    try:
        value = int(raw.strip())
    except ValueError:
        value = -1
    if WEIGHT_MIN <= value <= WEIGHT_MAX:
        return value, None
    return default, (
        f"annotation {WEIGHT_ANNOTATION}={raw!r} is not an integer "
        f"{WEIGHT_MIN}-{WEIGHT_MAX}; using the pool's weight {default}"
    )


@functools.lru_cache(maxsize=65536)
def _ip_order(address: str) -> tuple[int, int]:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return (9, 0)
    return (ip.version, int(ip))


def _address_key(member: PoolMember) -> tuple[int, int, int, str]:
    return (*_ip_order(member.address), member.port or 0, member.pod or member.address)


def sort_members(members: Iterable[PoolMember]) -> tuple[PoolMember, ...]:
    return tuple(sorted(members, key=_address_key))


def static_members(pool: RealServerPool) -> list[PoolMember]:
    """Static servers are members as declared: ready (the agents' health checks decide
    further), with their own port when they have one."""
    return [
        PoolMember(
            address=s.address,
            weight=s.weight,
            ready=True,
            serving=True,
            terminating=False,
            port=s.port,
            source="static",
        )
        for s in pool.spec.servers
    ]


def pod_members(
    pool: RealServerPool,
    slices: Iterable[SliceInfo],
    pods: Mapping[PodKey, PodInfo],
) -> tuple[list[PoolMember], list[str]]:
    """Members from the EndpointSlices of the pool's Service, with the pods' weights.

    Each endpoint address is one member; its ``ports`` maps the slice's port names (the
    targetPort keys) to the numbers resolved for that pod. An address listed twice (slices
    in transition) is merged. ``matchExpressions`` of the pool's selector are applied to
    the pods' labels here (the Service selected by ``matchLabels`` only). Returns the
    members and messages about bad weight annotations.
    """
    selector = pool.spec.selector
    need_labels = selector is not None and bool(selector.match_expressions)
    merged: dict[str, PoolMember] = {}
    problems: list[str] = []
    for sl in slices:
        ports = dict(sl.ports)  # one for the slice's members (read, never changed)
        for ep in sl.endpoints:
            pod = ep.pod
            info = pods.get((pool.namespace, pod)) if pod else None
            if (
                need_labels
                and selector is not None
                and (info is None or not selector.matches(info.labels))
            ):
                continue
            weight, problem = parse_weight(info.weight if info else None, pool.spec.weight)
            if problem:
                problems.append(f"pod {pool.namespace}/{pod}: {problem}")
            ready, serving, terminating = ep.ready, ep.serving, ep.terminating
            for address in ep.addresses:
                member = PoolMember(
                    address=address,
                    weight=weight,
                    ready=ready,
                    serving=serving,
                    terminating=terminating,
                    ports=ports,
                    pod=pod,
                    node=ep.node,
                    source="pod",
                )
                old = merged.get(member.address)
                if old is not None:
                    member = PoolMember(
                        address=old.address,
                        weight=old.weight,
                        ready=old.ready or member.ready,
                        serving=old.serving or member.serving,
                        terminating=old.terminating and member.terminating,
                        ports={**member.ports, **old.ports},
                        pod=old.pod or member.pod,
                        node=old.node or member.node,
                        source="pod",
                    )
                merged[member.address] = member
    return list(merged.values()), problems


@dataclass(frozen=True)
class PoolOutcome:
    """What the controller concludes about one pool. ``members``: those its status lists
    (the agents serve these); ``unlisted``/``unlisted_ready``: members past MAX_MEMBERS,
    counted but not listed."""

    members: tuple[PoolMember, ...]
    conditions: tuple[Condition, ...]  # without times (see conditions.merge_conditions)
    problems: tuple[str, ...] = ()
    unlisted: int = 0
    unlisted_ready: int = 0

    @property
    def total(self) -> int:
        return len(self.members) + self.unlisted

    @property
    def ready(self) -> int:
        return sum(1 for m in self.members if _is_ready(m)) + self.unlisted_ready


def _is_ready(member: PoolMember) -> bool:
    return member.ready and not member.terminating


def listed_members(
    members: Sequence[PoolMember], limit: int = MAX_MEMBERS
) -> tuple[tuple[PoolMember, ...], int, int]:
    """The members a status can list (at most ``limit``; the agents serve these): the ready
    ones first, then the serving terminating ones, then the rest, each in address order, so
    the choice is stable; with how many are left out, and how many of those are ready."""
    if len(members) <= limit:
        return tuple(members), 0, 0
    rank = {id(m): (0 if _is_ready(m) else 1 if m.serving else 2) for m in members}
    chosen = sorted(members, key=lambda m: rank[id(m)])[:limit]  # stable: address order kept
    kept = {id(m) for m in chosen}
    left_ready = sum(1 for m in members if id(m) not in kept and _is_ready(m))
    return sort_members(chosen), len(members) - limit, left_ready


def too_many_members_message(total: int, ready: int, listed_ready: int) -> str:
    return (
        f"{total} members ({ready} ready): more than the {MAX_MEMBERS} a pool's status can "
        f"list, so the directors serve only the {MAX_MEMBERS} listed ({listed_ready} ready; "
        "ready members are listed first). Split the pool: narrower selectors, and a "
        "VirtualServer per pool"
    )


def service_rejected_message(namespace: str, service: str, server_message: str) -> str:
    return (
        f"the API server refused the pool's headless Service {namespace}/{service}, so no pod "
        f"can be selected (static servers still serve): {server_message}; fix spec.selector"
    )


def evaluate_pool(
    pool: RealServerPool,
    slices: Iterable[SliceInfo],
    pods: Mapping[PodKey, PodInfo],
    service_rejected: str | None = None,
) -> PoolOutcome:
    """The pool's members and Ready condition. ``service_rejected``: the message of the
    API server that refused the pool's Service as the controller builds it now (then its
    EndpointSlices, if any, are of an older Service and are not used)."""
    selector = pool.spec.selector
    unsupported = selector is not None and not selector.match_labels
    found, problems = (
        ([], []) if selector is None or service_rejected else pod_members(pool, slices, pods)
    )
    members, unlisted, unlisted_ready = listed_members(
        sort_members([*found, *static_members(pool)])
    )
    listed_ready = sum(1 for m in members if _is_ready(m))
    ready = listed_ready + unlisted_ready
    total = len(members) + unlisted
    if unsupported:
        cond = c.condition(c.READY, False, SELECTOR_UNSUPPORTED, MSG_SELECTOR_UNSUPPORTED)
    elif service_rejected:
        cond = c.condition(c.READY, False, SERVICE_REJECTED, service_rejected)
    elif unlisted:
        cond = c.condition(
            c.READY,
            False,
            TOO_MANY_MEMBERS,
            too_many_members_message(total, ready, listed_ready),
        )
    elif not members:
        cond = c.condition(
            c.READY,
            False,
            NO_MEMBERS,
            "the pool has no members: its selector matches no pods and it lists no servers",
        )
    elif ready == 0:
        cond = c.condition(
            c.READY, False, NO_READY_MEMBERS, f"none of the {len(members)} members is ready"
        )
    else:
        cond = c.condition(c.READY, True, MEMBERS_READY, f"{ready} of {len(members)} members ready")
    return PoolOutcome(members, (cond,), tuple(problems), unlisted, unlisted_ready)


def invalid_pool_outcome(message: str) -> PoolOutcome:
    return PoolOutcome((), (c.condition(c.READY, False, INVALID, message),))


def pool_status(
    outcome: PoolOutcome,
    generation: int,
    previous: Mapping[str, Any] | None,
    now: datetime,
) -> dict[str, Any]:
    """The pool's whole status (the controller is its only writer)."""
    conds = c.merge_conditions(c.conditions_from(previous), outcome.conditions, now, generation)
    return {
        "observedGeneration": generation,
        "members": [m.to_object() for m in outcome.members],
        "readyMembers": outcome.ready,
        "totalMembers": outcome.total,
        "readyOfTotal": f"{outcome.ready}/{outcome.total}",
        "conditions": [cd.to_object() for cd in conds],
    }


def pool_ref(pool: RealServerPool) -> ObjectRef:
    return ObjectRef(f"{GROUP}/{VERSION}", rsp.KIND, pool.namespace, pool.name, pool.meta.uid)


def _member_states(status: Mapping[str, Any] | None) -> dict[str, tuple[bool, bool]]:
    out = {}
    for m in (status or {}).get("members") or []:
        key = f"{m.get('address')}" + (f":{m['port']}" if m.get("port") else "")
        out[key] = (bool(m.get("ready")), bool(m.get("terminating")))
    return out


def pool_events(
    ref: ObjectRef, previous: Mapping[str, Any] | None, new: Mapping[str, Any]
) -> list[EventSpec]:
    """Events for a pool's state changes: its Ready condition, and who joined, left, or
    stopped/started being ready (not on the first status: the Ready event says it)."""
    events: list[EventSpec] = []
    before = c.find(c.conditions_from(previous), c.READY)
    after = c.find(c.conditions_from(new), c.READY)
    if after is not None and c.changed(before, after):
        kind = c.NORMAL if after.status == c.TRUE or after.reason == NO_MEMBERS else c.WARNING
        events.append(EventSpec(ref, kind, after.reason, after.message))
    if before is None:
        return events
    old, cur = _member_states(previous), _member_states(new)
    parts = []
    added = sorted(set(cur) - set(old))
    removed = sorted(set(old) - set(cur))
    if added:
        parts.append("added " + ", ".join(added))
    if removed:
        parts.append("removed " + ", ".join(removed))
    flips = []
    for key in sorted(set(cur) & set(old)):
        if cur[key] != old[key]:
            ready, terminating = cur[key]
            flips.append(
                f"{key} " + ("terminating" if terminating else ("ready" if ready else "not ready"))
            )
    if flips:
        parts.append("; ".join(flips))
    if parts:
        events.append(
            EventSpec(
                ref,
                c.NORMAL,
                "MembersChanged",
                f"{new.get('readyOfTotal', '')} ready: " + "; ".join(parts),
            )
        )
    return events


# --- kopf wiring ----------------------------------------------------------------------------


class IndexedBody(Mapping[str, Any]):
    """An object as an index keeps it: its fields as parsed, except one (a pool's or a
    VirtualServer's ``status``, a Service's ``spec``), kept as compact JSON text and parsed
    again on each read (a fresh copy each time). A pass reads that field once or a few
    times; held parsed, the pools' member lists and the VirtualServers' conditions were much
    of the indexes, and their many small objects kept the allocator's arenas from being
    freed."""

    __slots__ = ("_fields", "_text", "_text_key")

    def __init__(
        self, fields: Mapping[str, Any], text_key: str = "", text: str | None = None
    ) -> None:
        self._fields = fields
        self._text_key = text_key
        self._text = text

    def __getitem__(self, key: str) -> Any:
        if self._text is not None and key == self._text_key:
            return json.loads(self._text)
        return self._fields[key]

    def __iter__(self) -> Iterator[str]:
        yield from self._fields
        if self._text is not None:
            yield self._text_key

    def __len__(self) -> int:
        return len(self._fields) + (self._text is not None)

    def __repr__(self) -> str:
        return f"IndexedBody({dict(self)!r})"


def index_body(
    body: Mapping[str, Any], keep: Sequence[str], as_text: str = "status"
) -> IndexedBody:
    """A copy of what an index keeps of an object: the ``keep`` fields, without
    ``metadata.managedFields`` (the planner never reads them; every field a client wrote,
    for every object held, was much of the controller's memory); ``as_text``, if kept,
    as JSON text."""
    import copy

    out = {k: copy.deepcopy(body[k]) for k in keep if k in body and k not in ("metadata", as_text)}
    if "metadata" in keep and "metadata" in body:
        meta = body["metadata"]
        out["metadata"] = {k: copy.deepcopy(v) for k, v in meta.items() if k != "managedFields"}
    value = body.get(as_text) if as_text in keep and as_text != "metadata" else None
    text = None if value is None else json.dumps(value, separators=(",", ":"))
    return IndexedBody(out, as_text, text)


def register(registry: kopf.OperatorRegistry, kick: Any) -> None:
    """Indexes of pools, our EndpointSlices and Services; each event wakes the reconciler
    (``kick(**kwargs)`` gets the indices kopf passes). Pods are not kopf's: the
    reconciler's ``PodCache`` (podcache.py) watches them."""
    owned = {MANAGED_BY_LABEL: MANAGED_BY, COMPONENT_LABEL: POOL_COMPONENT}

    @kopf.index(f"{GROUP}/{VERSION}", rsp.PLURAL, registry=registry, id="lvs_pools")
    async def index_pools(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Any:
        keep = ("apiVersion", "kind", "metadata", "spec", "status")
        return {(namespace, name): index_body(body, keep)}

    @kopf.index(
        "discovery.k8s.io", "v1", "endpointslices", registry=registry, id="lvs_slices", labels=owned
    )
    async def index_slices(
        body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
    ) -> Any:
        service = labels.get(SERVICE_NAME_LABEL)
        if not service:
            return {}
        return {(namespace, service): slice_info(body)}

    @kopf.index("", "v1", "services", registry=registry, id="lvs_services", labels=owned)
    async def index_services(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Any:
        return {(namespace, name): index_body(body, ("metadata", "spec"), as_text="spec")}

    @kopf.on.event(f"{GROUP}/{VERSION}", rsp.PLURAL, registry=registry, id="pool_event")
    async def on_pool(**kwargs: Any) -> None:
        await kick(**kwargs)

    @kopf.on.event(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        registry=registry,
        id="slice_event",
        labels=owned,
    )
    async def on_slice(**kwargs: Any) -> None:
        await kick(**kwargs)

    @kopf.on.event("", "v1", "services", registry=registry, id="service_event", labels=owned)
    async def on_service(**kwargs: Any) -> None:
        await kick(**kwargs)
