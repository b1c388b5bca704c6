"""Installing the operator on the real control plane: with Helm, and with plain manifests.

Each test goes the whole way a user does: install, apply examples/three-tier/, see the
controller Deployment available and the example's pods Ready (kwok plays the kubelet), run
the controller (on this machine, as the chart's ServiceAccount, with the Deployment's flags)
and see the pool list the web pods and the VirtualServer wait for its director group
(Programmed pending: no director agent runs under kwok), change a value and see it roll out,
then remove everything and check that only the CRDs remain.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import AsyncClient, KubeConfig
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Namespace, Node, Pod, Secret, Service, ServiceAccount
from lightkube.resources.rbac_authorization_v1 import (
    ClusterRole,
    ClusterRoleBinding,
    Role,
    RoleBinding,
)

from lvs_operator.director.election import KubeLeaseApi, LeaseOwner, LeaseRecord

from ..helpers import TestCluster, apply_crds, pod_ready, wait_for
from .support import (
    CHART,
    CLUSTER_SCOPED,
    DIRECTOR_LABEL,
    EXAMPLE_NS,
    OPERATOR_NS,
    REPO,
    VIP_RANGE,
    Helm,
    HostController,
    Kubectl,
    RealServerPool,
    VirtualServer,
    apply_example,
    cluster_rbac_set_aside,
    crds_present,
    delete_example,
    deployment_available,
    director_daemonsets,
    example_pods_ready,
    replica_sets,
    run,
    wait_gone,
)

pytestmark = pytest.mark.integration

RELEASE = "lvs-operator"
NAMESPACED = {
    ServiceAccount: ["lvs-operator", "lvs-director"],
    Role: ["lvs-operator", "lvs-director"],
    RoleBinding: ["lvs-operator", "lvs-director"],
    Deployment: ["lvs-operator"],
    Service: ["lvs-director-metrics"],
}
KINDS = {"ClusterRole": ClusterRole, "ClusterRoleBinding": ClusterRoleBinding}


@pytest.fixture
def ship(test_cluster: TestCluster, kube: Any, tmp_path: Path) -> Any:
    pytest.importorskip("lvs_operator.controller.app", reason="the controller is not written yet")
    helm, kubectl = Helm(test_cluster), Kubectl(test_cluster)
    controller = HostController(test_cluster, kubectl, kube, tmp_path)
    nodes = list(test_cluster.nodes)[:2] or [n.metadata.name for n in kube.list(Node)][:2]
    with cluster_rbac_set_aside(kube) as set_aside:
        if set_aside:
            print(f"set aside until the end of the test: {', '.join(set_aside)}")
        try:
            yield helm, kubectl, controller, nodes
        finally:
            controller.stop()
            print(f"--- controller log (last lines)\n{controller.log_tail()}")
            kubectl("label", "node", *nodes, f"{DIRECTOR_LABEL}-", check=False)
            clean_up(helm, kubectl, kube)


def clean_up(helm: Helm, kubectl: Kubectl, kube: Any) -> None:
    """Whatever a failed test left: the example, the release or the plain manifests, the
    director DaemonSets (no-ops after a passing test)."""
    try:
        delete_example(kubectl, kube)
    except Exception as exc:  # report, and go on cleaning
        print(f"cleaning up the example: {exc}")
    helm("uninstall", RELEASE, "-n", OPERATOR_NS, "--wait", check=False)
    kubectl("delete", "--ignore-not-found", "--wait=true", "-f", str(REPO / "deploy"), check=False)
    wait_gone(kube, Namespace, OPERATOR_NS)
    wait_gone(kube, Namespace, EXAMPLE_NS)


def pool_lists_the_web_pods(kube: Any, controller: HostController) -> None:
    web = {p.metadata.name: p for p in kube.list(Pod, namespace=EXAMPLE_NS, labels={"app": "web"})}

    def check() -> Any:
        assert controller.alive(), f"the controller exited:\n{controller.log_tail()}"
        pool = kube.get(RealServerPool, "web", namespace=EXAMPLE_NS)
        status = pool.get("status") or {}
        members = {m.get("pod"): m for m in status.get("members") or []}
        if set(members) != set(web) or status.get("readyMembers") != len(web):
            return None
        for name, m in members.items():
            assert m["address"] == web[name].status.podIP
            assert m["ready"] is True
        return status

    status = wait_for(
        check,
        timeout=90,
        message=lambda: f"pool web to list {sorted(web)}\n{controller.log_tail()}",
    )
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True", ready


def virtualserver_waits_for_its_directors(kube: Any, controller: HostController) -> Any:
    """No director agent runs under kwok, so no one holds the group's Lease: the VirtualServer
    is accepted, labelled with its group, its DaemonSet exists, and Programmed is pending."""

    def check() -> Any:
        vs = kube.get(VirtualServer, "web", namespace=EXAMPLE_NS)
        status = vs.get("status") or {}
        conds = {c["type"]: c for c in status.get("conditions") or []}
        group = (vs.metadata.labels or {}).get("lvs.io/director-group")
        # the VirtualServer's status may lag its pool's by a pass (seen under load: Programmed
        # written while the pool had no members yet): wait for the state, not the first write
        if not group or "Programmed" not in conds or status.get("totalRealServers") != 3:
            return None
        return vs, group, conds

    vs, group, conds = wait_for(
        check, timeout=60, message=lambda: f"VirtualServer web's status\n{controller.log_tail()}"
    )
    assert vs["status"]["observedGeneration"] == vs.metadata.generation
    assert conds["Programmed"]["status"] == "False"
    assert conds["Programmed"]["reason"] == "NoActiveDirector", conds["Programmed"]
    assert vs["status"]["totalRealServers"] == 3
    (ds,) = [
        d
        for d in director_daemonsets(kube)
        if d.metadata.labels.get("lvs.io/director-group") == group
    ]
    assert ds.spec.template.spec.serviceAccountName == "lvs-director"
    return ds


def director_pods_scheduled(kube: Any, kubectl: Kubectl, nodes: list[str], ds: Any) -> None:
    """Labelled director nodes get a Ready agent pod each (other tests may add more nodes)."""
    kubectl("label", "node", "--overwrite", *nodes, f"{DIRECTOR_LABEL}=true")
    selector = ds.spec.selector.matchLabels

    def check() -> bool:
        ready_on = {
            p.spec.nodeName
            for p in kube.list(Pod, namespace=OPERATOR_NS, labels=selector)
            if pod_ready(p)
        }
        return set(nodes) <= ready_on

    wait_for(check, timeout=90, message=f"DaemonSet {ds.metadata.name}'s pods Ready on {nodes}")


def remove_example_and_groups(kube: Any, kubectl: Kubectl, controller: HostController) -> None:
    """VirtualServers deleted before uninstalling: the controller itself removes the director
    groups' DaemonSets (test_helm_uninstall_removes_the_directors covers the other order)."""
    kubectl("-n", EXAMPLE_NS, "delete", "virtualservers", "--all", "--wait=true")
    wait_for(
        lambda: not director_daemonsets(kube),
        timeout=60,
        message=lambda: (
            f"the controller to delete the director DaemonSets\n{controller.log_tail()}"
        ),
    )
    controller.stop()
    delete_example(kubectl, kube)


