"""pyproject.toml as packaging tools read it (a wheel was built from it with `pip wheel
--no-deps .`: Metadata-Version 2.4, License-Expression, the LICENSE file in the wheel)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_license_is_an_spdx_expression_with_its_file() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"  # a string: the table form is deprecated
    assert project["license-files"] == ["LICENSE"]
    assert (REPO / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert not any(c.startswith("License ::") for c in project.get("classifiers", []))


def test_build_requirements_are_bounded_above_and_allow_spdx_licenses() -> None:
    requires = PYPROJECT["build-system"]["requires"]
    for requirement in requires:
        assert re.search(r"<\s*[0-9]", requirement), f"{requirement}: no upper bound"
    (setuptools,) = [r for r in requires if r.startswith("setuptools")]
    low = re.search(r">=\s*([0-9]+)", setuptools)
    assert low and int(low.group(1)) >= 77, "license-files and SPDX license need setuptools 77"


def test_python_dash_m_has_a_main_module() -> None:
    main = REPO / "operator" / "lvs_operator" / "__main__.py"
    assert "from lvs_operator.cli import main" in main.read_text()
