"""The image's Python locks (hack/image/*.lock, made by hack/image/lock.sh) cover pyproject.toml:
every runtime dependency and build requirement is pinned, by a version its specifier allows,
with hashes — the Dockerfile installs them with `pip install --require-hashes`."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .support import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
LOCK = REPO / "hack/image/requirements.lock"
BUILD_LOCK = REPO / "hack/image/build-requirements.lock"
# What the image's interpreter is: Debian bookworm's python3, Linux x86_64.
IMAGE_ENV = {"python_version": "3.11", "python_full_version": "3.11.2", "sys_platform": "linux",
             "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
             "implementation_name": "cpython", "platform_python_implementation": "CPython",
             "extra": ""}  # fmt: skip


def parse_lock(text: str) -> dict[str, tuple[Version, list[str]]]:
    """name -> (pinned version, hashes) from a pip-compile --generate-hashes file."""
    pins: dict[str, tuple[Version, list[str]]] = {}
    joined = re.sub(r"\\\n\s*", " ", text)
    for line in joined.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+?)(?:\s*;[^-]*)?((?:\s+--hash=\S+)*)", line)
        assert match, f"not a hashed pin: {line!r}"
        hashes = re.findall(r"--hash=(sha256:[0-9a-f]{64})", match.group(3))
        pins[canonicalize_name(match.group(1))] = (Version(match.group(2)), hashes)
    return pins


def assert_covers(requirements: list[str], lock: Path) -> None:
    pins = parse_lock(lock.read_text())
    for raw in requirements:
        req = Requirement(raw)
        if req.marker and not req.marker.evaluate(IMAGE_ENV):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} ({raw}) is not in {lock.name}: run make lock"
        version, _ = pins[name]
        assert req.specifier.contains(version, prereleases=True), (
            f"{lock.name} pins {req.name}=={version}, pyproject wants {raw}: run make lock"
        )


def test_lock_covers_runtime_dependencies() -> None:
    assert_covers(PYPROJECT["project"]["dependencies"], LOCK)


def test_build_lock_covers_build_requirements() -> None:
    assert_covers(PYPROJECT["build-system"]["requires"], BUILD_LOCK)


@pytest.mark.parametrize("lock", [LOCK, BUILD_LOCK], ids=lambda p: p.name)
def test_every_pin_has_hashes(lock: Path) -> None:
    pins = parse_lock(lock.read_text())
    assert pins
    assert all(hashes for _, hashes in pins.values()), "pip --require-hashes would refuse it"


def test_parse_lock_rejects_an_unpinned_line() -> None:
    assert parse_lock("a==1.0 \\\n    --hash=sha256:" + "0" * 64 + "\n")["a"][0] == Version("1.0")
    with pytest.raises(AssertionError, match="not a hashed pin"):
        parse_lock("kopf>=1.38\n")


def test_the_dockerfile_installs_both_locks_with_require_hashes() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    for lock in (LOCK, BUILD_LOCK):
        assert re.search(rf"--require-hashes[^\n]*-r /locks/{lock.name}", dockerfile), lock.name
    ignore = (REPO / ".dockerignore").read_text().split()
    assert "!hack/image/*.lock" in ignore
