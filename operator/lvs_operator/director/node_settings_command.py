"""``lvs-operator node-settings``: set the node's sysctls a director needs (node_settings.py),
exactly those, where they differ; print what it changed. Idempotent.

The director DaemonSet runs it as a privileged init container (controller/manifests.py), in
the node's network namespace (hostNetwork), before the unprivileged agent starts: the agent
cannot write ``/proc/sys`` (read-only in its container). ``--check`` only reads (exit 1 when
one is wrong), for a node whose settings come from its own configuration.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import node_settings
from .kernel import sysctl


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lvs-operator node-settings",
        description="Set the sysctls a director node needs, and nothing else: "
        + ", ".join(s.assignment() for s in node_settings.wanted(ipv6=False))
        + " (with --ipv6 also "
        + ", ".join(s.assignment() for s in node_settings.NODE_SETTINGS if s.ipv6)
        + "). Only those that differ are written. Needs a writable /proc/sys (privileged).",
    )
    parser.add_argument(
        "--ipv6", action="store_true", help="also IPv6 forwarding (for IPv6 masquerade VIPs)"
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a setting is wrong"
    )
    parser.add_argument(
        "--proc-sys", type=Path, default=sysctl.PROC_SYS, help="where /proc/sys is (tests)"
    )
    return parser.parse_args(argv)


def run(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        outcome = sysctl.enforce_node_settings(
            ipv6=args.ipv6, write=not args.check, root=args.proc_sys
        )
    except OSError as exc:  # /proc/sys unreadable: not a node-settings problem we can name
        print(f"lvs-operator node-settings: {exc}", file=sys.stderr)
        return 1
    for c in outcome.changed:
        print(f"set {c.setting.key} = {c.setting.value} (was {c.was}): {c.setting.why}")
    for s in outcome.right:
        print(f"already {s.key} = {s.value}")
    if outcome.wrong:
        for w in outcome.wrong:
            print(f"lvs-operator node-settings: {w.describe()}", file=sys.stderr)
        missing = [w for w in outcome.wrong if w.actual is None]
        if missing:
            print(
                "lvs-operator node-settings: a missing net.ipv4.vs.* key means the ip_vs "
                "module is not loaded and could not be (load it on the node: modprobe ip_vs)",
                file=sys.stderr,
            )
        if any(w.error for w in outcome.wrong):
            print(
                "lvs-operator node-settings: /proc/sys must be writable (a privileged "
                "container), or set them on the node: "
                + node_settings.fix_command(w.setting for w in outcome.wrong),
                file=sys.stderr,
            )
        return 1
    print(f"node settings: {len(outcome.changed)} changed, {len(outcome.right)} already set")
    return 0
