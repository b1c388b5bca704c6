"""What the chart renders: one Recreate controller whose flags the controller itself accepts."""

from __future__ import annotations

import os
from typing import Any
from unittest import mock

import pytest

from .support import template


def controller(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    return dep


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = controller(docs)["spec"]["template"]["spec"]["containers"]
    return c


def parse_controller_args(c: dict[str, Any], namespace: str) -> Any:
    """Run the controller's own flag parser on the rendered args and env (as the pod would)."""
    app = pytest.importorskip("lvs_operator.controller.app")
    args = c["args"]
    assert args[0] == "controller"
    env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
    env["POD_NAMESPACE"] = namespace
    argv = [a.replace("$(POD_NAMESPACE)", namespace) for a in args[1:]]
    with mock.patch.dict(os.environ, env, clear=False):
        ns = app.parser().parse_args(argv)
        return app.config_from_args(ns), ns


def test_one_recreated_replica(helm: str) -> None:
    dep = controller(template(helm))
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}


def test_controller_runs_as_non_root(helm: str) -> None:
    docs = template(helm)
    pod = controller(docs)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    sc = container(docs)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}


def test_defaults_are_accepted_by_the_controller(helm: str) -> None:
    config, ns = parse_controller_args(container(template(helm)), "lvs-system")
    assert config.namespace == "lvs-system"
    assert config.vip_ranges == ()
    assert config.director_image == "lvs-operator:0.1.0"
    assert config.director_service_account == "lvs-director"
    assert ns.log_level == "info"


