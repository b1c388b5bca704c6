"""The ``lvs-operator`` command: controller | director | node-settings | realserver | demo.

Each subcommand's options live with its code (``run(argv)`` in its module), so this file
only dispatches and imports lazily: the director agent must not pay kopf's memory cost.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

SUBCOMMANDS = {
    "controller": ("lvs_operator.controller.app", "reconcile VirtualServers and pools (kopf)"),
    "director": ("lvs_operator.director.main", "director agent: IPVS, VIP, Lease election"),
    "node-settings": (
        "lvs_operator.director.node_settings_command",
        "set the sysctls a director node needs (the directors' init container)",
    ),
    "realserver": ("lvs_operator.realserver.setup", "configure a real server for direct/tunnel"),
    "demo": ("lvs_operator.demo", "local control plane + VM demo of the whole system"),
}


def usage() -> str:
    lines = ["usage: lvs-operator COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<13} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run `lvs-operator COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] in ("--version", "version"):
        from lvs_operator import __version__

        print(__version__)
        return 0
    entry = SUBCOMMANDS.get(args[0])
    if entry is None:
        print(f"lvs-operator: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    if args[0] == "director":
        # first, before the agent's imports (seconds under emulation): the renewal of the
        # VIPs a restarted agent left on this node, so they do not lapse meanwhile
        from lvs_operator.director import early

        early.begin(args[1:])
    try:
        module = importlib.import_module(entry[0])
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(entry[0]):
            print(f"lvs-operator: {args[0]} is not available in this build", file=sys.stderr)
            return 2
        raise
    result: int = module.run(args[1:])
    return result


if __name__ == "__main__":
    sys.exit(main())
