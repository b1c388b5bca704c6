"""The withdrawal brake: a converge that would remove many of the group's services at once
keeps them, for a while, and says so.

A mass withdrawal is usually a mistake upstream, not an intent: an emptied or narrowed
``--vip-ranges`` (the controller refuses everything), a GitOps tool deleting and re-creating
objects, a bad controller release. (A node-selector edit is not one: the controller moves a
VIP to another group only once that group has programmed it, and that withdrawal goes at
once.) Removing the services at once would drop every VIP and reset every
connection, and re-adding them later would not bring the connections back. So when more
than ``share`` of the services the last converge programmed (and at least ``minimum``)
would go at once, they stay — in IPVS and with their VIPs — and only a withdrawal still
wanted ``hold`` seconds later goes ahead (the confirmation is time: an intent persists, a
glitch does not). Changes to the services that stay, and new services, are applied as
usual. Think of kube-proxy refusing to flush on an empty endpoint list, or MetalLB keeping
announcements through a config it cannot load.

Pure: ``WithdrawalBrake.apply`` takes the desired state, the previous one and the time,
and returns what to program.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Set
from dataclasses import dataclass, field, replace

from .desired import Desired
from .table import IpvsTable, ServiceKey

log = logging.getLogger("lvs_operator.director.brake")

DEFAULT_SHARE = 0.5
DEFAULT_MINIMUM = 2
DEFAULT_HOLD = 60.0


@dataclass(frozen=True)
class BrakeConfig:
    share: float = DEFAULT_SHARE  # more than this share of the services at once is braked
    minimum: int = DEFAULT_MINIMUM  # ... and at least this many
    hold: float = DEFAULT_HOLD  # seconds a braked withdrawal waits; 0: no brake


@dataclass
class WithdrawalBrake:
    config: BrakeConfig = field(default_factory=BrakeConfig)
    held_since: dict[ServiceKey, float] = field(default_factory=dict)

    @property
    def held(self) -> frozenset[ServiceKey]:
        return frozenset(self.held_since)

    def next_release(self) -> float | None:
        """When the earliest held withdrawal may go ahead (None: nothing held)."""
        if not self.held_since:
            return None
        return min(self.held_since.values()) + self.config.hold

    def apply(
        self,
        want: Desired,
        previous: Desired | None,
        now: float,
        moved: Set[ServiceKey] = frozenset(),
    ) -> Desired:
        """``want``, with the services of ``previous`` it withdraws kept while braked.

        Not braked, and not counted: ``moved``, the services of VirtualServers the
        controller handed to another group (make-before-break: that group programmed them
        first), and services staged without their VIP (they carry no traffic here)."""
        cfg = self.config
        # the plain dicts' key views: a set difference in C, not two passes of 1,000 keys
        gone: set[ServiceKey] = (
            set(previous.table.entries.keys() - want.table.entries.keys())
            if previous is not None
            else set()
        )
        if previous is not None:
            gone = {
                k
                for k in gone
                if k not in moved and str(ipaddress.ip_address(k.address)) in previous.vips
            }
        # a service wanted again (or no longer braked) is forgotten
        self.held_since = {k: t for k, t in self.held_since.items() if k in gone}
        if previous is None or cfg.hold <= 0:
            return want
        braked = len(gone) >= cfg.minimum and len(gone) > cfg.share * len(previous.table)
        if not braked:
            self.held_since.clear()
            return want
        fresh = sorted(k for k in gone if k not in self.held_since)
        for key in fresh:
            self.held_since[key] = now
        keep = {k for k, since in self.held_since.items() if now - since < cfg.hold}
        if fresh:
            log.warning(
                "withdrawal held back: %d of the %d services programmed would go at once; they "
                "stay, with their VIPs, for up to %.0fs and go then if still unwanted (an "
                "emptied --vip-ranges, a node-selector edit or a delete-and-recreate is the "
                "usual cause)",
                len(gone),
                len(previous.table),
                cfg.hold,
                extra={"services": [str(k) for k in fresh[:50]]},
            )
        released = gone - keep
        if released:
            log.warning(
                "withdrawal going ahead: still wanted after %.0fs",
                cfg.hold,
                extra={"services": sorted(str(k) for k in released)[:50]},
            )
            for key in released:
                self.held_since.pop(key, None)
        if not keep:
            return want
        table = IpvsTable.of([*want.table.values(), *(previous.table[k] for k in keep)])
        kept_vips = {str(ipaddress.ip_address(k.address)) for k in keep}
        vips = dict(want.vips)
        for vip in kept_vips:
            vips.setdefault(vip, previous.vips.get(vip))
        quiesced = want.quiesced | {q for q in previous.quiesced if q[0] in keep}
        return replace(want, table=table, vips=vips, quiesced=frozenset(quiesced))
