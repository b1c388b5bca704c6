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


def list_item_defaults(schema: dict, path: tuple[str, ...] = (), in_list: bool = False) -> list:
    """(path, default) of every field the CRD schema defaults inside a list item; a path step
    "[]" is the list's items."""
    found = [(path, schema["default"])] if in_list and "default" in schema else []
    for key, sub in (schema.get("properties") or {}).items():
        found += list_item_defaults(sub, (*path, key), in_list)
    if "items" in schema:
        found += list_item_defaults(schema["items"], (*path, "[]"), True)
    return found


def items_missing(obj: object, path: tuple[str, ...]) -> int:
    """How many objects on ``path`` lack its last key."""
    if not path:
        return 0
    head, rest = path[0], path[1:]
    if head == "[]":
        return sum(items_missing(item, rest) for item in obj or [])  # type: ignore[attr-defined]
    if not isinstance(obj, dict):
        return 0
    if not rest:
        return 0 if head in obj else 1
    return items_missing(obj.get(head), rest) if head in obj else 0


def test_the_crds_default_list_item_fields() -> None:
    """The fields the next test asks examples to spell out (if the CRDs change, it follows)."""
    defaults = {
        kind: [(".".join(p), d) for p, d in list_item_defaults(schema(kind))] for kind in MODELS
    }
    assert defaults == {
        "VirtualServer": [("spec.ports.[].protocol", "TCP")],
        "RealServerPool": [("spec.servers.[].weight", 1)],
    }


def schema(kind: str) -> dict:
    (version,) = [v for v in CRDS[kind]["spec"]["versions"] if v.get("storage")]
    return version["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize(("where", "doc"), example_resources(), ids=lambda v: str(v)[:40])
def test_examples_spell_out_what_the_crds_default_inside_lists(where: str, doc: dict) -> None:
    """Argo CD's default diff compares list items whole: a field the API server adds to an
    item (e.g. a port's protocol) would show the application OutOfSync."""
    missing = [
        ".".join(p) for p, _ in list_item_defaults(schema(doc["kind"])) if items_missing(doc, p)
    ]
    assert missing == [], f"{where}: spell out {missing}"
