"""The chart's alert rules (charts/lvs-operator/files/alerts.yaml): promtool checks them and
runs their unit tests (alerts_test.yaml), every alert has a case where it fires and one where
it stays silent, and the PrometheusRule carries the file unchanged."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from .support import CHART, template

ALERTS = CHART / "files" / "alerts.yaml"
ALERT_TESTS = Path(__file__).with_name("alerts_test.yaml")


def alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [r for g in rules["groups"] for r in g["rules"] if "alert" in r]


def promtool_run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules(promtool: str) -> None:
    r = promtool_run(promtool, "check", "rules", str(ALERTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in r.stdout, r.stdout


def test_promtool_runs_the_alerts_unit_tests(promtool: str) -> None:
    r = promtool_run(promtool, "test", "rules", str(ALERT_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout, r.stdout


def test_the_unit_tests_are_of_the_shipped_file() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    files = [(ALERT_TESTS.parent / f).resolve() for f in tests["rule_files"]]
    assert files == [ALERTS.resolve()]


def test_every_alert_has_a_case_that_fires_and_one_that_does_not() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test") or []:
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - fires == set(), "alerts never shown firing"
    assert names - silent == set(), "alerts never shown silent"
    assert (fires | silent) - names == set(), "tests of alerts that do not exist"


def test_every_alert_has_a_severity_a_summary_and_a_runbook() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert set(rule["annotations"]) == {"summary", "runbook"}, rule["alert"]
        assert rule["annotations"]["runbook"].strip(), rule["alert"]


def test_the_prometheus_rule_carries_the_file_and_is_off_by_default(helm: str) -> None:
    assert "PrometheusRule" not in {d["kind"] for d in template(helm)}
    docs = template(
        helm, ["metrics.prometheusRule.enabled=true", "metrics.prometheusRule.labels.release=p"]
    )
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())
    assert rule["metadata"]["labels"]["release"] == "p"
    assert rule["metadata"]["namespace"] == "lvs-system"