def nothing_left_but_crds(kube: Any) -> None:
    for kind, names in NAMESPACED.items():
        for name in names:
            wait_gone(kube, kind, name, namespace=OPERATOR_NS)
    for kind_name, names in CLUSTER_SCOPED.items():
        for name in names:
            wait_gone(kube, KINDS[kind_name], name)
    assert not director_daemonsets(kube)
    leftovers = [
        f"{p.metadata.name}"
        for p in kube.list(Pod, namespace=OPERATOR_NS)
        if not p.metadata.deletionTimestamp
    ]
    assert leftovers == [], leftovers
    assert crds_present(kube) == ["virtualservers.lvs.io", "realserverpools.lvs.io"]


def test_helm_install_upgrade_uninstall(ship: Any, kube: Any) -> None:
    helm, kubectl, controller, nodes = ship
    out = helm(
        "install",
        RELEASE,
        str(CHART),
        "-n",
        OPERATOR_NS,
        "--create-namespace",
        "--set",
        f"vipRanges={{{VIP_RANGE}}}",
        "--wait",
        "--timeout",
        "120s",
    ).stdout
    assert "Next steps" in out and VIP_RANGE in out  # NOTES.txt
    dep = deployment_available(kube, "lvs-operator")
    assert dep.spec.strategy.type == "Recreate" and dep.spec.replicas == 1

    apply_example(kubectl, kube)
    pods = example_pods_ready(kube)
    assert len(pods["web"]) == 3

    controller.start()
    pool_lists_the_web_pods(kube, controller)
    ds = virtualserver_waits_for_its_directors(kube, controller)
    director_pods_scheduled(kube, kubectl, nodes, ds)

    # A changed value rolls out: a new ReplicaSet (Recreate), available, with the new flag.
    before = {rs.metadata.name for rs in replica_sets(kube)}
    helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        OPERATOR_NS,
        "--reuse-values",
        "--set",
        "logLevel=debug",
        "--wait",
        "--timeout",
        "120s",
    )
    dep = deployment_available(kube, "lvs-operator")
    assert "--log-level=debug" in dep.spec.template.spec.containers[0].args
    new = [rs for rs in replica_sets(kube) if rs.metadata.name not in before]
    assert len(new) == 1 and new[0].status.readyReplicas == 1, [rs.metadata.name for rs in new]
    assert helm("history", RELEASE, "-n", OPERATOR_NS, "-o", "yaml").stdout.count("revision:") == 2
    # The controller restarted with the new flags still reconciles.
    controller.stop()
    controller.start()
    pool_lists_the_web_pods(kube, controller)

    remove_example_and_groups(kube, kubectl, controller)
    helm("uninstall", RELEASE, "-n", OPERATOR_NS, "--wait", "--timeout", "120s")
    nothing_left_but_crds(kube)


