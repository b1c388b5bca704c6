"""The controller's own pod cache: a paged list folded in page by page, then a watch; what
it keeps of each pod, the director agents' pods, and relists that report the pods gone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from lightkube import ApiError
from lightkube.models.meta_v1 import Status

from lvs_operator.api.contract import GROUP_LABEL
from lvs_operator.controller.config import ControllerConfig
from lvs_operator.controller.groups import DIRECTOR_POD_LABELS, DirectorPod
from lvs_operator.controller.podcache import PodCache, pod_resource
from lvs_operator.controller.pools import PodInfo
from lvs_operator.controller.reconciler import Reconciler
from lvs_operator.listwatch import Backoff

OPERATOR_NS = "lvs-system"


def pod(ns: str, name: str, labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": ns, "name": name, "labels": dict(labels or {})}
    meta.update(extra.pop("meta", {}))
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, **extra}


def agent(name: str, node: str, ready: bool) -> dict[str, Any]:
    status = {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    labels = {**DIRECTOR_POD_LABELS, GROUP_LABEL: "g1"}
    return pod(OPERATOR_NS, name, labels, spec={"nodeName": node}, status=status)


class Obj:
    def __init__(self, d: dict[str, Any]) -> None:
        self.d = d

    def to_dict(self) -> dict[str, Any]:
        return self.d


class Listing:
    """A paged LIST: each page is read as it is iterated, the version known at the end."""

    def __init__(self, pages: list[list[dict[str, Any]]], rv: str, log: list[str]) -> None:
        self.pages, self.rv, self.log = pages, rv, log
        self.resourceVersion: str | None = None

    async def __aiter__(self) -> AsyncIterator[Obj]:
        for n, page in enumerate(self.pages):
            self.log.append(f"page {n}")
            for item in page:
                yield Obj(item)
        self.resourceVersion = self.rv


class FakeClient:
    """Lists and watches from scripts; a watch script item that is an exception is raised."""

    def __init__(self, lists: list[Listing], watches: list[list[Any]]) -> None:
        self.lists, self.watches = lists, watches
        self.list_calls: list[dict[str, Any]] = []
        self.watch_versions: list[str | None] = []
        self.done = asyncio.Event()

    def list(self, res: Any, **kwargs: Any) -> Listing:
        self.list_calls.append(kwargs)
        return self.lists.pop(0)

    async def watch(self, res: Any, **kwargs: Any) -> AsyncIterator[tuple[str, Obj]]:
        self.watch_versions.append(kwargs.get("resource_version"))
        if not self.watches:
            self.done.set()
            await asyncio.Event().wait()
        for item in self.watches.pop(0):
            if isinstance(item, Exception):
                raise item
            yield item[0], Obj(item[1])

    async def get(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def create(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def close(self) -> None:
        return None


def gone(code: int) -> ApiError:
    return ApiError(status=Status(code=code, message="too old" if code == 410 else "failed"))


async def run_until_done(cache: PodCache, client: FakeClient) -> None:
    task = asyncio.create_task(cache.run())
    try:
        await asyncio.wait_for(client.done.wait(), 5)
    finally:
        task.cancel()


async def test_list_pages_then_watch() -> None:
    log: list[str] = []
    events: list[tuple[str | None, str]] = []

    def on_event(kind: str | None, body: dict[str, Any]) -> None:
        log.append(f"event {body['metadata']['name']}")
        events.append((kind, body["metadata"]["name"]))

    web = {"app": "web"}
    pages = [[pod("a", "web-1", web), agent("d1", "n1", True)], [pod("a", "web-2", web)]]
    watch = [
        ("MODIFIED", pod("a", "web-1", web, meta={"annotations": {"lvs.io/weight": "3"}})),
        ("MODIFIED", agent("d1", "n1", False)),
        ("ADDED", pod("b", "other", {"x": "y"})),
        ("DELETED", pod("a", "web-2", web)),
    ]
    client = FakeClient([Listing(pages, "10", log)], [watch])
    cache = PodCache(client, OPERATOR_NS, on_event)
    await run_until_done(cache, client)

    # each page is folded in before the next is read (no page outlives its turn)
    assert log[:5] == ["page 0", "event web-1", "event d1", "page 1", "event web-2"]
    assert client.list_calls == [{"namespace": "*", "chunk_size": 500}]
    assert client.watch_versions == ["10", "10"]  # the second: the script ran out
    assert cache.synced.is_set()
    assert events == [
        (None, "web-1"), (None, "d1"), (None, "web-2"),
        ("MODIFIED", "web-1"), ("MODIFIED", "d1"), ("ADDED", "other"), ("DELETED", "web-2"),
    ]  # fmt: skip
    assert cache.pods == {
        ("a", "web-1"): PodInfo(web, "3"),
        (OPERATOR_NS, "d1"): PodInfo({**DIRECTOR_POD_LABELS, GROUP_LABEL: "g1"}),
        ("b", "other"): PodInfo({"x": "y"}),
    }
    assert cache.directors == {"d1": DirectorPod("d1", "g1", "n1", False)}


async def test_director_pods_only_in_the_operator_namespace_with_the_agents_labels() -> None:
    labels = {**DIRECTOR_POD_LABELS, GROUP_LABEL: "g1"}
    elsewhere = pod("tenant", "d2", labels, spec={"nodeName": "n2"})
    unlabelled = pod(OPERATOR_NS, "d3", {GROUP_LABEL: "g1"}, spec={"nodeName": "n3"})
    deleting = agent("d4", "n4", True)
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    pages = [[agent("d1", "n1", True), elsewhere, unlabelled, deleting]]
    client = FakeClient([Listing(pages, "5", [])], [])
    cache = PodCache(client, OPERATOR_NS, lambda kind, body: None)
    await run_until_done(cache, client)
    assert cache.directors == {"d1": DirectorPod("d1", "g1", "n1", True)}
    assert len(cache.pods) == 4  # every pod's labels are kept all the same


async def test_a_relist_reports_the_pods_gone_meanwhile() -> None:
    events: list[tuple[str | None, str]] = []
    first = [[pod("a", "web-1"), pod("a", "web-2"), agent("d1", "n1", True)]]
    second = [[pod("a", "web-1")]]
    client = FakeClient(
        [Listing(first, "10", []), Listing(second, "20", [])],
        [[gone(410)]],  # the watch expired: relist at once
    )
    cache = PodCache(
        client, OPERATOR_NS, lambda kind, body: events.append((kind, body["metadata"]["name"]))
    )
    await run_until_done(cache, client)
    assert client.watch_versions == ["10", "20"]
    assert events[3:] == [(None, "web-1"), ("DELETED", "web-2"), ("DELETED", "d1")]
    assert set(cache.pods) == {("a", "web-1")}
    assert cache.directors == {}


async def test_a_failure_relists_after_the_backoff_and_counts_the_restart() -> None:
    restarts: list[str] = []
    client = FakeClient(
        [Listing([[pod("a", "web-1")]], "10", []), Listing([[pod("a", "web-1")]], "11", [])],
        [[gone(500)]],
    )
    cache = PodCache(
        client, OPERATOR_NS, lambda kind, body: None,
        backoff=Backoff(first=0.01, most=0.01), on_restart=restarts.append,
    )  # fmt: skip
    await run_until_done(cache, client)
    assert restarts == ["failed"]
    assert client.watch_versions == ["10", "11"]


def test_the_pods_resource_is_core_v1_and_keeps_bodies_as_dicts() -> None:
    res = pod_resource()
    assert pod_resource() is res
    assert res._api_info.resource.group == "" and res._api_info.plural == "pods"
    body = {"metadata": {"name": "x", "namespace": "a", "resourceVersion": "3"}}
    assert res.from_dict(body).to_dict() == body


async def test_the_reconciler_plans_from_the_cache_and_forgets_pods_a_relist_missed() -> None:
    r = Reconciler(ControllerConfig(namespace=OPERATOR_NS), client=None)  # type: ignore[arg-type]
    r._pool_selectors = {}  # a pass happened: events are judged, not all planned
    r.pods.apply(None, agent("d1", "n1", True))
    assert r._full_due  # a director agent's pod: groups are decided on the whole set
    assert (OPERATOR_NS, "d1") in r._pods_read
    world = r.snapshot()
    assert world.director_pods == [DirectorPod("d1", "g1", "n1", True)]
    assert world.pods[(OPERATOR_NS, "d1")].labels[GROUP_LABEL] == "g1"
    r.pods._gone((OPERATOR_NS, "d1"))
    assert (OPERATOR_NS, "d1") not in r._pods_read
    assert r.snapshot().director_pods == []
