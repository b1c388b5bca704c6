"""The test control plane behaves like a real cluster (issue 6's "Must show").

CRDs apply server-side; a Deployment gets Running/Ready pods on kwok nodes and its Service
an EndpointSlice with ready endpoints; the garbage collector deletes dependents; a DaemonSet
gets one pod per matching node; a StatefulSet its ordered pods; RBAC is on; the serving
certificate fits the data-plane VM.
"""

from __future__ import annotations

import secrets
import ssl
import subprocess
import urllib.error
import urllib.request
from typing import Any

import pytest
from lightkube import AsyncClient, Client, codecs
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.apps_v1 import DaemonSet, Deployment, ReplicaSet
from lightkube.resources.core_v1 import ConfigMap, Node, Pod
from lightkube.resources.discovery_v1 import EndpointSlice

from .helpers import (
    CLUSTER_SH,
    FIELD_MANAGER,
    TestCluster,
    apply_crds,
    async_wait_for,
    pod_ready,
    wait_for,
)

pytestmark = pytest.mark.integration

IMAGE = "registry.invalid/lvs-test/web:1"  # never pulled: kwok plays the kubelet


def _obj(d: dict[str, Any]) -> Any:
    return codecs.from_dict(d)


def _deployment(name: str, replicas: int, labels: dict[str, str]) -> Any:
    return _obj(
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
                        "containers": [
                            {
                                "name": "web",
                                "image": IMAGE,
                                "ports": [{"name": "http", "containerPort": 8080}],
                            }
                        ]
                    },
                },
            },
        }
    )


# ----------------------------------------------------------------------------- CRDs


def test_crds_apply_server_side(crds: list[str], kube_client: Client) -> None:
    for name in crds:
        crd = kube_client.get(CustomResourceDefinition, name)
        conds = {c.type: c.status for c in crd.status.conditions or []}
        assert conds.get("Established") == "True", (name, conds)
        assert conds.get("NamesAccepted") == "True", (name, conds)
        managers = {(m.manager, m.operation) for m in crd.metadata.managedFields or []}
        assert (FIELD_MANAGER, "Apply") in managers, managers
    # applying the same manifests again is a no-op for the server
    before = {
        n: kube_client.get(CustomResourceDefinition, n).metadata.resourceVersion for n in crds
    }
    assert apply_crds(kube_client) == crds
    after = {n: kube_client.get(CustomResourceDefinition, n).metadata.resourceVersion for n in crds}
    assert before == after


# ----------------------------------------------------------------------------- workloads


async def test_deployment_pods_ready_and_endpointslice(
    test_cluster: TestCluster, kube_client: Client, akube: AsyncClient, namespace: str
) -> None:
    labels = {"app": "web"}
    kube_client.apply(_deployment("web", 3, labels), namespace=namespace)
    kube_client.apply(
        _obj(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web"},
                "spec": {
                    "selector": labels,
                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
                },
            }
        ),
        namespace=namespace,
    )

    async def three_ready_pods() -> list[Any] | None:
        pods = [p async for p in akube.list(Pod, namespace=namespace, labels=labels)]
        ready = [p for p in pods if pod_ready(p)]
        return ready if len(ready) == 3 else None

    pods = await async_wait_for(three_ready_pods, timeout=60, message="3 Ready pods of web")
    kwok_nodes = {n.metadata.name for n in kube_client.list(Node, labels={"type": "kwok"})}
    for p in pods:
        assert p.spec.nodeName in kwok_nodes, p.spec.nodeName
        assert p.status.podIP, p.metadata.name
    pod_ips = {p.status.podIP for p in pods}
    assert len(pod_ips) == 3

    async def slice_with_three_ready() -> set[str] | None:
        ready: set[str] = set()
        async for s in akube.list(
            EndpointSlice, namespace=namespace, labels={"kubernetes.io/service-name": "web"}
        ):
            for ep in s.endpoints or []:
                if ep.conditions and ep.conditions.ready:
                    ready.update(ep.addresses)
            assert [(pt.name, pt.port) for pt in s.ports or []] in ([("http", 8080)], [])
        return ready if ready == pod_ips else None

    await async_wait_for(
        slice_with_three_ready, timeout=60, message="an EndpointSlice with 3 ready endpoints"
    )
    dep = wait_for(
        lambda: (
            d
            if (d := kube_client.get(Deployment, "web", namespace=namespace)).status
            and d.status.readyReplicas == 3
            else None
        ),
        timeout=30,
        message="Deployment web readyReplicas=3",
    )
    assert dep.status.availableReplicas == 3


def test_garbage_collector_deletes_dependents(kube_client: Client, namespace: str) -> None:
    labels = {"app": "gc"}
    kube_client.apply(_deployment("gc", 2, labels), namespace=namespace)
    wait_for(
        lambda: (
            len(
                [
                    p
                    for p in kube_client.list(Pod, namespace=namespace, labels=labels)
                    if pod_ready(p)
                ]
            )
            == 2
        ),
        timeout=60,
        message="2 Ready pods of gc",
    )
    assert list(kube_client.list(ReplicaSet, namespace=namespace, labels=labels))

    # an owner reference set by hand is followed as well
    owner = kube_client.create(
        ConfigMap(metadata=ObjectMeta(name="owner"), data={"k": "v"}), namespace=namespace
    )
    kube_client.create(
        _obj(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": "dependent",
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "ConfigMap",
                            "name": "owner",
                            "uid": owner.metadata.uid,
                        }
                    ],
                },
                "data": {"k": "v"},
            }
        ),
        namespace=namespace,
    )

    kube_client.delete(Deployment, "gc", namespace=namespace)
    kube_client.delete(ConfigMap, "owner", namespace=namespace)
    wait_for(
        lambda: not list(kube_client.list(ReplicaSet, namespace=namespace, labels=labels)),
        timeout=60,
        message="the ReplicaSet of the deleted Deployment to be collected",
    )
    wait_for(
        lambda: not list(kube_client.list(Pod, namespace=namespace, labels=labels)),
        timeout=60,
        message="the pods of the deleted Deployment to be collected",
    )
    wait_for(
        lambda: (
            not [
                c
                for c in kube_client.list(ConfigMap, namespace=namespace)
                if c.metadata.name == "dependent"
            ]
        ),
        timeout=60,
        message="the dependent ConfigMap to be collected",
    )


