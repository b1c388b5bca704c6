"""Health checks of real servers (a pool's ``spec.healthCheck``): quiesce failing members.

Every director checks the destinations of its own table (so a standby is as current as the
leader when it takes over). A check is ``tcp`` (the connection opens) or ``http`` (``GET path``
with an optional ``Host`` header answers ``expectedStatus``), every ``intervalSeconds``, each
bounded by ``timeoutSeconds``. A target turns unhealthy after ``fallThreshold`` consecutive
failures and healthy again after ``riseThreshold`` consecutive successes; it starts healthy
(a new agent must not quiesce a whole pool before its first rounds). An unhealthy destination
gets weight 0: no new connections, established ones continue.

A target's state belongs to what is probed (``Probe``: address, port, type, path, host,
expected status), not to the whole check: editing ``intervalSeconds`` or a threshold keeps a
failing target quiesced; the probe loop reads the timings from the current check each round.

The threshold logic (``step``) and the table edit (``apply_health``) are pure and unit-tested;
``HealthChecker`` runs one asyncio task per target.

The CRD refuses an http check whose ``path`` or ``host`` holds anything outside RFC 3986's
characters (so never a CR/LF); in depth, the agent drops such a check (``watches.py`` logs it
naming the pool), ``targets_for`` probes nothing for it, and ``http_request`` refuses to
encode it: no header is ever injected into a probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import assert_never

from lvs_operator.api import network
from lvs_operator.api.realserverpool import HealthCheck, HealthCheckType

from .table import DestKey, IpvsTable, ServiceEntry, ServiceKey

log = logging.getLogger("lvs_operator.director.health")


@dataclass(frozen=True)
class Probe:
    """What one probe asks: the identity of a target's health state."""

    address: str
    port: int
    type: HealthCheckType
    path: str | None = None  # http only, as sent
    host: str | None = None  # http only; None: the address
    expected_status: int | None = None  # http only

    @classmethod
    def of(cls, address: str, port: int, check: HealthCheck) -> Probe:
        if check.type is HealthCheckType.TCP:
            return cls(address, port, check.type)
        return cls(address, port, check.type, check.http_path, check.host, check.http_status)


DestRef = tuple[ServiceKey, DestKey]


def safe_http_fields(check: HealthCheck) -> bool:
    """Whether an http check's path and host may go into a request as they are."""
    if check.type is not HealthCheckType.HTTP:
        return True
    return network.is_http_path(check.http_path) and (
        check.host is None or network.is_http_host(check.host)
    )


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
) -> tuple[dict[DestRef, Probe], dict[Probe, HealthCheck]]:
    """Which probe decides each destination (its address, the check's port or else the
    destination's port), and the check whose timings each probe follows (the last service's
    when several share a probe)."""
    decides: dict[DestRef, Probe] = {}
    timings: dict[Probe, HealthCheck] = {}
    if not checks:
        return decides, timings  # the usual case: no pass over 1,000s of services
    for key, entry in table.entries.items():
        check = checks.get(key)
        if check is None or not safe_http_fields(check):
            continue  # an unsafe check probes nothing (watches.py logged it)
        for dest in entry.destinations:
            target = Probe.of(dest.address, check.port or dest.port, check)
            decides[(key, dest.key)] = target
            timings[target] = check
    return decides, timings


def apply_health(
    table: IpvsTable,
    targets: Mapping[DestRef, Probe],
    unhealthy: set[Probe] | frozenset[Probe],
) -> IpvsTable:
    """``table`` with every destination whose target is unhealthy at weight 0."""
    if not unhealthy:
        return table
    entries = dict(table.entries)
    for (key, dest_key), target in targets.items():
        if target not in unhealthy or key not in entries:
            continue
        entry = entries[key]
        dests = tuple(
            replace(d, weight=0) if d.key == dest_key and d.weight else d
            for d in entry.destinations
        )
        if dests != entry.destinations:
            entries[key] = ServiceEntry(entry.service, dests)
    # the services without an unhealthy destination stay the very entries of ``table``
    # (the diff skips them), in its order
    return IpvsTable(entries)


