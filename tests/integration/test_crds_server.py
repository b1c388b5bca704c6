"""The real API server judges the foundation's cases as the CRD tests and the models do.

Every good custom resource is accepted and stored with the models' defaults; every bad one
is rejected (by the schema or a CEL rule) naming the field and the reason that
tests/unit/api expects. This is the proof that the offline oracle tells the truth.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from lightkube import ApiError, Client

from lvs_operator.api.realserverpool import RealServerPool
from lvs_operator.api.virtualserver import VirtualServer

from ..unit.api.cases import BAD, GOOD, Bad, Good
from .helpers import REPO, TestCluster, api_error_message, custom_resource

pytestmark = pytest.mark.integration

RESOURCES = {
    "VirtualServer": custom_resource("lvs.io", "v1alpha1", "VirtualServer", "virtualservers"),
    "RealServerPool": custom_resource("lvs.io", "v1alpha1", "RealServerPool", "realserverpools"),
}
MODELS = {"VirtualServer": VirtualServer, "RealServerPool": RealServerPool}


def _in(namespace: str, obj: dict[str, Any]) -> Any:
    body = copy.deepcopy(obj)
    body["metadata"]["namespace"] = namespace
    return RESOURCES[obj["kind"]].from_dict(body)


@pytest.fixture(scope="module")
def crds_installed(test_cluster: TestCluster) -> None:
    if not test_cluster.crds:
        pytest.fail("crds/ were not applied to the test cluster")


@pytest.mark.parametrize("case", GOOD, ids=lambda c: c.id)
def test_server_accepts_good_with_model_defaults(
    crds_installed: None, kube: Client, namespace: str, case: Good
) -> None:
    created = kube.create(_in(namespace, case.obj))
    stored = created.to_dict()
    model = MODELS[case.obj["kind"]].from_object(stored)
    # What the server defaulted is what the model defaults.
    assert stored["spec"] == model.spec.to_object()


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.id)
def test_server_rejects_bad(crds_installed: None, kube: Client, namespace: str, case: Bad) -> None:
    with pytest.raises(ApiError) as info:
        kube.create(_in(namespace, case.obj))
    assert info.value.status.code == 422, api_error_message(info.value)
    causes = [
        (c.field, c.message)
        for c in (info.value.status.details.causes if info.value.status.details else []) or []
    ]
    message = api_error_message(info.value)
    assert any(field == case.path and case.fragment in (msg or "") for field, msg in causes) or (
        f"{case.path}:" in message and case.fragment in message
    ), f"expected {case.path}: ...{case.fragment}...; server said: {message} {causes}"


def test_kubectl_client_dry_run_of_crds_and_examples(
    crds_installed: None, test_cluster: TestCluster
) -> None:
    r = test_cluster.kubectl(
        "apply",
        "--dry-run=client",
        "-f",
        str(REPO / "crds"),
        "-f",
        str(REPO / "examples"),
        check=False,
    )
    assert r.returncode == 0, r.stderr
    r = test_cluster.kubectl("apply", "--dry-run=server", "-f", str(REPO / "examples"), check=False)
    assert r.returncode == 0, r.stderr
