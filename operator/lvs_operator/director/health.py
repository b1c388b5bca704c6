"""Health checks of real servers (a pool's ``spec.healthCheck``): quiesce failing members.

Every director checks the destinations of its own table (so a standby is as current as the
leader when it takes over). A check is ``tcp`` (the connection opens) or ``http`` (``GET path``
with an optional ``Host`` header answers ``expectedStatus``), every ``intervalSeconds``, each
bounded by ``timeoutSeconds``. A target turns unhealthy after ``fallThreshold`` consecutive
failures and healthy again after ``riseThreshold`` consecutive successes; it starts healthy
(a new agent must not quiesce a whole pool before its first rounds). An unhealthy destination
gets weight 0: no new connections, established ones continue.

The threshold logic (``step``) and the table edit (``apply_health``) are pure and unit-tested;
``HealthChecker`` runs one asyncio task per target.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from lvs_operator.api.realserverpool import HealthCheck, HealthCheckType

from .table import DestKey, IpvsTable, ServiceEntry, ServiceKey

log = logging.getLogger("lvs_operator.director.health")

TargetKey = tuple[str, int, HealthCheck]  # (address, port, check)


@dataclass(frozen=True)
class State:
    healthy: bool = True
    successes: int = 0
    failures: int = 0


def step(state: State, ok: bool, rise: int, fall: int) -> State:
    """The state after one probe result."""
    if ok:
        successes = state.successes + 1
        healthy = state.healthy or successes >= rise
        return State(healthy, successes, 0)
    failures = state.failures + 1
    healthy = state.healthy and failures < fall
    return State(healthy, 0, failures)


def targets_for(
    table: IpvsTable, checks: Mapping[ServiceKey, HealthCheck]
) -> dict[tuple[ServiceKey, DestKey], TargetKey]:
    """Which probe target decides each destination: its address, the check's port or else the
    destination's port."""
    out: dict[tuple[ServiceKey, DestKey], TargetKey] = {}
    for key, entry in table.items():
        check = checks.get(key)
        if check is None:
            continue
        for dest in entry.destinations:
            out[(key, dest.key)] = (dest.address, check.port or dest.port, check)
    return out


def apply_health(
    table: IpvsTable,
    targets: Mapping[tuple[ServiceKey, DestKey], TargetKey],
    unhealthy: set[TargetKey] | frozenset[TargetKey],
) -> IpvsTable:
    """``table`` with every destination whose target is unhealthy at weight 0."""
    if not unhealthy:
        return table
    entries = []
    for key, entry in table.items():
        dests = tuple(
            replace(d, weight=0) if targets.get((key, d.key)) in unhealthy else d
            for d in entry.destinations
        )
        entries.append(ServiceEntry(entry.service, dests))
    return IpvsTable.of(entries)


async def probe(address: str, port: int, check: HealthCheck) -> bool:
    """One check; True when healthy."""
    writer = None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address, port), check.timeout_seconds
        )
        if check.type is HealthCheckType.TCP:
            return True
        host = check.host or (f"[{address}]" if ":" in address else address)
        request = (
            f"GET {check.http_path} HTTP/1.0\r\nHost: {host}\r\n"
            "User-Agent: lvs-operator-health\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), check.timeout_seconds)
        parts = line.decode("latin-1").split()
        return len(parts) >= 2 and parts[1] == str(check.http_status)
    except (OSError, TimeoutError, ValueError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class HealthChecker:
    """Runs the probes; ``on_change()`` is called when a target's health flips."""

    def __init__(
        self,
        on_change: Callable[[], None],
        prober: Callable[[str, int, HealthCheck], object] = probe,
    ) -> None:
        self.on_change = on_change
        self.prober = prober
        self.states: dict[TargetKey, State] = {}
        self._tasks: dict[TargetKey, asyncio.Task[None]] = {}

    def unhealthy(self) -> frozenset[TargetKey]:
        return frozenset(k for k, s in self.states.items() if not s.healthy)

    def update(self, targets: set[TargetKey]) -> None:
        """Probe exactly ``targets`` from now on."""
        for key in list(self._tasks):
            if key not in targets:
                self._tasks.pop(key).cancel()
                self.states.pop(key, None)
        for key in targets:
            if key not in self._tasks:
                self.states.setdefault(key, State())
                self._tasks[key] = asyncio.create_task(self._run(key))

    async def _run(self, key: TargetKey) -> None:
        address, port, check = key
        while True:
            ok = bool(await self.prober(address, port, check))  # type: ignore[misc]
            before = self.states.get(key, State())
            after = step(before, ok, check.rise_threshold, check.fall_threshold)
            self.states[key] = after
            if after.healthy != before.healthy:
                log.info(
                    "real server %s",
                    "healthy again" if after.healthy else "failing: quiesced",
                    extra={"real_server": f"{address}:{port}", "check": str(check.type)},
                )
                self.on_change()
            await asyncio.sleep(check.interval_seconds)

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
