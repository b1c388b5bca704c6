"""Sysctls: the data plane's (per namespace) and the handover's ARP ones (per interface)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path

from .netns import in_netns

log = logging.getLogger("lvs_operator.director.kernel.sysctl")

# The sysctls the data plane needs, per namespace.
#   conntrack: IPVS keeps conntrack entries for its connections, which the nftables
#     masquerade (SNAT) of masquerade forwarding needs, as do stateful firewalls.
#   expire_nodest_conn: a connection to a removed destination is dropped at its next packet
#     instead of hanging until it times out.
#   expire_quiescent_template: persistence templates pointing at a weight-0 (draining)
#     destination expire, so sticky clients move on instead of being pinned to it.
#   ip_forward: masquerade forwards; direct/tunnel need it off for nothing, on is harmless.
REQUIRED_SYSCTLS: dict[str, str] = {
    "net.ipv4.ip_forward": "1",
    "net.ipv4.vs.conntrack": "1",
    "net.ipv4.vs.expire_nodest_conn": "1",
    "net.ipv4.vs.expire_quiescent_template": "1",
}
IPV6_SYSCTLS: dict[str, str] = {"net.ipv6.conf.all.forwarding": "1"}


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def ensure_sysctls(
    values: Mapping[str, str] | None = None,
    netns: str | None = None,
    *,
    ipv6: bool = False,
) -> dict[str, tuple[str, str]]:
    """Set the data plane's sysctls (REQUIRED_SYSCTLS, plus IPv6 forwarding if ``ipv6``) where
    they differ. Note: IPv6 forwarding makes the node ignore router advertisements unless its
    interfaces have accept_ra=2, so ask for it only when there are IPv6 masquerade services.
    Returns {key: (old, new)} for those changed. The net.ipv4.vs.* keys exist once the ip_vs
    module is loaded: opening an IPVS socket loads it where modules can be loaded."""
    wanted = dict(values if values is not None else REQUIRED_SYSCTLS)
    if ipv6 and values is None:
        wanted.update(IPV6_SYSCTLS)
    changed: dict[str, tuple[str, str]] = {}
    with in_netns(netns):
        if (
            any(k.startswith("net.ipv4.vs.") for k in wanted)
            and not _sysctl_path("net.ipv4.vs.conntrack").exists()
        ):
            # autoload ip_vs through its generic netlink family, as the agent would anyway
            from .ipvs_netlink import IpvsNetlink

            with contextlib.suppress(Exception):
                IpvsNetlink().close()
        failed: dict[str, str] = {}
        for key, value in wanted.items():
            path = _sysctl_path(key)
            try:
                old = path.read_text().strip()
                if old != str(value):
                    path.write_text(f"{value}\n")
                    changed[key] = (old, str(value))
            except OSError as exc:
                # An unprivileged container sees /proc/sys read-only: report every key at once.
                failed[key] = f"{value} ({exc.strerror or exc})"
        if failed:
            raise SysctlError(failed, changed)
    return changed


class SysctlError(OSError):
    """Some data-plane sysctls could not be set (typically: /proc/sys is read-only)."""

    def __init__(self, failed: Mapping[str, str], changed: Mapping[str, tuple[str, str]]):
        self.failed = dict(failed)
        self.changed = dict(changed)
        wanted = " ".join(f"{k}={v.split(' ')[0]}" for k, v in self.failed.items())
        super().__init__(
            f"cannot set sysctls {', '.join(f'{k}={v}' for k, v in self.failed.items())}; "
            f"set them on the node (sysctl -w {wanted}, or a file in /etc/sysctl.d), or run "
            "the director with a writable /proc/sys"
        )


# -- the handover's ARP sysctls ---------------------------------------------------------------


def set_interface_sysctls(
    ifname: str, values: Mapping[str, str], root: Path = Path("/proc/sys")
) -> dict[str, str]:
    """Set IPv4 ``values`` on ``ifname``; returns the previous values (to restore)."""
    previous: dict[str, str] = {}
    base = root / "net" / "ipv4" / "conf" / ifname
    for key, value in values.items():
        path = base / key
        try:
            previous[key] = path.read_text().strip()
            if previous[key] != value:
                path.write_text(value)
        except OSError as exc:
            log.warning(
                "cannot set %s: %s; the old leader may answer ARP for the VIP during the handover",
                path,
                exc,
            )
    return previous


def restore_interface_sysctls(
    ifname: str, previous: Mapping[str, str], root: Path = Path("/proc/sys")
) -> None:
    base = root / "net" / "ipv4" / "conf" / ifname
    for key, value in previous.items():
        try:
            (base / key).write_text(value)
        except OSError as exc:
            log.warning("cannot restore %s: %s", base / key, exc)
