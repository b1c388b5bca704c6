"""The Grafana dashboard (charts/lvs-operator/files/dashboard.json) and its ConfigMap: off by
default, labelled for Grafana's sidecar, carrying the file; panels on the chosen data source.
Its expressions are checked in test_promql.py."""

from __future__ import annotations

import json

from .support import CHART, template

DASHBOARD = CHART / "files" / "dashboard.json"


def test_the_config_map_carries_the_dashboard_for_the_sidecar(helm: str) -> None:
    assert "ConfigMap" not in {d["kind"] for d in template(helm)}
    docs = template(helm, ["metrics.dashboard.enabled=true"])
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "lvs-system"
    assert json.loads(cm["data"]["lvs-operator.json"]) == json.loads(DASHBOARD.read_text())


def test_the_config_map_can_go_where_the_sidecar_looks(helm: str) -> None:
    docs = template(
        helm,
        [
            "metrics.dashboard.enabled=true",
            "metrics.dashboard.namespace=monitoring",
            "metrics.dashboard.annotations.grafana_folder=LVS",
        ],
    )
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "LVS"}


def test_every_panel_queries_the_chosen_data_source_and_ids_are_unique() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "group"} <= variables
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    queried = [p for p in panels if p["type"] != "row"]
    assert queried
    for p in queried:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]
