"""Traffic per virtual service and per real server, from the kernel's IPVS counters (what
``ipvsadm -Ln --stats`` shows), as Prometheus metrics.

A thread of its own (``TrafficPoller``) reads the counters every ``--traffic-interval``
seconds on a netlink socket of its own: never on the IPVS lane (a converge does not wait for
it) nor on the event loop. ``/metrics`` serves the last reading (``TrafficCollector``), so a
scrape costs no kernel call, and the figures are at most one interval old
(``lvs_director_traffic_read_timestamp_seconds`` says when).

Only the group's own services are exported (the desired table's), each labelled ``vip``,
``port``, ``protocol``, and its destinations ``destination`` (address:port). Cardinality: one
series set per service and per destination: at 1,000 services x 10 real servers, 11,000 of
each metric (75,002 series in all: docs/metrics.md); ``--traffic-interval 0`` turns it off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from .kernel.ipvs import DestinationStats, ServiceStats
    from .kernel.ipvs_netlink import Counters
    from .table import ServiceKey

log = logging.getLogger("lvs_operator.director.traffic")

DEFAULT_INTERVAL = 10.0
BUSY_SHARE = 0.1  # the most of its time the poller spends reading


class StatsReader(Protocol):
    """The kernel's counters (kernel/ipvs.IpvsKernel; a fake in the unit tests)."""

    def read_stats(self, between: Callable[[], object] | None = None) -> list[ServiceStats]:
        """``between``: called after each service (the poller steps aside there)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Reading:
    at: float  # wall clock (epoch seconds)
    took: float  # seconds the read took
    services: tuple[ServiceStats, ...]


def traffic_metrics(group: str, reading: Reading | None,
                    wanted: set[ServiceKey] | None) -> Iterator[Metric]:  # fmt: skip
    """The metric families of one reading: the services in ``wanted`` only (None: not known
    yet, nothing exported). One family at a time: the registry writes each out before the
    next is built, so a scrape at 1,000 services x 10 real servers holds at most one
    family's samples (up to 22,000), not all 75,000 (each sample is a tuple and a dict of
    its labels: tens of MiB at once, which the process's heap keeps after the scrape)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    svc = ["group", "vip", "port", "protocol"]
    dst = [*svc, "destination"]
    ours: list[ServiceStats] = []
    if reading is not None and wanted is not None:
        # another owner's service is not ours to report
        ours = [service for service in reading.services if service.key in wanted]

    def service_labels(service: ServiceStats) -> list[str]:
        k = service.key
        return [group, k.address, str(k.port), k.protocol.value]

    def destinations() -> Iterator[tuple[list[str], DestinationStats]]:
        for service in ours:
            labels = service_labels(service)
            for dest in service.destinations:
                yield [*labels, str(dest.key)], dest

    def flows(family: CounterMetricFamily, labels: list[str], c: Counters, packets: bool) -> None:
        family.add_metric([*labels, "in"], c.packets_in if packets else c.bytes_in)
        family.add_metric([*labels, "out"], c.packets_out if packets else c.bytes_out)

    family = CounterMetricFamily(
        "lvs_director_service_connections",
        "connections IPVS scheduled to the service (since the service was added)",
        labels=svc,
    )
    for service in ours:
        family.add_metric(service_labels(service), service.counters.connections)
    yield family
    for packets in (True, False):
        family = (
            CounterMetricFamily(
                "lvs_director_service_packets",
                "packets of the service; direction in: client to real server, out: back",
                labels=[*svc, "direction"],
            )
            if packets
            else CounterMetricFamily(
                "lvs_director_service_bytes",
                "bytes of the service; direction as for packets",
                labels=[*svc, "direction"],
            )
        )
        for service in ours:
            flows(family, service_labels(service), service.counters, packets)
        yield family
    family = CounterMetricFamily(
        "lvs_director_destination_connections",
        "connections IPVS scheduled to the real server (since it was added)",
        labels=dst,
    )
    for labels, dest in destinations():
        family.add_metric(labels, dest.counters.connections)
    yield family
    for packets in (True, False):
        family = (
            CounterMetricFamily(
                "lvs_director_destination_packets",
                "packets to and from the real server",
                labels=[*dst, "direction"],
            )
            if packets
            else CounterMetricFamily(
                "lvs_director_destination_bytes",
                "bytes to and from the real server",
                labels=[*dst, "direction"],
            )
        )
        for labels, dest in destinations():
            flows(family, labels, dest.counters, packets)
        yield family
    gauge = GaugeMetricFamily(
        "lvs_director_destination_active_connections",
        "established TCP connections to the real server through this director now",
        labels=dst,
    )
    for labels, dest in destinations():
        gauge.add_metric(labels, dest.active)
    yield gauge
    gauge = GaugeMetricFamily(
        "lvs_director_destination_inactive_connections",
        "connections to the real server in other states (e.g. TIME_WAIT)",
        labels=dst,
    )
    for labels, dest in destinations():
        gauge.add_metric(labels, dest.inactive)
    yield gauge
    gauge = GaugeMetricFamily(
        "lvs_director_traffic_read_timestamp_seconds",
        "when the traffic counters were last read from the kernel (0: never)",
        labels=["group"],
    )
    gauge.add_metric([group], reading.at if reading else 0.0)
    yield gauge
    gauge = GaugeMetricFamily(
        "lvs_director_traffic_read_seconds", "how long the last read of the counters took",
        labels=["group"])  # fmt: skip
    gauge.add_metric([group], reading.took if reading else 0.0)
    yield gauge


