"""Shared pieces of the shipping tests: the repository's paths, helm, and chart rendering."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "lvs-operator"


def _load_render() -> ModuleType:
    path = REPO / "hack" / "ship" / "render.py"
    spec = importlib.util.spec_from_file_location("lvs_ship_render", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


render = _load_render()


def find_helm() -> str:
    """helm, or a skip naming how to get it."""
    found = render.find_tool("helm")
    if found is None:
        pytest.skip(f"helm is not installed; get it with: {render.HOW_TO_GET_HELM}")
    return str(found)


def helm_run(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)


def template(helm: str, sets: Sequence[str] = (), namespace: str = "lvs-system") -> list[Any]:
    """``helm template`` of the chart with ``--set`` values; the documents, parsed."""
    args: list[str] = []
    for s in sets:
        args += ["--set", s]
    text = render.helm_template(helm, *args, namespace=namespace)
    return [d for d in yaml.safe_load_all(text) if d]


HOW_TO_GET_PROMTOOL = (
    "hack/test-cluster/cluster.sh build (installs Debian's prometheus package for it), or "
    "apt-get install --no-install-recommends prometheus"
)


def find_promtool() -> str:
    """promtool, or a skip naming how to get it."""
    found = shutil.which("promtool")
    if found is None:
        pytest.skip(f"promtool is not installed; get it with: {HOW_TO_GET_PROMTOOL}")
    return found
