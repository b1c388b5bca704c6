"""The image's build inputs agree: one base image name, the files the build needs, no
frontend pulled from a registry."""

from __future__ import annotations

import fnmatch
import re

from lvs_operator.cli import SUBCOMMANDS

from .support import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()


def default(pattern: str, text: str) -> str:
    match = re.search(pattern, text, re.MULTILINE)
    assert match, pattern
    return match.group(1)


def test_one_base_image_name() -> None:
    base = default(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE)
    seed = default(r'image="\$\{1:-([^}]+)\}"', (REPO / "hack/image/seed-base.sh").read_text())
    build = default(r'base="\$\{BASE_IMAGE:-([^}]+)\}"', (REPO / "hack/image/build.sh").read_text())
    assert base == seed == build == "debian:12.15-slim"


def test_base_is_pinned_to_a_debian_point_release() -> None:
    """Not a floating tag (bookworm-slim, 12-slim): seed-base.sh checks the archive's Release
    file against the point release the tag names."""
    base = default(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE)
    assert re.fullmatch(r"debian:\d+\.\d+-slim", base), base


def test_no_syntax_directive() -> None:
    """`# syntax=` makes BuildKit pull a frontend image: impossible without a registry."""
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE, re.MULTILINE | re.IGNORECASE)


def test_build_context_has_what_the_dockerfile_copies() -> None:
    ignore = (REPO / ".dockerignore").read_text().split()
    included = [line[1:] for line in ignore if line.startswith("!")]
    copies = re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, re.MULTILINE)
    assert copies
    for sources in copies:
        for source in sources.split():
            assert any(fnmatch.fnmatch(source, pattern) for pattern in included), (
                f"{source} is copied but excluded by .dockerignore"
            )
            assert (REPO / source).exists(), source


def test_smoke_test_covers_every_subcommand() -> None:
    smoke = (REPO / "hack/image/smoke.sh").read_text()
    listed = default(r"^for sub in ([a-z -]+); do$", smoke).split()
    assert sorted(listed) == sorted(SUBCOMMANDS)


def test_runs_as_non_root_by_default() -> None:
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, re.MULTILINE)
    assert users and not users[-1].startswith(("0", "root"))
    assert re.search(r'^ENTRYPOINT \["lvs-operator"\]$', DOCKERFILE, re.MULTILINE)