async def probe(target: Probe, timeout: float) -> bool:
    """One probe, each step bounded by ``timeout`` seconds; True when healthy."""
    writer = None
    try:
        # Built before connecting: a request that cannot be sent safely is never started.
        request = http_request(target) if target.type is HealthCheckType.HTTP else b""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(target.address, target.port), timeout
        )
        match target.type:
            case HealthCheckType.TCP:
                return True
            case HealthCheckType.HTTP:
                return await _http_status_is(target, request, reader, writer, timeout)
            case unknown:  # a new type must say here how it probes (mypy checks)
                assert_never(unknown)
    except (OSError, TimeoutError, ValueError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def http_request(target: Probe) -> bytes:
    """The GET request of an http probe, in ASCII. ValueError when the path or the Host
    header would hold anything outside RFC 3986's characters (a CR/LF above all)."""
    path = target.path or "/"
    if not network.is_http_path(path):
        raise ValueError(f"refusing to send http health check path {path!r}")
    if target.host is not None:
        if not network.is_http_host(target.host):
            raise ValueError(f"refusing to send http health check host {target.host!r}")
        host = target.host
    else:
        address = network.canonical_ip(target.address)  # ValueError unless an address
        host = f"[{address}]" if ":" in address else address
    return (
        f"GET {path} HTTP/1.0\r\nHost: {host}\r\n"
        "User-Agent: lvs-operator-health\r\nConnection: close\r\n\r\n"
    ).encode("ascii")


async def _http_status_is(
    target: Probe,
    request: bytes,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    timeout: float,
) -> bool:
    writer.write(request)
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), timeout)
    parts = line.decode("latin-1").split()
    return len(parts) >= 2 and parts[1] == str(target.expected_status)


Prober = Callable[[Probe, float], Awaitable[bool]]


class HealthChecker:
    """Runs the probes; ``on_change()`` is called when a target's health flips."""

    def __init__(self, on_change: Callable[[], None], prober: Prober = probe) -> None:
        self.on_change = on_change
        # on_flip(target, healthy): told of each flip too (the agent posts an Event)
        self.on_flip: Callable[[Probe, bool], None] | None = None
        self.prober = prober
        self.states: dict[Probe, State] = {}
        self.checks: dict[Probe, HealthCheck] = {}  # the timings each probe follows now
        self._tasks: dict[Probe, asyncio.Task[None]] = {}

    def unhealthy(self) -> frozenset[Probe]:
        return frozenset(k for k, s in self.states.items() if not s.healthy)

    def update(self, targets: Mapping[Probe, HealthCheck]) -> None:
        """Probe exactly ``targets`` from now on, each with its check's timings."""
        for key in list(self._tasks):
            if key not in targets:
                self._tasks.pop(key).cancel()
                self.states.pop(key, None)
                self.checks.pop(key, None)
        self.checks.update(targets)
        for key in targets:
            if key not in self._tasks:
                self.states.setdefault(key, State())
                self._tasks[key] = asyncio.create_task(self._run(key))

    async def _run(self, key: Probe) -> None:
        while True:
            check = self.checks[key]
            ok = bool(await self.prober(key, check.timeout_seconds))
            check = self.checks.get(key, check)  # edited while probing: the current one
            before = self.states.get(key, State())
            after = step(before, ok, check.rise_threshold, check.fall_threshold)
            self.states[key] = after
            if after.healthy != before.healthy:
                log.info(
                    "real server %s",
                    "healthy again" if after.healthy else "failing: quiesced",
                    extra={"real_server": f"{key.address}:{key.port}", "check": str(key.type)},
                )
                if self.on_flip is not None:
                    try:
                        self.on_flip(key, after.healthy)
                    except Exception:  # an Event is a bonus: the quiesce goes ahead
                        log.exception("reporting a health change failed")
                self.on_change()
            await asyncio.sleep(check.interval_seconds)

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
