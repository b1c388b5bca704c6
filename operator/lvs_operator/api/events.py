"""Kubernetes Events about the project's objects, as the controller and the director agents
post them (core/v1 Event: what ``kubectl describe`` and ``kubectl get events`` show)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

NORMAL = "Normal"
WARNING = "Warning"
CONTROLLER = "lvs-operator"
DIRECTOR = "lvs-director"


def timestamp(now: datetime) -> str:
    """RFC 3339 in UTC, second precision, as Kubernetes writes it."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def build_event(spec: EventSpec, now: datetime, component: str = CONTROLLER,
                instance: str = "") -> dict[str, Any]:  # fmt: skip
    """A core/v1 Event, named by the server. ``instance``: which replica or node reports it
    (the controller's name by default)."""
    ts = timestamp(now)
    ref: dict[str, Any] = {
        "apiVersion": spec.ref.api_version,
        "kind": spec.ref.kind,
        "namespace": spec.ref.namespace,
        "name": spec.ref.name,
    }
    if spec.ref.uid:
        ref["uid"] = spec.ref.uid
    source: dict[str, str] = {"component": component}
    if instance and component == DIRECTOR:
        source["host"] = instance
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{spec.ref.name}.", "namespace": spec.ref.namespace},
        "involvedObject": ref,
        "type": spec.type,
        "reason": spec.reason,
        "message": spec.message[:1024],
        "source": source,
        "reportingComponent": component,
        "reportingInstance": instance or component,
        "firstTimestamp": ts,
        "lastTimestamp": ts,
        "count": 1,
    }
