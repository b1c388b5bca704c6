"""hack/image/labels.py: the OCI source/revision/created labels that build.sh sets from git."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from .support import REPO


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lvs_image_labels", REPO / "hack/image/labels.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


labels = _load()
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    ("remote", "expected"),
    [
        ("https://example.org/team/lvs-operator.git", "https://example.org/team/lvs-operator"),
        (
            "https://user:token@example.org/team/lvs-operator",
            "https://example.org/team/lvs-operator",
        ),
        ("git@example.org:team/lvs-operator.git", "https://example.org/team/lvs-operator"),
        (
            "ssh://git@example.org:2222/team/lvs-operator.git",
            "https://example.org/team/lvs-operator",
        ),
        (
            "https://example.org:8443/team/lvs-operator/",
            "https://example.org:8443/team/lvs-operator",
        ),
        ("/work/main", "unknown"),
        ("../main", "unknown"),
        ("file:///work/main", "unknown"),
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_source_url(remote: str | None, expected: str) -> None:
    assert labels.source_url(remote) == expected


def test_labels_are_the_three_oci_keys() -> None:
    got = labels.labels("https://example.org/x", COMMIT, dirty=False, epoch=0)
    assert got == {
        "org.opencontainers.image.source": "https://example.org/x",
        "org.opencontainers.image.revision": COMMIT,
        "org.opencontainers.image.created": "1970-01-01T00:00:00Z",
    }


def test_dirty_revision_and_rfc3339_utc() -> None:
    assert labels.revision(COMMIT, dirty=True) == COMMIT + "-dirty"
    assert labels.created(1_780_000_000) == "2026-05-28T20:26:40Z"
    with pytest.raises(ValueError):
        labels.revision("HEAD", dirty=False)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_from_git_reads_the_commit_and_notices_a_dirty_build_input(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "operator").mkdir(parents=True)
    (repo / "operator" / "x.py").write_text("x = 1\n")
    (repo / "notes.txt").write_text("not a build input\n")
    _git(tmp_path, "init", "-q", str(repo))
    _git(repo, "add", ".")
    env = {"GIT_COMMITTER_DATE": "@1780000000 +0000"}
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org",
         "commit", "-q", "-m", "one"],
        check=True,
        env={**env, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    head = _git(repo, "rev-parse", "HEAD")

    clean = labels.from_git(repo, env={})
    assert clean == labels.labels("unknown", head, dirty=False, epoch=1_780_000_000)

    (repo / "notes.txt").write_text("changed, but the image does not contain it\n")
    assert labels.from_git(repo, env={}) == clean
    (repo / "operator" / "x.py").write_text("x = 2\n")
    got = labels.from_git(
        repo, env={"SOURCE_DATE_EPOCH": "0", "LVS_IMAGE_SOURCE": "https://e.org/r"}
    )
    assert got == labels.labels("https://e.org/r", head, dirty=True, epoch=0)
