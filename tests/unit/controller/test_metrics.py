"""The controller's metrics: what a reconcile pass counts (passes, writes by kind and outcome,
objects by condition, director groups), the watch restarts of its informers, ``/metrics``."""

from __future__ import annotations

import asyncio
import copy
import socket
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import ObjectMeta, Status
from lightkube.resources.coordination_v1 import Lease
from prometheus_client.parser import text_string_to_metric_families

from lvs_operator.controller import metrics as m
from lvs_operator.controller.metrics import ControllerMetrics, ObjectCondition
from lvs_operator.controller.reconciler import Reconciler

from .test_reconciler_loop import CONFIG, FakeClient, reconciler

# The fake client's record of a call (verb, resource class) -> the metric's kind and verb.
CALL_KIND = {
    ("patch", "Service"): ("Service", "apply"),
    ("patch", "RealServerPoolStatus"): ("RealServerPool/status", "apply"),
    ("patch", "DaemonSet"): ("DaemonSet", "apply"),
    ("patch", "VirtualServerStatus"): ("VirtualServer/status", "apply"),
    ("patch", "VirtualServer"): ("VirtualServer", "patch"),
    ("create", "Secret"): ("Secret", "create"),
    ("create", "Event"): ("Event", "create"),
    ("delete", "DaemonSet"): ("DaemonSet", "delete"),
}


