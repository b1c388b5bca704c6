"""Status conditions and Kubernetes Events.

A condition's ``lastTransitionTime`` changes only when its status does, so rewriting a
status with the same outcome is a no-op (and costs no write: the caller compares).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from lvs_operator.api.common import Condition

READY = "Ready"
PROGRAMMED = "Programmed"
DEGRADED = "Degraded"

TRUE = "True"
FALSE = "False"

NORMAL = "Normal"
WARNING = "Warning"
COMPONENT = "lvs-operator"


def timestamp(now: datetime) -> str:
    """RFC 3339 in UTC, second precision, as Kubernetes writes it."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def condition(type_: str, ok: bool, reason: str, message: str = "") -> Condition:
    return Condition(type=type_, status=TRUE if ok else FALSE, reason=reason, message=message)


def merge_conditions(
    previous: Iterable[Condition],
    desired: Sequence[Condition],
    now: datetime,
    generation: int,
) -> tuple[Condition, ...]:
    """The desired conditions, each keeping its previous ``lastTransitionTime`` when its
    status did not change, and carrying ``observedGeneration``."""
    before = {c.type: c for c in previous}
    out = []
    for cond in desired:
        prev = before.get(cond.type)
        ltt = (
            prev.last_transition_time
            if prev is not None and prev.status == cond.status and prev.last_transition_time
            else timestamp(now)
        )
        out.append(replace(cond, last_transition_time=ltt, observed_generation=generation))
    return tuple(out)


def find(conditions: Iterable[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def conditions_from(status: Mapping[str, Any] | None) -> tuple[Condition, ...]:
    return tuple(Condition.from_object(c) for c in (status or {}).get("conditions") or [])


def changed(before: Condition | None, after: Condition) -> bool:
    """Whether a condition changed in a way worth an Event (status or reason)."""
    return before is None or (before.status, before.reason) != (after.status, after.reason)


# --- Events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectRef:
    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class EventSpec:
    """One Kubernetes Event to post about an object."""

    ref: ObjectRef
    type: str  # Normal | Warning
    reason: str
    message: str


def build_event(spec: EventSpec, now: datetime) -> dict[str, Any]:
    """A core/v1 Event (what ``kubectl describe`` shows), named by the server."""
    ts = timestamp(now)
    ref: dict[str, Any] = {
        "apiVersion": spec.ref.api_version,
        "kind": spec.ref.kind,
        "namespace": spec.ref.namespace,
        "name": spec.ref.name,
    }
    if spec.ref.uid:
        ref["uid"] = spec.ref.uid
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{spec.ref.name}.", "namespace": spec.ref.namespace},
        "involvedObject": ref,
        "type": spec.type,
        "reason": spec.reason,
        "message": spec.message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": ts,
        "lastTimestamp": ts,
        "count": 1,
    }
