"""Health checks: thresholds, the table edit, real probes against local servers."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from lvs_operator.api.realserverpool import HealthCheck, HealthCheckType
from lvs_operator.director.health import (
    HealthChecker,
    Probe,
    State,
    apply_health,
    http_request,
    probe,
    safe_http_fields,
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


def test_only_services_with_an_unhealthy_destination_are_rebuilt() -> None:
    """The others stay the very entries of the table (the diff skips identical entries)."""
    web = IpvsService("10.10.0.100", 80, Protocol.TCP, "rr")
    api = IpvsService("10.10.0.101", 80, Protocol.TCP, "rr")
    table = IpvsTable.of([(web, [IpvsDestination("10.20.0.21", 8080, 2)]),
                          (api, [IpvsDestination("10.20.0.31", 8080, 2),
                                 IpvsDestination("10.20.0.32", 8080, 2)])])  # fmt: skip
    check = HealthCheck(port=9000)
    targets, _ = targets_for(table, {web.key: check, api.key: check})
    out = apply_health(table, targets, {Probe("10.20.0.32", 9000, HealthCheckType.TCP)})
    assert out[web.key] is table[web.key]
    assert [d.weight for d in out[api.key].destinations] == [2, 0]
    assert list(out) == list(table)


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


# --- never a header injection ------------------------------------------------------------------

UNSAFE_PATHS = ("/h\r\nX-Injected: 1", "/h\n", "/h\r", "/a b", "/\x00", "h", "/caf\u00e9")
UNSAFE_HOSTS = ("web\r\nX-Injected: 1", "web\n", "a b", "web/x", "")


def _http(**kw: Any) -> HealthCheck:
    return HealthCheck(type=HealthCheckType.HTTP, timeout_seconds=1, **kw)


def test_http_request_is_plain_ascii_with_the_checks_path_and_host() -> None:
    check = _http(path="/status?full=1&x=%20", host="www.example.com:8080")
    assert http_request(Probe.of("10.0.0.1", 80, check)) == (
        b"GET /status?full=1&x=%20 HTTP/1.0\r\nHost: www.example.com:8080\r\n"
        b"User-Agent: lvs-operator-health\r\nConnection: close\r\n\r\n"
    )
    # Without a host: the member's address (IPv6 in brackets); without a path: "/".
    request = http_request(Probe.of("2001:db8::7", 80, _http()))
    assert request.startswith(b"GET / HTTP/1.0\r\nHost: [2001:db8::7]\r\n")


def test_http_request_refuses_what_would_inject_a_header() -> None:
    for path in UNSAFE_PATHS:
        with pytest.raises(ValueError):
            http_request(Probe.of("10.0.0.1", 80, _http(path=path)))
    for host in UNSAFE_HOSTS:
        with pytest.raises(ValueError):
            http_request(Probe.of("10.0.0.1", 80, _http(host=host)))
    with pytest.raises(ValueError):  # the address itself, when it is the Host
        http_request(Probe("10.0.0.1\r\nX: y", 80, HealthCheckType.HTTP, "/", None, 200))


async def test_an_unsafe_probe_sends_nothing() -> None:
    received: list[bytes] = []
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        received.append(await reader.read(65536))
        writer.write(b"HTTP/1.0 200 OK\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        for path in UNSAFE_PATHS:
            assert not await probe(Probe.of("127.0.0.1", port, _http(path=path)), 1)
        for host in UNSAFE_HOSTS:
            assert not await probe(Probe.of("127.0.0.1", port, _http(host=host)), 1)
        await asyncio.sleep(0.05)
        assert connections == [] and received == []
        # A safe one goes through, and what arrives has exactly the request's lines.
        assert await probe(Probe.of("127.0.0.1", port, _http(path="/ok", host="web")), 1)
        await asyncio.sleep(0.05)
        (request,) = received
        assert request.split(b"\r\n")[:2] == [b"GET /ok HTTP/1.0", b"Host: web"]
        assert b"X-Injected" not in request
    finally:
        server.close()


def test_targets_skip_an_unsafe_check() -> None:
    svc = IpvsService("10.10.0.100", 80, Protocol.TCP, "rr")
    table = IpvsTable.of([(svc, [IpvsDestination("10.20.0.21", 8080, 2)])])
    for check in (_http(path="/h\r\nX: 1"), _http(host="a\r\nX: 1")):
        assert safe_http_fields(check) is False
        decides, timings = targets_for(table, {svc.key: check})
        assert decides == {} and timings == {}
        # Nothing probed, nothing quiesced: the destination keeps its weight.
        assert apply_health(table, decides, frozenset()) == table
    assert safe_http_fields(_http(path="/h", host="[2001:db8::1]:80"))
    assert safe_http_fields(HealthCheck())
