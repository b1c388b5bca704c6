"""Health checks: thresholds, the table edit, real probes against local servers."""

from __future__ import annotations

import asyncio

from lvs_operator.api.realserverpool import HealthCheck, HealthCheckType
from lvs_operator.director.health import (
    HealthChecker,
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
    targets = targets_for(table, {svc.key: check})
    assert set(targets.values()) == {("10.20.0.21", 9000, check), ("10.20.0.22", 9000, check)}
    out = apply_health(table, targets, {("10.20.0.22", 9000, check)})
    assert [d.weight for d in out[svc.key].destinations] == [2, 0]
    assert targets_for(table, {}) == {}


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
        assert await probe("127.0.0.1", ok_port, tcp)
        assert await probe("127.0.0.1", ok_port, http)
        assert not await probe("127.0.0.1", bad_port, http)
        assert await probe("127.0.0.1", bad_port, HealthCheck(
            type=HealthCheckType.HTTP, expected_status=503, timeout_seconds=1))  # fmt: skip
    finally:
        ok.close()
        bad.close()
    assert not await probe("127.0.0.1", ok_port, tcp)  # closed: refused


async def test_checker_reports_flips() -> None:
    results = {"10.0.0.1": False, "10.0.0.2": True}
    changes: list[int] = []

    async def prober(address: str, port: int, check: HealthCheck) -> bool:
        return results[address]

    checker = HealthChecker(lambda: changes.append(1), prober)
    check = HealthCheck(interval_seconds=1, fall_threshold=1, rise_threshold=1)
    checker.update({("10.0.0.1", 80, check), ("10.0.0.2", 80, check)})
    await asyncio.sleep(0.05)
    assert checker.unhealthy() == {("10.0.0.1", 80, check)}
    assert changes == [1]
    checker.update({("10.0.0.2", 80, check)})
    assert checker.unhealthy() == frozenset()
    await checker.close()
