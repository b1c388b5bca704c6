"""The chart grants exactly what deploy/rbac/*.yaml grants (the RBAC the controller and the
agents are tested with), so the two can never drift."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from .support import REPO, template

RBAC_DIR = REPO / "deploy" / "rbac"
ROLE_KINDS = ("ClusterRole", "Role")
BINDING_KINDS = ("ClusterRoleBinding", "RoleBinding")
NAMESPACE = "lvs-system"  # deploy/rbac's namespace; the chart is rendered into the same one


def normalized_rules(role: dict[str, Any]) -> list[tuple[tuple[str, ...], ...]]:
    """Rules as sorted tuples: the same grants in another order or spelling order compare equal."""
    out = []
    for rule in role.get("rules") or []:
        out.append(
            tuple(
                tuple(sorted(rule.get(key) or []))
                for key in ("apiGroups", "resources", "resourceNames", "nonResourceURLs", "verbs")
            )
        )
    return sorted(out)


def by_kind(docs: list[dict[str, Any]], kinds: tuple[str, ...]) -> dict[tuple[str, str], Any]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] in kinds}


def reference_docs() -> list[dict[str, Any]]:
    files = sorted(RBAC_DIR.glob("*.yaml"))
    if not files:
        pytest.skip("deploy/rbac/*.yaml is not written yet (the controller issue writes it)")
    return [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]


@pytest.fixture(scope="module")
def rendered(helm: str) -> list[dict[str, Any]]:
    return template(helm, namespace=NAMESPACE)


def test_same_roles_with_exactly_the_same_rules(rendered: list[dict[str, Any]]) -> None:
    want = by_kind(reference_docs(), ROLE_KINDS)
    got = by_kind(rendered, ROLE_KINDS)
    assert sorted(got) == sorted(want), "the chart has other (Cluster)Roles than deploy/rbac"
    for key, ref in want.items():
        assert normalized_rules(got[key]) == normalized_rules(ref), (
            f"{key[0]} {key[1]}: the chart's rules differ from deploy/rbac; "
            "copy deploy/rbac's rules into charts/lvs-operator/templates/rbac.yaml"
        )
        if key[0] == "Role":
            assert got[key]["metadata"]["namespace"] == ref["metadata"]["namespace"]


def test_same_bindings(rendered: list[dict[str, Any]]) -> None:
    want = by_kind(reference_docs(), BINDING_KINDS)
    got = by_kind(rendered, BINDING_KINDS)
    assert sorted(got) == sorted(want)
    for key, ref in want.items():
        assert got[key]["roleRef"] == ref["roleRef"], key
        assert got[key]["subjects"] == ref["subjects"], key


def test_same_service_accounts(rendered: list[dict[str, Any]]) -> None:
    def names(docs: list[dict[str, Any]]) -> set[tuple[str, str]]:
        return {
            (d["metadata"]["namespace"], d["metadata"]["name"])
            for d in docs
            if d["kind"] == "ServiceAccount"
        }

    assert names(rendered) == names(reference_docs())


def test_controller_gets_no_rbac_or_secret_rights(rendered: list[dict[str, Any]]) -> None:
    """Least privilege: nothing that could escalate, whatever deploy/rbac says. Secrets: only
    the controller, only in its namespace, only create (the groups' heartbeat keys); nobody
    reads one through the API (the kubelet mounts the key into the agents)."""
    for (kind, name), role in by_kind(rendered, ROLE_KINDS).items():
        for rule in role["rules"]:
            assert "rbac.authorization.k8s.io" not in rule["apiGroups"]
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]
            if "secrets" in rule["resources"]:
                assert (kind, name) == ("Role", "lvs-operator"), (kind, name)
                assert rule["resources"] == ["secrets"] and rule["verbs"] == ["create"]
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])


def test_reference_rbac_grants_secret_create_only_to_the_controller_role() -> None:
    """The same, on deploy/rbac (checked without helm)."""
    grants = [
        (d["kind"], d["metadata"]["name"], rule)
        for d in reference_docs()
        if d["kind"] in ROLE_KINDS
        for rule in d.get("rules") or []
        if "secrets" in rule["resources"]
    ]
    assert [(k, n, r["verbs"]) for k, n, r in grants] == [("Role", "lvs-operator", ["create"])]
    assert grants[0][2]["apiGroups"] == [""]
