"""The CRDs in crds/ and the Python models judge every case the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lvs_operator.api import crd
from lvs_operator.api.realserverpool import RealServerPool
from lvs_operator.api.validation import ValidationError
from lvs_operator.api.virtualserver import VirtualServer

from .cases import BAD, GOOD, Bad, Good
from .k8s_validator import admit

CRD_DIR = Path(__file__).resolve().parents[3] / "crds"


def load_crds() -> dict[str, dict[str, Any]]:
    crds = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        crds[doc["spec"]["names"]["kind"]] = doc
    return crds


CRDS = load_crds()
MODELS = {"VirtualServer": VirtualServer, "RealServerPool": RealServerPool}


def named(obj: dict[str, Any]) -> dict[str, Any]:
    return {**obj, "metadata": {"name": obj["metadata"]["name"], "namespace": "test"}}


def test_crd_files_are_generated_from_the_models() -> None:
    for filename, builder in crd.CRD_FILES.items():
        path = CRD_DIR / filename
        assert path.exists(), f"{path} missing: run `make crds`"
        assert path.read_text() == crd.render(builder), f"{path} is stale: run `make crds`"


def test_enough_bad_cases() -> None:
    assert len(BAD) >= 30
    assert len({case.id for case in BAD + GOOD}) == len(BAD) + len(GOOD)


@pytest.mark.parametrize("case", GOOD, ids=lambda c: c.id)
def test_good_objects_pass_crd_and_model_with_the_same_defaults(case: Good) -> None:
    kind = case.obj["kind"]
    defaulted, errors = admit(CRDS[kind], case.obj)
    assert errors == []
    model = MODELS[kind].from_object(named(case.obj))
    # The model's defaults are the CRD's: what the server would store is what the model means.
    assert model.spec.to_object() == defaulted["spec"]


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.id)
def test_bad_objects_rejected_by_crd(case: Bad) -> None:
    _, errors = admit(CRDS[case.obj["kind"]], case.obj)
    assert errors, "the CRD accepted it"
    assert any(path == case.path and case.fragment in message for path, message in errors), (
        f"expected {case.path}: ...{case.fragment}..., got {errors}"
    )
    # one bad field, one error: the user sees exactly what to fix
    assert len(errors) == 1, errors


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.id)
def test_bad_objects_rejected_by_model(case: Bad) -> None:
    with pytest.raises(ValidationError) as info:
        MODELS[case.obj["kind"]].from_object(named(case.obj))
    errors = info.value.errors
    assert any(e.path == case.path and case.fragment in e.reason for e in errors), (
        f"expected {case.path}: ...{case.fragment}..., got {errors}"
    )
    assert len(errors) == 1, errors
