"""An offline stand-in for the API server's custom-resource validation, for unit tests.

It applies a CRD's structural schema the way kube-apiserver does, in the same order:
defaults, then schema keywords, then ``x-kubernetes-validations`` CEL rules (evaluated
with cel-python plus Kubernetes' IP library functions). Errors come back as
``(path, message)`` pairs shaped like the server's. It is a test oracle, not proof: the
integration tier sends the same cases to a real API server.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from functools import cache
from typing import Any

import celpy
from celpy import celtypes

from lvs_operator.api import network

Schema = dict[str, Any]


# --- Kubernetes' CEL IP library (k8s.io/apiserver/pkg/cel/library/ip.go) ---------------------


class _IP:
    def __init__(self, address: network.IPAddress) -> None:
        self.address = address


def _is_ip(value: Any) -> celtypes.BoolType:
    return celtypes.BoolType(network.parse_ip(str(value)) is not None)


def _ip(value: Any) -> _IP:
    address = network.parse_ip(str(value))
    if address is None:
        raise ValueError(f"IP Address {value!r} parse error")
    return _IP(address)


def _family(ip: _IP) -> celtypes.IntType:
    return celtypes.IntType(ip.address.version)


def _is_global_unicast(ip: _IP) -> celtypes.BoolType:
    return celtypes.BoolType(network.is_global_unicast(ip.address))


def _is_loopback(ip: _IP) -> celtypes.BoolType:
    return celtypes.BoolType(ip.address.is_loopback)


CEL_FUNCTIONS = {
    "isIP": _is_ip,
    "ip": _ip,
    "family": _family,
    "isGlobalUnicast": _is_global_unicast,
    "isLoopback": _is_loopback,
}

_ENV = celpy.Environment()


@cache
def _program(rule: str) -> Any:
    return _ENV.program(_ENV.compile(rule), functions=CEL_FUNCTIONS)


def evaluate_rule(rule: str, value: Any) -> bool:
    result = _program(rule).evaluate({"self": celpy.json_to_cel(value)})
    if isinstance(result, Exception):
        raise result
    return bool(result)


# --- structural schema: defaulting and validation --------------------------------------------


def apply_defaults(schema: Schema, value: Any) -> Any:
    """Structural defaulting: fill missing properties that have a default, recursively."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
        for key, item in value.items():
            if key in props:
                value[key] = apply_defaults(props[key], item)
            elif isinstance(schema.get("additionalProperties"), dict):
                value[key] = apply_defaults(schema["additionalProperties"], item)
    elif isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], item) for item in value]
    return value


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _fmt(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def validate(schema: Schema, value: Any, path: str) -> list[tuple[str, str]]:
    """Schema keywords, then CEL rules, as the server reports them."""
    errors: list[tuple[str, str]] = []
    _validate(schema, value, path, errors)
    return errors


def _validate(schema: Schema, value: Any, path: str, errors: list[tuple[str, str]]) -> None:
    int_or_string = schema.get("x-kubernetes-int-or-string")
    expected = schema.get("type")
    actual = _type_name(value)
    if int_or_string:
        if actual not in ("integer", "string"):
            errors.append((path, f"Invalid value: {_fmt(value)}: must be an integer or string"))
            return
    elif expected and actual != expected:
        errors.append(
            (
                path,
                f'Invalid value: "{actual}": {path} in body must be of type {expected}: "{actual}"',
            )
        )
        return

    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(_fmt(v) for v in schema["enum"])
        errors.append((path, f"Unsupported value: {_fmt(value)}: supported values: {supported}"))
    if actual == "integer":
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(
                (
                    path,
                    f"Invalid value: {value}: {path} in body should be greater "
                    f"than or equal to {schema['minimum']}",
                )
            )
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(
                (
                    path,
                    f"Invalid value: {value}: {path} in body should be less "
                    f"than or equal to {schema['maximum']}",
                )
            )
    if actual == "string":
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append((path, f"Too long: may not be more than {schema['maxLength']} bytes"))
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(
                (
                    path,
                    f"Invalid value: {_fmt(value)}: {path} in body should match "
                    f"'{schema['pattern']}'",
                )
            )
    if actual == "array":
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(
                (
                    path,
                    f"Invalid value: {len(value)}: {path} in body should have at "
                    f"least {schema['minItems']} items",
                )
            )
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(
                (path, f"Too many: {len(value)}: must have at most {schema['maxItems']} items")
            )
        if schema.get("x-kubernetes-list-type") == "set":
            seen: list[Any] = []
            for i, item in enumerate(value):
                if item in seen:
                    errors.append((f"{path}[{i}]", f"Duplicate value: {_fmt(item)}"))
                seen.append(item)
        for i, item in enumerate(value):
            _validate(schema.get("items", {}), item, f"{path}[{i}]", errors)
    if actual == "object":
        for key in schema.get("required", []):
            if key not in value:
                errors.append((f"{path}.{key}", "Required value"))
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            errors.append(
                (path, f"Too many: {len(value)}: must have at most {schema['maxProperties']} items")
            )
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in props:
                _validate(props[key], item, f"{path}.{key}", errors)
            elif isinstance(extra, dict):
                _validate(extra, item, f"{path}.{key}", errors)

    for rule in schema.get("x-kubernetes-validations", []):
        try:
            ok = evaluate_rule(rule["rule"], value)
        except Exception as exc:  # the server reports evaluation errors as invalid too
            errors.append((path, f'Invalid value: "{actual}": evaluation error: {exc}'))
            continue
        if not ok:
            where = path + rule.get("fieldPath", "")
            errors.append((where, f'Invalid value: "{actual}": {rule["message"]}'))


def admit(crd: dict[str, Any], obj: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Default then validate ``obj`` against the CRD's (only) version. Returns both."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    obj = apply_defaults(schema, copy.deepcopy(obj))
    errors: list[tuple[str, str]] = []
    for key in schema.get("required", []):
        if key not in obj:
            errors.append((key, "Required value"))
    for key in ("spec", "status"):
        if key in obj:
            errors.extend(validate(schema["properties"][key], obj[key], key))
    return obj, errors


__all__ = ["admit", "apply_defaults", "evaluate_rule", "ipaddress", "validate"]
