"""Pieces both resources share: metadata, conditions, label selectors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import network
from .validation import Errors, get_list, get_map, get_str

# (namespace, name): how the controller and the agents key the objects they hold.
ObjectKey = tuple[str, str]


def object_key(obj: Mapping[str, Any]) -> ObjectKey:
    """The (namespace, name) of a Kubernetes object as the API returns it."""
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace", "")), str(meta.get("name", "")))


LABEL_SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
MSG_SELECTOR_VALUES = "operators In and NotIn need values; Exists and DoesNotExist take none"
MSG_LABEL_KEY = (
    "label keys must be a name of 1-63 characters (letters, digits, '-', '_' and '.', "
    "beginning and ending with a letter or digit), optionally after a DNS subdomain prefix of "
    "at most 253 characters and '/', e.g. app.kubernetes.io/name"
)
MSG_LABEL_VALUE = (
    "label values must be empty or 1-63 characters (letters, digits, '-', '_' and '.', "
    "beginning and ending with a letter or digit)"
)


@dataclass(frozen=True)
class ObjectMeta:
    name: str
    namespace: str
    uid: str = ""
    generation: int = 0
    resource_version: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    deleting: bool = False

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> ObjectMeta:
        meta = obj.get("metadata") or {}
        return cls(
            name=str(meta.get("name", "")),
            namespace=str(meta.get("namespace", "")),
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation") or 0),
            resource_version=str(meta.get("resourceVersion", "")),
            labels=dict(meta.get("labels") or {}),
            annotations=dict(meta.get("annotations") or {}),
            deleting=bool(meta.get("deletionTimestamp")),
        )


class NamedObject:
    """What a parsed custom resource says about itself: its name, namespace and key."""

    meta: ObjectMeta

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def namespace(self) -> str:
        return self.meta.namespace

    @property
    def key(self) -> ObjectKey:
        return (self.meta.namespace, self.meta.name)


@dataclass(frozen=True)
class Condition:
    """A status condition in the Kubernetes shape (metav1.Condition)."""

    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str = ""
    last_transition_time: str = ""
    observed_generation: int = 0

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Condition:
        return cls(
            type=str(obj.get("type", "")),
            status=str(obj.get("status", "Unknown")),
            reason=str(obj.get("reason", "")),
            message=str(obj.get("message", "")),
            last_transition_time=str(obj.get("lastTransitionTime", "")),
            observed_generation=int(obj.get("observedGeneration") or 0),
        )

    def to_object(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": self.last_transition_time,
        }
        if self.observed_generation:
            out["observedGeneration"] = self.observed_generation
        return out


@dataclass(frozen=True)
class LabelSelectorRequirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabelSelector:
    match_labels: Mapping[str, str] = field(default_factory=dict)
    match_expressions: tuple[LabelSelectorRequirement, ...] = ()

    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def to_object(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            out["matchExpressions"] = [
                {
                    "key": r.key,
                    "operator": r.operator,
                    **({"values": list(r.values)} if r.values else {}),
                }
                for r in self.match_expressions
            ]
        return out

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.match_labels.items():
            if labels.get(key) != value:
                return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "In" and (not present or labels[req.key] not in req.values):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
        return True

    @classmethod
    def parse(cls, errors: Errors, obj: Mapping[str, Any], path: str) -> LabelSelector:
        labels = get_map(errors, obj, "matchLabels", f"{path}.matchLabels") or {}
        for key, value in labels.items():
            if not isinstance(value, str):
                errors.invalid(f"{path}.matchLabels.{key}", value, "must be a string")
        if not all(network.is_label_key(k) for k in labels):
            errors.add(f"{path}.matchLabels", f'Invalid value: "object": {MSG_LABEL_KEY}')
        if not all(network.is_label_value(v) for v in labels.values() if isinstance(v, str)):
            errors.add(f"{path}.matchLabels", f'Invalid value: "object": {MSG_LABEL_VALUE}')
        reqs: list[LabelSelectorRequirement] = []
        for i, raw in enumerate(
            get_list(errors, obj, "matchExpressions", f"{path}.matchExpressions") or []
        ):
            rpath = f"{path}.matchExpressions[{i}]"
            if not isinstance(raw, Mapping):
                errors.invalid(rpath, raw, "must be an object")
                continue
            req_key = get_str(errors, raw, "key", f"{rpath}.key")
            op = get_str(errors, raw, "operator", f"{rpath}.operator")
            if req_key is None:
                errors.required(f"{rpath}.key")
            elif not network.is_label_key(req_key):
                errors.add(f"{rpath}.key", f'Invalid value: "string": {MSG_LABEL_KEY}')
            if op is None:
                errors.required(f"{rpath}.operator")
            elif op not in LABEL_SELECTOR_OPERATORS:
                errors.unsupported(f"{rpath}.operator", op, LABEL_SELECTOR_OPERATORS)
            values = tuple(
                str(v) for v in (get_list(errors, raw, "values", f"{rpath}.values") or [])
            )
            if not all(network.is_label_value(v) for v in values):
                errors.add(f"{rpath}.values", f'Invalid value: "array": {MSG_LABEL_VALUE}')
            if (op in ("In", "NotIn") and not values) or (
                op in ("Exists", "DoesNotExist") and values
            ):
                errors.add(f"{rpath}", f'Invalid value: "object": {MSG_SELECTOR_VALUES}')
            if req_key is not None and op is not None:
                reqs.append(LabelSelectorRequirement(req_key, op, values))
        return cls(
            match_labels={k: str(v) for k, v in labels.items()}, match_expressions=tuple(reqs)
        )
