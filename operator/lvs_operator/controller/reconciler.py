"""The reconciler: one level-triggered pass over everything the controller watches.

``plan(world, config, now)`` is pure: from a snapshot of the cluster (what kopf's indexes
and the namespace informers hold) it computes every write needed, comparing with what is
there so that nothing unchanged is written. ``Reconciler`` runs it whenever an event
arrives (debounced), executes the plan with lightkube, and retries failures with backoff.

One pass over all objects is simple and restart-safe: conflicts and groups are decided on
the whole set, and a restarted controller computes the same answer and writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from lightkube import ApiError, AsyncClient
from lightkube.resources.apps_v1 import DaemonSet
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Event, Secret, Service
from lightkube.types import PatchType

from lvs_operator import GROUP, VERSION
from lvs_operator.api import realserverpool as rsp
from lvs_operator.api import virtualserver as vsm
from lvs_operator.api.common import ObjectKey, object_key
from lvs_operator.api.contract import (
    COMPONENT_LABEL,
    GROUP_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NEXT_GROUP_LABEL,
    daemonset_name,
    lease_name,
    peer_secret_name,
)
from lvs_operator.api.realserverpool import RealServerPool
from lvs_operator.api.resources import RealServerPoolResource, VirtualServerResource
from lvs_operator.api.validation import ValidationError
from lvs_operator.api.virtualserver import VirtualPort, VirtualServer

from ..heap import HeapTrimmer
from ..listwatch import Informer
from .conditions import NORMAL, EventSpec, build_event
from .config import ControllerConfig
from .groups import (
    DaemonSetPlan,
    DirectorPod,
    desired_groups,
    expected_programmed,
    group_views,
    next_lease_expiry,
    parse_lease,
    plan_daemonsets,
)
from .manifests import (
    DIRECTOR_COMPONENT,
    FIELD_MANAGER,
    build_peer_secret,
    build_service,
    carries,
    service_name,
    service_ports,
)
from .metrics import (
    EVENT_FAILED,
    EVENT_POSTED,
    PASS_ERROR,
    PASS_FAILED_WRITES,
    PASS_OK,
    WRITE_EXISTS,
    WRITE_FAILED,
    WRITE_NOT_FOUND,
    WRITE_OK,
    WRITE_REFUSED,
    ControllerMetrics,
    ObjectCondition,
)
from .podcache import PodCache
from .pools import (
    SERVICE_NAME_LABEL,
    PodInfo,
    PoolOutcome,
    SliceInfo,
    evaluate_pool,
    invalid_pool_outcome,
    pool_events,
    pool_ref,
    pool_status,
    service_rejected_message,
)
from .relevance import (
    IRRELEVANT,
    PodRelevance,
    PoolSelector,
    expiry_passed,
    lease_change_matters,
    next_expiry,
    pod_change_matters,
    pod_relevance,
)
from .virtualservers import (
    DirectorView,
    VSDecision,
    complete_moves,
    evaluate,
    owned_status,
    vs_events,
    vs_ref,
    vs_status,
)

log = logging.getLogger(__name__)

Key = ObjectKey
POOL_STATUS_FIELDS = (
    "observedGeneration",
    "members",
    "readyMembers",
    "totalMembers",
    "readyOfTotal",
    "conditions",
)


@dataclass(frozen=True)
class ServiceRejection:
    """A pool Service the API server refused as invalid: not applied again while the
    controller would build the same body; the pool's status says why instead."""

    body: Mapping[str, Any]
    message: str


@dataclass
class World:
    """A snapshot of what the controller watches."""

    virtualservers: list[Mapping[str, Any]] = field(default_factory=list)
    pools: list[Mapping[str, Any]] = field(default_factory=list)
    slices: Mapping[Key, list[SliceInfo]] = field(default_factory=dict)  # by Service
    services: Mapping[Key, Mapping[str, Any]] = field(default_factory=dict)
    pods: Mapping[Key, PodInfo] = field(default_factory=dict)
    director_pods: list[DirectorPod] = field(default_factory=list)
    leases: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # by name
    daemonsets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # by name
    # Services the API server refused (422): by Service, the body refused and its message.
    service_rejections: Mapping[Key, ServiceRejection] = field(default_factory=dict)


@dataclass(frozen=True)
class GroupLabels:
    """A VirtualServer's group labels: the group serving it, and the one it moves to."""

    group: str | None = None
    next_group: str | None = None


@dataclass
class Plan:
    services: list[dict[str, Any]] = field(default_factory=list)
    pool_statuses: list[tuple[Key, dict[str, Any]]] = field(default_factory=list)
    daemonsets: DaemonSetPlan = field(default_factory=DaemonSetPlan)
    peer_secrets: tuple[str, ...] = ()  # groups whose heartbeat-key Secret must exist
    labels: list[tuple[Key, GroupLabels]] = field(default_factory=list)
    vs_statuses: list[tuple[Key, dict[str, Any]]] = field(default_factory=list)
    events: list[EventSpec] = field(default_factory=list)
    # Posted only once the DaemonSet they speak of was written.
    daemonset_events: dict[str, list[EventSpec]] = field(default_factory=dict)
    wake_at: datetime | None = None
    pool_namespaces: set[str] = field(default_factory=set)
    # by namespace, the pools that select pods there (which pod events can matter)
    pool_selectors: dict[str, tuple[PoolSelector, ...]] = field(default_factory=dict)
    wanted_services: set[Key] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    # every VirtualServer's and pool's conditions, counted (lvs_controller_objects)
    conditions: Counter[ObjectCondition] = field(default_factory=Counter)
    groups: tuple[str, ...] = ()  # the director groups whose DaemonSet stays or comes

    @property
    def writes(self) -> int:
        return (
            len(self.services)
            + len(self.pool_statuses)
            + len(self.daemonsets.apply)
            + len(self.daemonsets.delete)
            + len(self.labels)
            + len(self.vs_statuses)
        )


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _rv(obj: Mapping[str, Any]) -> str:
    return str(_meta(obj).get("resourceVersion") or "")


