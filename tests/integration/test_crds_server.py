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

from lvs_operator.api.common import MSG_LABEL_KEY
from lvs_operator.api.realserverpool import MSG_HTTP_HOST, MSG_HTTP_PATH, RealServerPool
from lvs_operator.api.virtualserver import VirtualServer

from ..unit.api.cases import BAD, GOOD, Bad, Good, pool
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


def _refusal(exc: ApiError) -> str:
    causes = (exc.status.details.causes if exc.status.details else []) or []
    return " ".join([api_error_message(exc), *(f"{c.field}: {c.message}" for c in causes)])


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("path", "/healthz\r\nX-Injected: 1", MSG_HTTP_PATH),
        ("path", "/healthz\n", MSG_HTTP_PATH),
        ("host", "web.example.com\r\nX-Injected: 1", MSG_HTTP_HOST),
    ],
    ids=["path-crlf", "path-lf", "host-crlf"],
)
def test_server_refuses_a_health_check_that_would_inject_a_header(
    crds_installed: None, kube: Client, namespace: str, field: str, value: str, fragment: str
) -> None:
    bad = pool("inject", healthCheck={"type": "http", field: value})
    with pytest.raises(ApiError) as info:
        kube.create(_in(namespace, bad))
    assert info.value.status.code == 422, api_error_message(info.value)
    said = _refusal(info.value)
    assert f"spec.healthCheck.{field}" in said and fragment in said, said


def test_server_stores_a_safe_health_check_as_given(
    crds_installed: None, kube: Client, namespace: str
) -> None:
    check = {"type": "http", "path": "/status?full=1&name=a%20b", "host": "[2001:db8::7]:8080"}
    created = kube.create(_in(namespace, pool("safe", healthCheck=check))).to_dict()
    stored = created["spec"]["healthCheck"]
    assert (stored["path"], stored["host"]) == (check["path"], check["host"])


def test_server_refuses_a_selector_a_service_cannot_carry(
    crds_installed: None, kube: Client, namespace: str
) -> None:
    with pytest.raises(ApiError) as info:
        kube.create(_in(namespace, pool("badkey", selector={"matchLabels": {"my app": "web"}})))
    assert info.value.status.code == 422, api_error_message(info.value)
    said = _refusal(info.value)
    assert "spec.selector.matchLabels" in said and MSG_LABEL_KEY in said, said


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
