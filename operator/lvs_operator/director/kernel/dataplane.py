"""What the agent uses of the kernel (ipvs_sync.py's ``Kernel``): the IPVS table with each
destination's active connection count (draining needs it), apply, and ``prepare``.

``prepare`` keeps the nftables masquerade table in step with the services that use
masquerade forwarding (only when the set of VIPs / real servers changed, so a steady state
runs no ``nft`` at all): the first time, and after a failed update, the whole table is listed
and written again where it differs; otherwise only the set elements that changed are added
and deleted. ``check_node_settings`` reads the node's sysctls (node_settings.py)
and corrects a wrong one where ``/proc/sys`` is writable (not in the shipped pod).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Set

from lvs_operator.director import node_settings
from lvs_operator.director.table import (
    Change,
    DestKey,
    IpvsDestination,
    IpvsService,
    IpvsTable,
    ServiceKey,
)

from . import nft, sysctl
from .ipvs import IpvsKernel
from .ipvs_netlink import SyncDaemon

log = logging.getLogger("lvs_operator.director.kernel")


class DataPlane:
    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._ipvs = IpvsKernel(netns)
        # whole-table reads on a socket of their own: they run on their own lane beside the
        # writes (ipvs_sync.py); the lock keeps the socket to one reader at a time
        self._reader = IpvsKernel(netns)
        self._reader_lock = threading.Lock()
        # what nftables holds since the last write (the sets' elements); None until a whole
        # write (ensure_masquerade_snat) has succeeded, and again after a failed one
        self._snat: nft.SnatSets | None = None
        # the masquerade targets of the tables prepared, kept per service
        self._targets = nft.MasqueradeTargets()

    def read(
        self, between: Callable[[], object] | None = None
    ) -> tuple[IpvsTable, Mapping[tuple[ServiceKey, DestKey], int]]:
        """Active connections only: closed ones linger as inactive (TIME_WAIT, minutes) and
        need no draining; with expire_nodest_conn their leftovers are dropped cleanly."""
        with self._reader_lock:
            table, counts = self._reader.read(between)
        return table, {k: c.active for k, c in counts.items()}

    def read_services(self) -> list[IpvsService]:
        with self._reader_lock:
            return self._reader.read_services()

    def read_destinations(
        self, services: Iterable[IpvsService]
    ) -> tuple[dict[ServiceKey, tuple[IpvsDestination, ...]], Mapping[tuple[ServiceKey, DestKey],
                                                                      int]]:  # fmt: skip
        """``read`` for some services' destinations only (active connections, as there)."""
        dests, counts = self._ipvs.read_destinations(services)
        return dests, {k: c.active for k, c in counts.items()}

    def apply(self, changes: list[Change]) -> None:
        self._ipvs.apply(changes)

    def daemons(self) -> list[SyncDaemon]:
        return self._ipvs.daemons()

    def start_daemon(self, daemon: SyncDaemon) -> int:
        return self._ipvs.start_daemon(daemon)

    def stop_daemon(self, state: int) -> int:
        return self._ipvs.stop_daemon(state)

    def prepare(
        self, table: IpvsTable, masquerade_snat: bool, vip_sourced: Set[ServiceKey] = frozenset()
    ) -> None:
        if not masquerade_snat:
            return
        changed = self._targets.update(table, vip_sourced)
        if self._snat is not None and not changed:
            return  # nothing changed: no nft at all
        sets = self._targets.snat_sets()
        try:
            self._write_snat(sets)
        except BaseException:
            self._snat = None  # the table is unknown now: the next converge writes it whole
            raise
        self._snat = sets

    def _write_snat(self, sets: nft.SnatSets) -> None:
        if self._snat is not None:
            written = self._snat
            try:
                change = nft.update_masquerade_snat(written, sets, self.netns)
            except nft.NftError as exc:
                # the table is not what was written (deleted, changed by hand): repaired below
                log.warning(
                    "nftables masquerade update failed, writing the table whole",
                    extra={"error": str(exc)},
                )
            else:
                if change.added or change.removed:
                    log.info(
                        "nftables masquerade updated",
                        extra={"added": change.added, "removed": change.removed,
                               **self._snat_counts(sets)},
                    )  # fmt: skip
                return
        vips, dests, sourced = self._targets.targets()
        if nft.ensure_masquerade_snat(vips, dests, self.netns, sourced):
            log.info(
                "nftables masquerade updated", extra={"rewritten": True, **self._snat_counts(sets)}
            )

    @staticmethod
    def _snat_counts(sets: nft.SnatSets) -> dict[str, int]:
        """The sizes the log gives (10,000 real servers are not listed in it)."""
        return {
            "vips": len(sets.vips4) + len(sets.vips6),
            "real_servers": len(sets.dests4) + len(sets.dests6),
            "vip_sourced": len(sets.vipsrc4) + len(sets.vipsrc6),
        }

    def check_node_settings(self, ipv6: bool) -> node_settings.Outcome:
        return sysctl.enforce_node_settings(self.netns, ipv6=ipv6, write=True)

    def close(self) -> None:
        self._ipvs.close()
        self._reader.close()
