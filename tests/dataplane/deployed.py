"""Start director agents in the VM the way the shipped DaemonSet runs them.

The data-plane and e2e tiers used to run the agent as a root process with every capability
and a writable ``/proc/sys``; the DaemonSet runs it unprivileged. Here the pod's terms are
read from the DaemonSet itself (``controller/manifests.py`` builds it; the e2e reads it from
the API server), not restated:

- the agent container's capabilities (drop ALL, add NET_ADMIN and NET_RAW) become the
  process's bounding set (``setpriv``), ``allowPrivilegeEscalation: false`` its
  ``no_new_privs``, and ``/proc/sys`` is mounted read-only in a mount namespace of its own,
  as a container runtime does for every unprivileged container;
- the init containers (``node-settings``, privileged) run once per node before its first
  agent, as kubelet runs them once per pod (a restarted container does not rerun them);
- the program is the image's own file system and entry point (``hack/image/rootfs.sh``'s
  export, run through ``hack/image/in-rootfs.sh``) when the export was built from this very
  commit with no change since to what goes into the image; otherwise the working tree's
  Python, said once on stderr. ``LVS_DP_AGENT=image`` (CI) requires the image,
  ``LVS_DP_AGENT=tree`` forces the working tree.

The root file system is remounted read-only in the agent's mount namespace (the DaemonSet's
``readOnlyRootFilesystem``).
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
IN_ROOTFS = REPO / "hack/image/in-rootfs.sh"
ROOTFS = Path(os.environ.get("LVS_IMAGE_ROOTFS", "/var/lib/lvs-operator/image-rootfs"))
# what the image is built from (Dockerfile COPY lines): a change there since the export means
# the export no longer holds the code under test
IMAGE_INPUTS = ("operator", "pyproject.toml", "Dockerfile", "hack/image")
SHARED_IN_ROOTFS = "/mnt"  # where the VM's shared directory is bound in the image's tree
REVISION_LABEL = "org.opencontainers.image.revision"


@dataclass(frozen=True)
class PodTerms:
    """What the DaemonSet's pod spec grants the agent, and what runs before it."""

    agent_command: tuple[str, ...]
    capabilities: tuple[str, ...]  # added after dropping ALL (lower case, no CAP_)
    no_new_privs: bool
    init_commands: tuple[tuple[str, ...], ...]  # the init containers' commands, in order


def pod_terms(pod_spec: Mapping[str, Any]) -> PodTerms:
    """The agent container's terms from a director DaemonSet's pod template spec."""
    container = pod_spec["containers"][0]
    security = container.get("securityContext") or {}
    if security.get("privileged"):
        raise ValueError("the director container is privileged: nothing to restrict")
    caps = security.get("capabilities") or {}
    if [c.upper() for c in caps.get("drop") or []] != ["ALL"]:
        raise ValueError(f"the director container does not drop ALL capabilities: {caps}")
    return PodTerms(
        agent_command=tuple(container["command"]) + tuple(container.get("args") or ()),
        capabilities=tuple(c.lower() for c in caps.get("add") or ()),
        no_new_privs=security.get("allowPrivilegeEscalation") is False,
        init_commands=tuple(
            tuple(c["command"]) + tuple(c.get("args") or ())
            for c in pod_spec.get("initContainers") or []
        ),
    )


def shipped_pod_terms(vip_ranges: Sequence[str]) -> PodTerms:
    """The terms of the DaemonSet the controller would build for a group with these VIP
    ranges (the data-plane tier has no controller)."""
    from lvs_operator.controller.config import ControllerConfig
    from lvs_operator.controller.manifests import build_daemonset

    config = ControllerConfig(vip_ranges=tuple(ipaddress.ip_network(r) for r in vip_ranges))
    ds = build_daemonset("gtest", {}, config)
    return pod_terms(ds["spec"]["template"]["spec"])


def _git(*args: str) -> str:
    r = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else ""


def image_labels(rootfs: Path = ROOTFS) -> dict[str, str]:
    """The labels ``make image-rootfs`` recorded beside the export ({} if none)."""
    record = Path(f"{rootfs}.image")
    if not (rootfs / "opt/lvs-operator/bin/lvs-operator").exists() or not record.exists():
        return {}
    return dict(line.split("=", 1) for line in record.read_text().splitlines() if "=" in line)


