"""Fixtures for the controller's integration tests: the real controller, as a subprocess
(`lvs-operator controller`), under the RBAC of deploy/rbac/controller.yaml (a ServiceAccount
token, not cluster-admin), in its own operator namespace.

- ``operator_namespace`` (module): the namespace with both RBAC manifests applied.
- ``controller`` (module; stopped after the module, so that it does not act on other
  suites' objects): the running controller (a ``ControllerProcess``: ``restart()``,
  ``log()``); tests that stop it must start it again.
- ``vips``: fresh VIPs inside the allowed range (tests share one controller, and VIP
  conflicts are cluster-wide).
- ``admin``: a session-wide lightkube Client with the cluster-admin kubeconfig.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import re
import secrets
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import ApiError, Client, KubeConfig, codecs
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, ServiceAccount

from .. import helpers
from ..helpers import REPO, TestCluster, wait_for

RBAC_DIR = REPO / "deploy" / "rbac"
ALLOWED_RANGES = "192.0.2.0/24,2001:db8::/64,10.200.0.0/16"
# VIPs of this session: 10.200.<random>.<n> (a reused cluster may still hold older ones).
_VIP_BLOCK = f"10.200.{secrets.randbelow(256)}"
DIRECTOR_IMAGE = "registry.invalid/lvs-operator:test"  # never pulled: kwok is the kubelet
_vip_counter = itertools.count(1)


@pytest.fixture(scope="session")
def admin(test_cluster: TestCluster) -> Iterator[Client]:
    client = Client(KubeConfig.from_file(test_cluster.kubeconfig), field_manager="lvs-tests")
    try:
        yield client
    finally:
        client.close()


def _rbac_objects(namespace: str) -> list[Any]:
    out = []
    for path in (RBAC_DIR / "controller.yaml", RBAC_DIR / "director.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            if doc["metadata"].get("namespace"):
                doc["metadata"]["namespace"] = namespace
            for subject in doc.get("subjects") or []:
                subject["namespace"] = namespace
            out.append(codecs.from_dict(doc))
    return out


@pytest.fixture(scope="module")
def operator_namespace(admin: Client) -> Iterator[str]:
    """The operator's namespace with both RBAC manifests applied; at the end the namespace
    and the cluster-scoped RBAC objects are deleted (other suites install their own)."""
    name = f"lvs-system-{secrets.token_hex(3)}"
    admin.create(Namespace(metadata=ObjectMeta(name=name)))
    objects = _rbac_objects(name)
    for obj in objects:
        admin.apply(obj, field_manager="lvs-tests", force=True)
    try:
        yield name
    finally:
        for obj in objects:
            if not getattr(obj.metadata, "namespace", None):
                with contextlib.suppress(ApiError):
                    admin.delete(type(obj), obj.metadata.name)
        with contextlib.suppress(ApiError):
            admin.delete(Namespace, name)


def _token_kubeconfig(admin: Client, kubeconfig: Path, namespace: str, out_dir: Path) -> Path:
    """A kubeconfig that authenticates as the controller's ServiceAccount (TokenRequest)."""
    wait_for(
        lambda: admin.get(ServiceAccount, "lvs-operator", namespace=namespace),
        timeout=30,
        message="ServiceAccount lvs-operator",
    )
    request = ServiceAccount.Token(
        metadata=ObjectMeta(name="lvs-operator", namespace=namespace),
        spec=TokenRequestSpec(audiences=[], expirationSeconds=24 * 3600),
    )
    token = admin.create(request, "lvs-operator", namespace=namespace).status.token
    cluster = KubeConfig.from_file(kubeconfig).get().cluster
    ca_path = out_dir / "ca.crt"
    if cluster.certificate_auth_data:
        ca_path.write_bytes(base64.b64decode(cluster.certificate_auth_data))
    elif cluster.certificate_auth:
        ca_path.write_bytes(Path(cluster.certificate_auth).read_bytes())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "test",
                "cluster": {"server": cluster.server, "certificate-authority": str(ca_path)},
            }
        ],
        "users": [{"name": "lvs-operator", "user": {"token": token}}],
        "contexts": [
            {
                "name": "controller",
                "context": {"cluster": "test", "user": "lvs-operator", "namespace": namespace},
            }
        ],
        "current-context": "controller",
    }
    path = out_dir / "controller.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class ControllerProcess(helpers.ControllerProcess):
    """The controller under test, with its ServiceAccount's kubeconfig."""

    def __init__(self, kubeconfig: Path, namespace: str, log_path: Path) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        super().__init__(
            [
                sys.executable,
                "-m",
                "lvs_operator.cli",
                "controller",
                f"--kubeconfig={kubeconfig}",
                f"--namespace={namespace}",
                f"--vip-ranges={ALLOWED_RANGES}",
                f"--director-image={DIRECTOR_IMAGE}",
                "--lease-duration-seconds=6",
                "--liveness=none",
                "--metrics-port=0",  # several runs may share this machine
                "--log-level=info",
            ],
            log_path,
        )


@pytest.fixture(scope="module")
def controller(
    admin: Client, test_cluster: TestCluster, operator_namespace: str
) -> Iterator[ControllerProcess]:
    out_dir = Path(tempfile.mkdtemp(prefix="lvs-controller-"))
    kubeconfig = _token_kubeconfig(admin, test_cluster.kubeconfig, operator_namespace, out_dir)
    proc = ControllerProcess(kubeconfig, operator_namespace, out_dir / "controller.log")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        print(f"\n[controller] log: {proc.log_path}", file=sys.stderr)


@pytest.fixture
def running_controller(controller: ControllerProcess) -> Iterator[ControllerProcess]:
    """The controller, (re)started if a previous test left it stopped; fails the test with
    its log if it died."""
    if not controller.alive():
        controller.start()
    yield controller
    if not controller.alive():
        pytest.fail(f"the controller died:\n{controller.log()}")


@pytest.fixture
def vips() -> Iterator[Any]:
    """``next(vips)`` → a fresh VIP (in 10.200.0.0/16) for this test."""

    def gen() -> Iterator[str]:
        while True:
            n = next(_vip_counter)
            if n > 250:
                raise RuntimeError("out of test VIPs")
            yield f"{_VIP_BLOCK}.{n}"

    yield gen()


@pytest.fixture
def other_namespace(admin: Client, request: pytest.FixtureRequest) -> Iterator[str]:
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:30].strip("-")
    name = f"t2-{base}-{secrets.token_hex(3)}"
    admin.create(Namespace(metadata=ObjectMeta(name=name)))
    wait_for(
        lambda: admin.get(ServiceAccount, "default", namespace=name),
        timeout=30,
        message=f"the default ServiceAccount in {name}",
    )
    try:
        yield name
    finally:
        with contextlib.suppress(ApiError):
            admin.delete(Namespace, name)
