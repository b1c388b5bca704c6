"""Every PromQL expression the chart ships, in the Grafana dashboard and in the alert rules:
(a) promtool parses it, (b) every metric it names is one the code exports (read from the
agent's and the controller's registries, tests/unit/exported_metrics.py)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..exported_metrics import series_names
from .support import CHART

DASHBOARD = CHART / "files" / "dashboard.json"
ALERTS = CHART / "files" / "alerts.yaml"

# Grafana's variables, replaced by values of the right kind before parsing.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$group": ".*"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
            "or", "unless", "offset", "inf", "nan", "Inf", "NaN"}  # fmt: skip
# aggregation operators: followed by `by (...)`/`without (...)` rather than by "("
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                "count_values", "bottomk", "topk", "quantile"}  # fmt: skip
LABEL_VALUES = re.compile(r"^label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*\w+\s*\)$")


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels") or [])


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel query, Grafana's variables replaced."""
    out = []
    for panel in _panels(dashboard()["panels"]):
        for target in panel.get("targets") or []:
            expr = target["expr"]
            for var, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(var, value)
            out.append((f"dashboard panel {panel['title']!r} {target['refId']}", expr))
    return out


def alert_expressions() -> list[tuple[str, str]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [(f"alert {r['alert']}", r["expr"]) for g in groups for r in g["rules"]]


def variable_metrics() -> list[tuple[str, str]]:
    """The metric of each query variable (Grafana's label_values(metric, label): not PromQL)."""
    out = []
    for var in dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = LABEL_VALUES.match(query)
        assert match, f"variable {var['name']}: {query!r} is not label_values(metric, label)"
        out.append((f"dashboard variable {var['name']}", match.group(1)))
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers left once strings, label
    matchers, ranges and label lists are out, other than functions and keywords."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1 ", s)
    names = set()
    for m in re.finditer(r"(?<![A-Za-z0-9_:.])[A-Za-z_:][A-Za-z0-9_:]*", s):
        if m.group() in KEYWORDS | AGGREGATIONS or s[m.end() :].lstrip().startswith("("):
            continue  # a keyword, or a function's name
        names.add(m.group())
    return names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (vip, port) (rate(a_total{group=~".*", x="b c"}[5m]))', {"a_total"}),
        ("x == 0 and on (group) (max by (group) (y) == 1) unless z offset 5m", {"x", "y", "z"}),
        ("histogram_quantile(0.99, sum by (le) (rate(h_bucket[1m]))) > 1e3", {"h_bucket"}),
        ("time() - t_seconds", {"t_seconds"}),
        ("a * on (instance) group_left (group) b", {"a", "b"}),
        ('{__name__="only_by_matcher"}', set()),
    ],
)
def test_metric_names_are_found_and_only_them(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_the_dashboard_and_the_alerts_have_expressions() -> None:
    assert len(dashboard_expressions()) >= 10
    assert len(alert_expressions()) >= 5
    for where, expr in dashboard_expressions():
        assert "$" not in expr, f"{where}: a Grafana variable this test does not know: {expr}"


def test_every_expression_parses(promtool: str, tmp_path: Path) -> None:
    """promtool parses each (as a recording rule: `check rules` parses every expression)."""
    exprs = dashboard_expressions() + alert_expressions()
    rules = {"groups": [{"name": where, "rules": [{"record": f"check:expr_{i}", "expr": expr}]}
                        for i, (where, expr) in enumerate(exprs)]}  # fmt: skip
    path = tmp_path / "expressions.yaml"
    path.write_text(yaml.safe_dump(rules))
    r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in r.stdout, r.stdout


def test_promtool_refuses_a_broken_expression(promtool: str, tmp_path: Path) -> None:
    """The parse check can fail: a missing parenthesis is refused."""
    path = tmp_path / "broken.yaml"
    rule = {"record": "check:broken", "expr": "sum(rate(lvs_director_leader[5m])"}
    path.write_text(yaml.safe_dump({"groups": [{"name": "broken", "rules": [rule]}]}))
    r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode != 0


def test_every_metric_named_is_exported_by_the_code() -> None:
    exported = series_names()
    unknown = []
    named = [(w, n) for w, e in dashboard_expressions() + alert_expressions()
             for n in metric_names(e)] + variable_metrics()  # fmt: skip
    assert named
    for where, name in named:
        if name not in exported:
            unknown.append(f"{where}: {name}")
    assert unknown == [], "metrics no process exports"
