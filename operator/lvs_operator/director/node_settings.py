"""The node's sysctls a director needs: the one list, and how to bring a node to it.

Used by ``lvs-operator node-settings`` (node_settings_command.py: the director DaemonSet's
privileged init container, which sets them) and by the agent (ipvs_sync.py: which reads them
at start and every ``RECHECK_SECONDS``, and reports a wrong one with its fix). The agent runs
unprivileged, with a read-only ``/proc/sys``, so in the shipped pod only the init step can
write them; where ``/proc/sys`` is writable (the data-plane tests run the agent as root) the
agent corrects a wrong one itself, but nothing depends on it.

Pure: the files are reached through ``SysctlFiles`` (kernel/sysctl.py; a dict in the tests).

Not here: the handover's ``arp_ignore``/``arp_announce`` (per interface, and only for the
handover's drain); the handover drops the old leader's ARP for its VIPs with an nftables
``arp`` table instead (handover.py), which needs no sysctl.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

# How often the agent reads them again (a node fixed by hand is seen, and one changed under
# it is reported); a few file reads.
RECHECK_SECONDS = 60.0
# What the agent's report and the init step's failure tell the operator to do.
ENABLE_INIT_STEP = (
    "enable the directors' node-settings init container (controller "
    "--director-node-settings=true, chart director.nodeSettings.enabled=true)"
)


@dataclass(frozen=True)
class NodeSetting:
    """One sysctl (dotted key, per network namespace), the value wanted and why."""

    key: str
    value: str
    why: str
    ipv6: bool = False  # needed only with IPv6 services

    def assignment(self) -> str:
        return f"{self.key}={self.value}"


NODE_SETTINGS: tuple[NodeSetting, ...] = (
    NodeSetting(
        "net.ipv4.ip_forward",
        "1",
        "masquerade forwards to the real servers (Kubernetes nodes have it on already)",
    ),
    NodeSetting(
        "net.ipv4.vs.conntrack",
        "1",
        "IPVS keeps conntrack entries for its connections: "
        "masquerade's nftables source NAT (and stateful firewalls) need them",
    ),
    NodeSetting(
        "net.ipv4.vs.expire_nodest_conn",
        "1",
        "a connection to a removed real server is "
        "dropped at its next packet instead of hanging until it times out",
    ),
    NodeSetting(
        "net.ipv4.vs.expire_quiescent_template",
        "1",
        "persistence templates pointing at a "
        "draining (weight 0) real server expire, so sticky clients move on",
    ),
    NodeSetting(
        "net.ipv6.conf.all.forwarding",
        "1",
        "IPv6 masquerade forwards (it makes the node "
        "ignore router advertisements on interfaces without accept_ra=2: only with IPv6)",
        ipv6=True,
    ),
)


def wanted(ipv6: bool) -> tuple[NodeSetting, ...]:
    """The settings needed: the IPv4 ones always, IPv6 forwarding only with ``ipv6``."""
    return tuple(s for s in NODE_SETTINGS if ipv6 or not s.ipv6)


def fix_command(settings: Iterable[NodeSetting]) -> str:
    """The shell command that sets ``settings`` on a node by hand."""
    return "sysctl -w " + " ".join(s.assignment() for s in settings)


class SysctlFiles(Protocol):
    """``/proc/sys`` of one network namespace (kernel/sysctl.py ``ProcSys``)."""

    def read(self, key: str) -> str | None:
        """The value, stripped; None when the key does not exist."""
        ...

    def write(self, key: str, value: str) -> None:
        """Raises OSError (a read-only ``/proc/sys``: EROFS)."""
        ...


@dataclass(frozen=True)
class Changed:
    setting: NodeSetting
    was: str


@dataclass(frozen=True)
class Wrong:
    """A setting that is not as wanted after ``enforce``; ``actual`` None: missing."""

    setting: NodeSetting
    actual: str | None
    error: str = ""  # why it could not be written ("" : not tried)

    def describe(self) -> str:
        actual = "missing" if self.actual is None else self.actual
        why = f" ({self.error})" if self.error else ""
        return f"{self.setting.key} is {actual}, needs {self.setting.value}{why}"


@dataclass(frozen=True)
class Outcome:
    changed: tuple[Changed, ...] = ()
    wrong: tuple[Wrong, ...] = ()
    right: tuple[NodeSetting, ...] = ()  # already as wanted


def enforce(settings: Iterable[NodeSetting], files: SysctlFiles, *, write: bool) -> Outcome:
    """Read each setting; write the ones that differ when ``write`` (idempotent: a right one
    is never written). A missing key is not created (it exists once its module is loaded)."""
    changed: list[Changed] = []
    wrong: list[Wrong] = []
    right: list[NodeSetting] = []
    for setting in settings:
        actual = files.read(setting.key)
        if actual == setting.value:
            right.append(setting)
            continue
        if actual is None or not write:
            wrong.append(Wrong(setting, actual))
            continue
        try:
            files.write(setting.key, setting.value)
        except OSError as exc:
            wrong.append(Wrong(setting, actual, exc.strerror or str(exc)))
            continue
        changed.append(Changed(setting, actual))
    return Outcome(tuple(changed), tuple(wrong), tuple(right))
