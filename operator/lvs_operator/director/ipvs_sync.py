"""IPVS convergence: desired table (desired.py) -> health (health.py) -> drain -> diff
against the kernel (table.py) -> apply.

Every director of a group programs IPVS (so a standby is ready to forward the moment it
takes the VIP). The kernel is converged by diff, never flushed: a restarted agent adopts the
services on its group's VIPs, and only services on VIPs it owns are ever touched (never
kube-proxy's or hand-made ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Mapping, Set
from typing import Protocol

from . import desired as desired_mod
from .health import HealthChecker, apply_health, targets_for
from .lanes import Lane
from .metrics import Metrics
from .table import Change, DestKey, IpvsTable, ServiceKey, diff, owned_by_addresses
from .watches import Watches

log = logging.getLogger("lvs_operator.director.ipvs_sync")

Connections = Mapping[tuple[ServiceKey, DestKey], int]


class Kernel(Protocol):
    """What convergence needs from the kernel (kernel/); blocking calls, run on a lane."""

    def read(self) -> tuple[IpvsTable, Connections | None]: ...

    def apply(self, changes: list[Change]) -> None: ...

    def prepare(self, table: IpvsTable, masquerade_snat: bool) -> None:
        """Sysctls and the nftables masquerade rule the table's forwarding methods need."""
        ...


class IpvsSync:
    def __init__(
        self,
        kernel: Kernel,
        lane: Lane,
        watches: Watches,
        health: HealthChecker,
        metrics: Metrics,
        group: str,
        masquerade_snat: bool,
    ) -> None:
        self.kernel = kernel
        self.lane = lane
        self.watches = watches
        self.health = health
        self.metrics = metrics
        self.group = group
        self.masquerade_snat = masquerade_snat
        self.desired: desired_mod.Desired | None = None  # of the last converge that succeeded
        self.ready = False  # converged once
        self._reported: set[tuple[str, str, str]] = set()

    def want(self) -> desired_mod.Desired:
        """The desired table from the caches (problems logged once each)."""
        want = desired_mod.build(self.watches.virtual_servers.values(), self.watches.pools)
        for problem in want.problems:
            key = (problem.namespace, problem.name, problem.message)
            if key not in self._reported:
                self._reported.add(key)
                log.warning(problem.message, extra={"vs": f"{problem.namespace}/{problem.name}"})
        return want

    async def converge(self, want: desired_mod.Desired, owned: Set[str]) -> None:
        """Make the kernel's services on the ``owned`` VIPs match ``want``."""
        t0 = time.monotonic()
        want = self._with_health(want)
        actual, connections = await self.lane.run(self.kernel.read)
        table = desired_mod.drain(want, actual, connections)
        changes = diff(table, actual, owned_by_addresses(owned))
        await asyncio.to_thread(self.kernel.prepare, table, self.masquerade_snat)
        if changes:
            await self.lane.run(self.kernel.apply, changes)
            for change in changes:
                self.metrics.changes.labels(group=self.group, op=str(change.op)).inc()
            log.info(
                "IPVS converged: %d change(s)",
                len(changes),
                extra={"changes": [str(c) for c in changes[:50]], "group": self.group},
            )
        self.desired = want
        self.metrics.services.set(len(table))
        self.metrics.destinations.set(table.dest_count())
        self.metrics.quiesced.set(
            sum(1 for k, e in table.items() for d in e.destinations if (k, d.key) in want.quiesced)
        )
        self.metrics.converge_seconds.observe(time.monotonic() - t0)
        if len(changes) > 100 or len(table) > 100 or not self.ready:
            trim_memory()  # the peak of a big read / converge back to the system
        if not self.ready:
            self.ready = True
            log.info(
                "ready: kernel converged",
                extra={"services": len(table), "destinations": table.dest_count()},
            )

    def _with_health(self, want: desired_mod.Desired) -> desired_mod.Desired:
        """Start/stop probes for the pools with a healthCheck; quiesce failing members."""
        decides, timings = targets_for(want.table, self.watches.health_checks())
        self.health.update(timings)
        table = apply_health(want.table, decides, self.health.unhealthy())
        return dataclasses.replace(want, table=table)

    @property
    def drain_pending(self) -> bool:
        return bool(self.desired and self.desired.quiesced)


def programmed(want: desired_mod.Desired) -> str:
    """The ``lvs.io/programmed`` annotation: the generation of each VirtualServer programmed."""
    return json.dumps(dict(sorted(want.generations.items())))


def trim_memory() -> None:
    """Collect, then hand freed heap back to the OS (glibc): RSS after a big converge or
    list is otherwise its peak for the process's lifetime."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)
