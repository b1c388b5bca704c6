"""Health checks: thresholds, the table edit, real probes against local servers."""

from __future__ import annotations

import asyncio
import dataclasses

from lvs_operator.api.realserverpool import HealthCheck, HealthCheckType
from lvs_operator.director.health import (
    HealthChecker,
    Probe,
    State,
    apply_health,
    probe,
    step,
    targets_for,
)
from lvs_operator.director.table import IpvsDestination, IpvsService, IpvsTable, Protocol


def test_fall_and_rise_thresholds() -> None:
    s = State()
    for _ in range(2):
        s = step(s, False, rise=2, fall=3)
        assert s.healthy
    s = step(s, False, rise=2, fall=3)
    assert not s.healthy
    s = step(s, True, rise=2, fall=3)
    assert not s.healthy
    s = step(s, True, rise=2, fall=3)
    assert s.healthy
    s = step(step(s, False, 2, 3), True, 2, 3)  # a single failure resets on success
    assert s.healthy and s.failures == 0


def test_unhealthy_destinations_get_weight_zero() -> None:
    svc = IpvsService("10.10.0.100", 80, Protocol.TCP, "rr")
    table = IpvsTable.of([(svc, [IpvsDestination("10.20.0.21", 8080, 2),
                                 IpvsDestination("10.20.0.22", 8080, 2)])])  # fmt: skip
    check = HealthCheck(port=9000)
    targets, timings = targets_for(table, {svc.key: check})
    tcp = HealthCheckType.TCP
    assert set(targets.values()) == {Probe("10.20.0.21", 9000, tcp), Probe("10.20.0.22", 9000, tcp)}
    assert set(timings.values()) == {check}
    out = apply_health(table, targets, {Probe("10.20.0.22", 9000, tcp)})
    assert [d.weight for d in out[svc.key].destinations] == [2, 0]
    assert targets_for(table, {}) == ({}, {})


def test_a_probe_is_what_is_asked_not_how_often() -> None:
    http = HealthCheck(type=HealthCheckType.HTTP, path="/h", host="web", expected_status=204)
    slower = HealthCheck(type=HealthCheckType.HTTP, path="/h", host="web", expected_status=204,
                         interval_seconds=60, timeout_seconds=9, rise_threshold=5,
                         fall_threshold=7)  # fmt: skip
    assert Probe.of("10.0.0.1", 80, http) == Probe.of("10.0.0.1", 80, slower)
    assert Probe.of("10.0.0.1", 80, http) == Probe(
        "10.0.0.1", 80, HealthCheckType.HTTP, "/h", "web", 204)  # fmt: skip
    for other in (
        HealthCheck(type=HealthCheckType.HTTP, path="/other", host="web", expected_status=204),
        HealthCheck(type=HealthCheckType.HTTP, path="/h", host="other", expected_status=204),
        HealthCheck(type=HealthCheckType.HTTP, path="/h", host="web", expected_status=200),
        HealthCheck(type=HealthCheckType.TCP),
    ):
        assert Probe.of("10.0.0.1", 80, other) != Probe.of("10.0.0.1", 80, http)
    assert Probe.of("10.0.0.2", 80, http) != Probe.of("10.0.0.1", 80, http)
    assert Probe.of("10.0.0.1", 81, http) != Probe.of("10.0.0.1", 80, http)


async def _server(status: bytes) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"HTTP/1.0 " + status + b"\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_probes_tcp_and_http() -> None:
    ok, ok_port = await _server(b"200 OK")
    bad, bad_port = await _server(b"503 Service Unavailable")
    try:
        tcp = HealthCheck(type=HealthCheckType.TCP, timeout_seconds=1)
        http = HealthCheck(type=HealthCheckType.HTTP, path="/health", timeout_seconds=1)
        assert await probe(Probe.of("127.0.0.1", ok_port, tcp), 1)
        assert await probe(Probe.of("127.0.0.1", ok_port, http), 1)
        assert not await probe(Probe.of("127.0.0.1", bad_port, http), 1)
        assert await probe(Probe.of("127.0.0.1", bad_port, HealthCheck(
            type=HealthCheckType.HTTP, expected_status=503, timeout_seconds=1)), 1)  # fmt: skip
    finally:
        ok.close()
        bad.close()
    assert not await probe(Probe.of("127.0.0.1", ok_port, tcp), 1)  # closed: refused


async def test_checker_reports_flips() -> None:
    results = {"10.0.0.1": False, "10.0.0.2": True}
    changes: list[int] = []

    async def prober(target: Probe, timeout: float) -> bool:
        return results[target.address]

    checker = HealthChecker(lambda: changes.append(1), prober)
    check = HealthCheck(interval_seconds=1, fall_threshold=1, rise_threshold=1)
    one, two = Probe.of("10.0.0.1", 80, check), Probe.of("10.0.0.2", 80, check)
    checker.update({one: check, two: check})
    await asyncio.sleep(0.05)
    assert checker.unhealthy() == {one}
    assert changes == [1]
    checker.update({two: check})
    assert checker.unhealthy() == frozenset()
    await checker.close()


async def test_an_interval_edit_keeps_a_failing_target_quiesced() -> None:
    """The state belongs to the probe: a new interval (or threshold, or timeout) is read by
    the next round, and the failing server stays at weight 0 until it rises."""
    svc = IpvsService("10.10.0.100", 80, Protocol.TCP, "rr")
    table = IpvsTable.of([(svc, [IpvsDestination("10.20.0.21", 8080, 2),
                                 IpvsDestination("10.20.0.22", 8080, 2)])])  # fmt: skip
    results = {"10.20.0.21": True, "10.20.0.22": False}
    timeouts: list[float] = []
    changes: list[int] = []

    def weights(out: IpvsTable) -> list[int]:
        return [d.weight for d in out[svc.key].destinations]

    async def prober(target: Probe, timeout: float) -> bool:
        timeouts.append(timeout)
        return results[target.address]

    checker = HealthChecker(lambda: changes.append(1), prober)
    check = HealthCheck(interval_seconds=1, timeout_seconds=1, fall_threshold=1,
                        rise_threshold=1)  # fmt: skip
    targets, timings = targets_for(table, {svc.key: check})
    checker.update(timings)
    await asyncio.sleep(0.05)
    assert weights(apply_health(table, targets, checker.unhealthy())) == [2, 0]

    edited = dataclasses.replace(check, interval_seconds=30, timeout_seconds=3,
                                 rise_threshold=2)  # fmt: skip
    targets, timings = targets_for(table, {svc.key: edited})
    checker.update(timings)
    assert set(checker.checks.values()) == {edited}
    assert weights(apply_health(table, targets, checker.unhealthy())) == [2, 0]  # still quiesced
    assert changes == [1]
    results["10.20.0.22"] = True
    await asyncio.sleep(1.1)  # the round after the old interval, with the new timings
    assert timeouts[-1] == 3
    assert checker.unhealthy() == {Probe("10.20.0.22", 8080, HealthCheckType.TCP)}  # rise 2
    await checker.close()
