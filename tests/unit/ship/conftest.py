"""Fixtures of the shipping tests."""

from __future__ import annotations

import pytest

from .support import find_helm, find_promtool


@pytest.fixture(scope="session")
def helm() -> str:
    return find_helm()


@pytest.fixture(scope="session")
def promtool() -> str:
    return find_promtool()
