"""The controller's Prometheus metrics: ``/metrics`` on ``--metrics-port``, its own registry.

What the reconciler did (passes, their duration and outcome, API writes by kind, verb and
outcome), what the objects' conditions say (how many VirtualServers and RealServerPools have
each condition type, status and reason), which director groups it runs, and how often the
watches it runs itself restarted (the Leases and DaemonSets of its namespace,
``listwatch.Informer``; the cluster's pods, ``podcache.PodCache``). kopf's own watches
(VirtualServers, pools, EndpointSlices, Services) restart inside kopf, which offers no hook
to count them: they are not counted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import NamedTuple

DEFAULT_PORT = 9640  # the agents use 9641-9643 on their nodes

# outcome of a pass
PASS_OK = "ok"
PASS_FAILED_WRITES = "failed_writes"  # some writes failed: retried after a backoff
PASS_ERROR = "error"  # the pass itself raised: retried after a backoff

# outcome of a write
WRITE_OK = "ok"
WRITE_NOT_FOUND = "not_found"  # the object went meanwhile: its deletion event follows
WRITE_REFUSED = "refused"  # invalid (422): not sent again while the same is wanted
WRITE_EXISTS = "exists"  # a create of something present (the groups' key Secrets)
WRITE_FAILED = "failed"  # retried after a backoff

# outcome of an Event
EVENT_POSTED = "ok"
EVENT_FAILED = "failed"  # logged, not retried


class ObjectCondition(NamedTuple):
    """One condition as the objects' statuses carry it: the labels of
    ``lvs_controller_objects``."""

    kind: str
    condition: str
    status: str
    reason: str


class ControllerMetrics:
    def __init__(self) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            GCCollector,
            Histogram,
            ProcessCollector,
        )

        self.registry = CollectorRegistry()
        self.passes = Counter(
            "lvs_controller_reconcile_passes", "reconcile passes (plan, then write the "
            "differences), by outcome: ok, failed_writes (retried), error (retried)",
            ["outcome"], registry=self.registry,
        )  # fmt: skip
        for outcome in (PASS_OK, PASS_FAILED_WRITES, PASS_ERROR):  # at 0 from the start
            self.passes.labels(outcome=outcome)
        self.pass_seconds = Histogram(
            "lvs_controller_reconcile_seconds", "time of one reconcile pass, its writes included",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )  # fmt: skip
        self.last_pass = Gauge(
            "lvs_controller_last_reconcile_timestamp_seconds", "when the last reconcile pass "
            "ended, any outcome (0: none yet)", registry=self.registry,
        )  # fmt: skip
        self.writes = Counter(
            "lvs_controller_writes", "API writes, by kind (VirtualServer/status is the status "
            "subresource), verb and outcome: ok, not_found, refused, exists, failed",
            ["kind", "verb", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.objects = Gauge(
            "lvs_controller_objects", "VirtualServers and RealServerPools by the type, status "
            "and reason of each of their conditions, as of the last pass",
            ["kind", "condition", "status", "reason"], registry=self.registry,
        )  # fmt: skip
        self.director_groups = Gauge(
            "lvs_controller_director_group", "1 for each director group the controller runs a "
            "DaemonSet of agents for", ["group"], registry=self.registry,
        )  # fmt: skip
        self.watch_restarts = Counter(
            "lvs_controller_watch_restarts", "restarts (relists) of the controller's own "
            "watches, by resource and reason: expired (410), failed, ended",
            ["resource", "reason"], registry=self.registry,
        )  # fmt: skip
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._objects_seen: set[ObjectCondition] = set()
        self._groups_seen: set[str] = set()

    def pass_done(self, seconds: float, outcome: str) -> None:
        self.passes.labels(outcome=outcome).inc()
        self.pass_seconds.observe(seconds)
        self.last_pass.set(time.time())

    def wrote(self, kind: str, verb: str, outcome: str) -> None:
        self.writes.labels(kind=kind, verb=verb, outcome=outcome).inc()

    def set_objects(self, counts: Mapping[ObjectCondition, int]) -> None:
        """The counts of the last pass; a combination seen before and absent now reads 0
        (not gone: an alert on it then resolves instead of going stale)."""
        for key in self._objects_seen - set(counts):
            self.objects.labels(*key).set(0)
        for key, n in counts.items():
            self.objects.labels(*key).set(n)
        self._objects_seen |= set(counts)

    def set_director_groups(self, groups: Iterable[str]) -> None:
        """The groups of the last pass; a group gone is removed (its agents are gone too)."""
        now = set(groups)
        for group in self._groups_seen - now:
            self.director_groups.remove(group)
        for group in now:
            self.director_groups.labels(group=group).set(1)
        self._groups_seen = now

    def watch_restarted(self, resource: str, reason: str) -> None:
        self.watch_restarts.labels(resource=resource, reason=reason).inc()

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))

    async def serve(self, port: int) -> asyncio.Server:
        """``/metrics`` on ``port``, every address (the agents' small HTTP/1.0 server)."""
        from lvs_operator.director.endpoints import PROMETHEUS, handler

        routes = {"/metrics": lambda: (200, self.render(), PROMETHEUS)}
        return await asyncio.start_server(handler(routes), None, port)
