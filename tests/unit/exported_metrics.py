"""Every metric the processes export, read from their own registries: the agent's ``Metrics``
with its ``TrafficCollector`` and the controller's ``ControllerMetrics``. Each is made to hold
one sample per label set (a traffic reading, a write, a condition...), so that its series
names and labels show. The dashboard, alert and docs tests check against this."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from lvs_operator.controller import metrics as cm
from lvs_operator.director.kernel import ipvs_netlink as nl
from lvs_operator.director.kernel.ipvs import DestinationStats, ServiceStats
from lvs_operator.director.metrics import Metrics
from lvs_operator.director.table import DestKey, Protocol, ServiceKey
from lvs_operator.director.traffic import Reading, TrafficCollector

AGENT = "agent"
CONTROLLER = "controller"


@dataclass(frozen=True)
class Family:
    name: str  # the family's name (a counter's series add _total)
    type: str  # counter, gauge, histogram, info
    labels: tuple[str, ...]  # sorted; a histogram's le left out
    help: str
    process: str  # AGENT or CONTROLLER
    series: frozenset[str]  # the names of its series, as a scrape shows them


def _agent_registry() -> CollectorRegistry:
    metrics = Metrics("g1")
    metrics.changes.labels(group="g1", op="add_service").inc()
    metrics.kernel_reads.labels(group="g1", reason="start").inc()  # IpvsSync exports each
    metrics.watch_lease(lambda: ("node-a", time.time()))
    web = ServiceKey(Protocol.TCP, "192.0.2.10", 80)
    dest = DestinationStats(DestKey("10.0.0.1", 8080), nl.Counters(1, 2, 3, 4, 5), 1, 0)
    traffic = TrafficCollector("g1", lambda: {web})
    traffic.reading = Reading(time.time(), 0.001, (ServiceStats(web, nl.Counters(1, 2, 3, 4, 5),
                                                                (dest,)),))  # fmt: skip
    metrics.registry.register(traffic)
    return metrics.registry


def _controller_registry() -> CollectorRegistry:
    metrics = cm.ControllerMetrics()
    metrics.wrote("Service", "apply", cm.WRITE_OK)
    metrics.pass_done(0.01, cm.PASS_OK)
    metrics.set_objects(Counter({cm.ObjectCondition("VirtualServer", "Ready", "True", "Ready"): 1}))
    metrics.set_director_groups(["g1"])
    metrics.watch_restarted("Lease", "expired")
    return metrics.registry


def families() -> list[Family]:
    out = []
    for process, registry in ((AGENT, _agent_registry()), (CONTROLLER, _controller_registry())):
        for f in registry.collect():
            assert f.samples, f"{f.name}: no sample to read its series and labels from"
            labels = {k for s in f.samples for k in s.labels if k != "le"}
            series = frozenset(s.name for s in f.samples)
            out.append(Family(f.name, f.type, tuple(sorted(labels)), f.documentation, process,
                              series))  # fmt: skip
    return out


def series_names() -> set[str]:
    return {name for f in families() for name in f.series}
