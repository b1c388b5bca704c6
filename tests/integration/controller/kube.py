"""Small helpers for the controller's integration tests (objects, waits, conditions)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lightkube import ApiError, Client, codecs
from lightkube.resources.core_v1 import Event

from ..helpers import custom_resource, wait_for

VS = custom_resource("lvs.io", "v1alpha1", "VirtualServer", "virtualservers")
RSP = custom_resource("lvs.io", "v1alpha1", "RealServerPool", "realserverpools")
IMAGE = "registry.invalid/lvs-test/web:1"  # never pulled: kwok plays the kubelet
GROUP_LABEL = "lvs.io/director-group"


def deployment(
    name: str, replicas: int, labels: dict[str, str], ports: dict[str, int] | None = None
) -> Any:
    container_ports = [
        {"name": k, "containerPort": v} for k, v in (ports or {"http": 8080}).items()
    ]
    return codecs.from_dict(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "terminationGracePeriodSeconds": 30,
                        "containers": [{"name": "web", "image": IMAGE, "ports": container_ports}],
                    },
                },
            },
        }
    )


def pool(name: str, **spec: Any) -> Any:
    return RSP.from_dict(
        {
            "apiVersion": "lvs.io/v1alpha1",
            "kind": "RealServerPool",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def virtualserver(
    name: str,
    vip: str,
    pool_name: str,
    ports: list[dict[str, Any]] | None = None,
    node_selector: dict[str, str] | None = None,
) -> Any:
    spec: dict[str, Any] = {
        "vip": vip,
        "ports": ports or [{"port": 80, "targetPort": "http"}],
        "poolRef": {"name": pool_name},
    }
    if node_selector is not None:
        spec["directors"] = {"nodeSelector": node_selector}
    return VS.from_dict(
        {
            "apiVersion": "lvs.io/v1alpha1",
            "kind": "VirtualServer",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def obj(client: Client, res: Any, name: str, namespace: str) -> dict[str, Any]:
    return client.get(res, name, namespace=namespace).to_dict()  # type: ignore[no-any-return]


def condition(o: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (o.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c  # type: ignore[no-any-return]
    return {}


def wait_obj(
    client: Client,
    res: Any,
    name: str,
    namespace: str,
    pred: Callable[[dict[str, Any]], Any],
    timeout: float = 30,
    what: str = "",
    interval: float = 0.1,
) -> dict[str, Any]:
    last: dict[str, Any] = {}

    def check() -> dict[str, Any] | None:
        nonlocal last
        last = obj(client, res, name, namespace)
        return last if pred(last) else None

    return wait_for(
        check,
        timeout=timeout,
        interval=interval,
        message=lambda: (
            f"{what or 'condition'} on {namespace}/{name}; last status: "
            f"{(last.get('status') or {})!r:.1500}"
        ),
    )


def ready_reason(o: dict[str, Any]) -> str:
    return str(condition(o, "Ready").get("reason", ""))


def events_for(client: Client, namespace: str, name: str) -> list[Any]:
    return [
        e
        for e in client.list(Event, namespace=namespace)
        if e.involvedObject.name == name and (e.source and e.source.component == "lvs-operator")
    ]


def event_reasons(client: Client, namespace: str, name: str) -> set[str]:
    return {str(e.reason) for e in events_for(client, namespace, name)}


def gone(client: Client, res: Any, name: str, namespace: str | None = None) -> bool:
    try:
        client.get(res, name, namespace=namespace)
    except ApiError as exc:
        if exc.status.code == 404:
            return True
        raise
    return False


def members_by_pod(pool_obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        m.get("pod", m["address"]): m for m in (pool_obj.get("status") or {}).get("members") or []
    }


def monotonic_ms() -> float:
    return time.monotonic() * 1000
