"""Every custom resource under examples/ parses, and the CRDs accept it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lvs_operator.api.realserverpool import RealServerPool
from lvs_operator.api.virtualserver import VirtualServer

from .k8s_validator import admit
from .test_crd_agreement import CRDS

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
MODELS = {"VirtualServer": VirtualServer, "RealServerPool": RealServerPool}


def example_resources() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in MODELS:
                found.append((f"{path.relative_to(EXAMPLES)}:{doc['metadata']['name']}", doc))
    return found


def test_there_are_examples() -> None:
    kinds = {doc["kind"] for _, doc in example_resources()}
    assert kinds == set(MODELS)


@pytest.mark.parametrize(("where", "doc"), example_resources(), ids=lambda v: str(v)[:40])
def test_example_is_valid(where: str, doc: dict) -> None:
    _, errors = admit(CRDS[doc["kind"]], doc)
    assert errors == [], where
    MODELS[doc["kind"]].from_object(doc)
