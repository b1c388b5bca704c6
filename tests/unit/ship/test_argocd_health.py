"""The Argo CD health checks (deploy/argocd/lvs.io/*/health.lua) on sample objects.

Runs each check the way Argo CD does: Lua 5.1 (Argo CD embeds gopher-lua, a Lua 5.1), with
the object as the global ``obj``, expecting a table with ``status`` and ``message``. The
cases are Argo CD's own test layout (health_test.yaml + testdata/), so the same files can
be contributed upstream to argoproj/argo-cd's resource_customizations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from .support import REPO

lua51 = pytest.importorskip(
    "lupa.lua51", reason="lupa is not installed; get it with: pip install -e '.[test]'"
)

ARGOCD = REPO / "deploy" / "argocd" / "lvs.io"
KINDS = ("VirtualServer", "RealServerPool")
STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def to_lua(lua: Any, value: Any) -> Any:
    """JSON-like Python data as Lua values (lists 1-based), as Argo CD converts objects."""
    if isinstance(value, dict):
        return lua.table_from({k: to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([to_lua(lua, v) for v in value])
    return value


def health(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    assert lua.eval("_VERSION") == "Lua 5.1"
    lua.globals().obj = to_lua(lua, obj)
    source = (ARGOCD / kind / "health.lua").read_text()
    result = lua.execute(source)
    assert result is not None, f"{kind} health.lua returned nothing"
    return {k: result[k] for k in ("status", "message")}


def cases() -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for kind in KINDS:
        spec = yaml.safe_load((ARGOCD / kind / "health_test.yaml").read_text())
        for test in spec["tests"]:
            out.append((kind, test["inputPath"], test["healthStatus"]))
    return out


@pytest.mark.parametrize(("kind", "input_path", "expected"), cases(), ids=lambda v: str(v))
def test_health(kind: str, input_path: str, expected: dict[str, Any]) -> None:
    obj = yaml.safe_load((ARGOCD / kind / input_path).read_text())
    assert obj["kind"] == kind
    assert health(kind, obj) == expected


@pytest.mark.parametrize("kind", KINDS)
def test_every_state_is_covered(kind: str) -> None:
    seen = {c[2]["status"] for c in cases() if c[0] == kind}
    assert {"Healthy", "Progressing", "Degraded"} <= seen


@pytest.mark.parametrize("kind", KINDS)
def test_every_testdata_file_is_used(kind: str) -> None:
    used = {Path(c[1]).name for c in cases() if c[0] == kind}
    present = {p.name for p in (ARGOCD / kind / "testdata").glob("*.yaml")}
    assert used == present


@pytest.mark.parametrize("kind", KINDS)
def test_status_without_conditions_is_progressing(kind: str) -> None:
    obj = {"metadata": {"name": "x", "generation": 1}, "status": {"observedGeneration": 1}}
    assert health(kind, obj)["status"] == "Progressing"


@pytest.mark.parametrize("kind", KINDS)
def test_no_generation_is_tolerated(kind: str) -> None:
    """Objects without metadata.generation (e.g. a dry run) still get an assessment."""
    obj = {
        "metadata": {"name": "x"},
        "status": {"conditions": [{"type": "Ready", "status": "True", "message": "ok"}]},
    }
    assert health(kind, obj) == {"status": "Healthy", "message": "ok"}


# What each kind calls Degraded: a pool's Degraded condition; for a VirtualServer only "no
# traffic can flow" (a rejection here), not its Degraded condition (see the next tests).
OUTAGES = {
    "RealServerPool": ({"type": "Degraded", "status": "True", "reason": "Broken"}, "Broken"),
    "VirtualServer": (
        {"type": "Programmed", "status": "False", "reason": "Conflict", "message": "taken"},
        "Conflict: taken",
    ),
}


@pytest.mark.parametrize("kind", KINDS)
def test_degraded_wins_over_stale_generation(kind: str) -> None:
    condition, message = OUTAGES[kind]
    obj = {
        "metadata": {"name": "x", "generation": 5},
        "status": {"observedGeneration": 4, "conditions": [condition]},
    }
    assert health(kind, obj) == {"status": "Degraded", "message": message}


def virtualserver(*conditions: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": "x", "generation": 1},
        "status": {"observedGeneration": 1, "conditions": list(conditions)},
    }


READY = {"type": "Ready", "status": "True", "reason": "Ready", "message": "3/3 ready"}


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        ("RealServersNotReady", "Progressing"),  # a backend rolling update
        ("MovingToDirectorGroup", "Progressing"),
        ("NoStandbyDirector", "Healthy"),  # a single-director cluster serves
        ("DirectorNodeShared", "Healthy"),
        ("SomeFutureReason", "Healthy"),  # serving is what counts
    ],
)
def test_a_serving_virtualserver_is_never_degraded(reason: str, status: str) -> None:
    degraded = {"type": "Degraded", "status": "True", "reason": reason, "message": "why"}
    assert health("VirtualServer", virtualserver(READY, degraded)) == {
        "status": status,
        "message": f"{reason}: why",
    }


def test_a_virtualserver_no_traffic_reaches_is_degraded() -> None:
    ready = {"type": "Ready", "status": "False", "reason": "NoReadyRealServers", "message": "0/3"}
    assert health("VirtualServer", virtualserver(ready)) == {"status": "Degraded", "message": "0/3"}


@pytest.mark.parametrize("reason", ["Pending", "NoActiveDirector", "PoolNotFound"])
def test_a_virtualserver_not_programmed_yet_is_progressing(reason: str) -> None:
    programmed = {"type": "Programmed", "status": "False", "reason": reason, "message": "wait"}
    ready = {"type": "Ready", "status": "False", "reason": reason, "message": "wait"}
    degraded = {"type": "Degraded", "status": "True", "reason": "NoStandbyDirector"}
    assert health("VirtualServer", virtualserver(programmed, ready, degraded)) == {
        "status": "Progressing",
        "message": "Not programmed yet: wait",
    }


@pytest.mark.parametrize("kind", KINDS)
def test_result_is_an_argo_cd_status(kind: str) -> None:
    for _, path, _ in (c for c in cases() if c[0] == kind):
        obj = yaml.safe_load((ARGOCD / kind / path).read_text())
        result = health(kind, obj)
        assert result["status"] in STATUSES
        assert isinstance(result["message"], str) and result["message"]