def test_kubectl_apply_plain_manifests(ship: Any, kube: Any) -> None:
    _helm, kubectl, controller, nodes = ship
    kubectl("apply", "--server-side", "-f", str(REPO / "crds"), "-f", str(REPO / "deploy"))
    deployment_available(kube, "lvs-operator")
    # The documented way to allow VIPs with the plain manifests: a rollout.
    before = {rs.metadata.name for rs in replica_sets(kube)}
    kubectl(
        "-n", OPERATOR_NS, "set", "env", "deployment/lvs-operator", f"LVS_VIP_RANGES={VIP_RANGE}"
    )
    dep = deployment_available(kube, "lvs-operator")
    assert len([rs for rs in replica_sets(kube) if rs.metadata.name not in before]) == 1
    env = {e.name: e.value for e in dep.spec.template.spec.containers[0].env}
    assert env["LVS_VIP_RANGES"] == VIP_RANGE

    apply_example(kubectl, kube)
    example_pods_ready(kube)
    controller.start()
    pool_lists_the_web_pods(kube, controller)
    ds = virtualserver_waits_for_its_directors(kube, controller)
    director_pods_scheduled(kube, kubectl, nodes, ds)

    remove_example_and_groups(kube, kubectl, controller)
    docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "lvs-operator.yaml").read_text()) if d]
    assert docs[0]["kind"] == "Namespace"
    kubectl("delete", "--wait=true", "-f", str(REPO / "deploy"))
    nothing_left_but_crds(kube)
    wait_gone(kube, Namespace, OPERATOR_NS)


def agent_writes_its_lease(controller: HostController, ds: Any, pod_name: str) -> Lease:
    """What a director agent does with its group's Lease, with the agent's own code
    (``KubeLeaseApi``) and as the director's ServiceAccount (its RBAC as shipped): look up its
    Pod's DaemonSet, take the Lease, renew it. Returns the Lease as the API server has it."""
    env = {e.name: e.value for e in ds.spec.template.spec.containers[0].env or []}
    lease_name = env["LVS_LEASE_NAME"]

    async def take_and_renew() -> None:
        client = AsyncClient(KubeConfig.from_file(str(controller.kubeconfig("lvs-director"))))
        try:
            api = KubeLeaseApi(client, OPERATOR_NS, lease_name)
            owner = await asyncio.wait_for(api.find_owner(pod_name), 30)
            assert owner == LeaseOwner("DaemonSet", ds.metadata.name, ds.metadata.uid), owner
            taken = await api.create(LeaseRecord(holder=pod_name))
            await api.update(replace(taken, renew_time=datetime.now(UTC)))
        finally:
            await client.close()

    asyncio.run(take_and_renew())
    return controller.client.get(Lease, lease_name, namespace=OPERATOR_NS)


