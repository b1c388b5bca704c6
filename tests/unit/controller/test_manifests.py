from __future__ import annotations

import base64
from typing import Any

from lvs_operator.api.contract import GROUP_LABEL, MANAGED_BY_LABEL, lease_name, peer_secret_name
from lvs_operator.api.realserverpool import RealServerPool
from lvs_operator.api.virtualserver import Protocol, VirtualPort
from lvs_operator.controller.config import ControllerConfig, DirectorTimings, OwnerDeployment
from lvs_operator.controller.manifests import (
    ServicePort,
    build_daemonset,
    build_peer_secret,
    build_service,
    carries,
    is_subset,
    label_value,
    service_name,
    service_ports,
    target_port_key,
)

from . import objects as o


def test_service_name_plain_and_hashed() -> None:
    assert service_name("web") == "lvs-web"
    dotted = service_name("web.v1")
    assert dotted.startswith("lvs-web-v1-") and len(dotted) <= 63
    assert service_name("web.v1") != service_name("web-v1")
    long = service_name("a" * 200)
    assert len(long) <= 63 and long.startswith("lvs-a")
    assert service_name("1web").startswith("lvs-1web")


def test_label_value() -> None:
    assert label_value("web") == "web"
    long = label_value("x" * 100)
    assert len(long) <= 63


def test_target_port_keys() -> None:
    assert target_port_key("http") == "http"
    assert target_port_key(8080) == "8080"


def test_service_ports_named_numeric_and_protocols() -> None:
    ports = service_ports(
        [
            VirtualPort(80, Protocol.TCP, "http"),
            VirtualPort(443, Protocol.TCP, 8443),
            VirtualPort(53, Protocol.UDP, None),
            VirtualPort(53, Protocol.TCP, None),
            VirtualPort(8080, Protocol.TCP, "http"),  # same key: one Service port
            VirtualPort(9000, Protocol.UDP, "stats"),
        ]
    )
    by_name = {p.name: p for p in ports}
    assert set(by_name) == {"http", "8443", "53", "stats"}
    assert by_name["8443"] == ServicePort("8443", 8443, 8443, Protocol.TCP)
    assert by_name["53"].protocol == Protocol.TCP  # TCP preferred
    assert by_name["stats"].protocol == Protocol.UDP
    assert by_name["http"].target_port == "http"
    numbers = [p.port for p in ports]
    assert len(set(numbers)) == len(numbers)
    assert service_ports([]) == ()


def test_build_service() -> None:
    pool = RealServerPool.from_object(o.pool(selector={"matchLabels": {"app": "web"}}))
    svc = build_service(pool, service_ports([VirtualPort(80, Protocol.TCP, "http")]))
    assert svc is not None
    assert svc["metadata"]["name"] == "lvs-web"
    assert svc["metadata"]["namespace"] == "web"
    assert svc["metadata"]["labels"][MANAGED_BY_LABEL] == "lvs-operator"
    owner = svc["metadata"]["ownerReferences"][0]
    assert owner == {
        "apiVersion": "lvs.io/v1alpha1",
        "kind": "RealServerPool",
        "name": "web",
        "uid": "uid-pool-web-web",
        "controller": True,
    }
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == {"app": "web"}
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 1, "targetPort": "http", "protocol": "TCP"}
    ]
    # No VirtualServer yet: a headless Service without ports.
    assert "ports" not in (build_service(pool, ()) or {})["spec"]


def test_build_service_none_without_match_labels() -> None:
    static = RealServerPool.from_object(o.pool(servers=[{"address": "198.51.100.1"}]))
    assert build_service(static, ()) is None
    exprs = RealServerPool.from_object(
        o.pool(selector={"matchExpressions": [{"key": "app", "operator": "Exists"}]})
    )
    assert build_service(exprs, ()) is None


