"""Fixtures for the integration tier: a real control plane on 127.0.0.1.

- ``test_cluster`` (session): brings a cluster up once with hack/test-cluster/cluster.sh in a
  temporary directory (down at the end), after server-side applying ``crds/*.yaml``.
  Builds the binaries first when they are missing (minutes, once); with ``LVS_SKIP_BUILD=1``
  it skips instead. ``USE_EXISTING_CLUSTER=1`` with ``KUBECONFIG`` uses that cluster.
- ``crds`` (names of the project's CRDs; fails with the server's message if it rejected one,
  skips while crds/ is empty),
- ``kubeconfig`` (path), ``kube_client`` / ``kube`` (sync ``lightkube.Client``), ``akube``
  (``lightkube.AsyncClient``), ``namespace`` (a fresh namespace per test, deleted after).

Environment knobs: ``LVS_TEST_NODES`` (fake nodes, default 3), ``LVS_KEEP_CLUSTER=1`` (leave
the cluster running after the session and print its directory).
"""

from __future__ import annotations

import os
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from lightkube import ApiError, AsyncClient, Client, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, ServiceAccount

from .helpers import CLUSTER_SH, FIELD_MANAGER, CrdApplyError, TestCluster, apply_crds, wait_for

TEST_NS_LABEL = "lvs-operator.test/namespace"


def _log(msg: str) -> None:
    print(f"[integration] {msg}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def test_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    if os.environ.get("USE_EXISTING_CLUSTER") == "1":
        cluster = TestCluster.existing()
        _log(f"using the existing cluster of {cluster.kubeconfig}")
        _apply_crds(cluster)
        yield cluster
        return

    if not TestCluster.is_built():
        if os.environ.get("LVS_SKIP_BUILD") == "1":
            pytest.skip(
                "the test control plane is not built (LVS_SKIP_BUILD=1); "
                "build it once with: hack/test-cluster/cluster.sh build"
            )
        _log("building the control plane from Go modules (first time only; takes minutes)")
        t = time.monotonic()
        TestCluster.build()
        _log(f"built in {time.monotonic() - t:.0f} s")

    cluster_dir = tmp_path_factory.mktemp("cluster")
    t = time.monotonic()
    nodes = int(os.environ.get("LVS_TEST_NODES", "3"))
    keep = os.environ.get("LVS_KEEP_CLUSTER") == "1"
    cluster = TestCluster.up(cluster_dir, nodes=nodes, owner_pid=None if keep else os.getpid())
    _log(f"cluster up in {time.monotonic() - t:.1f} s: {cluster.server} (dir {cluster_dir})")
    try:
        _apply_crds(cluster)
        yield cluster
    finally:
        if keep:
            _log(
                f'LVS_KEEP_CLUSTER=1: left running; use it: eval "$({CLUSTER_SH} env '
                f'{cluster_dir})"; stop it: {CLUSTER_SH} down {cluster_dir}'
            )
        else:
            cluster.down()


def _apply_crds(cluster: TestCluster) -> None:
    """Apply crds/*.yaml; a rejection is kept for the ``crds`` fixture to report, so tests that
    do not need the CRDs still run."""
    with Client(KubeConfig.from_file(cluster.kubeconfig), field_manager=FIELD_MANAGER) as c:
        try:
            cluster.crds = apply_crds(c)
        except CrdApplyError as exc:
            cluster.crds = exc.applied
            cluster.crd_error = str(exc)
            _log(str(exc))
    if cluster.crds:
        _log(f"applied CRDs server-side: {', '.join(cluster.crds)}")


@pytest.fixture
def crds(test_cluster: TestCluster) -> list[str]:
    """The names of the project's CRDs, applied server-side and Established.

    Fails with the server's message when it rejected a manifest in crds/; skips when crds/
    holds none yet.
    """
    if test_cluster.crd_error:
        pytest.fail(test_cluster.crd_error, pytrace=False)
    if not test_cluster.crds:
        pytest.skip("crds/ holds no CustomResourceDefinition manifest yet")
    return test_cluster.crds


@pytest.fixture
def kubeconfig(test_cluster: TestCluster) -> Path:
    return test_cluster.kubeconfig


@pytest.fixture
def kube_client(test_cluster: TestCluster) -> Iterator[Client]:
    client = Client(KubeConfig.from_file(test_cluster.kubeconfig), field_manager=FIELD_MANAGER)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def kube(kube_client: Client) -> Client:
    """Alias of ``kube_client`` (the sync lightkube client)."""
    return kube_client


@pytest.fixture
async def akube(test_cluster: TestCluster) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(KubeConfig.from_file(test_cluster.kubeconfig), field_manager=FIELD_MANAGER)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def namespace(request: pytest.FixtureRequest, kube_client: Client) -> Iterator[str]:
    """A fresh namespace named after the test; its default ServiceAccount exists (pods can be
    created at once). Deleted after the test (without waiting for it to go)."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{base}-{secrets.token_hex(3)}"
    kube_client.create(Namespace(metadata=ObjectMeta(name=name, labels={TEST_NS_LABEL: "true"})))
    wait_for(
        lambda: kube_client.get(ServiceAccount, "default", namespace=name),
        timeout=30,
        message=f"the default ServiceAccount in namespace {name}",
    )
    try:
        yield name
    finally:
        try:
            kube_client.delete(Namespace, name)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
