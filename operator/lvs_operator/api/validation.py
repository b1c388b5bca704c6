"""Field errors shaped like the API server's, so models and CRD agree on what they report."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FieldError:
    """One bad field: where (``spec.ports[0].port``) and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class ValidationError(ValueError):
    """All the bad fields of one object, each with its path and reason."""

    def __init__(self, kind: str, name: str, errors: Iterable[FieldError]) -> None:
        self.kind = kind
        self.name = name
        self.errors = list(errors)
        lines = "; ".join(str(e) for e in self.errors)
        super().__init__(f"{kind} {name!r} is invalid: {lines}")

    def paths(self) -> list[str]:
        return [e.path for e in self.errors]


class Errors:
    """Collects field errors while a model parses (one error per bad field)."""

    def __init__(self) -> None:
        self.items: list[FieldError] = []

    def add(self, path: str, reason: str) -> None:
        self.items.append(FieldError(path, reason))

    def required(self, path: str) -> None:
        self.add(path, "Required value")

    def unsupported(self, path: str, value: Any, supported: Iterable[str]) -> None:
        quoted = ", ".join(f'"{s}"' for s in supported)
        self.add(path, f'Unsupported value: "{value}": supported values: {quoted}')

    def invalid(self, path: str, value: Any, why: str) -> None:
        self.add(path, f"Invalid value: {value!r}: {why}")

    def __bool__(self) -> bool:
        return bool(self.items)


# --- typed getters: each reports a wrong type once and returns None --------------------------


def get_map(errors: Errors, obj: Mapping[str, Any], key: str, path: str) -> dict[str, Any] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        errors.invalid(path, value, "must be an object")
        return None
    return dict(value)


def get_list(errors: Errors, obj: Mapping[str, Any], key: str, path: str) -> list[Any] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        errors.invalid(path, value, "must be a list")
        return None
    return value


def get_str(errors: Errors, obj: Mapping[str, Any], key: str, path: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        errors.invalid(path, value, "must be a string")
        return None
    return value


def get_int(
    errors: Errors,
    obj: Mapping[str, Any],
    key: str,
    path: str,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        errors.invalid(path, value, "must be an integer")
        return None
    if minimum is not None and value < minimum:
        errors.invalid(path, value, f"should be greater than or equal to {minimum}")
        return None
    if maximum is not None and value > maximum:
        errors.invalid(path, value, f"should be less than or equal to {maximum}")
        return None
    return value


def get_bool(errors: Errors, obj: Mapping[str, Any], key: str, path: str) -> bool | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        errors.invalid(path, value, "must be a boolean")
        return None
    return value