def test_build_daemonset_contract() -> None:
    config = ControllerConfig(
        namespace="lvs-system",
        director_image="example/lvs:1",
        director_tolerations=({"operator": "Exists"},),
        timings=DirectorTimings(lease_duration_seconds=6, retry_period_seconds=1),
    )
    ds = build_daemonset("gabc", {"lvs.io/director": "true"}, config)
    assert ds["metadata"]["name"] == "lvs-director-gabc"
    assert ds["metadata"]["namespace"] == "lvs-system"
    assert ds["metadata"]["labels"][GROUP_LABEL] == "gabc"
    assert ds["metadata"]["labels"][MANAGED_BY_LABEL] == "lvs-operator"
    pod = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= (
        ds["spec"]["template"]["metadata"]["labels"].items()
    )
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["nodeSelector"] == {"lvs.io/director": "true"}
    assert pod["serviceAccountName"] == "lvs-director"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    (c,) = pod["containers"]
    assert c["name"] == "director"
    assert c["image"] == "example/lvs:1"
    assert c["command"] == ["lvs-operator", "director"]
    sc = c["securityContext"]
    assert sc["privileged"] is False
    assert (sc["runAsUser"], sc["runAsNonRoot"]) == (0, False)
    assert sc["capabilities"] == {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["LVS_DIRECTOR_GROUP"]["value"] == "gabc"
    assert env["LVS_LEASE_NAME"]["value"] == lease_name("gabc")
    assert env["LVS_HEALTH_PORT"]["value"] == "9641"
    assert env["LVS_METRICS_PORT"]["value"] == "9642"
    assert env["LVS_PEER_PORT"]["value"] == "9643"
    assert {"name": "heartbeat", "containerPort": 9643, "protocol": "UDP"} in c["ports"]
    assert env["LVS_LEASE_DURATION_SECONDS"]["value"] == "6"
    assert env["LVS_RETRY_PERIOD_SECONDS"]["value"] == "1"
    assert "LVS_RENEW_DEADLINE_SECONDS" not in env
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9641, "scheme": "HTTP"}
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["resources"]["requests"]["cpu"] == "50m"


def test_a_virtualservers_selector_narrows_the_director_nodes_never_leaves_them() -> None:
    """Tenants choose spec.directors.nodeSelector: the operator's director label is always
    required too, and wins over a value the tenant gives it."""
    pin = ControllerConfig()
    tenant = {"kubernetes.io/hostname": "control-plane-1", "lvs.io/director": "false"}
    ds = build_daemonset("gabc", tenant, pin)
    assert ds["spec"]["template"]["spec"]["nodeSelector"] == {
        "kubernetes.io/hostname": "control-plane-1",
        "lvs.io/director": "true",
    }
    off = build_daemonset("gabc", tenant, ControllerConfig(director_node_pin={}))
    assert off["spec"]["template"]["spec"]["nodeSelector"] == tenant


def test_daemonset_mounts_the_groups_heartbeat_key() -> None:
    ds = build_daemonset("gabc", {"lvs.io/director": "true"}, ControllerConfig())
    pod = ds["spec"]["template"]["spec"]
    (volume,) = pod["volumes"]
    assert volume == {
        "name": "peer-key",
        "secret": {
            "secretName": "lvs-director-gabc-peer",
            "items": [{"key": "key", "path": "key"}],
            "defaultMode": 0o400,
        },
    }
    assert "optional" not in volume["secret"]  # no key, no agent: never unauthenticated
    (c,) = pod["containers"]
    assert c["volumeMounts"] == [
        {"name": "peer-key", "mountPath": "/etc/lvs-operator/peer", "readOnly": True}
    ]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["LVS_PEER_KEY_FILE"] == "/etc/lvs-operator/peer/key"
    assert env["LVS_PEER_KEY_FILE"] == volume_path(c["volumeMounts"][0], volume)


def volume_path(mount: dict[str, Any], volume: dict[str, Any]) -> str:
    (item,) = volume["secret"]["items"]
    return f"{mount['mountPath']}/{item['path']}"


