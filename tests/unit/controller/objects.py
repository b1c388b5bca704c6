"""Builders of raw Kubernetes objects (dicts) for the controller's unit tests."""

from __future__ import annotations

from typing import Any

from lvs_operator.controller.manifests import service_name

NS = "web"


def vs(
    name: str,
    vip: str = "192.0.2.10",
    ports: list[dict[str, Any]] | None = None,
    pool: str = "web",
    namespace: str = NS,
    created: str = "2024-01-01T00:00:00Z",
    generation: int = 1,
    selector: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "vip": vip,
        "ports": ports if ports is not None else [{"port": 80, "targetPort": "http"}],
        "poolRef": {"name": pool},
    }
    if selector is not None:
        spec["directors"] = {"nodeSelector": selector}
    obj: dict[str, Any] = {
        "apiVersion": "lvs.io/v1alpha1",
        "kind": "VirtualServer",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{namespace}-{name}",
            "generation": generation,
            "creationTimestamp": created,
            "labels": dict(labels or {}),
        },
        "spec": spec,
    }
    if status is not None:
        obj["status"] = status
    return obj


def pool(
    name: str = "web",
    namespace: str = NS,
    selector: dict[str, Any] | None = None,
    servers: list[dict[str, Any]] | None = None,
    weight: int | None = None,
    generation: int = 1,
    status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if selector is not None:
        spec["selector"] = selector
    elif servers is None:
        spec["selector"] = {"matchLabels": {"app": name}}
    if servers is not None:
        spec["servers"] = servers
    if weight is not None:
        spec["weight"] = weight
    obj: dict[str, Any] = {
        "apiVersion": "lvs.io/v1alpha1",
        "kind": "RealServerPool",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-pool-{namespace}-{name}",
            "generation": generation,
        },
        "spec": spec,
    }
    if status is not None:
        obj["status"] = status
    return obj


def endpoint(
    address: str,
    pod: str,
    ready: bool | None = True,
    serving: bool | None = None,
    terminating: bool | None = None,
    node: str = "node-1",
) -> dict[str, Any]:
    cond: dict[str, Any] = {}
    if ready is not None:
        cond["ready"] = ready
    if serving is not None:
        cond["serving"] = serving
    if terminating is not None:
        cond["terminating"] = terminating
    return {
        "addresses": [address],
        "conditions": cond,
        "nodeName": node,
        "targetRef": {"kind": "Pod", "name": pod, "namespace": NS},
    }


def endpoint_slice(
    pool_name: str, endpoints: list[dict[str, Any]], ports: dict[str, int] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{service_name(pool_name)}-abcde",
            "namespace": NS,
            "labels": {"kubernetes.io/service-name": service_name(pool_name)},
        },
        "endpoints": endpoints,
        "ports": [{"name": k, "port": v, "protocol": "TCP"} for k, v in (ports or {}).items()],
    }


def lease(
    name: str,
    holder: str = "node-1",
    renew: str = "2024-01-01T00:00:00.000000Z",
    duration: int = 15,
    programmed: dict[str, int] | None = None,
) -> dict[str, Any]:
    import json

    meta: dict[str, Any] = {"name": name, "namespace": "lvs-system"}
    if programmed is not None:
        meta["annotations"] = {"lvs.io/programmed": json.dumps(programmed)}
    return {
        "metadata": meta,
        "spec": {"holderIdentity": holder, "renewTime": renew, "leaseDurationSeconds": duration},
    }
