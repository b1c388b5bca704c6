"""Director groups: which VirtualServers share a DaemonSet and a Lease, who holds the Lease,
which agents are ready, and which DaemonSets to create, update or delete.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from lvs_operator.api.contract import (
    COMPONENT_LABEL,
    GROUP_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    PROGRAMMED_ANNOTATION,
    SYNC_ANNOTATION,
    VIP_PROBLEMS_ANNOTATION,
    DirectorSync,
    ProgrammedReport,
    daemonset_name,
    lease_name,
    parse_programmed_report,
    parse_sync,
    parse_vip_problems,
    programmed_key,
)

from .conditions import parse_timestamp
from .config import ControllerConfig
from .manifests import DIRECTOR_COMPONENT, build_daemonset, carries
from .virtualservers import DirectorView, VSDecision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseInfo:
    name: str
    holder: str = ""
    renew_time: datetime | None = None
    duration_seconds: int | None = None
    programmed: ProgrammedReport = field(default_factory=ProgrammedReport)
    vip_problems: Mapping[str, str] = field(default_factory=dict)
    # each director's connection sync state, as the holder last wrote it (none: a record
    # written by another holder, or none at all)
    sync: Mapping[str, DirectorSync] = field(default_factory=dict)

    def expires_at(self) -> datetime | None:
        if not self.holder or self.renew_time is None or not self.duration_seconds:
            return None
        return self.renew_time + timedelta(seconds=self.duration_seconds)

    def active_holder(self, now: datetime) -> str | None:
        """The holder while the Lease is valid (renewTime + leaseDurationSeconds ahead)."""
        expiry = self.expires_at()
        return self.holder if expiry is not None and expiry > now else None


def parse_lease(obj: Mapping[str, Any]) -> LeaseInfo:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    duration = spec.get("leaseDurationSeconds")
    holder = str(spec.get("holderIdentity") or "")
    annotations = meta.get("annotations") or {}
    return LeaseInfo(
        name=str(meta.get("name", "")),
        holder=holder,
        renew_time=parse_timestamp(spec.get("renewTime") or spec.get("acquireTime")),
        duration_seconds=int(duration) if isinstance(duration, int) else None,
        programmed=parse_programmed_report(annotations.get(PROGRAMMED_ANNOTATION)),
        vip_problems=parse_vip_problems(annotations.get(VIP_PROBLEMS_ANNOTATION)),
        sync=dict(parse_sync(annotations.get(SYNC_ANNOTATION)).current_for(holder)),
    )


@dataclass(frozen=True)
class DirectorPod:
    name: str
    group: str
    node: str
    ready: bool


def director_pod(body: Mapping[str, Any]) -> DirectorPod | None:
    meta = body.get("metadata") or {}
    group = (meta.get("labels") or {}).get(GROUP_LABEL)
    if not group or meta.get("deletionTimestamp"):
        return None
    status = body.get("status") or {}
    ready = status.get("phase") == "Running" and any(
        cd.get("type") == "Ready" and cd.get("status") == "True"
        for cd in status.get("conditions") or []
    )
    node = str((body.get("spec") or {}).get("nodeName") or "")
    return DirectorPod(str(meta.get("name", "")), group, node, ready)


def group_views(
    groups: Iterable[str],
    leases: Mapping[str, LeaseInfo],
    pods: Iterable[DirectorPod],
    now: datetime,
    expected: Mapping[str, Mapping[str, int]] | None = None,
) -> dict[str, DirectorView]:
    """Each group as the controller sees it. ``expected``: group -> the VirtualServers
    (programmed_key -> generation) its leader should program; a leader reporting digests
    (a large group) confirms only these, and a leader reporting its map is read whole."""
    ready_nodes: dict[str, set[str]] = {}
    groups_on: dict[str, set[str]] = {}  # node -> groups with an agent pod there
    for pod in pods:
        if pod.ready and pod.node:
            ready_nodes.setdefault(pod.group, set()).add(pod.node)
        if pod.node:
            groups_on.setdefault(pod.node, set()).add(pod.group)
    views = {}
    for group in groups:
        lease = leases.get(lease_name(group))
        active = lease.active_holder(now) if lease else None
        report = lease.programmed if lease and active else ProgrammedReport({})
        views[group] = DirectorView(
            group=group,
            active=active,
            programmed=(
                dict(report.generations)
                if report.generations is not None
                else report.confirmed((expected or {}).get(group, {}))
            ),
            programmed_exact=report.exact,
            vip_problems=dict(lease.vip_problems) if lease and active else {},
            sync=dict(lease.sync) if lease and active else {},
            ready_nodes=tuple(sorted(ready_nodes.get(group, ()))),
            shared_nodes={
                node: tuple(sorted(others - {group}))
                for node, others in sorted(groups_on.items())
                if group in others and len(others) > 1
            },
        )
    return views


def expected_programmed(decisions: Iterable[VSDecision]) -> dict[str, dict[str, int]]:
    """Group -> the VirtualServers (programmed_key -> generation) its leader is to program:
    those it serves and those staged in it (moving in)."""
    out: dict[str, dict[str, int]] = {}
    for d in decisions:
        if not d.accepted:
            continue
        for group in (d.group, d.next_group):
            if group:
                out.setdefault(group, {})[programmed_key(*d.key)] = d.generation
    return out


def next_lease_expiry(leases: Iterable[LeaseInfo], now: datetime) -> datetime | None:
    """When the next currently valid Lease runs out (status must then drop its holder)."""
    times = [e for e in (lease.expires_at() for lease in leases) if e is not None and e > now]
    return min(times) if times else None


def desired_groups(decisions: Iterable[VSDecision]) -> dict[str, dict[str, str] | None]:
    """Group → node selector, for the groups with at least one accepted VirtualServer; a
    group that VirtualServers are only leaving (they move to another) → None: its DaemonSet
    stays as it is until they have left."""
    out: dict[str, dict[str, str] | None] = {}
    serving: set[str] = set()  # groups a VirtualServer is moving away from
    for d in decisions:
        if not (d.accepted and d.group and d.vs is not None):
            continue
        selector = dict(d.vs.spec.directors.node_selector)
        if d.next_group:
            out[d.next_group] = selector
            serving.add(d.group)
        else:
            out[d.group] = selector
    for group in serving:
        out.setdefault(group, None)
    return out


@dataclass(frozen=True)
class DaemonSetPlan:
    apply: tuple[dict[str, Any], ...] = ()  # new or changed
    create_groups: tuple[str, ...] = ()  # groups whose DaemonSet does not exist yet
    delete: tuple[str, ...] = ()  # names of DaemonSets whose group has no VirtualServer


def plan_daemonsets(
    groups: Mapping[str, Mapping[str, str] | None],
    existing: Mapping[str, Mapping[str, Any]],
    config: ControllerConfig,
    leases: Mapping[str, LeaseInfo] | None = None,
    now: datetime | None = None,
) -> DaemonSetPlan:
    """What to write so the operator namespace holds exactly one DaemonSet per group.

    ``existing``: the controller's DaemonSets in its namespace, by name. A group whose
    selector is None (VirtualServers are leaving it) keeps its DaemonSet as it is.
    ``leases`` (by name) at ``now``: a DaemonSet no longer wanted is deleted only once its
    group's leader reports nothing programmed (or its Lease ran out): the leader drops the
    VIPs it serves when their VirtualServers leave, not at the kill.
    """
    apply = []
    created = []
    for group, selector in sorted(groups.items()):
        current = existing.get(daemonset_name(group))
        if selector is None:
            continue  # being left: as it is (a DaemonSet that is gone is not made again)
        desired = build_daemonset(group, selector, config)
        if current is None:
            created.append(group)
            apply.append(desired)
        elif not carries(desired, current):
            apply.append(desired)
    wanted = {daemonset_name(g) for g in groups}
    if leases is not None and now is not None:
        wanted |= busy_daemonsets(existing, leases, now)
    delete = tuple(
        sorted(
            name
            for name, obj in existing.items()
            if name not in wanted and not (obj.get("metadata") or {}).get("deletionTimestamp")
        )
    )
    return DaemonSetPlan(tuple(apply), tuple(created), delete)


def busy_daemonsets(
    existing: Mapping[str, Mapping[str, Any]], leases: Mapping[str, LeaseInfo], now: datetime
) -> set[str]:
    """The DaemonSets whose group's leader reports something programmed on a valid Lease."""
    busy = set()
    for name, obj in existing.items():
        group = ((obj.get("metadata") or {}).get("labels") or {}).get(GROUP_LABEL)
        lease = leases.get(lease_name(group)) if group else None
        if (
            lease is not None
            and not lease.programmed.empty
            and lease.active_holder(now) is not None
        ):
            busy.add(name)
    return busy


DIRECTOR_POD_LABELS = {MANAGED_BY_LABEL: MANAGED_BY, COMPONENT_LABEL: DIRECTOR_COMPONENT}
