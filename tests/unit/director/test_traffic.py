"""Traffic metrics from the kernel's IPVS counters (traffic.py, kernel/ipvs_netlink.py)."""

from __future__ import annotations

import logging
import struct
import threading
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from lvs_operator.director.kernel import ipvs_netlink as nl
from lvs_operator.director.kernel.ipvs import DestinationStats, ServiceStats
from lvs_operator.director.kernel.netlink import nested, nla, parse_attrs
from lvs_operator.director.table import DestKey, Protocol, ServiceKey
from lvs_operator.director.traffic import Reading, TrafficCollector, TrafficPoller

from .fakes import FakeStatsReader

WEB = ServiceKey(Protocol.TCP, "10.10.0.100", 80)
OTHER = ServiceKey(Protocol.TCP, "10.10.0.200", 80)  # not the group's


def u64(v: int) -> bytes:
    return struct.pack("=Q", v)


def u32(v: int) -> bytes:
    return struct.pack("=I", v)


def test_64_bit_counters_are_read_where_the_kernel_sends_them() -> None:
    stats64 = nested(nl.STATS64, nla(nl.STATS_CONNS, u64(7)), nla(nl.STATS_INPKTS, u64(2**40)),
                     nla(nl.STATS_OUTPKTS, u64(30)), nla(nl.STATS_INBYTES, u64(1000)),
                     nla(nl.STATS_OUTBYTES, u64(5000)))  # fmt: skip
    # the older set, with other values: the 64-bit one wins
    stats = nested(nl.STATS, nla(nl.STATS_CONNS, u32(1)))
    assert nl.parse_counters(parse_attrs(stats + stats64)) == nl.Counters(7, 2**40, 30, 1000, 5000)


def test_the_older_counters_have_32_bit_counts_and_64_bit_bytes() -> None:
    stats = nested(nl.STATS, nla(nl.STATS_CONNS, u32(3)), nla(nl.STATS_INPKTS, u32(4)),
                   nla(nl.STATS_OUTPKTS, u32(5)), nla(nl.STATS_INBYTES, u64(2**33)),
                   nla(nl.STATS_OUTBYTES, u64(9)))  # fmt: skip
    assert nl.parse_counters(parse_attrs(stats)) == nl.Counters(3, 4, 5, 2**33, 9)
    assert nl.parse_counters({}) == nl.Counters()


def reading() -> Reading:
    dest = DestinationStats(DestKey("10.20.0.21", 8080), nl.Counters(5, 50, 40, 5000, 9000), 2, 3)
    return Reading(at=1_700_000_000.0, took=0.01, services=(
        ServiceStats(WEB, nl.Counters(5, 50, 40, 5000, 9000), (dest,)),
        ServiceStats(OTHER, nl.Counters(99, 1, 1, 1, 1), ()),
    ))  # fmt: skip


def scrape(collector: TrafficCollector) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def test_only_the_groups_services_are_exported_with_their_real_servers() -> None:
    collector = TrafficCollector("g1", lambda: {WEB})
    collector.reading = reading()
    text = scrape(collector)
    svc = 'group="g1",port="80",protocol="TCP",vip="10.10.0.100"'
    assert f"lvs_director_service_connections_total{{{svc}}} 5.0" in text
    assert f'lvs_director_service_bytes_total{{direction="out",{svc}}} 9000.0' in text
    dst = 'destination="10.20.0.21:8080",group="g1",port="80",protocol="TCP",vip="10.10.0.100"'
    assert f"lvs_director_destination_active_connections{{{dst}}} 2.0" in text
    assert f"lvs_director_destination_inactive_connections{{{dst}}} 3.0" in text
    packets_in = (
        'lvs_director_destination_packets_total{destination="10.20.0.21:8080",'
        'direction="in",group="g1",port="80",protocol="TCP",vip="10.10.0.100"} 50.0'
    )
    assert packets_in in text
    assert "10.10.0.200" not in text  # another owner's service
    assert 'lvs_director_traffic_read_timestamp_seconds{group="g1"} 1.7e+09' in text


def test_nothing_is_exported_before_the_desired_table_is_known() -> None:
    collector = TrafficCollector("g1", lambda: None)
    collector.reading = reading()
    text = scrape(collector)
    assert "10.10.0.100" not in text
    assert 'lvs_director_traffic_read_timestamp_seconds{group="g1"}' in text


def test_a_failed_read_keeps_the_last_reading_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector = TrafficCollector("g1", lambda: {WEB})
    reader = FakeStatsReader(list(reading().services))
    poller = TrafficPoller(collector, lambda: reader, interval=10)
    poller.read_once(reader)
    first = collector.reading
    assert first is not None and len(first.services) == 2
    reader.error = OSError("netlink: permission denied")
    with caplog.at_level(logging.WARNING):
        poller.read_once(reader)
        poller.read_once(reader)
    assert collector.reading is first
    warnings = [r for r in caplog.records if "traffic counters failed" in r.getMessage()]
    assert len(warnings) == 1 and "permission denied" in warnings[0].getMessage()


def test_the_poller_reads_on_its_own_thread_and_closes_its_reader() -> None:
    collector = TrafficCollector("g1", lambda: {WEB})
    reader = FakeStatsReader(list(reading().services))
    poller = TrafficPoller(collector, lambda: reader, interval=0.01)
    poller.start()
    try:
        for _ in range(200):
            if collector.reading is not None:
                break
            time.sleep(0.01)
    finally:
        poller.stop()
    assert collector.reading is not None
    assert reader.closed


def test_after_each_read_the_poller_runs_its_hook_on_its_thread() -> None:
    """The agent hands the freed heap back after each read (HeapTrimmer); a failing hook is
    logged and the reads go on. Between services a read steps aside (for converges)."""
    collector = TrafficCollector("g1", lambda: {WEB})
    reader = FakeStatsReader(list(reading().services))
    ran: list[tuple[str, bool]] = []

    def after_read() -> None:
        ran.append((threading.current_thread().name, collector.reading is not None))
        if len(ran) == 1:
            raise OSError("no")

    asides: list[int] = []
    poller = TrafficPoller(collector, lambda: reader, interval=0.01, after_read=after_read,
                           step_aside=lambda: asides.append(1))  # fmt: skip
    poller.start()
    try:
        for _ in range(200):
            if len(ran) >= 2:
                break
            time.sleep(0.01)
    finally:
        poller.stop()
    assert len(ran) >= 2 and ran[0] == ("traffic", True)
    assert len(asides) >= 2 * len(reader.services)  # between each two services of a read


def test_the_poller_waits_longer_after_a_slow_read() -> None:
    """A read that takes long (a big table parsed in Python, holding the GIL) is followed by
    a pause of ten times its length, so the poller reads at most a tenth of the time."""
    collector = TrafficCollector("g1", lambda: None)
    poller = TrafficPoller(collector, lambda: FakeStatsReader(), interval=10)
    assert poller.pause() == 10  # nothing read yet
    collector.reading = Reading(0.0, 0.5, ())
    assert poller.pause() == 10
    collector.reading = Reading(0.0, 3.0, ())
    assert poller.pause() == 30
