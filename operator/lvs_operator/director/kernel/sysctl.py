"""Sysctls: ``/proc/sys`` of a network namespace (``ProcSys``), and bringing it to the node
settings a director needs (the list and the rules: director/node_settings.py)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path

from lvs_operator.director import node_settings

from .netns import in_netns

log = logging.getLogger("lvs_operator.director.kernel.sysctl")

PROC_SYS = Path("/proc/sys")


class ProcSys:
    """``node_settings.SysctlFiles`` on ``/proc/sys`` (``root``: a directory in the tests).
    Call it inside ``in_netns``: the net.* files follow the calling thread's namespace."""

    def __init__(self, root: Path = PROC_SYS) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / key.replace(".", "/")

    def read(self, key: str) -> str | None:
        try:
            return self.path(key).read_text().strip()
        except FileNotFoundError:
            return None

    def write(self, key: str, value: str) -> None:
        self.path(key).write_text(f"{value}\n")


def load_ip_vs(files: ProcSys) -> None:
    """The net.ipv4.vs.* keys exist once the ip_vs module is loaded: opening the IPVS generic
    netlink family makes the kernel load it where modules can be loaded (as the agent would
    anyway); where it cannot, the keys stay missing and are reported as such."""
    if files.read("net.ipv4.vs.conntrack") is None:
        from .ipvs_netlink import IpvsNetlink

        with contextlib.suppress(Exception):
            IpvsNetlink().close()


def enforce_node_settings(
    netns: str | None = None, *, ipv6: bool = False, write: bool = True, root: Path = PROC_SYS
) -> node_settings.Outcome:
    """Read (and with ``write``, set where they differ) the node settings in ``netns``."""
    files = ProcSys(root)
    with in_netns(netns):
        if root == PROC_SYS:  # a directory standing for it (tests) loads no module
            load_ip_vs(files)
        return node_settings.enforce(node_settings.wanted(ipv6), files, write=write)


def ensure_sysctls(netns: str | None = None, *, ipv6: bool = False) -> dict[str, tuple[str, str]]:
    """Set the node settings where they differ; {key: (old, new)} of those changed. Raises
    SysctlError naming every one that is still wrong (the tests' and benches' helper)."""
    outcome = enforce_node_settings(netns, ipv6=ipv6)
    changed = {c.setting.key: (c.was, c.setting.value) for c in outcome.changed}
    if outcome.wrong:
        raise SysctlError(outcome.wrong, changed)
    return changed


class SysctlError(OSError):
    """Some node settings are wrong and could not be set (typically: /proc/sys read-only)."""

    def __init__(
        self, wrong: tuple[node_settings.Wrong, ...], changed: Mapping[str, tuple[str, str]]
    ) -> None:
        self.wrong = wrong
        self.changed = dict(changed)
        super().__init__(
            f"node settings wrong: {'; '.join(w.describe() for w in wrong)}. Fix: "
            f"{node_settings.ENABLE_INIT_STEP}, or set them on the node "
            f"({node_settings.fix_command(w.setting for w in wrong)}, or a file in "
            "/etc/sysctl.d)"
        )
