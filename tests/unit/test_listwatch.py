"""The one list+watch loop (controller and agents) and the namespace informer: list, then
watch from the list's resourceVersion; relist at once on 410, after a backoff otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from lightkube import ApiError
from lightkube.models.meta_v1 import ObjectMeta, Status
from lightkube.resources.coordination_v1 import Lease

from lvs_operator.listwatch import LIST_PAGE, Backoff, Informer, list_then_watch


def lease(name: str, rv: str) -> Lease:
    return Lease(metadata=ObjectMeta(name=name, namespace="ns", resourceVersion=rv))


class Listing:
    def __init__(self, items: list[Any], rv: str) -> None:
        self.items = items
        self.resourceVersion = rv

    async def __aiter__(self) -> AsyncIterator[Any]:
        for item in self.items:
            yield item


class FakeClient:
    def __init__(self) -> None:
        self.lists = 0
        self.watch_versions: list[str | None] = []
        self.done = asyncio.Event()

    def list(self, res: Any, namespace: str, labels: Any = None, chunk_size: int = 0) -> Listing:
        assert chunk_size == LIST_PAGE  # lists come in pages (test_a_list_comes_in_pages...)
        self.lists += 1
        if self.lists == 1:
            return Listing([lease("a", "1"), lease("b", "2")], "10")
        return Listing([lease("c", "30")], "31")

    def watch(self, res: Any, namespace: str, labels: Any, resource_version: str) -> Any:
        self.watch_versions.append(resource_version)
        return self._events(len(self.watch_versions))

    async def _events(self, n: int) -> AsyncIterator[tuple[str, Any]]:
        if n == 1:
            yield ("MODIFIED", lease("a", "11"))
            yield ("DELETED", lease("b", "12"))
            raise ApiError(status=Status(code=410, message="too old"))
        yield ("ADDED", lease("d", "32"))
        self.done.set()
        await asyncio.sleep(3600)


async def test_list_watch_and_relist_on_gone() -> None:
    client = FakeClient()
    changes: list[set[str]] = []
    informer = Informer(client, Lease, "ns", lambda: None)  # type: ignore[arg-type]
    informer.on_change = lambda: changes.append(set(informer.store))
    task = asyncio.create_task(informer.run())
    await asyncio.wait_for(client.done.wait(), 5)
    task.cancel()
    assert informer.synced.is_set()
    assert client.watch_versions == ["10", "31"]
    assert changes[:3] == [{"a", "b"}, {"a", "b"}, {"a"}]
    assert set(informer.store) == {"c", "d"}
    assert informer.store["d"]["metadata"]["resourceVersion"] == "32"


class FlakyClient(FakeClient):
    """The first watch breaks with a connection error (not a 410)."""

    async def _events(self, n: int) -> AsyncIterator[tuple[str, Any]]:
        if n == 1:
            raise ConnectionResetError("peer went away")
        yield ("ADDED", lease("d", "32"))
        self.done.set()
        await asyncio.sleep(3600)


async def test_other_failures_relist_after_the_backoff() -> None:
    client = FlakyClient()
    resets: list[list[str]] = []
    applied: list[tuple[str, str]] = []
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    task = asyncio.create_task(
        list_then_watch(
            client,  # type: ignore[arg-type]
            Lease,
            namespace="ns",
            labels=None,
            reset=lambda items: resets.append([i["metadata"]["name"] for i in items]),
            apply=lambda kind, obj: applied.append((kind, obj["metadata"]["name"])),
            what="Leases",
            backoff=Backoff(first=0.3, most=1.0),
        )
    )
    await asyncio.wait_for(client.done.wait(), 5)
    task.cancel()
    assert loop.time() - t0 >= 0.3  # waited the backoff before relisting
    assert resets == [["a", "b"], ["c"]]
    assert applied == [("ADDED", "d")]


class EndingClient(FakeClient):
    """The first watch stream ends (the server's timeout) after one event, the second too,
    without any; the third is cut by a 410."""

    async def _events(self, n: int) -> AsyncIterator[tuple[str, Any]]:
        if n == 1:
            yield ("MODIFIED", lease("a", "11"))
            return
        if n == 2:
            return
        if n == 3:
            raise ApiError(status=Status(code=410, message="too old"))
        yield ("ADDED", lease("d", "32"))
        self.done.set()
        await asyncio.sleep(3600)


async def test_an_ended_stream_is_watched_again_from_the_last_version_without_a_list() -> None:
    client = EndingClient()
    restarts: list[str] = []
    resets: list[list[str]] = []
    task = asyncio.create_task(
        list_then_watch(
            client,  # type: ignore[arg-type]
            Lease,
            namespace="ns",
            labels=None,
            reset=lambda items: resets.append([i["metadata"]["name"] for i in items]),
            apply=lambda kind, obj: None,
            what="Leases",
            on_restart=restarts.append,
        )
    )
    await asyncio.wait_for(client.done.wait(), 5)
    task.cancel()
    # from the list's version, then the event's twice (the second stream had none), then
    # the second list's after the 410
    assert client.watch_versions == ["10", "11", "11", "31"]
    assert client.lists == 2 and resets == [["a", "b"], ["c"]]
    assert restarts == ["ended", "ended", "expired"]


async def test_a_list_comes_in_pages_from_one_snapshot(tmp_path: Path) -> None:
    """Through lightkube against the data-plane tier's fake API, which pages as the API server
    does: the loop asks for ``page`` objects at a time (one page is decoded on the event loop
    in one go) and resets the cache once, with every object of the list."""
    from lightkube import ALL_NS, AsyncClient
    from lightkube.config.kubeconfig import KubeConfig

    from lvs_operator.director.watches import resources
    from tests.dataplane.fakeapi import FakeApi

    api = FakeApi().start()
    config = KubeConfig.from_file(api.kubeconfig(tmp_path / "kubeconfig", "127.0.0.1"))
    client = AsyncClient(config=config)
    names = [f"pool{i:03}" for i in range(250)]
    for name in names:
        api.apply({"apiVersion": "lvs.io/v1alpha1", "kind": "RealServerPool",
                   "metadata": {"name": name, "namespace": "app"}, "spec": {}})  # fmt: skip
    resets: list[list[str]] = []
    listed = asyncio.Event()

    def reset(items: list[dict[str, Any]]) -> None:
        resets.append([item["metadata"]["name"] for item in items])
        listed.set()

    task = asyncio.create_task(
        list_then_watch(client, resources()["RealServerPool"], namespace=ALL_NS, labels=None,
                        reset=reset, apply=lambda kind, obj: None, what="pools", page=100)
    )  # fmt: skip
    try:
        await asyncio.wait_for(listed.wait(), 20)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
        api.stop()
    assert resets == [names]
    assert [items for _, items in api.list_pages] == [100, 100, 50]


def test_the_fake_api_continues_a_list_from_its_snapshot() -> None:
    """What the test above relies on, as the API server does it: the next pages are those of
    the first page's snapshot (an object created meanwhile is not in them; its watch event
    is), and a used token is refused with 410 (the lister lists again)."""
    import json
    import urllib.error
    import urllib.request

    from tests.dataplane.fakeapi import FakeApi

    api = FakeApi().start()
    url = f"http://127.0.0.1:{api.port}/apis/lvs.io/v1alpha1/realserverpools"

    def pool(name: str) -> dict[str, Any]:
        return {"apiVersion": "lvs.io/v1alpha1", "kind": "RealServerPool",
                "metadata": {"name": name, "namespace": "app"}, "spec": {}}  # fmt: skip

    def get(query: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"{url}?{query}", timeout=10) as answer:
            return json.loads(answer.read())  # type: ignore[no-any-return]

    try:
        for i in range(3):
            api.apply(pool(f"p{i}"))
        first = get("limit=2")
        assert [o["metadata"]["name"] for o in first["items"]] == ["p0", "p1"]
        token, rv = first["metadata"]["continue"], first["metadata"]["resourceVersion"]
        assert first["metadata"]["remainingItemCount"] == 1
        api.apply(pool("p00"))  # sorts between p0 and p1: not in this list's pages
        rest = get(f"limit=2&continue={token}")
        assert [o["metadata"]["name"] for o in rest["items"]] == ["p2"]
        assert rest["metadata"] == {"resourceVersion": rv}  # the last page: no token
        try:
            get(f"limit=2&continue={token}")
            raise AssertionError("a used token was accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code == 410
    finally:
        api.stop()