@cache
def use_image() -> bool:
    """Whether the agents run from the image's export (see the module docstring)."""
    mode = os.environ.get("LVS_DP_AGENT", "auto")
    if mode == "tree":
        return False
    revision = image_labels().get(REVISION_LABEL, "")
    head = _git("rev-parse", "HEAD")
    changed = _git("status", "--porcelain", "--", *IMAGE_INPUTS)
    current = bool(revision) and revision == head and not changed
    if mode == "image" and not current:
        raise RuntimeError(
            f"LVS_DP_AGENT=image: {ROOTFS} is not an export of this commit's image (its "
            f"revision {revision or 'none'}, HEAD {head}, changed since: {changed or 'none'}); "
            "run `make image image-rootfs`"
        )
    if not current:
        print(f"[deployed] agents run from the working tree, not the image ({ROOTFS}: revision "
              f"{revision or 'none'}, HEAD {head[:12]}, changes to the image's inputs: "
              f"{'yes' if changed else 'no'})", file=sys.stderr)  # fmt: skip
    return current


def _from_tree(command: Sequence[str], python: str) -> list[str]:
    """``lvs-operator SUB ...`` as the working tree's Python runs it."""
    if command[:1] != ("lvs-operator",) and list(command[:1]) != ["lvs-operator"]:
        raise ValueError(f"not an lvs-operator command: {command}")
    return [python, "-m", "lvs_operator.cli", *command[1:]]


def _in_image(shared: Path, command: Sequence[str], env: Mapping[str, str],
              restricted: bool) -> list[str]:  # fmt: skip
    """``command`` from the image's export, the shared directory bound on /mnt."""
    argv = [str(IN_ROOTFS), "--rootfs", str(ROOTFS), "--bind", f"{shared}:{SHARED_IN_ROOTFS}"]
    if restricted:
        argv += ["--read-only-root", "--read-only-proc-sys"]
    for name, value in env.items():
        argv += ["--env", f"{name}={value}"]
    return [*argv, "--", *command]


def rebase(value: str, shared: Path) -> str:
    """A path under the VM's shared directory as the image's tree sees it."""
    return value.replace(str(shared), SHARED_IN_ROOTFS)


def _setpriv(terms: PodTerms) -> list[str]:
    caps = ",".join(["-all", *(f"+{c}" for c in terms.capabilities)])
    return [
        "setpriv", *(["--no-new-privs"] if terms.no_new_privs else []),
        "--bounding-set", caps, "--inh-caps", "-all", "--",
    ]  # fmt: skip


def agent_argv(terms: PodTerms, args: Sequence[str], env: Mapping[str, str], shared: Path,
               python: str) -> tuple[list[str], dict[str, str]]:  # fmt: skip
    """(argv, environment) that start the agent in the VM under ``terms``; ``args`` follow
    the DaemonSet's command (paths under ``shared`` are fine)."""
    if use_image():
        command = [*_setpriv(terms), *terms.agent_command, *(rebase(a, shared) for a in args)]
        image_env = {k: rebase(v, shared) for k, v in env.items()}
        return _in_image(shared, command, image_env, restricted=True), {}
    command = [*_setpriv(terms), *_from_tree(terms.agent_command, python), *args]
    script = (
        "mount -o remount,bind,ro / && mount --bind /proc/sys /proc/sys "
        '&& mount -o remount,bind,ro /proc/sys && exec "$@"'
    )
    wrapped = ["unshare", "--mount", "--propagation", "private", "--",
               "sh", "-c", script, "agent", *command]  # fmt: skip
    return wrapped, dict(env)


def init_argvs(terms: PodTerms, shared: Path, python: str) -> list[list[str]]:
    """The init containers' commands (privileged: no restriction) as the VM runs them."""
    if use_image():
        return [_in_image(shared, list(c), {}, restricted=False) for c in terms.init_commands]
    return [_from_tree(c, python) for c in terms.init_commands]