def test_helm_uninstall_removes_the_directors(ship: Any, kube: Any) -> None:
    """The director DaemonSets are owned by the controller's Deployment: `helm uninstall` with
    VirtualServers still in place leaves no DaemonSet, heartbeat-key Secret or Lease of the
    operator behind (the garbage collector removes them; the agents make their DaemonSet the
    Lease's owner); a pool's Service stays with its pool, in the pool's namespace."""
    helm, kubectl, controller, nodes = ship
    helm("install", RELEASE, str(CHART), "-n", OPERATOR_NS, "--create-namespace",
         "--set", f"vipRanges={{{VIP_RANGE}}}", "--wait", "--timeout", "120s")  # fmt: skip
    dep = deployment_available(kube, "lvs-operator")
    apply_example(kubectl, kube)
    controller.start()
    ds = virtualserver_waits_for_its_directors(kube, controller)
    assert [(o.kind, o.name, o.uid) for o in ds.metadata.ownerReferences or []] == [
        ("Deployment", "lvs-operator", dep.metadata.uid)
    ], controller.log_tail()
    secret_name = f"{ds.metadata.name}-peer"
    wait_for(
        lambda: kube.get(Secret, secret_name, namespace=OPERATOR_NS),
        timeout=30,
        message=f"the group's heartbeat-key Secret {secret_name}",
    )
    pool_services = list(kube.list(Service, namespace=EXAMPLE_NS, labels=POOL_SERVICE_LABELS))
    assert pool_services, "the pools' headless Services"
    # an agent pod of the group (kwok runs no agent): its Lease, written as the agent writes it
    director_pods_scheduled(kube, kubectl, nodes[:1], ds)
    (pod, *_) = kube.list(Pod, namespace=OPERATOR_NS, labels=ds.spec.selector.matchLabels)
    lease = agent_writes_its_lease(controller, ds, pod.metadata.name)
    assert [(o.kind, o.name, o.uid) for o in lease.metadata.ownerReferences or []] == [
        ("DaemonSet", ds.metadata.name, ds.metadata.uid)
    ]
    assert lease.spec.renewTime is not None  # the renewal kept the owner

    # The controller runs on this machine, not in the Deployment's pod: it stops as the pod
    # would with the uninstall (else it would re-create what the garbage collector removes).
    controller.stop()
    helm("uninstall", RELEASE, "-n", OPERATOR_NS, "--wait", "--timeout", "120s")

    def operator_leftovers() -> list[str]:
        daemonsets = [f"DaemonSet/{d.metadata.name}" for d in director_daemonsets(kube)]
        secrets = [
            f"Secret/{x.metadata.name}"
            for x in kube.list(Secret, namespace=OPERATOR_NS)
            if x.metadata.name.startswith("lvs-director-")
        ]
        leases = [
            f"Lease/{x.metadata.name}"
            for x in kube.list(Lease, namespace=OPERATOR_NS)
            if x.metadata.name.startswith("lvs-director-")
        ]
        return daemonsets + secrets + leases

    wait_for(
        lambda: not operator_leftovers(),
        timeout=60,
        message=lambda: f"the garbage collector to remove {operator_leftovers()}",
    )
    # owned by the pool, not by the operator: still there while the pool is
    kept = kube.list(Service, namespace=EXAMPLE_NS, labels=POOL_SERVICE_LABELS)
    assert {s.metadata.name for s in kept} == {s.metadata.name for s in pool_services}


POOL_SERVICE_LABELS = {"app.kubernetes.io/managed-by": "lvs-operator"}