def test_build_peer_secret() -> None:
    config = ControllerConfig(namespace="lvs-system")
    secret = build_peer_secret("gabc", config, "uid-1")
    assert secret["metadata"]["name"] == peer_secret_name("gabc") == "lvs-director-gabc-peer"
    assert secret["metadata"]["namespace"] == "lvs-system"
    assert secret["metadata"]["labels"][GROUP_LABEL] == "gabc"
    assert secret["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "name": "lvs-director-gabc",
            "uid": "uid-1",
            "controller": True,
        }
    ]
    assert secret["type"] == "Opaque"
    key = base64.b64decode(secret["data"]["key"])
    assert len(key) == 32
    assert base64.b64decode(build_peer_secret("gabc", config, "uid-1")["data"]["key"]) != key
    fixed = build_peer_secret("gabc", config, "uid-1", key=b"k" * 32)
    assert fixed["data"] == {"key": base64.b64encode(b"k" * 32).decode()}


def test_build_daemonset_without_optional_parts() -> None:
    ds = build_daemonset("g1", {"a": "b"}, ControllerConfig(director_resources={}))
    pod = ds["spec"]["template"]["spec"]
    assert "tolerations" not in pod and "priorityClassName" not in pod
    assert "resources" not in pod["containers"][0]
    ds = build_daemonset("g1", {"a": "b"}, ControllerConfig(director_priority_class="high"))
    assert ds["spec"]["template"]["spec"]["priorityClassName"] == "high"


def test_is_subset() -> None:
    assert is_subset({"a": 1}, {"a": 1, "b": 2})
    assert not is_subset({"a": 1}, {"a": 2})
    assert not is_subset({"a": 1}, {})
    assert is_subset([{"a": 1}], [{"a": 1, "x": 0}])
    assert not is_subset([{"a": 1}], [{"a": 1}, {"a": 2}])
    assert not is_subset("1", 1)
    assert not is_subset(True, 1)
    assert is_subset(1, 1.0)
    assert not is_subset({"a": {"b": "c"}}, {"a": "c"})


def test_carries_ignores_api_version_and_kind() -> None:
    pool = RealServerPool.from_object(o.pool())
    desired = build_service(pool, ())
    assert desired is not None
    current = {"metadata": dict(desired["metadata"]), "spec": {**desired["spec"], "type": "X"}}
    assert carries(desired, current)
    assert not carries(desired, None)
    current["spec"]["selector"] = {"app": "other"}
    assert not carries(desired, current)


def test_daemonset_pulls_with_the_configured_secrets() -> None:
    pod = build_daemonset("gabc", {}, ControllerConfig())["spec"]["template"]["spec"]
    assert "imagePullSecrets" not in pod
    config = ControllerConfig(director_image_pull_secrets=("regcred", "mirror"))
    pod = build_daemonset("gabc", {}, config)["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]


def test_director_pods_run_under_the_runtime_default_seccomp_profile() -> None:
    pod = build_daemonset("gabc", {}, ControllerConfig())["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    (c,) = pod["containers"]
    assert "seccompProfile" not in c["securityContext"]  # the pod's applies: no override


def test_everything_the_controller_builds_says_who_manages_it() -> None:
    config = ControllerConfig()
    ds = build_daemonset("gabc", {}, config)
    secret = build_peer_secret("gabc", config, "uid-1")
    for labels in (
        ds["metadata"]["labels"],
        ds["spec"]["template"]["metadata"]["labels"],
        secret["metadata"]["labels"],
    ):
        assert labels[MANAGED_BY_LABEL] == "lvs-operator"


def test_daemonset_is_owned_by_the_controllers_deployment_when_known() -> None:
    alone = build_daemonset("gabc", {}, ControllerConfig())
    assert "ownerReferences" not in alone["metadata"]
    owned = build_daemonset(
        "gabc", {}, ControllerConfig(owner=OwnerDeployment(name="lvs-operator", uid="uid-d"))
    )
    assert owned["metadata"]["ownerReferences"] == [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "lvs-operator", "uid": "uid-d"}
    ]
    # an existing DaemonSet without the owner is rewritten (adopted) on the next pass
    assert not carries(owned, alone)
    assert carries(owned, owned)
