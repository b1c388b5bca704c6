"""deploy/ holds what `make manifests` renders: the chart's output and the Argo CD patch."""

from __future__ import annotations

import yaml

from .support import REPO, render


def test_deploy_manifest_is_not_stale(helm: str) -> None:
    expected = render.render_manifest(helm)
    assert render.MANIFEST.exists(), "deploy/lvs-operator.yaml is missing: run `make manifests`"
    assert render.MANIFEST.read_text() == expected, (
        "deploy/lvs-operator.yaml is stale (the chart changed): run `make manifests`"
    )


def test_deploy_manifest_is_self_contained() -> None:
    """`kubectl apply -f crds/ -f deploy/` needs the namespace first and no Helm hooks."""
    docs = [d for d in yaml.safe_load_all(render.MANIFEST.read_text()) if d]
    assert docs[0]["kind"] == "Namespace"
    assert docs[0]["metadata"]["name"] == render.NAMESPACE
    for doc in docs[1:]:
        assert "helm.sh/hook" not in (doc["metadata"].get("annotations") or {})
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == render.NAMESPACE, doc["metadata"]["name"]
    # Only the plain manifest sits directly in deploy/ (kubectl apply -f deploy/ is flat).
    flat = sorted(p.name for p in (REPO / "deploy").iterdir() if p.is_file())
    assert flat == ["lvs-operator.yaml"], flat


def test_argocd_patch_is_not_stale() -> None:
    assert render.ARGOCD_CM_PATCH.read_text() == render.render_argocd_cm(), (
        "deploy/argocd/argocd-cm-patch.yaml is stale (a health.lua changed): run `make manifests`"
    )


def test_argocd_patch_carries_the_lua() -> None:
    cm = yaml.safe_load(render.ARGOCD_CM_PATCH.read_text())
    for kind in render.KINDS:
        key = f"resource.customizations.health.lvs.io_{kind}"
        assert cm["data"][key] == render.lua_source(kind)
