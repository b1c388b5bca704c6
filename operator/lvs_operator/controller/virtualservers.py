"""VirtualServers: the safety checks (schema, VIP ranges, conflicts, pool), the group label,
and the status.

``evaluate`` decides, for every VirtualServer in the cluster at once, whether it is
accepted (the controller labels it with its director group, so the agents program it) or
rejected and why. Conflicts need the whole set: a VIP:port:protocol belongs to the oldest
VirtualServer claiming it (creationTimestamp, then namespace/name), and a VIP belongs to the
director group of the oldest VirtualServer claiming it (only that group's leader may announce
it); when the holder goes the next one takes over.

A VIP moves to another group make-before-break (``complete_moves``): when the holder's node
selector changes, the VIP's VirtualServers stay in the group that announces it
(``status.directorGroup``) and are staged in the new one (``status.nextDirectorGroup``),
whose agents program their IPVS services without the VIP. Once the new group's leader
reports every one of them programmed at its generation, the controller names the new group
in their status: the old group drops the VIP and the new leader adds it as soon as no other
node answers ARP for it. A group with no active director has nothing to keep: the move is
then immediate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import kopf

from lvs_operator import GROUP, VERSION
from lvs_operator.api import virtualserver as vsm
from lvs_operator.api.common import ObjectKey, object_key
from lvs_operator.api.contract import (
    DirectorSync,
    daemonset_name,
    group_name,
    lease_name,
    programmed_key,
)
from lvs_operator.api.ipvs_catalog import Forwarding
from lvs_operator.api.network import IPNetwork, canonical_ip, in_ranges, parse_ip
from lvs_operator.api.validation import ValidationError
from lvs_operator.api.virtualserver import VirtualServer

from . import conditions as c
from .conditions import EventSpec, ObjectRef
from .pools import PoolOutcome, index_body

Key = ObjectKey
Claim = tuple[str, int, str]  # (vip, port, protocol)

# Reasons (Ready, and Programmed/Degraded of a rejected VirtualServer).
ACCEPTED = "Accepted"
INVALID = "Invalid"
VIP_NOT_ALLOWED = "VIPNotAllowed"
CONFLICT = "Conflict"
POOL_NOT_FOUND = "PoolNotFound"
REJECTED = (INVALID, VIP_NOT_ALLOWED, CONFLICT, POOL_NOT_FOUND)
# Programmed.
PROGRAMMED = "Programmed"
PENDING = "Pending"
NO_ACTIVE_DIRECTOR = "NoActiveDirector"
VIP_NOT_PLACED = "VIPNotPlaced"
# Ready.
READY = "Ready"
NO_READY_REAL_SERVERS = "NoReadyRealServers"
# Degraded.
AS_EXPECTED = "AsExpected"
REAL_SERVERS_NOT_READY = "RealServersNotReady"
NO_STANDBY_DIRECTOR = "NoStandbyDirector"
DIRECTOR_NODE_SHARED = "DirectorNodeShared"
MOVING = "MovingToDirectorGroup"
BACKUP_NOT_RECEIVING = "BackupNotReceiving"
# condition ConnectionsSurviveCrash: whether a crash failover keeps established connections
CONNECTIONS_SURVIVE_CRASH = "ConnectionsSurviveCrash"
SYNCED = "ConnectionsSynced"
SYNC_OFF = "ConnectionSyncOff"
MASQUERADE_SNAT = "MasqueradeSNAT"

STATUS_FIELDS = (
    "observedGeneration",
    "directorGroup",
    "acceptedVIP",
    "nextDirectorGroup",
    "activeDirector",
    "directors",
    "readyRealServers",
    "totalRealServers",
    "readyOfTotal",
    "conditions",
)


def order_key(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    """Who came first: creationTimestamp (RFC 3339, sortable as text), then namespace/name."""
    meta = obj.get("metadata") or {}
    return (str(meta.get("creationTimestamp") or "~"), *object_key(obj))


def claims(vs: VirtualServer) -> list[Claim]:
    vip = canonical_ip(vs.spec.vip)
    return [(vip, p.port, str(p.protocol)) for p in vs.spec.ports]


def format_vip(vip: str) -> str:
    return f"[{vip}]" if ":" in vip else vip


def selector_text(node_selector: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(node_selector.items()))


@dataclass(frozen=True)
class VipHolder:
    """The VirtualServer whose director group holds a VIP: the oldest that claims it."""

    key: Key
    group: str
    node_selector: str  # selector_text of its spec.directors.nodeSelector


def port_conflict_message(claim: Claim, winner: Key) -> str:
    return (
        f"{format_claim(claim)} is already served by VirtualServer {winner[0]}/{winner[1]} "
        f"(created earlier); change spec.vip or the port, or delete the other one"
    )


def group_conflict_message(vip: str, holder: VipHolder) -> str:
    ns, name = holder.key
    return (
        f"VIP {vip} is already held by director group {holder.group} (nodes matching "
        f"{holder.node_selector}) of VirtualServer {ns}/{name} (created earlier): a VIP belongs "
        f"to one director group; use the same spec.directors.nodeSelector as {ns}/{name}, "
        f"change spec.vip, or delete the other one"
    )


def format_claim(claim: Claim) -> str:
    vip, port, proto = claim
    return f"{format_vip(vip)}:{port}/{proto}"


def vip_message(vip: str, ranges: Sequence[IPNetwork]) -> str | None:
    """None when the VIP is allowed, else why not and how to allow it."""
    address = parse_ip(vip)
    if address is not None and in_ranges(address, ranges):
        return None
    if not ranges:
        example = "192.0.2.0/24" if address is None or address.version == 4 else "2001:db8::/64"
        return (
            f"VIP {vip} is refused: the controller allows no VIPs yet; start it with "
            f"--vip-ranges (env LVS_VIP_RANGES) listing CIDRs that contain it, "
            f"e.g. --vip-ranges={example}"
        )
    listed = ", ".join(str(r) for r in ranges)
    return (
        f"VIP {vip} is outside the allowed ranges ({listed}): use a VIP inside them, or add "
        f"a range that contains it to the controller's --vip-ranges (env LVS_VIP_RANGES)"
    )


@dataclass(frozen=True)
class VSDecision:
    """Whether a VirtualServer is accepted (programmable) and, if not, why."""

    key: Key
    raw: Mapping[str, Any]
    vs: VirtualServer | None
    reason: str
    message: str = ""
    group: str | None = None  # the director group that programs it and announces its VIP
    # the group its node selector asks for, while the VIP is still announced by ``group``
    # (make-before-break: programmed there without the VIP until complete_moves says so)
    next_group: str | None = None

    @property
    def accepted(self) -> bool:
        return self.reason == ACCEPTED

    @property
    def vip(self) -> str:
        return "" if self.vs is None else canonical_ip(self.vs.spec.vip)

    @property
    def generation(self) -> int:
        return int((self.raw.get("metadata") or {}).get("generation") or 0)

    @property
    def pool_key(self) -> Key | None:
        return None if self.vs is None else (self.vs.namespace, self.vs.spec.pool_name)


def evaluate(
    objects: Iterable[Mapping[str, Any]],
    pools: Iterable[Key],
    ranges: Sequence[IPNetwork],
) -> dict[Key, VSDecision]:
    """Decide every VirtualServer (objects being deleted are left out)."""
    existing_pools = set(pools)
    decisions: dict[Key, VSDecision] = {}
    candidates: list[tuple[Mapping[str, Any], VirtualServer]] = []
    for raw in objects:
        key = object_key(raw)
        if (raw.get("metadata") or {}).get("deletionTimestamp"):
            continue
        try:
            vs = VirtualServer.from_object(raw)
        except ValidationError as exc:
            decisions[key] = VSDecision(key, raw, None, INVALID, str(exc))
            continue
        problem = vip_message(vs.spec.vip, ranges)
        if problem is not None:
            decisions[key] = VSDecision(key, raw, vs, VIP_NOT_ALLOWED, problem)
            continue
        candidates.append((raw, vs))

    owners: dict[Claim, Key] = {}
    holders: dict[str, VipHolder] = {}  # canonical VIP -> the group holding it
    for raw, vs in sorted(candidates, key=lambda rv: order_key(rv[0])):
        key = object_key(raw)
        mine = claims(vs)
        taken = [(cl, owners[cl]) for cl in mine if cl in owners]
        if taken:
            cl, winner = taken[0]
            decisions[key] = VSDecision(key, raw, vs, CONFLICT, port_conflict_message(cl, winner))
            continue
        vip = canonical_ip(vs.spec.vip)
        group = group_name(vs.spec.directors.node_selector)
        holder = holders.get(vip)
        if holder is not None and holder.group != group:
            decisions[key] = VSDecision(key, raw, vs, CONFLICT, group_conflict_message(vip, holder))
            continue
        for cl in mine:
            owners[cl] = key
        if holder is None:
            holders[vip] = VipHolder(key, group, selector_text(vs.spec.directors.node_selector))
        if (vs.namespace, vs.spec.pool_name) not in existing_pools:
            decisions[key] = VSDecision(
                key,
                raw,
                vs,
                POOL_NOT_FOUND,
                f"RealServerPool {vs.namespace}/{vs.spec.pool_name} does not exist: create it "
                f"or fix spec.poolRef.name",
            )
            continue
        decisions[key] = VSDecision(key, raw, vs, ACCEPTED, group=group)
    return stage_moves(decisions)


def serving_group(decision: VSDecision) -> str | None:
    """The group whose agents serve this VirtualServer now, by its status (the controller
    wrote it): accepted there for the VIP it still has; None if none."""
    if decision.vs is None:
        return None
    status = decision.vs.status
    accepted = status.accepted_vip and canonical_ip(status.accepted_vip) == decision.vip
    return status.director_group if status.director_group and accepted else None


def stage_moves(decisions: Mapping[Key, VSDecision]) -> dict[Key, VSDecision]:
    """A VIP whose group changed stays with the group announcing it (the serving group of
    its oldest accepted VirtualServer) and moves as a whole: every accepted VirtualServer of
    it is programmed by that group and staged in the new one."""
    by_vip: dict[str, list[VSDecision]] = {}
    for d in decisions.values():
        if d.accepted:
            by_vip.setdefault(d.vip, []).append(d)
    out = dict(decisions)
    for same_vip in by_vip.values():
        target = same_vip[0].group  # one group per VIP (evaluate)
        serving = next(
            (
                g
                for d in sorted(same_vip, key=lambda d: order_key(d.raw))
                if (g := serving_group(d))
            ),
            target,
        )
        if serving != target:
            for d in same_vip:
                out[d.key] = replace(d, group=serving, next_group=target)
    return out


def complete_moves(
    decisions: Mapping[Key, VSDecision], views: Mapping[str, DirectorView]
) -> dict[Key, VSDecision]:
    """Hand each moving VIP to its new group once that group's leader reports every one of
    its VirtualServers programmed at its generation, or at once when the old group has no
    active director (nothing there to keep)."""
    moving: dict[str, list[VSDecision]] = {}
    for d in decisions.values():
        if d.accepted and d.next_group:
            moving.setdefault(d.vip, []).append(d)
    out = dict(decisions)
    for same_vip in moving.values():
        old, new = views.get(same_vip[0].group or ""), views.get(same_vip[0].next_group or "")
        nothing_served = old is None or old.active is None
        staged = (
            new is not None
            and new.active is not None
            and all(new.programmed.get(programmed_key(*d.key)) == d.generation for d in same_vip)
        )
        if nothing_served or staged:
            for d in same_vip:
                out[d.key] = replace(d, group=d.next_group, next_group=None)
    return out


# --- status ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DirectorView:
    """A director group as the controller sees it: the Lease holder (while the Lease is
    valid), what it says it programmed, and the nodes whose agent pod is ready."""

    group: str
    active: str | None = None
    # programmed_key -> generation: the whole map the leader reported, or (it reported
    # digests: programmed_exact False) what they prove of the expected VirtualServers
    programmed: Mapping[str, int] = field(default_factory=dict)
    ready_nodes: tuple[str, ...] = ()
    vip_problems: Mapping[str, str] = field(default_factory=dict)  # vip -> reason
    # node -> the other groups with an agent there (their selectors overlap)
    shared_nodes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    programmed_exact: bool = True  # False: the leader reported digests (a large group)
    # node -> its connection sync state, as the active director reported it
    sync: Mapping[str, DirectorSync] = field(default_factory=dict)


def directors_list(view: DirectorView) -> list[dict[str, Any]]:
    """status.directors: each ready director (and the active one) with its role and, where
    the active director reported it, its connection sync state."""
    nodes = sorted(set(view.ready_nodes) | ({view.active} if view.active else set()))
    out: list[dict[str, Any]] = []
    for node in nodes:
        entry: dict[str, Any] = {
            "node": node,
            "role": "active" if node == view.active else "standby",
        }
        sync = view.sync.get(node)
        if sync is not None:
            entry["sync"] = sync.to_object()
        out.append(entry)
    return out


def not_receiving_message(view: DirectorView) -> str:
    """The Degraded message for the listed directors whose backup receives no connection
    sync ("": none)."""
    listed = set(view.ready_nodes) | ({view.active} if view.active else set())
    silent = sorted(
        node for node, s in view.sync.items() if s.receiving == "False" and node in listed
    )
    if not silent:
        return ""
    interfaces = sorted({view.sync[n].interface for n in silent if view.sync[n].interface})
    return (
        f"director(s) {', '.join(silent)} receive no connection sync from {view.active} "
        f"(its IPVS backup daemon on {', '.join(interfaces) or 'its link'} holds none of the "
        "connections the active director serves): a crash failover to them would reset every "
        "established connection. Let the group's multicast (239.255.x.y, UDP 8848) pass "
        "between the director nodes on that link, or give the agents a link where it does "
        "(--sync-interface)"
    )


def _selector_text(decision: VSDecision) -> str:
    if decision.vs is None:
        return ""
    return selector_text(decision.vs.spec.directors.node_selector)


def vs_conditions(
    decision: VSDecision,
    pool: PoolOutcome | None,
    view: DirectorView | None,
    namespace: str,
    next_view: DirectorView | None = None,
    was_ready: bool = False,
) -> tuple[c.Condition, ...]:
    """Ready, Programmed and Degraded (without times) of one VirtualServer.

    ``next_view``: the group it moves to, if it moves. ``was_ready``: Ready was True. A
    VirtualServer that was ready stays ready while the active director still serves an
    earlier generation of it (an edit is being programmed: Programmed says Pending)."""
    if not decision.accepted:
        return (
            c.condition(c.READY, False, decision.reason, decision.message),
            c.condition(c.PROGRAMMED, False, decision.reason, decision.message),
            c.condition(c.DEGRADED, False, decision.reason, "not programmed: " + decision.reason),
        )
    group = decision.group or ""
    view = view or DirectorView(group)
    gen = decision.generation
    ns, name = decision.key
    if view.active is None:
        programmed = c.condition(
            c.PROGRAMMED,
            False,
            NO_ACTIVE_DIRECTOR,
            f"no director holds Lease {namespace}/{lease_name(group)}: no agent of DaemonSet "
            f"{namespace}/{daemonset_name(group)} is running and elected on a node matching "
            f"{_selector_text(decision)}",
        )
    elif decision.vs is not None and (
        problem := view.vip_problems.get(canonical_ip(decision.vs.spec.vip))
    ):
        programmed = c.condition(
            c.PROGRAMMED,
            False,
            VIP_NOT_PLACED,
            f"director {view.active} cannot hold VIP {decision.vs.spec.vip}: {problem}",
        )
    elif view.programmed.get(programmed_key(ns, name)) == gen:
        programmed = c.condition(
            c.PROGRAMMED, True, PROGRAMMED, f"programmed by {view.active} at generation {gen}"
        )
    else:
        programmed = c.condition(
            c.PROGRAMMED,
            False,
            PENDING,
            f"waiting for director {view.active} to program generation {gen}",
        )
    ready_n = pool.ready if pool else 0
    total_n = pool.total if pool else 0
    pool_name = decision.vs.spec.pool_name if decision.vs else ""
    serving = view.programmed.get(programmed_key(ns, name)) if view.active else None
    # a leader reporting digests does not say which earlier generation it serves: one that
    # was ready stays so while the new one is pending, as with a known earlier generation
    still_serving = serving is not None or (view.active is not None and not view.programmed_exact)
    if programmed.reason == PENDING and was_ready and still_serving and ready_n > 0:
        earlier = f"generation {serving}" if serving is not None else "an earlier generation"
        ready = c.condition(
            c.READY,
            True,
            READY,
            f"{ready_n}/{total_n} real servers ready on {view.active}, which serves "
            f"{earlier} (generation {gen} pending)",
        )
    elif programmed.status != c.TRUE:
        ready = c.condition(c.READY, False, programmed.reason, programmed.message)
    elif ready_n == 0:
        ready = c.condition(
            c.READY,
            False,
            NO_READY_REAL_SERVERS,
            f"none of the {total_n} real servers of RealServerPool {ns}/{pool_name} is ready",
        )
    else:
        ready = c.condition(
            c.READY, True, READY, f"{ready_n}/{total_n} real servers ready on {view.active}"
        )
    issues: list[tuple[str, str]] = []
    if decision.next_group:
        moving_to = next_view or DirectorView(decision.next_group)
        if moving_to.active is None:
            waiting = (
                f"no director holds Lease {namespace}/{lease_name(decision.next_group)} yet "
                f"(DaemonSet {namespace}/{daemonset_name(decision.next_group)})"
            )
        else:
            waiting = f"waiting for its director {moving_to.active} to program it"
        issues.append(
            (
                MOVING,
                f"moving to director group {decision.next_group} (nodes matching "
                f"{_selector_text(decision)}): {waiting}; director group {group} keeps the "
                "VIP until then",
            )
        )
    if 0 < ready_n < total_n:
        issues.append((REAL_SERVERS_NOT_READY, f"{ready_n} of {total_n} real servers ready"))
    if len(view.ready_nodes) < 2:
        issues.append(
            (
                NO_STANDBY_DIRECTOR,
                f"{len(view.ready_nodes)} director agent(s) ready: failover needs at least 2 "
                f"nodes matching {_selector_text(decision)}",
            )
        )
    if message := not_receiving_message(view):
        issues.append((BACKUP_NOT_RECEIVING, message))
    if view.shared_nodes:
        shared = ", ".join(
            f"{node} (also {', '.join(others)})"
            for node, others in list(view.shared_nodes.items())[:5]
        )
        issues.append(
            (
                DIRECTOR_NODE_SHARED,
                f"nodes run director agents of more than one group: {shared}; their host ports "
                "(health, metrics, the UDP heartbeat) collide. Make the groups' "
                "spec.directors.nodeSelector match disjoint nodes",
            )
        )
    if issues:
        degraded = c.condition(c.DEGRADED, True, issues[0][0], "; ".join(msg for _, msg in issues))
    else:
        degraded = c.condition(
            c.DEGRADED, False, AS_EXPECTED, "all real servers and a standby ready"
        )
    return (ready, programmed, degraded)


def crash_survival_condition(decision: VSDecision, view: DirectorView | None) -> c.Condition:
    """ConnectionsSurviveCrash: what a crash of the active director does to this
    VirtualServer's established connections, as far as the controller can tell. A planned
    handover keeps them whatever this says (the new leader relays them to the old one)."""
    vs = decision.vs
    if not decision.accepted or vs is None:
        return c.condition(CONNECTIONS_SURVIVE_CRASH, False, decision.reason, "not programmed")
    if vs.spec.forwarding == Forwarding.MASQUERADE and not vs.spec.source_nat_to_vip:
        # measured: 0 of 50 (docs/director.md, connection sync)
        return c.condition(
            CONNECTIONS_SURVIVE_CRASH,
            False,
            MASQUERADE_SNAT,
            "a crash failover resets established masquerade connections (0 of 50 kept in the "
            "project's data-plane measurement): with masqueradeSource Director (the default) "
            "the real servers know them by the failed director's address. Planned handovers "
            "keep them. Set masqueradeSource: VIP where the real servers can route to the VIP, "
            "or use forwarding direct or tunnel, where connections must survive a crash",
        )
    view = view or DirectorView(decision.group or "")
    standbys = [n for n in view.ready_nodes if n != view.active]
    off = sorted(n for n in standbys if (s := view.sync.get(n)) is not None and s.role == "off")
    if off:
        return c.condition(
            CONNECTIONS_SURVIVE_CRASH,
            False,
            SYNC_OFF,
            f"connection sync is off on director(s) {', '.join(off)} "
            "(--no-connection-sync): a crash failover to them resets established connections",
        )
    return c.condition(
        CONNECTIONS_SURVIVE_CRASH,
        True,
        SYNCED,
        f"{'masquerade (source: the VIP)' if vs.spec.source_nat_to_vip else vs.spec.forwarding}"
        " connections are copied to the standby directors (IPVS connection "
        "sync) and kept by a crash failover, all but those younger than the sync lag (about a "
        "second); see Degraded for a standby that receives none",
    )


def vs_status(
    decision: VSDecision,
    pool: PoolOutcome | None,
    view: DirectorView | None,
    namespace: str,
    previous: Mapping[str, Any] | None,
    now: datetime,
    next_view: DirectorView | None = None,
) -> dict[str, Any]:
    """The VirtualServer's whole status (the controller is its only writer)."""
    gen = decision.generation
    before = c.conditions_from(previous)
    was_ready = (c.find(before, c.READY) or c.condition(c.READY, False, "")).status == c.TRUE
    conds = c.merge_conditions(
        before,
        (
            *vs_conditions(decision, pool, view, namespace, next_view, was_ready),
            crash_survival_condition(decision, view),
        ),
        now,
        gen,
    )
    ready_n = pool.ready if pool and decision.accepted else 0
    total_n = pool.total if pool and decision.accepted else 0
    status: dict[str, Any] = {"observedGeneration": gen}
    if decision.accepted and decision.group:
        status["directorGroup"] = decision.group
        if decision.vs is not None:
            status["acceptedVIP"] = canonical_ip(decision.vs.spec.vip)
        if decision.next_group:
            status["nextDirectorGroup"] = decision.next_group
        if view is not None:
            if view.active:
                status["activeDirector"] = view.active
            status["directors"] = directors_list(view)
    status["readyRealServers"] = ready_n
    status["totalRealServers"] = total_n
    status["readyOfTotal"] = f"{ready_n}/{total_n}"
    status["conditions"] = [cd.to_object() for cd in conds]
    return status


