"""Status conditions and Kubernetes Events.

A condition's ``lastTransitionTime`` changes only when its status does, so rewriting a
status with the same outcome is a no-op (and costs no write: the caller compares).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from lvs_operator.api.common import Condition
from lvs_operator.api.events import (
    CONTROLLER,
    NORMAL,
    WARNING,
    EventSpec,
    ObjectRef,
    build_event,
    timestamp,
)

# Events live in api/events.py (the director agents post them too); re-exported here
__all__ = ["NORMAL", "WARNING", "EventSpec", "ObjectRef", "build_event", "timestamp"]

READY = "Ready"
PROGRAMMED = "Programmed"
DEGRADED = "Degraded"

TRUE = "True"
FALSE = "False"

COMPONENT = CONTROLLER


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