def test_values_reach_the_controller(helm: str) -> None:
    docs = template(
        helm,
        [
            "vipRanges={192.0.2.0/24,2001:db8::/64}",
            "image.repository=registry.example/lvs-operator",
            "image.tag=1.2.3",
            "director.serviceAccount.name=directors",
            "director.timings.leaseDurationSeconds=4",
            "director.timings.renewDeadlineSeconds=3",
            "director.timings.retryPeriodSeconds=1",
            "director.tolerations[0].key=lvs.io/director",
            "director.tolerations[0].operator=Exists",
            "director.tolerations[0].effect=NoSchedule",
            "director.priorityClassName=system-node-critical",
            "director.resources.limits.memory=128Mi",
            "director.healthPort=19641",
            "director.metricsPort=19642",
            "director.peerPort=19643",
            "logLevel=debug",
        ],
        namespace="lb",
    )
    c = container(docs)
    assert c["image"] == "registry.example/lvs-operator:1.2.3"
    config, ns = parse_controller_args(c, "lb")
    assert [str(r) for r in config.vip_ranges] == ["192.0.2.0/24", "2001:db8::/64"]
    assert config.namespace == "lb"
    assert config.director_image == "registry.example/lvs-operator:1.2.3"
    assert config.director_service_account == "directors"
    assert config.timings.lease_duration_seconds == 4
    assert config.timings.renew_deadline_seconds == 3
    assert config.timings.retry_period_seconds == 1
    assert list(config.director_tolerations) == [
        {"key": "lvs.io/director", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert config.director_priority_class == "system-node-critical"
    assert config.director_resources["limits"] == {"memory": "128Mi"}
    assert (config.health_port, config.metrics_port, config.peer_port) == (19641, 19642, 19643)
    assert ns.log_level == "debug"
    sas = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    assert "directors" in sas


def test_probes_use_the_liveness_endpoint(helm: str) -> None:
    c = container(template(helm, ["controller.healthPort=18080"]))
    assert "--liveness=http://0.0.0.0:18080/healthz" in c["args"]
    assert c["ports"][0] == {"name": "health", "containerPort": 18080, "protocol": "TCP"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_director_image_can_differ(helm: str) -> None:
    c = container(template(helm, ["director.image.repository=other/agent"]))
    assert "--director-image=other/agent:0.1.0" in c["args"]


def named(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_metrics_services_and_monitors(helm: str) -> None:
    docs = template(helm, ["metrics.serviceMonitor.enabled=true"])
    services, monitors = named(docs, "Service"), named(docs, "ServiceMonitor")
    assert set(services) == {"lvs-director-metrics", "lvs-operator-metrics"}
    assert set(monitors) == {"lvs-director", "lvs-operator"}
    for monitor in monitors.values():  # each selects one of the Services, by its port's name
        wanted = monitor["spec"]["selector"]["matchLabels"].items()
        (svc,) = [s for s in services.values() if wanted <= s["metadata"]["labels"].items()]
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
    kinds = {d["kind"] for d in template(helm, ["metrics.enabled=false"])}
    assert "Service" not in kinds and "ServiceMonitor" not in kinds
    assert "ServiceMonitor" not in {d["kind"] for d in template(helm)}  # off by default


def test_controller_metrics_port_reaches_the_controller_and_its_service(helm: str) -> None:
    docs = template(helm, ["controller.metricsPort=19640", "metrics.serviceMonitor.enabled=true"])
    config, _ = parse_controller_args(container(docs), "lvs-system")
    assert config.controller_metrics_port == 19640
    ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    assert ports["metrics"] == 19640
    svc = named(docs, "Service")["lvs-operator-metrics"]
    pod_labels = controller(docs)["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    (port,) = svc["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (19640, "metrics")


def test_controller_metrics_can_be_turned_off(helm: str) -> None:
    docs = template(helm, ["controller.metricsPort=0", "metrics.serviceMonitor.enabled=true"])
    config, _ = parse_controller_args(container(docs), "lvs-system")
    assert config.controller_metrics_port == 0
    assert "metrics" not in {p["name"] for p in container(docs)["ports"]}
    assert set(named(docs, "Service")) == {"lvs-director-metrics"}
    assert set(named(docs, "ServiceMonitor")) == {"lvs-director"}


def test_metrics_service_selects_the_agents_the_controller_creates(helm: str) -> None:
    manifests = pytest.importorskip("lvs_operator.controller.manifests")
    svc = named(template(helm), "Service")["lvs-director-metrics"]
    pod_labels = manifests.director_labels("g0123456789")
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    (port,) = svc["spec"]["ports"]
    assert port["targetPort"] == manifests.ControllerConfig().metrics_port


def test_fractional_timings_reach_the_agents(helm: str) -> None:
    """The agents' defaults are sub-second (renew 1.5 s, retry 0.4 s): the chart passes them."""
    from lvs_operator.controller.manifests import build_daemonset

    # `--set` types only integers; fractions come as JSON (or in a values file).
    c = container(
        render_with_json(
            helm,
            '{"leaseDurationSeconds": 2, "renewDeadlineSeconds": 1.5, "retryPeriodSeconds": 0.4}',
        )
    )
    config, _ = parse_controller_args(c, "lvs-system")
    assert config.timings.renew_deadline_seconds == 1.5
    assert config.timings.retry_period_seconds == 0.4
    env = {
        e["name"]: e.get("value")
        for e in build_daemonset("g1", {"lvs.io/director": "true"}, config)["spec"]["template"][
            "spec"
        ]["containers"][0]["env"]
    }
    assert env["LVS_RENEW_DEADLINE_SECONDS"] == "1.5"
    assert env["LVS_RETRY_PERIOD_SECONDS"] == "0.4"


def render_with_json(helm: str, timings: str) -> list[dict[str, Any]]:
    import yaml

    from .support import render

    text = render.helm_template(helm, "--set-json", f"director.timings={timings}")
    return [d for d in yaml.safe_load_all(text) if d]


def test_image_pull_secrets_reach_the_controller_and_its_directors(helm: str) -> None:
    config, _ = parse_controller_args(container(template(helm)), "lvs-system")
    assert config.director_image_pull_secrets == ()
    docs = template(helm, ["imagePullSecrets[0].name=regcred", "imagePullSecrets[1].name=mirror"])
    pod = controller(docs)["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
    config, _ = parse_controller_args(container(docs), "lvs-system")
    assert config.director_image_pull_secrets == ("regcred", "mirror")


def test_every_object_says_helm_manages_it(helm: str) -> None:
    docs = template(
        helm,
        [
            "metrics.serviceMonitor.enabled=true",
            "metrics.prometheusRule.enabled=true",
            "metrics.dashboard.enabled=true",
        ],
    )
    unlabelled = [
        f"{d['kind']}/{d['metadata']['name']}"
        for d in docs
        if (d["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") != "Helm"
    ]
    assert unlabelled == []


def test_the_controller_knows_its_deployment(helm: str) -> None:
    """The Deployment the controller names as owner of the director DaemonSets is this one,
    and its Role may read it (by name)."""
    docs = template(helm)
    _, ns = parse_controller_args(container(docs), "lvs-system")
    assert ns.owner_deployment == controller(docs)["metadata"]["name"]
    (role,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "lvs-operator"]
    assert {
        "apiGroups": ["apps"],
        "resources": ["deployments"],
        "resourceNames": [ns.owner_deployment],
        "verbs": ["get"],
    } in role["rules"]


def test_older_kubernetes_is_refused_before_anything_is_applied(helm: str) -> None:
    from .support import render

    for older in ("1.30.9", "1.29.0"):
        with pytest.raises(RuntimeError, match=rf"Kubernetes v?{older} is too old .* 1\.31 or"):
            render.helm_template(helm, "--kube-version", older)
    # released versions from 1.31 on, and API servers built without a version stamp (the
    # test control plane reports v0.0.0-master+$Format:%H$)
    for served in ("1.31.0", "v1.36.3", "v0.0.0-master+$Format:%H$"):
        assert "kind: Deployment" in render.helm_template(helm, "--kube-version", served)


def test_plain_manifests_label_their_namespace_for_the_directors_pods() -> None:
    import yaml

    from .support import REPO

    docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "lvs-operator.yaml").read_text()) if d]
    (ns,) = [d for d in docs if d["kind"] == "Namespace"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    # everything else the file holds lives in that namespace (or is cluster-scoped)
    assert {d["metadata"].get("namespace", ns["metadata"]["name"]) for d in docs} == {
        ns["metadata"]["name"]
    }


def test_node_settings_init_container_is_on_by_default_and_switchable_off(helm: str) -> None:
    """The chart's value reaches the controller, whose DaemonSet then has (or lacks) the
    privileged node-settings init container."""
    from lvs_operator.controller.manifests import NODE_SETTINGS_CONTAINER, build_daemonset

    config, _ = parse_controller_args(container(template(helm)), "lvs-system")
    assert config.director_node_settings is True
    pod = build_daemonset("g1", {}, config)["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == [NODE_SETTINGS_CONTAINER]
    assert pod["initContainers"][0]["image"] == config.director_image
    off = template(helm, ["director.nodeSettings.enabled=false"])
    config, _ = parse_controller_args(container(off), "lvs-system")
    assert config.director_node_settings is False
    assert build_daemonset("g1", {}, config)["spec"]["template"]["spec"]["initContainers"] == []