def test_statefulset_pods_in_order(kube_client: Client, namespace: str) -> None:
    labels = {"app": "db"}
    kube_client.apply(
        _obj(
            {
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "metadata": {"name": "db"},
                "spec": {
                    "serviceName": "db",
                    "replicas": 2,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"containers": [{"name": "db", "image": IMAGE}]},
                    },
                },
            }
        ),
        namespace=namespace,
    )
    names = wait_for(
        lambda: (
            n
            if (
                n := sorted(
                    p.metadata.name
                    for p in kube_client.list(Pod, namespace=namespace, labels=labels)
                    if pod_ready(p)
                )
            )
            == ["db-0", "db-1"]
            else None
        ),
        timeout=60,
        message="StatefulSet pods db-0 and db-1 Ready",
    )
    assert names == ["db-0", "db-1"]


def _daemonset_covers(
    kube_client: Client, namespace: str, name: str, selector: dict[str, str] | None
) -> set[str]:
    """Apply a DaemonSet and wait for one Ready pod on each matching node; returns the nodes."""
    ds_labels = {"ds": name}
    pod_spec: dict[str, Any] = {"containers": [{"name": "agent", "image": IMAGE}]}
    if selector:
        pod_spec["nodeSelector"] = selector
    kube_client.apply(
        _obj(
            {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "metadata": {"name": name},
                "spec": {
                    "selector": {"matchLabels": ds_labels},
                    "template": {"metadata": {"labels": ds_labels}, "spec": pod_spec},
                },
            }
        ),
        namespace=namespace,
    )
    matching = {
        n.metadata.name
        for n in kube_client.list(Node, labels=selector or {})
        if n.metadata.deletionTimestamp is None
        # only the node lifecycle controller's transient taints may be there (not-ready while a
        # new node has not been seen Ready yet); the DaemonSet controller waits them out
        and all(t.key.startswith("node.kubernetes.io/") for t in n.spec.taints or [])
    }

    def pods_on_nodes() -> list[str] | None:
        pods = kube_client.list(Pod, namespace=namespace, labels=ds_labels)
        nodes = sorted(p.spec.nodeName for p in pods if pod_ready(p))
        return nodes if nodes == sorted(matching) else None

    wait_for(pods_on_nodes, timeout=60, message=f"one Ready pod of {name} per node")
    wait_for(
        lambda: (
            kube_client.get(DaemonSet, name, namespace=namespace).status.numberReady
            == len(matching)
        ),
        timeout=30,
        message=f"DaemonSet {name} numberReady={len(matching)}",
    )
    return matching


def test_daemonset_one_pod_per_matching_node(
    test_cluster: TestCluster, kube_client: Client, namespace: str
) -> None:
    if test_cluster.dir is None:
        pytest.skip("adds fake nodes: needs a cluster started by cluster.sh")
    role = f"director-{secrets.token_hex(3)}"
    added = [f"{role}-a", f"{role}-b"]
    for n in added:
        test_cluster.add_node(n, {"lvs-test/role": role})
    try:
        covered = _daemonset_covers(kube_client, namespace, "directors", {"lvs-test/role": role})
        assert covered == set(added)
        everywhere = _daemonset_covers(kube_client, namespace, "everywhere", None)
        assert set(added) < everywhere
        assert set(test_cluster.nodes) <= everywhere
    finally:
        for n in added:
            kube_client.delete(Node, n)


# ----------------------------------------------------------------------------- access


def test_rbac_is_enforced(test_cluster: TestCluster) -> None:
    if not test_cluster.info:
        pytest.skip("checks the cluster.sh cluster's own set-up")
    ctx = ssl.create_default_context(cafile=test_cluster.info["ca"])
    req = urllib.request.Request(test_cluster.server + "/api/v1/secrets")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, context=ctx, timeout=10)
    assert err.value.code in (401, 403)
    # anonymous health checks stay open
    with urllib.request.urlopen(test_cluster.server + "/readyz", context=ctx, timeout=10) as r:
        assert r.status == 200


def test_serving_certificate_fits_the_vm(test_cluster: TestCluster) -> None:
    if test_cluster.dir is None:
        pytest.skip("checks the cluster.sh cluster's own set-up")
    text = subprocess.run(
        [
            "openssl",
            "x509",
            "-noout",
            "-ext",
            "subjectAltName",
            "-in",
            str(test_cluster.dir / "pki" / "apiserver.crt"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "IP Address:127.0.0.1" in text and "IP Address:10.0.2.2" in text, text
    env = subprocess.run(
        [str(CLUSTER_SH), "env", str(test_cluster.dir)], capture_output=True, text=True, check=True
    ).stdout
    assert f"export KUBECONFIG={test_cluster.kubeconfig}" in env
    assert "LVS_TEST_APISERVER_VM=https://10.0.2.2:" in env
