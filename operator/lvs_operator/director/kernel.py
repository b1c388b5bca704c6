"""The agent's view of the kernel: ipvs.py plus connection counts and cached preparation.

``ipvs.IpvsKernel.read_table`` returns the table alone; draining (removing a quiesced
destination once it has no connections) also needs each destination's active connection
count, which the same destination dump carries. ``IpvsKernel.read`` here does that one dump
and returns both. ``prepare`` sets the
sysctls once and keeps the nftables masquerade table in step with the services that use
masquerade forwarding (only when the set of VIPs / real servers changed, so a steady state
runs no ``nft`` at all).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from . import ipvs
from .table import Change, DestKey, IpvsTable, ServiceEntry, ServiceKey

log = logging.getLogger("lvs_operator.director.kernel")


def _connections(nla: Any) -> int:
    """Active connections only: closed ones linger as inactive (TIME_WAIT, minutes) and
    need no draining; with expire_nodest_conn their leftovers are dropped cleanly."""
    return int(nla.get_attr("IPVS_DEST_ATTR_ACTIVE_CONNS") or 0)


class IpvsKernel:
    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._k = ipvs.IpvsKernel(netns)
        self._sysctls_done: set[bool] = set()
        self._snat: tuple[tuple[str, ...], tuple[str, ...]] | None = None

    def read(self) -> tuple[IpvsTable, Mapping[tuple[ServiceKey, DestKey], int]]:
        native = getattr(self._k, "read", None)
        if native is not None:  # ipvs.py reads the counters itself (its lean netlink path)
            table, counts = native()
            return table, {k: int(getattr(c, "active", c)) for k, c in counts.items()}
        raw = self._k._ipvs
        entries = []
        connections: dict[tuple[ServiceKey, DestKey], int] = {}
        for msg in raw.service("dump"):
            service = ipvs._service_from_nla(msg.get_attr("IPVS_CMD_ATTR_SERVICE"))
            if service is None:
                continue
            key = self._k._svc(ipvs._service_key_spec(service))
            dests = []
            for d in raw.dest("dump", service=key):
                nla = d.get_attr("IPVS_CMD_ATTR_DEST")
                dest = ipvs._dest_from_nla(nla)
                dests.append(dest)
                connections[(service.key, dest.key)] = _connections(nla)
            entries.append(ServiceEntry(service, tuple(dests)))
        return IpvsTable.of(entries), connections

    def apply(self, changes: list[Change]) -> None:
        self._k.apply(changes)

    def prepare(self, table: IpvsTable, masquerade_snat: bool) -> None:
        ipv6 = any(k.family == 6 for k in table)
        if ipv6 not in self._sysctls_done:
            try:
                changed = ipvs.ensure_sysctls(netns=self.netns, ipv6=ipv6)
            except ipvs.SysctlError as exc:
                # Not fatal: nodes often have them already (kube-proxy's IPVS mode sets
                # most); traffic that needs a missing one fails, and this says why. Once.
                changed = exc.changed
                log.error(str(exc), extra={"sysctls": exc.failed})
            if changed:
                log.info("sysctls set", extra={"sysctls": {k: v[1] for k, v in changed.items()}})
            self._sysctls_done.add(ipv6)
        if not masquerade_snat:
            return
        vips, dests = ipvs.masquerade_targets(table)
        wanted = (tuple(vips), tuple(dests))
        if wanted != self._snat:
            if ipvs.ensure_masquerade_snat(vips, dests, self.netns):
                log.info(
                    "nftables masquerade updated",
                    extra={"vips": list(vips), "real_servers": len(dests)},
                )
            self._snat = wanted

    def close(self) -> None:
        self._k.close()
