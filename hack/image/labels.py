"""The image's OCI annotations from git: source, revision, created.

    python3 hack/image/labels.py [REPO]     prints KEY=VALUE lines for hack/image/build.sh

- ``org.opencontainers.image.source``: $LVS_IMAGE_SOURCE, else the ``origin`` remote when it
  is a URL a reader can follow (credentials removed; a local path is not), else ``unknown``.
- ``org.opencontainers.image.revision``: the commit (``git rev-parse HEAD``), with ``-dirty``
  when the files the image is built from have uncommitted changes.
- ``org.opencontainers.image.created``: RFC 3339, UTC. $SOURCE_DATE_EPOCH when set, else the
  commit's time: the same commit gives the same labels, so a rebuild stays reproducible.

Only the standard library: build.sh runs it with whatever python3 the machine has.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

PREFIX = "org.opencontainers.image."
UNKNOWN = "unknown"
# What the Dockerfile copies (plus itself): a change there makes the revision "-dirty".
SCP_LIKE = r"(?:[^@/\s]+@)?([A-Za-z0-9.-]+\.[A-Za-z]{2,}):(?!/)(\S+?)(?:\.git)?/?"
BUILD_INPUTS = ("Dockerfile", "pyproject.toml", "README.md", "LICENSE", "operator", "hack/image")


def source_url(remote: str | None) -> str:
    """A followable URL for a git remote, without credentials; UNKNOWN for anything else."""
    if not remote:
        return UNKNOWN
    remote = remote.strip()
    scp = re.fullmatch(SCP_LIKE, remote)
    if scp:  # git@host:owner/name.git
        return f"https://{scp.group(1)}/{scp.group(2)}"
    parts = urlsplit(remote)
    if parts.scheme not in ("https", "http", "ssh", "git") or not parts.hostname:
        return UNKNOWN  # a local path or file:// clone says nothing to someone elsewhere
    host = parts.hostname + (f":{parts.port}" if parts.port and parts.scheme != "ssh" else "")
    path = re.sub(r"\.git/?$", "", parts.path).rstrip("/")
    scheme = "https" if parts.scheme in ("ssh", "git") else parts.scheme
    return urlunsplit((scheme, host, path, "", ""))


def revision(commit: str, dirty: bool) -> str:
    if not re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", commit):
        raise ValueError(f"not a full commit id: {commit!r}")
    return commit + ("-dirty" if dirty else "")


def created(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def labels(source: str, commit: str, dirty: bool, epoch: int) -> dict[str, str]:
    return {
        PREFIX + "source": source,
        PREFIX + "revision": revision(commit, dirty),
        PREFIX + "created": created(epoch),
    }


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def from_git(repo: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if env is None else env)
    try:
        remote: str | None = _git(repo, "remote", "get-url", "origin")
    except subprocess.CalledProcessError:
        remote = None
    source = env.get("LVS_IMAGE_SOURCE") or source_url(remote)
    commit = _git(repo, "rev-parse", "HEAD")
    # hack/image/ca/ holds build.sh's temporary copies of the host's CA certificates
    dirty = bool(_git(repo, "status", "--porcelain", "--", *BUILD_INPUTS, ":!hack/image/ca"))
    epoch = int(env.get("SOURCE_DATE_EPOCH") or _git(repo, "log", "-1", "--format=%ct", "HEAD"))
    return labels(source, commit, dirty, epoch)


def main(argv: list[str]) -> int:
    repo = Path(argv[1] if len(argv) > 1 else Path(__file__).resolve().parents[2])
    for key, value in from_git(repo).items():
        print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
