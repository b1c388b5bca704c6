"""values.schema.json (and the chart's own checks) reject bad values with a clear message.

Each bad value is tried twice: with jsonschema against the schema (no helm needed) and
through ``helm template --set`` (what a user sees).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest
import yaml

from .support import CHART, helm_run

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())

# (--set value, path in the values, bad value, what the error message must name)
SCHEMA_REJECTS: list[tuple[str, tuple[str | int, ...], Any, str]] = [
    ("vipRanges={10.0.0.0}", ("vipRanges", 0), "10.0.0.0", "/vipRanges/0"),
    ("vipRanges=10.0.0.0/8", ("vipRanges",), "10.0.0.0/8", "/vipRanges"),
    ("logLevel=verbose", ("logLevel",), "verbose", "/logLevel"),
    ("image.pullPolicy=Sometimes", ("image", "pullPolicy"), "Sometimes", "/image/pullPolicy"),
    ("image.repository=", ("image", "repository"), "", "/image/repository"),
    (
        "director.timings.leaseDurationSeconds=0",
        ("director", "timings", "leaseDurationSeconds"),
        0,
        "/director/timings/leaseDurationSeconds",
    ),
    ("director.healthPort=70000", ("director", "healthPort"), 70000, "/director/healthPort"),
    (
        "director.serviceAccount.name=Lvs_Director",
        ("director", "serviceAccount", "name"),
        "Lvs_Director",
        "/director/serviceAccount/name",
    ),
    ("controller.replicas=2", ("controller", "replicas"), 2, "replicas"),
    ("metrics.enabled=maybe", ("metrics", "enabled"), "maybe", "/metrics/enabled"),
    (
        "metrics.dashboard.namespace=Not_A_Namespace",
        ("metrics", "dashboard", "namespace"),
        "Not_A_Namespace",
        "/metrics/dashboard/namespace",
    ),
    (
        "metrics.prometheusRule.enabled=yes",
        ("metrics", "prometheusRule", "enabled"),
        "yes",
        "/metrics/prometheusRule/enabled",
    ),
    (
        "controller.metricsPort=-1",
        ("controller", "metricsPort"),
        -1,
        "/controller/metricsPort",
    ),
    (
        "metrics.serviceMonitor.interval=often",
        ("metrics", "serviceMonitor", "interval"),
        "often",
        "/metrics/serviceMonitor/interval",
    ),
]

# Checks the schema cannot express, made by the templates (values pass the schema).
TEMPLATE_REJECTS: list[tuple[list[str], str]] = [
    (["vipRanges={300.1.2.3/8}"], 'vipRanges[0] = "300.1.2.3/8" is not a network in CIDR'),
    (["vipRanges={192.0.2.0/24,2001:db8::/129}"], 'vipRanges[1] = "2001:db8::/129"'),
    (
        ["director.timings.leaseDurationSeconds=2", "director.timings.renewDeadlineSeconds=2"],
        "director.timings.renewDeadlineSeconds (2) must be less than "
        "director.timings.leaseDurationSeconds (2)",
    ),
    (
        ["director.timings.renewDeadlineSeconds=3", "director.timings.retryPeriodSeconds=5"],
        "director.timings.retryPeriodSeconds (5) must be less than",
    ),
    (["director.metricsPort=9641"], "director.healthPort and director.metricsPort must differ"),
    (
        ["controller.metricsPort=8080"],
        "controller.healthPort and controller.metricsPort must differ",
    ),
    (
        ["director.serviceAccount.name=lvs-operator"],
        "serviceAccount.name and director.serviceAccount.name must differ",
    ),
]


def with_value(path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    values = copy.deepcopy(DEFAULTS)
    node: Any = values
    for key in path[:-1]:
        node = node[key]
    last = path[-1]
    if isinstance(node, list) and isinstance(last, int):
        node.append(value)
    else:
        node[last] = value
    return values


def schema_errors(values: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [
        f"/{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(values)
    ]


def test_schema_is_a_valid_draft7_schema() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)


def test_defaults_pass_the_schema() -> None:
    assert schema_errors(DEFAULTS) == []


def test_good_values_pass_the_schema() -> None:
    values = with_value(("vipRanges", 0), "192.0.2.0/24")
    values["vipRanges"].append("2001:db8::/64")
    values["director"]["timings"] = {
        "leaseDurationSeconds": 4,
        "renewDeadlineSeconds": 3,
        "retryPeriodSeconds": 1,
    }
    values["director"]["tolerations"] = [{"operator": "Exists"}]
    values["logLevel"] = "debug"
    assert schema_errors(values) == []


@pytest.mark.parametrize(("_set", "path", "bad", "where"), SCHEMA_REJECTS, ids=lambda v: str(v))
def test_schema_rejects(_set: str, path: tuple[str | int, ...], bad: Any, where: str) -> None:
    errors = schema_errors(with_value(path, bad))
    assert errors, f"{'.'.join(map(str, path))}={bad!r} passed the schema"
    assert any(where in e or where.lstrip("/") in e for e in errors), errors


@pytest.mark.parametrize(
    ("setting", "_path", "_bad", "where"), SCHEMA_REJECTS, ids=lambda v: str(v)
)
def test_helm_rejects_bad_values(
    helm: str, setting: str, _path: object, _bad: object, where: str
) -> None:
    r = helm_run(helm, "template", "t", str(CHART), "--set", setting)
    assert r.returncode != 0, f"helm template accepted --set {setting}"
    assert "values don't meet the specifications of the schema" in r.stderr, r.stderr
    assert where in r.stderr or where.lstrip("/") in r.stderr, r.stderr


@pytest.mark.parametrize(("sets", "message"), TEMPLATE_REJECTS, ids=lambda v: str(v))
def test_helm_rejects_inconsistent_values(helm: str, sets: list[str], message: str) -> None:
    args = ["template", "t", str(CHART)]
    for s in sets:
        args += ["--set", s]
    r = helm_run(helm, *args)
    assert r.returncode != 0, f"helm template accepted {sets}"
    assert message in r.stderr, r.stderr


def test_helm_lint_strict(helm: str) -> None:
    for extra in (
        [],
        ["--set", "vipRanges={192.0.2.0/24,2001:db8::/64}", "--set", "logLevel=debug"],
    ):
        r = helm_run(helm, "lint", "--strict", str(CHART), *extra)
        assert r.returncode == 0, r.stdout + r.stderr


def test_helm_lint_strict_fails_on_bad_values(helm: str) -> None:
    r = helm_run(helm, "lint", "--strict", str(CHART), "--set", "logLevel=verbose")
    assert r.returncode != 0
    assert "logLevel" in r.stdout + r.stderr
