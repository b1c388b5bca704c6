"""Events from the agent (events.py): on a takeover and a release, off the takeover's path,
never flooding the API server or the log."""

from __future__ import annotations

import asyncio
import logging

import pytest

from lvs_operator.api.virtualserver import VirtualServer
from lvs_operator.director.events import QUEUE, AgentEvents, vip_events

from .fakes import FakeEventPoster


def vs(name: str, vip: str, namespace: str = "web") -> VirtualServer:
    return VirtualServer.from_object({
        "apiVersion": "lvs.io/v1alpha1", "kind": "VirtualServer",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}"},
        "spec": {"vip": vip, "ports": [{"port": 80}], "poolRef": {"name": "web"}},
    })  # fmt: skip


SERVERS = {("web", "a"): vs("a", "10.10.0.100"), ("shop", "b"): vs("b", "10.10.0.101", "shop"),
           ("web", "c"): vs("c", "192.0.2.7")}  # fmt: skip


def test_a_takeover_names_the_node_on_each_virtual_server_of_the_groups_vips() -> None:
    specs = vip_events("node-b", "g1", True, SERVERS, ["10.10.0.100", "10.10.0.101"])
    assert [(s.ref.key, s.reason) for s in specs] == [
        ("shop/b", "VIPTakenOver"), ("web/a", "VIPTakenOver")]  # fmt: skip
    assert specs[1].message == "director node-b (group g1) now holds VIP 10.10.0.100"
    assert specs[1].ref.uid == "uid-a" and specs[1].ref.kind == "VirtualServer"
    released = vip_events("node-b", "g1", False, SERVERS, ["10.10.0.100"])
    assert [(s.ref.key, s.reason) for s in released] == [("web/a", "VIPReleased")]


async def test_events_are_posted_in_the_background_and_once_per_minute() -> None:
    poster = FakeEventPoster()
    events = AgentEvents(poster, "node-b")
    specs = vip_events("node-b", "g1", True, SERVERS, ["10.10.0.100"])
    events.emit(specs[0])
    events.emit(specs[0])  # the same again within the minute: not posted twice
    await events.close()
    assert len(poster.posted) == 1
    body = poster.posted[0]
    assert body["reason"] == "VIPTakenOver" and body["type"] == "Normal"
    assert body["involvedObject"]["name"] == "a" and body["metadata"]["namespace"] == "web"
    assert body["reportingComponent"] == "lvs-director"
    assert body["reportingInstance"] == "node-b" and body["source"]["host"] == "node-b"


async def test_a_slow_or_failing_api_never_blocks_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    poster = FakeEventPoster()
    poster.delay, poster.error = 0.01, PermissionError("events is forbidden")
    events = AgentEvents(poster, "node-b")
    with caplog.at_level(logging.WARNING):
        for i in range(QUEUE + 20):  # more than the queue holds: emit never waits
            spec = vip_events("node-b", "g1", True, {("web", f"v{i}"): vs(f"v{i}", "10.0.0.1")},
                              ["10.0.0.1"])[0]  # fmt: skip
            events.emit(spec)
        assert events.dropped >= 19
        await asyncio.sleep(0.3)
        await events.close(timeout=0.5)
    failures = [r for r in caplog.records if "cannot post Event" in r.getMessage()]
    assert len(failures) == 1 and "forbidden" in failures[0].getMessage()
    assert poster.posted == []


async def test_no_poster_no_events() -> None:
    events = AgentEvents(None, "node-b")
    events.emit(vip_events("node-b", "g1", True, SERVERS, ["10.10.0.100"])[0])
    await events.close()
    assert events._queue is None and events._task is None  # nothing queued, nothing started
