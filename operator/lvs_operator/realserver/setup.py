"""``lvs-operator realserver``: prepare a real server for direct routing or IPIP tunnelling.

    lvs-operator realserver --vip 10.10.0.100 [--vip 2001:db8::100] --mode direct|tunnel
    lvs-operator realserver --vip 10.10.0.100 --mode tunnel --cleanup

- ``direct``: the VIP as a host address on ``lo`` (the server accepts packets for it but,
  with ``arp_ignore=1`` / ``arp_announce=2``, never answers ARP for it nor uses it as an ARP
  source, so the director alone owns the VIP on the wire).
- ``tunnel``: ``modprobe ipip`` (``ip6_tunnel`` for IPv6 VIPs), the VIP on the fallback
  tunnel device ``tunl0`` (``ip6tnl0``), which is brought up; ``rp_filter`` is 0 on it and at
  most 2 (loose) for ``all`` because decapsulated packets arrive from a client the server
  routes via another interface; ARP is suppressed as for ``direct``.

Idempotent: safe to run again (an init container on every pod start). ``--cleanup`` removes
the VIPs; sysctls are left as they are (other services may rely on them). Needs
CAP_NET_ADMIN and writable ``/proc/sys/net`` (a privileged init container, or the pod's own
network namespace with those sysctls allowed).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("lvs_operator.realserver")

PROC_SYS = Path("/proc/sys")


@dataclass(frozen=True)
class Plan:
    """What a real server needs for ``mode``: (interface, address/prefix) and sysctls."""

    modules: tuple[str, ...]
    addresses: tuple[tuple[str, str, int], ...]  # (interface, address, prefixlen)
    up: tuple[str, ...]  # interfaces to bring up
    sysctls: tuple[tuple[str, str], ...]  # (key, value); "rp_filter<=2" handled specially


def plan(vips: list[str], mode: str) -> Plan:
    addresses: list[tuple[str, str, int]] = []
    modules: list[str] = []
    up: list[str] = []
    sysctls: list[tuple[str, str]] = []
    has_v4 = any(ipaddress.ip_address(v).version == 4 for v in vips)
    for vip in vips:
        address = ipaddress.ip_address(vip)
        if mode == "direct":
            dev = "lo"
        elif address.version == 4:
            dev = "tunl0"
        else:
            dev = "ip6tnl0"
        addresses.append((dev, str(address), 32 if address.version == 4 else 128))
        if mode == "tunnel":
            module = "ipip" if address.version == 4 else "ip6_tunnel"
            if module not in modules:
                modules.append(module)
            if dev not in up:
                up.append(dev)
    if has_v4:
        # ARP suppression: the kernel takes max(all, dev) for both, so "all" covers every
        # interface.
        sysctls += [
            ("net.ipv4.conf.all.arp_ignore", "1"),
            ("net.ipv4.conf.all.arp_announce", "2"),
        ]
        if mode == "tunnel":
            sysctls += [
                ("net.ipv4.conf.tunl0.rp_filter", "0"),
                ("net.ipv4.conf.all.rp_filter", "<=2"),
            ]
    return Plan(tuple(modules), tuple(addresses), tuple(up), tuple(sysctls))


def _sysctl_path(key: str) -> Path:
    return PROC_SYS / key.replace(".", "/")


def apply_sysctl(key: str, value: str) -> None:
    path = _sysctl_path(key)
    if value == "<=2":  # rp_filter: relax strict (1) to loose (2), keep 0 or 2
        current = path.read_text().strip()
        if current != "1":
            return
        value = "2"
    if path.read_text().strip() == value:
        return
    try:
        path.write_text(f"{value}\n")
    except OSError as exc:
        raise RuntimeError(
            f"cannot set {key}={value}: {exc}. Run as a privileged init container (or allow "
            "the sysctl for the pod)"
        ) from exc
    log.info("sysctl %s=%s", key, value)


def _modprobe(module: str) -> None:
    if Path(f"/sys/module/{module}").exists():
        return
    try:
        subprocess.run(["modprobe", module], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        # inside a container modprobe may be missing; the device check below says what to do
        log.warning("modprobe %s failed: %s", module, exc)


def _index(ipr: Any, dev: str, module: str) -> int:
    found = ipr.link_lookup(ifname=dev)
    if not found:
        raise RuntimeError(
            f"interface {dev} does not exist: load the {module} kernel module on the node "
            f"(modprobe {module}); with net.core.fb_tunnels_only_for_init_net=1 it only "
            "exists in the host's namespace, so run the pod with hostNetwork"
        )
    return int(found[0])


def setup(vips: list[str], mode: str, cleanup: bool = False, ipr: Any = None) -> list[str]:
    """Apply (or undo) the plan; returns what changed, for the log."""
    from pyroute2 import IPRoute, NetlinkError

    p = plan(vips, mode)
    changes: list[str] = []
    own = ipr is None
    ipr = ipr or IPRoute()
    try:
        if not cleanup:
            for module in p.modules:
                _modprobe(module)
        for dev, address, prefix in p.addresses:
            module = "ipip" if dev == "tunl0" else "ip6_tunnel"
            index = _index(ipr, dev, module)
            try:
                if cleanup:
                    ipr.addr("del", index=index, address=address, prefixlen=prefix)
                    changes.append(f"removed {address}/{prefix} from {dev}")
                else:
                    ipr.addr("add", index=index, address=address, prefixlen=prefix)
                    changes.append(f"added {address}/{prefix} to {dev}")
            except NetlinkError as exc:
                if exc.code not in (17, 99):  # EEXIST on add, EADDRNOTAVAIL on del
                    raise
        if cleanup:
            return changes
        for dev in p.up:
            index = _index(ipr, dev, "ipip" if dev == "tunl0" else "ip6_tunnel")
            ipr.link("set", index=index, state="up")
        for key, value in p.sysctls:
            apply_sysctl(key, value)
        return changes
    finally:
        if own:
            ipr.close()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lvs-operator realserver",
        description="Configure this host/pod as a real server for direct or tunnel forwarding "
        "(VIP on lo or tunl0, ARP suppression, rp_filter). Idempotent.",
    )
    parser.add_argument("--vip", action="append", required=True, help="a VIP (repeatable)")
    parser.add_argument("--mode", choices=("direct", "tunnel"), required=True)
    parser.add_argument("--cleanup", action="store_true", help="remove the VIPs again")
    args = parser.parse_args(argv)
    for vip in args.vip:
        try:
            ipaddress.ip_address(vip)
        except ValueError:
            parser.error(f"--vip {vip!r} is not an IPv4 or IPv6 address")
    return args


def run(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        changes = setup(args.vip, args.mode, args.cleanup)
    except (RuntimeError, OSError) as exc:
        print(f"lvs-operator realserver: {exc}", file=sys.stderr)
        return 1
    for change in changes:
        log.info("%s", change)
    log.info("real server ready for %s: %s", args.mode, ", ".join(args.vip))
    return 0