def owned_status(status: Mapping[str, Any] | None) -> dict[str, Any]:
    """The part of a status the controller writes (to compare with what it would write)."""
    return {k: status[k] for k in STATUS_FIELDS if status and k in status}


def vs_ref(decision: VSDecision) -> ObjectRef:
    meta = decision.raw.get("metadata") or {}
    return ObjectRef(
        f"{GROUP}/{VERSION}", vsm.KIND, decision.key[0], decision.key[1], str(meta.get("uid", ""))
    )


def vs_events(
    ref: ObjectRef, previous: Mapping[str, Any] | None, new: Mapping[str, Any]
) -> list[EventSpec]:
    before = c.conditions_from(previous)
    after = c.conditions_from(new)
    events: list[EventSpec] = []
    b_ready, a_ready = c.find(before, c.READY), c.find(after, c.READY)
    if a_ready is not None and c.changed(b_ready, a_ready):
        quiet = a_ready.status == c.TRUE or a_ready.reason == PENDING
        events.append(
            EventSpec(ref, c.NORMAL if quiet else c.WARNING, a_ready.reason, a_ready.message)
        )
    b_prog, a_prog = c.find(before, c.PROGRAMMED), c.find(after, c.PROGRAMMED)
    if (
        a_prog is not None
        and a_prog.status == c.TRUE
        and (b_prog is None or b_prog.status != c.TRUE)
    ):
        events.append(EventSpec(ref, c.NORMAL, PROGRAMMED, a_prog.message))
    old_active = (previous or {}).get("activeDirector") or ""
    new_active = new.get("activeDirector") or ""
    if old_active != new_active and (old_active or previous):
        events.append(
            EventSpec(
                ref,
                c.NORMAL if new_active else c.WARNING,
                "ActiveDirectorChanged",
                f"active director: {old_active or 'none'} -> {new_active or 'none'}",
            )
        )
    return events


# --- kopf wiring ----------------------------------------------------------------------------


def register(registry: kopf.OperatorRegistry, kick: Any) -> None:
    @kopf.index(f"{GROUP}/{VERSION}", vsm.PLURAL, registry=registry, id="lvs_virtualservers")
    async def index_virtualservers(
        body: kopf.Body, namespace: str | None, name: str, **_: Any
    ) -> Any:
        keep = ("apiVersion", "kind", "metadata", "spec", "status")
        return {(namespace, name): index_body(body, keep)}

    @kopf.on.event(f"{GROUP}/{VERSION}", vsm.PLURAL, registry=registry, id="virtualserver_event")
    async def on_virtualserver(**kwargs: Any) -> None:
        await kick(**kwargs)