class TrafficCollector:
    """Registered in the agent's registry: yields the last reading's metrics."""

    def __init__(self, group: str, wanted: Callable[[], set[ServiceKey] | None]) -> None:
        self.group = group
        self.wanted = wanted
        self.reading: Reading | None = None  # replaced whole by the poller (atomic)

    def collect(self) -> Iterator[Metric]:
        try:
            wanted = self.wanted()
        except Exception:
            wanted = None
        yield from traffic_metrics(self.group, self.reading, wanted)

    def describe(self) -> Iterable[Metric]:
        return []  # no fixed description: the registry must not call collect() at register


class TrafficPoller:
    """Reads the counters every ``interval`` seconds into ``collector`` (its own thread and
    its own reader, made in that thread: a netlink socket serves one thread)."""

    def __init__(
        self,
        collector: TrafficCollector,
        reader: Callable[[], StatsReader],
        interval: float,
        after_read: Callable[[], object] | None = None,
        step_aside: Callable[[], object] | None = None,
    ) -> None:
        self.collector, self.make_reader, self.interval = collector, reader, interval
        # after each read, in this thread (the agent: the freed heap back to the system; a
        # read at 1,000 x 10 makes and drops ~100,000 objects every interval)
        self.after_read = after_read
        # between two services of a read (the agent: while a converge is asked for or runs)
        self.step_aside = step_aside
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._started = False
        self._problem = ""

    def start(self) -> None:
        """Start reading (once: later calls do nothing)."""
        if self.interval > 0 and not self._thread.is_alive() and not self._started:
            self._started = True
            self._thread.start()

    @property
    def started(self) -> bool:
        return self._started

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def read_once(self, reader: StatsReader) -> None:
        t0 = time.monotonic()
        try:
            services = reader.read_stats(self.step_aside)
        except Exception as exc:
            problem = str(exc) or type(exc).__name__
            if problem != self._problem:
                log.warning("reading the IPVS traffic counters failed: %s", problem)
            self._problem = problem
            return
        if self._problem:
            log.info("reading the IPVS traffic counters works again")
        self._problem = ""
        self.collector.reading = Reading(time.time(), time.monotonic() - t0, tuple(services))

    def _run(self) -> None:
        try:
            reader = self.make_reader()
        except Exception as exc:
            log.warning("no IPVS traffic counters (cannot open netlink): %s", exc)
            return
        while not self._stop.is_set():
            self.read_once(reader)
            if self.after_read is not None:
                try:
                    self.after_read()
                except Exception:
                    log.exception("after the traffic read")
            self._stop.wait(self.pause())
        reader.close()

    def pause(self) -> float:
        """Until the next read: the interval, or ``BUSY_SHARE``'s inverse times the last
        read when that is longer. A read of 1,000 services x 10 real servers is parsed in
        Python and holds the GIL most of the time; back to back it would starve the event
        loop and the VIP lifetime renewals (the figures get older instead: the timestamp
        metric says how old)."""
        reading = self.collector.reading
        took = reading.took if reading is not None else 0.0
        return max(self.interval, took / BUSY_SHARE)
