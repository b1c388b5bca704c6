"""A restarting agent's first step, before its heavy imports: restart the lifetime of the VIPs
an agent added that are still on this node (vip.py), and keep doing so every quarter lifetime
on a thread until the agent's own renewal takes over (agent.py stops it).

A restarted leader's VIPs must not lapse while it starts. Under emulation the agent's imports
alone took 5.3-5.8 s of an 8 s lifetime (bench/agent_scale.py: 624 of 1,000 VIPs lapsed in
one restart), so ``lvs-operator director`` calls ``begin`` before it imports anything else of
the agent: this module and vip.py import the standard library only. ``main.run`` then
``take``s the running renewal.

Only a VIP no other node answers ARP / NDP for is renewed: no standby takes a VIP this node
still answers for, so renewing it makes no second holder; one another node answers for (this
node was cut off, and its standby took over) is left to lapse, and one already gone is not
brought back. A crash loop extends them by one lifetime per start, and kubelet's back-off
(10 s, doubling) outlasts that.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence

log = logging.getLogger("lvs_operator.director.main")

# Seconds a VIP outlives the last renewal by its agent (the kernel then removes it): an agent
# that dies takes its VIPs with it within this, below the Lease duration. Renewed
# LIFETIME_RENEWALS times per lifetime, so a renewal late by a few seconds costs nothing.
DEFAULT_VIP_LIFETIME = 8
LIFETIME_RENEWALS = 4
# api/contract.py's names (a unit test holds them equal): that module is not imported here
ENV_VIP_LIFETIME_SECONDS = "LVS_VIP_LIFETIME_SECONDS"
ENV_LOG_LEVEL = "LVS_LOG_LEVEL"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
AGENT_ARENAS = 2  # glibc malloc arenas (heap.limit_arenas): before the first thread
# bytes from which a block gets pages of its own, for good (heap.fix_mmap_threshold):
# glibc's starting value, which it otherwise raises after the first big block freed
AGENT_MMAP_THRESHOLD = 128 * 1024


class EarlyRenewal:
    """The renewal of a restarting agent's VIPs from its first step until the agent's own
    renewal thread runs (agent.py hands over with ``stop``). ``renew``: one round, its
    (kept, left): the VIPs renewed, and those left to lapse (another node answers for them);
    ``kept`` and ``left`` here: the first round's."""

    def __init__(self, lifetime: int, renew: Callable[[], tuple[list[str], list[str]]],
                 close: Callable[[], None]) -> None:  # fmt: skip
        self.lifetime = lifetime
        self._renew, self._close = renew, close
        self._stop = threading.Event()
        self.kept, self.left = self._round(first=True)
        self.thread = threading.Thread(target=self._loop, name="vip-early-renewal", daemon=True)
        self.thread.start()

    def _round(self, first: bool) -> tuple[list[str], list[str]]:
        try:
            kept, left = self._renew()
        except Exception as exc:
            log.warning("could not renew the VIPs left on this node: %s", exc)
            return [], []
        if kept and first:
            log.info("VIPs still on this node kept until the Lease is read",
                     extra={"vips": sorted(kept), "seconds": self.lifetime})  # fmt: skip
        if left and first:
            log.warning("VIPs left on this node are answered by another node: left to lapse",
                        extra={"vips": left})  # fmt: skip
        return kept, left

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.lifetime / LIFETIME_RENEWALS):
                self._round(first=False)
        finally:
            self._close()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop and wait (briefly): no renewal of this thread runs after the agent's first
        address change."""
        self._stop.set()
        self.thread.join(timeout)


def keep_vips_through_restart(lifetime: int) -> EarlyRenewal | None:
    """Start the renewal (its first round at once); None when VIPs have no lifetime (0) or
    netlink is not there (only a head start: the agent's start-up does the real work)."""
    if lifetime <= 0:
        return None
    try:
        from .vip import VipManager

        vips = VipManager(lifetime=lifetime)
    except Exception as exc:
        log.warning("could not renew the VIPs left on this node: %s", exc)
        return None

    def renew() -> tuple[list[str], list[str]]:
        return vips.renew_unclaimed(vips.present().items())

    return EarlyRenewal(lifetime, renew, vips.rt.close)


_started: EarlyRenewal | None = None


def option_value(argv: Sequence[str], flag: str, env: Mapping[str, str], var: str,
                 default: str) -> str:  # fmt: skip
    """What main.parse_args will read for ``flag``: the last ``--flag value`` or
    ``--flag=value`` on the command line, else the variable (empty: unset), else the
    default. A value it will refuse reaches the caller as it is."""
    value: str | None = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1 :]
    return value if value is not None else (env.get(var) or default)


# Modules the agent never uses that a library imports only to look for them: the HTTP
# client's async layer imports trio, if installed, to tell trio from asyncio (the agent runs
# asyncio), and trio's import costs 4.7 MiB of the agent's RSS; its connection layer imports
# h2 (HTTP/2, with hpack and hyperframe: 2.7 MiB), if installed, for connections that
# negotiate it, and the agent's client never offers HTTP/2.
UNUSED_MODULES = ("trio", "h2")


def block_unused_modules() -> None:
    """Make ``import`` of ``UNUSED_MODULES`` fail (ImportError, as when not installed), unless
    already imported: a ``None`` in ``sys.modules`` is Python's way to say so."""
    for name in UNUSED_MODULES:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def begin(argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
    """``lvs-operator director``'s first step: the unused modules blocked, logging, the arena
    cap, and the renewal of the VIPs left on this node (``take`` hands it to ``main.run``).
    Never raises: a bad option is main.parse_args's to report."""
    global _started
    block_unused_modules()
    if "-h" in argv or "--help" in argv:
        return
    env = os.environ if env is None else env
    try:
        from ..heap import fix_mmap_threshold, limit_arenas
        from ..logs import setup_logging

        level = option_value(argv, "--log-level", env, ENV_LOG_LEVEL, "INFO").upper()
        setup_logging(level if level in LOG_LEVELS else "INFO")
        limit_arenas(AGENT_ARENAS)
        fix_mmap_threshold(AGENT_MMAP_THRESHOLD)
        raw = option_value(argv, "--vip-lifetime", env, ENV_VIP_LIFETIME_SECONDS,
                           str(DEFAULT_VIP_LIFETIME))  # fmt: skip
        lifetime = int(raw)
    except Exception:  # (a lifetime that is not an integer: parse_args says so)
        return
    if lifetime >= 2:  # parse_args refuses 1
        _started = keep_vips_through_restart(lifetime)


def take(lifetime: int) -> EarlyRenewal | None:
    """The renewal ``begin`` started, if it runs with ``lifetime``; else (``run`` called
    without ``begin``, as the tests do) one started now."""
    global _started
    early, _started = _started, None
    if early is not None and early.lifetime == lifetime:
        return early
    if early is not None:
        early.stop()
    return keep_vips_through_restart(lifetime)
