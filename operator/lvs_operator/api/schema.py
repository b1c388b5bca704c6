"""Schema building blocks the two CRDs share (api/crd.py): bounded integers, CEL rules with
their messages, unicast addresses, conditions and label selectors.

Kubernetes' CEL needs bounded strings and lists to estimate a rule's cost, hence the limits.
"""

from __future__ import annotations

from typing import Any

from . import network
from . import realserverpool as rsp
from .common import (
    LABEL_SELECTOR_OPERATORS,
    MSG_LABEL_KEY,
    MSG_LABEL_VALUE,
    MSG_SELECTOR_VALUES,
)

Schema = dict[str, Any]

# Kubernetes' CEL needs bounded strings and lists to estimate rule cost.
MAX_KEY_LENGTH = 317  # label key: 253 prefix + '/' + 63 name
MAX_LABEL_VALUE = 63
MAX_SELECTOR_TERMS = 16

PORT_NAME_RULE = (
    f"self.matches('{network.PORT_NAME_PATTERN}') && !self.contains('--') && self.matches('[a-z]')"
)


def cel_string(text: str) -> str:
    """``text`` as a CEL string literal (double-quoted, so a regex may hold ' and \\)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def matches(var: str, pattern: str) -> str:
    """CEL: ``var`` matches ``pattern`` (RE2, anchored by the pattern itself)."""
    return f"{var}.matches({cel_string(pattern)})"


LABEL_KEY_RULE = (
    f"{matches('self', network.LABEL_KEY_PATTERN)} && "
    f"{matches('self', network.LABEL_KEY_LENGTHS_PATTERN)}"
)


def bounded_int(minimum: int, maximum: int, description: str, default: int | None = None) -> Schema:
    out: Schema = {
        "type": "integer",
        "minimum": minimum,
        "maximum": maximum,
        "description": description,
    }
    if default is not None:
        out["default"] = default
    return out


def cel_rule(rule: str, message: str, field_path: str | None = None) -> Schema:
    out: Schema = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


def unicast_address(description: str, invalid: str, not_unicast: str) -> Schema:
    return {
        "type": "string",
        "maxLength": 45,
        "description": description,
        "x-kubernetes-validations": (
            [
                cel_rule("isIP(self)", invalid),
                cel_rule("!isIP(self) || ip(self).isGlobalUnicast()", not_unicast),
            ]
            if invalid != not_unicast
            else [cel_rule("isIP(self) && ip(self).isGlobalUnicast()", invalid)]
        ),
    }


def conditions() -> Schema:
    return {
        "type": "array",
        "maxItems": 16,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status"],
            "properties": {
                "type": {"type": "string", "maxLength": 316},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "reason": {"type": "string", "maxLength": 1024},
                "message": {"type": "string", "maxLength": 32768},
                "lastTransitionTime": {"type": "string", "format": "date-time"},
                "observedGeneration": {"type": "integer", "minimum": 0},
            },
        },
    }


def label_selector() -> Schema:
    return {
        "type": "object",
        "description": "Pods in the pool's namespace whose labels match become members.",
        "properties": {
            "matchLabels": {
                "type": "object",
                "maxProperties": MAX_SELECTOR_TERMS,
                "additionalProperties": {"type": "string", "maxLength": MAX_LABEL_VALUE},
                "x-kubernetes-validations": [
                    cel_rule(
                        f"self.all(k, {matches('k', network.LABEL_KEY_PATTERN)} && "
                        f"{matches('k', network.LABEL_KEY_LENGTHS_PATTERN)})",
                        MSG_LABEL_KEY,
                    ),
                    cel_rule(
                        f"self.all(k, {matches('self[k]', network.LABEL_VALUE_PATTERN)})",
                        MSG_LABEL_VALUE,
                    ),
                ],
            },
            "matchExpressions": {
                "type": "array",
                "maxItems": MAX_SELECTOR_TERMS,
                "x-kubernetes-list-type": "atomic",
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {
                            "type": "string",
                            "maxLength": MAX_KEY_LENGTH,
                            "x-kubernetes-validations": [cel_rule(LABEL_KEY_RULE, MSG_LABEL_KEY)],
                        },
                        "operator": {"type": "string", "enum": list(LABEL_SELECTOR_OPERATORS)},
                        "values": {
                            "type": "array",
                            "maxItems": 64,
                            "x-kubernetes-list-type": "atomic",
                            "items": {"type": "string", "maxLength": MAX_LABEL_VALUE},
                            "x-kubernetes-validations": [
                                cel_rule(
                                    f"self.all(v, {matches('v', network.LABEL_VALUE_PATTERN)})",
                                    MSG_LABEL_VALUE,
                                )
                            ],
                        },
                    },
                    "x-kubernetes-validations": [
                        cel_rule(
                            "!(self.operator in ['In', 'NotIn']) || "
                            "(has(self.values) && size(self.values) > 0)",
                            MSG_SELECTOR_VALUES,
                        ),
                        cel_rule(
                            "!(self.operator in ['Exists', 'DoesNotExist']) || "
                            "!has(self.values) || size(self.values) == 0",
                            MSG_SELECTOR_VALUES,
                        ),
                    ],
                },
            },
        },
        "x-kubernetes-validations": [
            cel_rule(
                "(has(self.matchLabels) && size(self.matchLabels) > 0) || "
                "(has(self.matchExpressions) && size(self.matchExpressions) > 0)",
                rsp.MSG_SELECTOR_EMPTY,
            )
        ],
    }