def sample(metrics: ControllerMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def writes(metrics: ControllerMetrics, outcome: str) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name == "lvs_controller_writes_total" and s.labels["outcome"] == outcome:
                out[(s.labels["kind"], s.labels["verb"])] += int(s.value)
    return +out


def made(client: FakeClient) -> Counter[tuple[str, str]]:
    return Counter(CALL_KIND[(verb, kind)] for verb, kind, _ in client.calls)


async def test_a_pass_counts_itself_and_every_write_it_made() -> None:
    client = FakeClient()
    r = reconciler(client)
    failed, _ = await r.reconcile_once()
    assert failed == 0
    assert sample(r.metrics, "lvs_controller_reconcile_passes_total", outcome="ok") == 1
    assert sample(r.metrics, "lvs_controller_reconcile_passes_total", outcome="error") == 0
    assert sample(r.metrics, "lvs_controller_reconcile_seconds_count") == 1
    assert sample(r.metrics, "lvs_controller_last_reconcile_timestamp_seconds") > 0
    assert writes(r.metrics, "ok") == made(client)
    assert {("Service", "apply"), ("DaemonSet", "apply"), ("Secret", "create")} <= set(
        writes(r.metrics, "ok")
    )
    # nothing to write the next time: a pass, no write
    client.calls.clear()
    before = writes(r.metrics, "ok")
    await r.reconcile_once()
    assert client.calls == [] and writes(r.metrics, "ok") == before
    assert sample(r.metrics, "lvs_controller_reconcile_passes_total", outcome="ok") == 2


async def test_failed_writes_are_counted_as_failed_and_so_is_the_pass() -> None:
    client = FakeClient(missing_namespace=CONFIG.namespace)  # the DaemonSet's write: 404
    r = reconciler(client)
    failed, _ = await r.reconcile_once()
    assert failed == 1
    assert writes(r.metrics, "failed") == Counter({("DaemonSet", "apply"): 1})
    assert sample(r.metrics, "lvs_controller_reconcile_passes_total", outcome="failed_writes") == 1
    assert sample(r.metrics, "lvs_controller_reconcile_passes_total", outcome="ok") == 0


async def test_a_refused_service_and_a_present_secret_have_their_own_outcomes() -> None:
    client = FakeClient(refuse_services="spec.selector: Invalid value")
    r = reconciler(client)
    await r.reconcile_once()
    assert writes(r.metrics, "refused") == Counter({("Service", "apply"): 1})
    assert ("Service", "apply") not in writes(r.metrics, "ok")

    client = FakeClient()
    r = reconciler(client)
    client.create_error = 403  # the key Secret's create fails: asked again next pass
    await r.reconcile_once()
    assert writes(r.metrics, "failed") == Counter({("Secret", "create"): 1})
    client.create_error = None
    secret = next(c[2] for c in client.calls if c[1] == "Secret").split("/")[1]
    client.objects[("Secret", CONFIG.namespace, secret)] = {"data": {"key": "k"}}
    await r.reconcile_once()
    assert writes(r.metrics, "exists") == Counter({("Secret", "create"): 1})


async def test_a_pass_that_raises_is_counted_as_an_error() -> None:
    r = reconciler(FakeClient())

    def broken() -> Any:
        raise RuntimeError("index gone")

    r.snapshot = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await r.reconcile_once()
    assert sample(r.metrics, "lvs_controller_reconcile_passes_total", outcome="error") == 1
    assert sample(r.metrics, "lvs_controller_reconcile_seconds_count") == 1


def _conditions(client: FakeClient) -> Counter[ObjectCondition]:
    """The conditions of the statuses the fake API server holds."""
    out: Counter[ObjectCondition] = Counter()
    for (kind, _, _), obj in client.objects.items():
        for c in (obj.get("status") or {}).get("conditions") or []:
            out[ObjectCondition(kind, c["type"], c["status"], c["reason"])] += 1
    return out


def objects(metrics: ControllerMetrics) -> Counter[ObjectCondition]:
    out: Counter[ObjectCondition] = Counter()
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name == "lvs_controller_objects":
                labels = s.labels
                key = ObjectCondition(
                    labels["kind"], labels["condition"], labels["status"], labels["reason"]
                )
                out[key] = int(s.value)
    return out


async def test_objects_by_condition_and_the_director_groups_follow_the_statuses() -> None:
    client = FakeClient()
    r = reconciler(client)
    await r.reconcile_once()
    counted = +objects(r.metrics)
    assert counted == _conditions(client)
    kinds = {key.kind for key in counted}
    assert kinds == {"VirtualServer", "RealServerPool"}
    ((ds_key, _),) = [(k, v) for k, v in client.objects.items() if k[0] == "DaemonSet"]
    groups = [
        s.labels["group"]
        for f in r.metrics.registry.collect()
        for s in f.samples
        if s.name == "lvs_controller_director_group" and s.value == 1
    ]
    assert len(groups) == 1 and ds_key[2].endswith(groups[0])

    # The VirtualServer goes: its conditions read 0 (not stale), its group is gone.
    r.indices["lvs_virtualservers"] = {}  # type: ignore[index]
    r.daemonsets.store = {ds_key[2]: copy.deepcopy(client.objects[ds_key])}
    await r.reconcile_once()
    after = objects(r.metrics)
    assert all(after[key] == 0 for key in counted if key.kind == "VirtualServer")
    assert any(key.kind == "RealServerPool" and n > 0 for key, n in after.items())
    assert sample(r.metrics, "lvs_controller_director_group", group=groups[0]) == 0
    assert r.metrics.registry.get_sample_value(
        "lvs_controller_director_group", {"group": groups[0]}
    ) is None  # fmt: skip


class WatchClient:
    """Lists Leases; the first watch expires (410), the second ends, the third fails."""

    def __init__(self) -> None:
        self.watches = 0
        self.done = asyncio.Event()

    def list(self, res: Any, namespace: str, labels: Any = None, chunk_size: int = 0) -> Any:
        class Listing:
            resourceVersion = "1"

            async def __aiter__(self) -> AsyncIterator[Any]:
                yield Lease(metadata=ObjectMeta(name="a", namespace=namespace))

        return Listing()

    def watch(self, res: Any, **_: Any) -> AsyncIterator[tuple[str, Any]]:
        self.watches += 1
        return self._events(self.watches)

    async def _events(self, n: int) -> AsyncIterator[tuple[str, Any]]:
        if n == 1:
            raise ApiError(status=Status(code=410, message="too old"))
        if n == 3:
            raise ConnectionError("reset")
        if n > 3:
            self.done.set()
            await asyncio.sleep(3600)
        return
        yield  # an async generator that ends at once


async def test_the_informers_watch_restarts_are_counted_by_resource_and_reason() -> None:
    client = WatchClient()
    r = Reconciler(CONFIG, client)  # type: ignore[arg-type]
    task = asyncio.create_task(r.leases.run())
    try:
        await asyncio.wait_for(client.done.wait(), timeout=10)
    finally:
        task.cancel()
    for reason in ("expired", "ended", "failed"):
        assert sample(r.metrics, "lvs_controller_watch_restarts_total",
                      resource="Lease", reason=reason) == 1, reason  # fmt: skip
    assert sample(r.metrics, "lvs_controller_watch_restarts_total",
                  resource="DaemonSet", reason="expired") == 0  # fmt: skip


async def test_metrics_are_served_over_http() -> None:
    metrics = ControllerMetrics()
    metrics.pass_done(0.02, m.PASS_OK)
    metrics.wrote("Service", "apply", m.WRITE_OK)
    server = await metrics.serve(0)
    # port 0: each address family gets a port of its own; ask the IPv4 one
    (port,) = [s.getsockname()[1] for s in server.sockets if s.family == socket.AF_INET]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
        body = (await reader.read()).decode()
        writer.close()
    finally:
        server.close()
    head, _, text = body.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.0 200")
    served = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert served[("lvs_controller_reconcile_passes_total", (("outcome", "ok"),))] == 1
    write = (("kind", "Service"), ("outcome", "ok"), ("verb", "apply"))
    assert served[("lvs_controller_writes_total", write)] == 1
    assert ("process_resident_memory_bytes", ()) in served
