"""Which watch events can change a plan: the others wake no reconciler pass.

A Lease is renewed every few seconds by its group's leader, and pods change (status,
resourceVersion, annotations) far more often than anything the controller reads of them;
planning the whole cluster on each was most of its work at scale. Each event is reduced to
what ``plan`` reads of its object, and only a change of that wakes the reconciler.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lvs_operator.api.common import LabelSelector, ObjectKey
from lvs_operator.api.contract import PROGRAMMED_ANNOTATION, VIP_PROBLEMS_ANNOTATION
from lvs_operator.api.realserverpool import WEIGHT_ANNOTATION

from .conditions import parse_timestamp
from .groups import DIRECTOR_POD_LABELS, DirectorPod, LeaseInfo, director_pod

Raw = Mapping[str, Any]


# --- Leases -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseReading:
    """What ``plan`` reads of a Lease, but its renewTime: renewals only move that."""

    holder: str
    duration_seconds: int | None
    programmed: str | None  # the annotations as written: compared, not parsed
    vip_problems: str | None


def lease_reading(obj: Raw) -> LeaseReading:
    spec = obj.get("spec") or {}
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    duration = spec.get("leaseDurationSeconds")
    return LeaseReading(
        holder=str(spec.get("holderIdentity") or ""),
        duration_seconds=duration if isinstance(duration, int) else None,
        programmed=annotations.get(PROGRAMMED_ANNOTATION),
        vip_problems=annotations.get(VIP_PROBLEMS_ANNOTATION),
    )


def _timing(obj: Raw) -> LeaseInfo:
    """A Lease's holder and validity only (its reports are not parsed)."""
    reading = lease_reading(obj)
    spec = obj.get("spec") or {}
    return LeaseInfo(
        name="",
        holder=reading.holder,
        renew_time=parse_timestamp(spec.get("renewTime") or spec.get("acquireTime")),
        duration_seconds=reading.duration_seconds,
    )


def _active_holder(obj: Raw, now: datetime) -> str | None:
    return _timing(obj).active_holder(now)


def expiry_passed(leases: Iterable[Raw], since: datetime | None, now: datetime) -> bool:
    """Whether a Lease ran out after ``since`` (the last pass) and by ``now``. Renewals wake
    no pass, so the pass due at a Lease's expiry as the last pass saw it is needed only if
    the Lease has not been renewed since (None: no pass yet)."""
    if since is None:
        return True
    return any(
        (expiry := _timing(obj).expires_at()) is not None and since < expiry <= now
        for obj in leases
    )


def next_expiry(leases: Iterable[Raw], now: datetime) -> datetime | None:
    """When the next currently valid Lease runs out, as the Leases are now."""
    times = [e for e in (_timing(obj).expires_at() for obj in leases) if e is not None and e > now]
    return min(times, default=None)


def lease_change_matters(old: Raw | None, new: Raw | None, now: datetime) -> bool:
    """Whether a Lease event can change a plan at ``now``: its holder, duration or reports
    changed, or its validity did (a renewal of a Lease that had run out). A renewal of a
    valid Lease does not: the pass planned at its old expiry reads the new renewTime."""
    if old is None or new is None:
        return True
    if lease_reading(old) != lease_reading(new):
        return True
    return _active_holder(old, now) != _active_holder(new, now)


# --- pods -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolSelector:
    """A pool that selects pods, by its full selector (matchLabels and matchExpressions)."""

    pool: ObjectKey
    selector: LabelSelector


@dataclass(frozen=True, slots=True, weakref_slot=True)
class PodRelevance:
    """What ``plan`` reads of a pod: the pools selecting it and its weight annotation while
    one does, or, for a director agent, its group, node and readiness."""

    pools: tuple[ObjectKey, ...] = ()
    weight: str | None = None
    director: DirectorPod | None = None


IRRELEVANT = PodRelevance()  # a pod no pool selects, not a director agent

# The pods of a pool with the same weight read the same: one PodRelevance for them all, held
# as long as the reconciler remembers one of them (one each for 10,000 pods was ~2 MiB).
_shared: weakref.WeakValueDictionary[tuple[tuple[ObjectKey, ...], str | None], PodRelevance] = (
    weakref.WeakValueDictionary()
)


def shared_relevance(pools: tuple[ObjectKey, ...], weight: str | None) -> PodRelevance:
    """``PodRelevance(pools, weight)``, the same object for the same values."""
    key = (pools, weight)
    found = _shared.get(key)
    if found is None:
        found = _shared[key] = PodRelevance(pools, weight)
    return found


def pod_relevance(
    body: Raw, selectors: Mapping[str, Sequence[PoolSelector]], operator_namespace: str
) -> PodRelevance:
    """``selectors``: by namespace, the pools that select pods there."""
    meta = body.get("metadata") or {}
    namespace = str(meta.get("namespace") or "")
    labels = meta.get("labels") or {}
    director = None
    if namespace == operator_namespace and all(
        labels.get(k) == v for k, v in DIRECTOR_POD_LABELS.items()
    ):
        director = director_pod(body)
    pools = tuple(s.pool for s in selectors.get(namespace, ()) if s.selector.matches(labels))
    weight = (meta.get("annotations") or {}).get(WEIGHT_ANNOTATION) if pools else None
    if director is not None:
        return PodRelevance(pools, weight, director)
    return shared_relevance(pools, weight)


def pod_change_matters(old: PodRelevance | None, new: PodRelevance | None) -> bool:
    """Whether a pod event can change a plan (None: the pod is unknown, or gone). Which pods
    are members, and whether they are ready, comes from the EndpointSlices (their own
    events): a pod event matters only through the pools selecting it and its weight."""
    return (old or IRRELEVANT) != (new or IRRELEVANT)
