"""docs/metrics.md says what the code exports: its tables list every metric of the agent's and
the controller's registries with its type and labels (and nothing else), its cardinality
figures are computed from the traffic collector, its alerts are those of the chart's rule
file with their runbooks."""

from __future__ import annotations

import re
import time
from pathlib import Path

import yaml

from lvs_operator.director.kernel import ipvs_netlink as nl
from lvs_operator.director.kernel.ipvs import DestinationStats, ServiceStats
from lvs_operator.director.table import DestKey, Protocol, ServiceKey
from lvs_operator.director.traffic import Reading, traffic_metrics

from .exported_metrics import AGENT, CONTROLLER, families

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "metrics.md"
ALERTS = REPO / "charts" / "lvs-operator" / "files" / "alerts.yaml"
ROW = re.compile(r"^\| `([a-z_:]+)` \| (\w+) \| ([^|]*) \| .+ \|$")
SECTIONS = {AGENT: "## Director agent", CONTROLLER: "## Controller"}


def section(heading: str) -> str:
    text = DOC.read_text()
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


def documented(process: str) -> dict[str, tuple[str, frozenset[str]]]:
    rows = {}
    for line in section(SECTIONS[process]).splitlines():
        m = ROW.match(line)
        if m:
            labels = frozenset(re.findall(r"`([a-z_]+)`", m.group(3)))
            assert m.group(1) not in rows, f"{m.group(1)} documented twice"
            rows[m.group(1)] = (m.group(2), labels)
    return rows


def exported(process: str) -> dict[str, tuple[str, frozenset[str]]]:
    """As the tables show them: a counter by its _total series."""
    return {
        (f.name + "_total" if f.type == "counter" else f.name): (f.type, frozenset(f.labels))
        for f in families()
        if f.process == process
    }


def test_the_agent_table_is_what_the_agent_exports() -> None:
    assert documented(AGENT) == exported(AGENT)


def test_the_controller_table_is_what_the_controller_exports() -> None:
    assert documented(CONTROLLER) == exported(CONTROLLER)


def _series(services: int, destinations: int) -> int:
    """Traffic series of one director with that many services and real servers each."""
    stats, wanted = [], set()
    for i in range(services):
        key = ServiceKey(Protocol.TCP, f"10.{i // 250}.{i % 250}.1", 80)
        counters = nl.Counters(1, 2, 3, 4, 5)
        dests = tuple(
            DestinationStats(DestKey(f"10.200.{i % 250}.{d}", 8080), counters, 1, 0)
            for d in range(destinations)
        )
        stats.append(ServiceStats(key, nl.Counters(1, 2, 3, 4, 5), dests))
        wanted.add(key)
    reading = Reading(time.time(), 0.01, tuple(stats))
    return sum(len(f.samples) for f in traffic_metrics("g1", reading, wanted))


def test_the_cardinality_figures_are_the_collectors() -> None:
    fixed = _series(0, 0)
    per_service = _series(1, 0) - fixed
    per_destination = _series(1, 1) - _series(1, 0)
    total = _series(1000, 10)
    assert total == per_service * 1000 + per_destination * 10_000 + fixed
    text = " ".join(section("## Director agent").split())
    assert f"per service {per_service} series" in text
    assert f"per real server {per_destination}" in text
    assert f"plus {fixed} per director" in text
    times = "\N{MULTIPLICATION SIGN}"
    sum_ = f"{per_service} {times} 1,000 + {per_destination} {times} 10,000 + {fixed}"
    assert f"{sum_} = **{total:,}**" in text
    assert f"2 directors: {2 * total:,} in Prometheus" in text


def test_every_alert_is_documented_with_its_expression_and_runbook() -> None:
    text = " ".join(section("## Alerts").split())
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    assert rules
    for rule in rules:
        heading = f"### `{rule['alert']}` ({rule['labels']['severity']}, for {rule['for']})"
        assert heading in text, heading
        for part in (rule["expr"], rule["annotations"]["summary"], rule["annotations"]["runbook"]):
            assert " ".join(part.split()) in text, (rule["alert"], part)
    documented_alerts = re.findall(r"### `(\w+)`", text)
    assert sorted(documented_alerts) == sorted(r["alert"] for r in rules)