def test_helm_install_refuses_a_namespace_whose_pod_security_refuses_the_directors(
    ship: Any, kube: Any
) -> None:
    """A namespace enforcing Pod Security `baseline` would admit the controller but never the
    director agents' pods: the install fails at once, naming the label to set; with the
    label set as the chart's README says, it installs."""
    helm, kubectl, _controller, _nodes = ship
    kubectl("create", "namespace", OPERATOR_NS)
    kubectl("label", "namespace", OPERATOR_NS, "pod-security.kubernetes.io/enforce=baseline")
    install = ("install", RELEASE, str(CHART), "-n", OPERATOR_NS, "--wait", "--timeout", "120s")
    refused = helm(*install, check=False)
    assert refused.returncode != 0
    assert 'enforces Pod Security "baseline"' in refused.stderr, refused.stderr
    assert (
        f"kubectl label namespace {OPERATOR_NS} pod-security.kubernetes.io/enforce=privileged"
        in refused.stderr
    )
    assert not list(kube.list(Deployment, namespace=OPERATOR_NS))
    kubectl(
        "label", "namespace", OPERATOR_NS, "--overwrite",
        "pod-security.kubernetes.io/enforce=privileged",
    )  # fmt: skip
    helm(*install)
    deployment_available(kube, "lvs-operator")
    helm("uninstall", RELEASE, "-n", OPERATOR_NS, "--wait", "--timeout", "120s")


def previous_chart(tmp: Path) -> Path:
    """The chart as a previous release shipped it: the same, but its VirtualServer CRD does
    not know spec.directors.interface yet."""
    old = tmp / "lvs-operator-previous"
    shutil.copytree(CHART, old)
    crd_path = old / "crds" / "lvs.io_virtualservers.yaml"
    crd = yaml.safe_load(crd_path.read_text())
    for version in crd["spec"]["versions"]:
        directors = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
            "directors"
        ]
        del directors["properties"]["interface"]
    crd_path.write_text(yaml.safe_dump(crd))
    return old


def interface_kept(kube: Any, name: str) -> bool:
    """Create a VirtualServer with spec.directors.interface and see whether the API server
    kept it (a structural schema prunes the fields it does not know)."""
    vs = VirtualServer.from_dict(
        {
            "apiVersion": "lvs.io/v1alpha1",
            "kind": "VirtualServer",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "vip": "192.0.2.30",
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
                "poolRef": {"name": "web"},
                "directors": {"interface": "eth1"},
            },
        }
    )
    created = kube.create(vs)
    return (created["spec"].get("directors") or {}).get("interface") == "eth1"


def test_documented_crd_step_before_helm_upgrade_serves_the_new_schema(
    ship: Any, kube: Any, tmp_path: Path
) -> None:
    """Helm installs crds/ once and never upgrades them; the chart's README has the step that
    does, before `helm upgrade`: `helm show crds <chart> | kubectl apply --server-side
    --force-conflicts -f -`. Installed by a previous release (Helm created the CRDs), the
    step and the upgrade make the API server serve the new schema."""
    helm, kubectl, _controller, _nodes = ship
    names = ["virtualservers.lvs.io", "realserverpools.lvs.io"]
    try:
        kubectl("delete", "--ignore-not-found", "--wait=true", "crd", *names)
        helm("install", RELEASE, str(previous_chart(tmp_path)), "-n", OPERATOR_NS,
             "--create-namespace", "--wait", "--timeout", "120s")  # fmt: skip
        wait_for(lambda: crds_present(kube) == names, timeout=30, message="CRDs created by Helm")
        assert wait_for(
            lambda: kube.get(CustomResourceDefinition, names[0]).status.acceptedNames.kind,
            timeout=30,
            message="the previous CRD established",
        )
        assert not interface_kept(kube, "before-upgrade")

        crds = run([helm.exe, "show", "crds", str(CHART)]).stdout
        apply = subprocess.run(
            [kubectl.exe, f"--kubeconfig={kubectl.kubeconfig}", "apply", "--server-side",
             "--force-conflicts", "-f", "-"],
            input=crds, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert apply.returncode == 0, apply.stderr
        helm("upgrade", RELEASE, str(CHART), "-n", OPERATOR_NS, "--reuse-values", "--wait",
             "--timeout", "120s")  # fmt: skip
        assert wait_for(
            lambda: interface_kept(kube, f"after-upgrade-{int(time.monotonic() * 1000)}"),
            timeout=30,
            message="the new schema (spec.directors.interface) served",
        )
    finally:
        kubectl("delete", "--ignore-not-found", "-n", "default", "virtualservers", "--all",
                check=False)  # fmt: skip
        # the session's CRDs back as the other tiers' fixture applied them (their field
        # manager: test_cluster.py checks it), whatever this test left
        apply_crds(kube)
        helm("uninstall", RELEASE, "-n", OPERATOR_NS, "--wait", check=False)