ParsedPool = tuple[Mapping[str, Any], RealServerPool | None, str]  # raw, model, problem


@dataclass(frozen=True)
class DecisionInput:
    """What deciding a VirtualServer reads of it (``evaluate``, ``stage_moves``): while it
    stays the same, the decisions of the last full pass still hold for it."""

    deleting: bool
    uid: str
    created: str
    generation: int
    spec: Mapping[str, Any]
    director_group: str
    accepted_vip: str


def decision_input(raw: Mapping[str, Any]) -> DecisionInput:
    meta = _meta(raw)
    status = raw.get("status") or {}
    return DecisionInput(
        deleting=bool(meta.get("deletionTimestamp")),
        uid=str(meta.get("uid") or ""),
        created=str(meta.get("creationTimestamp") or ""),
        generation=int(meta.get("generation") or 0),
        spec=raw.get("spec") or {},
        director_group=str(status.get("directorGroup") or ""),
        accepted_vip=str(status.get("acceptedVIP") or ""),
    )


@dataclass
class PlanState:
    """What a full pass decided on the whole set (VIP conflicts, groups, which pool each
    VirtualServer uses), and each object's latest result: a pass over the objects that
    events touched plans them alone from it (``plan_touched``)."""

    pools: dict[Key, ParsedPool] = field(default_factory=dict)
    decisions: dict[Key, VSDecision] = field(default_factory=dict)
    decision_inputs: dict[Key, DecisionInput] = field(default_factory=dict)
    virtualservers_by_pool: dict[Key, tuple[Key, ...]] = field(default_factory=dict)
    pool_by_service: dict[Key, Key] = field(default_factory=dict)
    ports: dict[Key, list[VirtualPort]] = field(default_factory=dict)
    outcomes: dict[Key, PoolOutcome] = field(default_factory=dict)
    groups: tuple[str, ...] = ()
    expected: dict[str, dict[str, int]] = field(default_factory=dict)
    wanted_services: set[Key] = field(default_factory=set)
    # by kind and object, its conditions (the lvs_controller_objects gauge counts them all)
    conditions: dict[tuple[str, Key], tuple[ObjectCondition, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Touched:
    """The pools and VirtualServers that events since the last pass may have changed."""

    pools: frozenset[Key] = frozenset()
    virtualservers: frozenset[Key] = frozenset()


def _conditions(kind: str, status: Mapping[str, Any]) -> tuple[ObjectCondition, ...]:
    return tuple(
        ObjectCondition(kind, cond["type"], cond["status"], cond.get("reason") or "")
        for cond in status.get("conditions") or []
    )


def _parse_pools(raws: list[Mapping[str, Any]]) -> dict[Key, ParsedPool]:
    pools: dict[Key, ParsedPool] = {}
    for raw in raws:
        if _meta(raw).get("deletionTimestamp"):
            continue
        key = object_key(raw)
        try:
            # its status is not parsed: the raw one is what a pass compares and reads (a
            # model of every pool's members, held in PlanState, was 2.5 MiB at 10,000 pods)
            spec_only = {k: raw[k] for k in raw if k != "status"}
            pools[key] = (raw, RealServerPool.from_object(spec_only), "")
        except ValidationError as exc:
            pools[key] = (raw, None, str(exc))
    return pools


def _pool_selectors(pools: Mapping[Key, ParsedPool]) -> dict[str, tuple[PoolSelector, ...]]:
    out: dict[str, list[PoolSelector]] = {}
    for key, (_, pool, _) in sorted(pools.items()):
        if pool is not None and pool.spec.selector is not None:
            out.setdefault(key[0], []).append(PoolSelector(key, pool.spec.selector))
    return {namespace: tuple(selectors) for namespace, selectors in out.items()}


def _plan_pool(
    key: Key, parsed: ParsedPool, world: World, ports: Mapping[Key, list[VirtualPort]],
    state: PlanState, out: Plan, now: datetime,
) -> None:  # fmt: skip
    """One pool: its Service, its outcome and status (into ``state`` and ``out``)."""
    raw, pool, problem = parsed
    previous = raw.get("status")
    generation = int(_meta(raw).get("generation") or 0)
    if pool is None:
        outcome = invalid_pool_outcome(problem)
        state.wanted_services.discard((key[0], service_name(key[1])))
    else:
        svc_key = (pool.namespace, service_name(pool.name))
        desired = build_service(pool, service_ports(ports.get(key, [])))
        current = world.services.get(svc_key)
        rejection = world.service_rejections.get(svc_key)
        rejected = None
        if desired is not None:
            state.wanted_services.add(svc_key)
            if rejection is not None and rejection.body == desired:
                rejected = service_rejected_message(*svc_key, rejection.message)
            elif not carries(desired, current):
                out.services.append(desired)
        else:
            state.wanted_services.discard(svc_key)
        slices = world.slices.get(svc_key, []) if desired is not None else []
        outcome = evaluate_pool(pool, slices, world.pods, rejected)
        out.warnings.extend(f"RealServerPool {key[0]}/{key[1]}: {p}" for p in outcome.problems)
    state.outcomes[key] = outcome
    status = pool_status(outcome, generation, previous, now)
    state.conditions[(rsp.KIND, key)] = _conditions(rsp.KIND, status)
    if status != {k: v for k, v in (previous or {}).items() if k in POOL_STATUS_FIELDS}:
        out.pool_statuses.append((key, status))
        if pool is not None:
            out.events.extend(pool_events(pool_ref(pool), previous, status))


def _plan_virtualserver(
    d: VSDecision, state: PlanState, views: Mapping[str, DirectorView], created: set[str],
    config: ControllerConfig, out: Plan, now: datetime,
) -> None:  # fmt: skip
    """One VirtualServer: its group labels and status (into ``state`` and ``out``)."""
    key = d.key
    labels = _meta(d.raw).get("labels") or {}
    want = GroupLabels(d.group, d.next_group) if d.accepted else GroupLabels()
    if GroupLabels(labels.get(GROUP_LABEL), labels.get(NEXT_GROUP_LABEL)) != want:
        out.labels.append((key, want))
    previous = d.raw.get("status")
    pool_outcome = state.outcomes.get(d.pool_key) if d.pool_key else None
    view = views.get(d.group) if d.group else None
    next_view = views.get(d.next_group) if d.next_group else None
    status = vs_status(d, pool_outcome, view, config.namespace, previous, now, next_view)
    state.conditions[(vsm.KIND, key)] = _conditions(vsm.KIND, status)
    if status != owned_status(previous):
        out.vs_statuses.append((key, status))
        out.events.extend(vs_events(vs_ref(d), previous, status))
    new_group = d.next_group or d.group
    if d.accepted and new_group in created and d.vs is not None:
        selector = ",".join(
            f"{k}={v}" for k, v in sorted(d.vs.spec.directors.node_selector.items())
        )
        out.daemonset_events.setdefault(daemonset_name(new_group), []).append(
            EventSpec(
                vs_ref(d),
                NORMAL,
                "DirectorGroupCreated",
                f"created DaemonSet {config.namespace}/{daemonset_name(new_group)} of "
                f"director agents on nodes matching {selector}; they elect through Lease "
                f"{config.namespace}/{lease_name(new_group)}",
            )
        )


def _finish(out: Plan, state: PlanState) -> Plan:
    out.pool_selectors = _pool_selectors(state.pools)
    out.pool_namespaces = {key[0] for key in state.pools}
    out.wanted_services = set(state.wanted_services)
    out.groups = state.groups
    out.conditions = Counter(c for conds in state.conditions.values() for c in conds)
    return out


def plan(world: World, config: ControllerConfig, now: datetime) -> Plan:
    """Everything to write so the cluster matches the VirtualServers and pools."""
    return plan_full(world, config, now)[0]


def plan_full(world: World, config: ControllerConfig, now: datetime) -> tuple[Plan, PlanState]:
    """``plan``, and what it decided (for ``plan_touched``)."""
    out = Plan()
    state = PlanState(pools=_parse_pools(world.pools))

    decisions = evaluate(world.virtualservers, state.pools.keys(), config.vip_ranges)
    leases = {name: parse_lease(obj) for name, obj in world.leases.items()}
    # a VIP moving to another group goes once that group has programmed its services
    staged_groups = desired_groups(decisions.values())
    decisions = complete_moves(
        decisions,
        group_views(
            staged_groups, leases, world.director_pods, now, expected_programmed(decisions.values())
        ),
    )
    state.decisions = decisions
    state.decision_inputs = {key: decision_input(d.raw) for key, d in decisions.items()}
    using: dict[Key, list[Key]] = {}
    for d in decisions.values():
        if d.pool_key is not None:
            using.setdefault(d.pool_key, []).append(d.key)
        if d.vs is not None and d.pool_key is not None:
            state.ports.setdefault(d.pool_key, []).extend(d.vs.spec.ports)
    state.virtualservers_by_pool = {k: tuple(sorted(v)) for k, v in using.items()}
    state.pool_by_service = {(k[0], service_name(k[1])): k for k in state.pools}

    for key, parsed in sorted(state.pools.items()):
        _plan_pool(key, parsed, world, state.ports, state, out, now)

    # Director groups.
    groups = desired_groups(decisions.values())
    out.daemonsets = plan_daemonsets(groups, world.daemonsets, config, leases, now)
    out.peer_secrets = tuple(sorted(g for g, selector in groups.items() if selector is not None))
    state.groups = tuple(sorted(groups))
    state.expected = expected_programmed(decisions.values())
    views = group_views(groups, leases, world.director_pods, now, state.expected)
    out.wake_at = next_lease_expiry(leases.values(), now)

    # VirtualServers.
    created = set(out.daemonsets.create_groups)
    for _, d in sorted(decisions.items()):
        _plan_virtualserver(d, state, views, created, config, out, now)
    return _finish(out, state), state


def touched_scope(world: World, state: PlanState, touched: Touched) -> Touched | None:
    """The pools and VirtualServers to plan alone for ``touched``, or None when the events
    may have changed what is decided on the whole set: a pool came or went, or a
    VirtualServer changed in what deciding it reads (its spec, or the group and VIP its
    status says serve it)."""
    present = {object_key(raw) for raw in world.pools if not _meta(raw).get("deletionTimestamp")}
    if any((key in present) != (key in state.pools) for key in touched.pools):
        return None  # a touched pool came or went
    vss = {object_key(raw): raw for raw in world.virtualservers}
    for key in touched.virtualservers:
        raw = vss.get(key)
        known = state.decision_inputs.get(key)
        if raw is None and known is None:
            continue  # gone, and never decided
        if raw is None or known is None or decision_input(raw) != known:
            return None
    pools = {key for key in touched.pools if key in state.pools}
    virtualservers = {key for key in touched.virtualservers if key in state.decisions}
    for pool in pools:
        virtualservers.update(state.virtualservers_by_pool.get(pool, ()))
    return Touched(frozenset(pools), frozenset(virtualservers))


def plan_touched(
    world: World, state: PlanState, scope: Touched, config: ControllerConfig, now: datetime
) -> tuple[Plan, PlanState]:
    """The writes for the objects in ``scope`` (from ``touched_scope``): what ``plan`` would
    write for them, from the decisions of the last full pass. Director groups and
    DaemonSets are left to full passes (what touches them asks for one)."""
    out = Plan()
    state = PlanState(
        pools=dict(state.pools),
        decisions=dict(state.decisions),
        decision_inputs=state.decision_inputs,
        virtualservers_by_pool=state.virtualservers_by_pool,
        pool_by_service=state.pool_by_service,
        ports=state.ports,
        outcomes=dict(state.outcomes),
        groups=state.groups,
        expected=state.expected,
        wanted_services=set(state.wanted_services),
        conditions=dict(state.conditions),
    )
    fresh = _parse_pools([r for r in world.pools if object_key(r) in scope.pools])
    for key, parsed in sorted(fresh.items()):
        state.pools[key] = parsed
        _plan_pool(key, parsed, world, state.ports, state, out, now)

    leases = {name: parse_lease(obj) for name, obj in world.leases.items()}
    views = group_views(state.groups, leases, world.director_pods, now, state.expected)
    out.wake_at = next_lease_expiry(leases.values(), now)
    vss = {object_key(raw): raw for raw in world.virtualservers}
    for key in sorted(scope.virtualservers):
        d = state.decisions.get(key)
        raw = vss.get(key)
        if d is None or raw is None:
            continue  # deleting: no decision
        if raw is not d.raw:  # its status or labels changed: what it says now
            vs = VirtualServer.from_object(raw) if d.vs is not None else None
            d = dataclasses.replace(d, raw=raw, vs=vs)
            state.decisions[key] = d
        _plan_virtualserver(d, state, views, set(), config, out, now)
    return _finish(out, state), state


# --- running it -----------------------------------------------------------------------------


def utcnow() -> datetime:
    return datetime.now(UTC)


# How often a pass plans everything even if no event asked for it: the repair for an event
# missed or mapped to too few objects (passes between plan only what events touched).
FULL_PASS_INTERVAL = 300.0

# How long a group's heartbeat-key Secret, once seen to exist, is not asked for again (the
# controller cannot read Secrets: it asks by creating, which a present one refuses).
PEER_SECRET_RECHECK = 300.0


class Reconciler:
    """Holds the kopf indexes and namespace informers, and runs ``plan`` + writes."""

    INDEX_IDS = (
        "lvs_virtualservers",
        "lvs_pools",
        "lvs_slices",
        "lvs_services",
    )

    def __init__(
        self,
        config: ControllerConfig,
        client: AsyncClient,
        debounce: float = 0.05,
        metrics: ControllerMetrics | None = None,
        trimmer: HeapTrimmer | None = None,
    ) -> None:
        self.config = config
        # after a full pass, the free heap goes back to the OS (it planned everything)
        self.trimmer = trimmer or HeapTrimmer()
        self.client = client
        self.debounce = debounce
        self.metrics = metrics or ControllerMetrics()
        self.indices: Mapping[str, Any] | None = None
        self.indexed = asyncio.Event()  # kopf called a handler: its indexes are populated
        self._wake = asyncio.Event()
        # by namespace, the pools selecting pods there (None until the first pass)
        self._pool_selectors: Mapping[str, tuple[PoolSelector, ...]] | None = None
        # what the last pass may have read of each pod a pool selects, or director agent
        self._pods_read: dict[Key, PodRelevance] = {}
        self._planned_at: datetime | None = None  # when the last pass began
        self._warned: set[str] = set()
        self._service_rejections: dict[Key, ServiceRejection] = {}
        # Read-your-writes: what a write returned, until the watch delivers that version
        # (kind, key) -> (resourceVersion seen before the write, object the write returned).
        self._overlay: dict[tuple[str, Any], tuple[str, dict[str, Any]]] = {}
        self._world = World()
        # what the last full pass decided (None: none yet), and what events touched since
        self._state: PlanState | None = None
        self._full_due = True  # an event (or the clock) asks for a full pass
        self._touched_pools: set[Key] = set()
        self._touched_vss: set[Key] = set()
        self._next_full: float | None = None  # time.monotonic() of the periodic full pass
        self.full_passes = 0
        # DaemonSet name -> when its group's heartbeat-key Secret was last known to exist
        self._peer_secrets: dict[str, float] = {}
        self.passes = 0
        self.writes = 0
        owned = {MANAGED_BY_LABEL: MANAGED_BY, COMPONENT_LABEL: DIRECTOR_COMPONENT}
        rbac = "grant the controller list/watch on them in its namespace (the chart's Role)"
        self.leases = Informer(
            client, Lease, config.namespace, self.wake, hint=rbac,
            on_restart=lambda reason: self.metrics.watch_restarted("Lease", reason),
            matters=lambda old, new: lease_change_matters(old, new, utcnow()),
        )  # fmt: skip
        self.daemonsets = Informer(
            client, DaemonSet, config.namespace, self.wake, labels=owned, hint=rbac,
            on_restart=lambda reason: self.metrics.watch_restarted("DaemonSet", reason),
        )  # fmt: skip
        # every pod's labels and weight, and the director agents' pods: not kopf's (podcache.py)
        self.pods = PodCache(
            client, config.namespace, self.pod_event,
            on_restart=lambda reason: self.metrics.watch_restarted("Pod", reason),
        )  # fmt: skip

    # -- inputs ----------------------------------------------------------------------------

    def wake(self) -> None:
        """An event that may change what is decided on the whole set (a Lease, a DaemonSet):
        the next pass plans everything."""
        self._full_due = True
        self._wake.set()

    def capture(self, indices: Mapping[str, Any]) -> None:
        if self.indices is None and all(i in indices for i in self.INDEX_IDS):
            self.indices = {i: indices[i] for i in self.INDEX_IDS}

    async def kick(self, pod_event: bool = False, **kwargs: Any) -> None:
        """Called by every kopf event handler (with the indexes among its kwargs)."""
        self.capture(kwargs)
        self.indexed.set()
        touched = self._pod_touches(kwargs) if pod_event else self._event_touches(kwargs)
        self._touch(touched)

    def pod_event(self, kind: str | None, body: Mapping[str, Any]) -> None:
        """Called by the ``PodCache`` for every pod listed (``kind`` None) or watched."""
        meta = _meta(body)
        event = {"type": kind, "body": body, "namespace": meta.get("namespace"),
                 "name": meta.get("name")}  # fmt: skip
        self._touch(self._pod_touches(event))

    def _touch(self, touched: Touched | None) -> None:
        """Note what an event touched (None: everything) and wake the loop."""
        if touched is None:
            self._full_due = True
        elif not touched.pools and not touched.virtualservers:
            return
        else:
            self._touched_pools.update(touched.pools)
            self._touched_vss.update(touched.virtualservers)
        self._wake.set()

    def _event_touches(self, event: Mapping[str, Any]) -> Touched | None:
        """The pool or VirtualServer an event of kopf's (its handler kwargs) is about, or
        None: plan everything. Whether it changed what is decided on the whole set is
        checked at the pass (``touched_scope``), against the objects as they are then."""
        resource = event.get("resource")
        plural = getattr(resource, "plural", None)
        key = (str(event.get("namespace") or ""), str(event.get("name") or ""))
        if plural == vsm.PLURAL:
            return Touched(virtualservers=frozenset({key}))
        if plural == rsp.PLURAL:
            return Touched(pools=frozenset({key}))
        if plural == "endpointslices":
            labels = _meta(event.get("body") or {}).get("labels") or {}
            key = (key[0], str(labels.get(SERVICE_NAME_LABEL) or ""))
        elif plural != "services":
            return None
        pool = self._state.pool_by_service.get(key) if self._state is not None else None
        return None if pool is None else Touched(pools=frozenset({pool}))

    def _pod_touches(self, event: Mapping[str, Any]) -> Touched | None:
        """The pools a pod event (kopf's handler kwargs) can change: those selecting it
        before or after. Nothing for a pod no pool selects, or a change of what membership
        does not read; None (plan everything) for a director agent, or before any pass."""
        body = event.get("body")
        key = (str(event.get("namespace") or ""), str(event.get("name") or ""))
        if body is None:
            return None  # not a pod event kopf sends: plan, to be safe
        new = None
        if event.get("type") != "DELETED":
            new = pod_relevance(body, self._pool_selectors or {}, self.config.namespace)
        old = self._pods_read.pop(key, None)
        if new is not None and new != IRRELEVANT:
            self._pods_read[key] = new  # only the pods that matter are remembered
        if self._pool_selectors is None:
            return None  # no pass yet: no pool known
        if not pod_change_matters(old, new):
            return Touched()
        before, after = old or IRRELEVANT, new or IRRELEVANT
        if before.director is not None or after.director is not None:
            return None  # director groups are decided on the whole set
        return Touched(pools=frozenset(before.pools) | frozenset(after.pools))

    def snapshot(self) -> World:
        idx = self.indices or {}

        def values(index_id: str) -> list[Any]:
            index = idx.get(index_id) or {}
            return [v for store in index.values() for v in store]

        def firsts(index_id: str) -> dict[Any, Any]:
            index = idx.get(index_id) or {}
            return {k: next(iter(store)) for k, store in index.items() if len(store)}

        slices: dict[Key, list[SliceInfo]] = {}
        for k, store in (idx.get("lvs_slices") or {}).items():
            slices[k] = list(store)
        world = World(
            virtualservers=self._overlay_list("vs", values("lvs_virtualservers")),
            pools=self._overlay_list("pool", values("lvs_pools")),
            slices=slices,
            services=self._overlay_map("service", firsts("lvs_services")),
            pods=dict(self.pods.pods),
            director_pods=list(self.pods.directors.values()),
            leases=dict(self.leases.store),
            daemonsets=self._overlay_map("daemonset", dict(self.daemonsets.store)),
            service_rejections=dict(self._service_rejections),
        )
        self._world = world
        return world

    def _overlaid(self, kind: str, key: Any, current: Any) -> Any:
        entry = self._overlay.get((kind, key))
        if entry is None:
            return current
        before, written = entry
        if (current is None and not before) or (current is not None and _rv(current) == before):
            return written  # the watch has not delivered our write yet
        del self._overlay[(kind, key)]
        return current

    def _overlay_list(self, kind: str, objs: list[Any]) -> list[Any]:
        present = {object_key(o) for o in objs}
        for kind_key in [k for k in self._overlay if k[0] == kind and k[1] not in present]:
            del self._overlay[kind_key]  # deleted meanwhile
        out = [self._overlaid(kind, object_key(o), o) for o in objs]
        return [o for o in out if o is not None]

    def _overlay_map(self, kind: str, objs: dict[Any, Any]) -> dict[Any, Any]:
        keys = set(objs) | {k for (kd, k) in self._overlay if kd == kind}
        out = {k: self._overlaid(kind, k, objs.get(k)) for k in keys}
        return {k: v for k, v in out.items() if v is not None}

    def _remember(self, kind: str, key: Any, before: Any, returned: Any) -> None:
        """Record what a write returned, unless it changed nothing."""
        obj = returned.to_dict() if hasattr(returned, "to_dict") else dict(returned)
        prior = self._overlay.get((kind, key))
        before_rv = prior[0] if prior else ("" if before is None else _rv(before))
        if prior is None and before is not None and _rv(obj) == before_rv:
            return  # a no-op write
        self._overlay[(kind, key)] = (before_rv, obj)

    def _current_vs(self, key: Key) -> Any:
        return next((o for o in self._world.virtualservers if object_key(o) == key), None)

    def _current_pool(self, key: Key) -> Any:
        return next((o for o in self._world.pools if object_key(o) == key), None)

    # -- the loop --------------------------------------------------------------------------

    async def run(self, startup_grace: float = 30.0) -> None:
        tasks = [
            asyncio.create_task(self.leases.run(), name="lease informer"),
            asyncio.create_task(self.daemonsets.run(), name="daemonset informer"),
            asyncio.create_task(self.pods.run(), name="pod cache"),
        ]
        try:
            await self.leases.synced.wait()
            await self.daemonsets.synced.wait()
            await self.pods.synced.wait()
            try:
                await asyncio.wait_for(self.indexed.wait(), timeout=startup_grace)
            except TimeoutError:
                log.info(
                    "no events after %.0f s: the cluster has nothing to reconcile", startup_grace
                )
            await self._loop()
        finally:
            for t in tasks:
                t.cancel()

    async def _loop(self) -> None:
        """Run a pass on every wake-up (debounced), at the next Lease expiry, and after a
        backoff when writes failed; events keep being served meanwhile."""
        retry_delay = 1.0
        retry_at: datetime | None = None
        deadline: datetime | None = None
        while True:
            wake_at = min((t for t in (deadline, retry_at) if t is not None), default=None)
            timeout = None
            if wake_at is not None:
                timeout = max(0.0, (wake_at - utcnow()).total_seconds()) + 0.05
            if self._next_full is not None:
                repair_in = max(0.0, self._next_full - time.monotonic())
                timeout = repair_in if timeout is None else min(timeout, repair_in)
            woken = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)
                woken = True
            if not woken and self._next_full is not None and time.monotonic() >= self._next_full:
                self._full_due = True  # the periodic repair
            elif not woken and retry_at is None and deadline is not None:
                # due at a Lease's expiry as the last pass saw it; renewals since woke
                # nothing (relevance.py): plan only if one really ran out
                leases = list(self.leases.store.values())
                now = utcnow()
                if not expiry_passed(leases, self._planned_at, now):
                    deadline = next_expiry(leases, now)
                    continue
            if not woken:
                self._full_due = True  # a Lease ran out, or a retry: plan everything
            await asyncio.sleep(self.debounce)
            self._wake.clear()
            failed = 0
            try:
                failed, deadline = await self.reconcile_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile pass failed; retrying in %.0f s", retry_delay)
                self._full_due = True
                failed = 1
            if failed:
                self._full_due = True  # what failed is planned again, whatever wakes next
                if retry_at is None or utcnow() >= retry_at:
                    log.info("%d write(s) failed; retrying in %.0f s", failed, retry_delay)
                    retry_at = utcnow() + timedelta(seconds=retry_delay)
                    retry_delay = min(retry_delay * 2, 60.0)
            else:
                retry_delay = 1.0
                retry_at = None

    async def reconcile_once(self) -> tuple[int, datetime | None]:
        """One pass: plan, then write. Returns (failed writes, when to look again)."""
        self._planned_at = utcnow()
        t0 = time.monotonic()
        try:
            failed, wake_at = await self._pass()
        except asyncio.CancelledError:
            raise
        except Exception:
            self.metrics.pass_done(time.monotonic() - t0, PASS_ERROR)
            raise
        self.metrics.pass_done(time.monotonic() - t0, PASS_FAILED_WRITES if failed else PASS_OK)
        return failed, wake_at

    def _take_touched(self) -> Touched | None:
        """What events touched since the last pass (None: plan everything), and reset."""
        full = self._full_due or self._state is None
        if not full and not self._touched_pools and not self._touched_vss:
            full = True  # a pass no event asked for (called directly): plan everything
        touched = Touched(frozenset(self._touched_pools), frozenset(self._touched_vss))
        self._full_due = False
        self._touched_pools.clear()
        self._touched_vss.clear()
        return None if full else touched

    def _plan(self, touched: Touched | None, now: datetime) -> Plan:
        """Plan everything (``touched`` None), else only what the events touched, unless
        they changed what is decided on the whole set."""
        world = self.snapshot()
        scope = None
        if touched is not None and self._state is not None:
            scope = touched_scope(world, self._state, touched)
        if scope is None or self._state is None:
            p, self._state = plan_full(world, self.config, now)
            self.full_passes += 1
            self._next_full = time.monotonic() + FULL_PASS_INTERVAL
            self.trimmer.trim()
        else:
            p, self._state = plan_touched(world, self._state, scope, self.config, now)
        return p

    async def _pass(self) -> tuple[int, datetime | None]:
        now = utcnow()
        touched = self._take_touched()
        try:
            p = self._plan(touched, now)
        except Exception:
            self._full_due = True
            raise
        self._pool_selectors = p.pool_selectors
        self.passes += 1
        for w in p.warnings:
            if w not in self._warned:
                self._warned.add(w)
                log.warning("%s", w)
        failed = 0
        rejections = dict(self._service_rejections)
        failed += await self._each(
            p.services, self._apply_service, "Service", "apply", missing_ok=False
        )
        if self._service_rejections != rejections:
            # A Service was refused (or accepted again): plan again, so that the pool's
            # status written below says so.
            p = self._plan(touched, now)
        for gone in set(self._service_rejections) - p.wanted_services:
            del self._service_rejections[gone]
        self.metrics.set_objects(p.conditions)
        self.metrics.set_director_groups(p.groups)
        failed += await self._each(
            p.pool_statuses, self._apply_pool_status, "RealServerPool/status", "apply"
        )
        for group in p.daemonsets.create_groups:  # a new DaemonSet: ask again
            self._peer_secrets.pop(daemonset_name(group), None)
        for ds in p.daemonsets.apply:
            if await self._each(
                [ds], self._apply_daemonset, "DaemonSet", "apply", missing_ok=False
            ):
                failed += 1
                continue
            for ev in p.daemonset_events.get(ds["metadata"]["name"], []):
                await self._post_event(ev, now)
        secrets = self._peer_secrets_due(p)
        failed += await self._each(
            secrets, self._create_peer_secret, "Secret", "create", missing_ok=False
        )
        # the status first: it is what authorises the agents (watches.refusal), so when a VIP
        # moves to another group both groups' agents learn it from it before their label
        # watches see the object leave or arrive
        failed += await self._each(
            p.vs_statuses, self._apply_vs_status, "VirtualServer/status", "apply"
        )
        failed += await self._each(p.labels, self._label, "VirtualServer", "patch")
        if self.indexed.is_set():  # destructive: only with complete indexes
            failed += await self._each(
                list(p.daemonsets.delete), self._delete_daemonset, "DaemonSet", "delete"
            )
        for ev in p.events:
            await self._post_event(ev, now)
        return failed, p.wake_at

    async def _each(
        self,
        items: list[Any],
        fn: Callable[[Any], Awaitable[str | None]],
        kind: str,
        verb: str,
        missing_ok: bool = True,
    ) -> int:
        """Run one writer per item (it may return its outcome, else ``WRITE_OK``); returns
        how many failed (they are retried). Each write is counted by ``kind``, ``verb`` and
        outcome."""
        failed = 0
        for item in items:
            try:
                outcome = await fn(item) or WRITE_OK
                self.writes += 1
                self.metrics.wrote(kind, verb, outcome)
            except ApiError as exc:
                if exc.status.code == 404 and missing_ok:
                    self.metrics.wrote(kind, verb, WRITE_NOT_FOUND)
                    continue  # the object went meanwhile: its deletion event comes next
                failed += 1
                self.metrics.wrote(kind, verb, WRITE_FAILED)
                hint = ""
                if exc.status.code == 404:
                    hint = " (does its namespace exist? the operator's is --namespace)"
                elif exc.status.code == 403:
                    hint = " (grant it in deploy/rbac/controller.yaml, the chart's Role)"
                log.error("write failed: %s: %s%s", fn.__name__, exc.status.message, hint)
        return failed

    async def _server_side_apply(self, resource: Any, body: Mapping[str, Any]) -> Any:
        """Apply ``body`` as the controller's field manager (taking over conflicting fields:
        the controller is the only writer of what it applies). Returns what the server has."""
        meta = body["metadata"]
        return await self.client.patch(
            resource,
            meta["name"],
            body,
            namespace=meta["namespace"],
            patch_type=PatchType.APPLY,
            field_manager=FIELD_MANAGER,
            force=True,
        )

    async def _apply_service(self, body: dict[str, Any]) -> str | None:
        """Apply a pool's Service. One the API server refuses as invalid (422: a selector
        it does not accept) is not retried while the pool asks for the same: it is logged
        once and reported on the pool (reason ServiceRejected)."""
        key = object_key(body)
        try:
            returned = await self._server_side_apply(Service, body)
        except ApiError as exc:
            if exc.status.code != 422:
                raise
            message = exc.status.message or "invalid"
            rejection = ServiceRejection(copy.deepcopy(body), message)
            if self._service_rejections.get(key) != rejection:
                log.warning(
                    "write refused: Service %s/%s of RealServerPool %s/%s: %s",
                    key[0],
                    key[1],
                    key[0],
                    self._pool_of_service(body),
                    message,
                )
            self._service_rejections[key] = rejection
            return WRITE_REFUSED
        self._service_rejections.pop(key, None)
        self._remember("service", key, self._world.services.get(key), returned)
        log.info("write: applied Service %s/%s", *key)
        return None

    @staticmethod
    def _pool_of_service(body: Mapping[str, Any]) -> str:
        owners = (body.get("metadata") or {}).get("ownerReferences") or [{}]
        return str(owners[0].get("name", "?"))

    async def _apply_daemonset(self, body: dict[str, Any]) -> None:
        namespace, name = object_key(body)
        returned = await self._server_side_apply(DaemonSet, body)
        self._remember("daemonset", name, self._world.daemonsets.get(name), returned)
        log.info("write: applied DaemonSet %s/%s", namespace, name)

    def _peer_secrets_due(self, p: Plan) -> list[tuple[str, str, bool]]:
        """(group, uid of its DaemonSet, DaemonSet new) of the groups whose key Secret is not
        known to exist; a group whose DaemonSet is not written yet waits (it owns the
        Secret)."""
        due = []
        clock = time.monotonic()
        for group in p.peer_secrets:
            name = daemonset_name(group)
            seen = self._peer_secrets.get(name)
            if seen is not None and clock - seen < PEER_SECRET_RECHECK:
                continue
            entry = self._overlay.get(("daemonset", name))
            ds = entry[1] if entry is not None else self._world.daemonsets.get(name)
            uid = str(_meta(ds or {}).get("uid") or "")
            if uid:
                due.append((group, uid, group in p.daemonsets.create_groups))
        return due

    async def _create_peer_secret(self, item: tuple[str, str, bool]) -> str | None:
        """Create the group's heartbeat key unless it exists (never read, never rewritten:
        the agents read it at start, and the controller needs no right to read Secrets)."""
        group, uid, new = item
        body = build_peer_secret(group, self.config, uid)
        name = peer_secret_name(group)
        try:
            await self.client.create(cast(Secret, Secret.from_dict(body)))
        except ApiError as exc:
            if exc.status.code != 409:
                raise
            # present. Unless the DaemonSet is new this pass: it may be the key of a deleted
            # one, about to be garbage-collected; the next pass asks again
            if not new:
                self._peer_secrets[daemonset_name(group)] = time.monotonic()
            return WRITE_EXISTS
        self._peer_secrets[daemonset_name(group)] = time.monotonic()
        log.info(
            "write: created Secret %s/%s: the heartbeat key of director group %s",
            self.config.namespace,
            name,
            group,
        )
        return None

    async def _delete_daemonset(self, name: str) -> None:
        self._peer_secrets.pop(name, None)
        await self.client.delete(DaemonSet, name, namespace=self.config.namespace)
        log.info(
            "write: deleted DaemonSet %s/%s: its director group has no VirtualServer left",
            self.config.namespace,
            name,
        )

    async def _label(self, item: tuple[Key, GroupLabels]) -> None:
        (ns, name), want = item
        labels = {GROUP_LABEL: want.group, NEXT_GROUP_LABEL: want.next_group}
        returned = await self.client.patch(
            VirtualServerResource,
            name,
            {"metadata": {"labels": labels}},
            namespace=ns,
            patch_type=PatchType.MERGE,
        )
        self._remember("vs", (ns, name), self._current_vs((ns, name)), returned)
        log.info(
            "write: VirtualServer %s/%s labels %s",
            ns,
            name,
            ", ".join(f"{k}={v}" if v else f"{k} removed" for k, v in labels.items()),
        )

    async def _apply_status(
        self, resource: Any, kind: str, key: Key, status: dict[str, Any]
    ) -> Any:
        ns, name = key
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": kind,
            "metadata": {"name": name, "namespace": ns},
            "status": status,
        }
        log.info("write: %s %s/%s status", kind, ns, name)
        return await self._server_side_apply(resource.Status, body)

    async def _apply_pool_status(self, item: tuple[Key, dict[str, Any]]) -> None:
        returned = await self._apply_status(RealServerPoolResource, rsp.KIND, *item)
        self._remember("pool", item[0], self._current_pool(item[0]), returned)

    async def _apply_vs_status(self, item: tuple[Key, dict[str, Any]]) -> None:
        returned = await self._apply_status(VirtualServerResource, vsm.KIND, *item)
        self._remember("vs", item[0], self._current_vs(item[0]), returned)

    async def _post_event(self, spec: EventSpec, now: datetime) -> None:
        log.info("%s %s: %s: %s", spec.ref.kind, spec.ref.key, spec.reason, spec.message)
        try:
            await self.client.create(cast(Event, Event.from_dict(build_event(spec, now))))
        except ApiError as exc:
            self.metrics.wrote("Event", "create", EVENT_FAILED)
            log.warning(
                "could not post Event %s on %s: %s", spec.reason, spec.ref.key, exc.status.message
            )
            return
        self.metrics.wrote("Event", "create", EVENT_POSTED)
