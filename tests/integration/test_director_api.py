"""The director agent's API code against the real control plane (no kernel needed).

- the Lease election (``KubeLeaseApi`` + ``Elector``): create, renew, the API server's 409 on a
  stale resourceVersion, release (holderIdentity "") and the standby's takeover through its
  watch, the ``lvs.io/programmed`` and ``lvs.io/directors`` annotations;
- the agent's watches: only VirtualServers labelled with its director group arrive (the real
  server filters by labelSelector), and pool status members are read.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import pytest
from lightkube import ALL_NS, AsyncClient

from lvs_operator.api.contract import GROUP_LABEL
from lvs_operator.director.election import (
    DEFAULT_LEASE_DURATION,
    PROGRAMMED_ANNOTATION,
    ElectionConfig,
    Elector,
    KubeLeaseApi,
    LeaseConflict,
    parse_members,
)
from lvs_operator.director.peer import Confirmation
from lvs_operator.listwatch import list_then_watch

from .helpers import custom_resource

pytestmark = pytest.mark.integration

VS = custom_resource("lvs.io", "v1alpha1", "VirtualServer", "virtualservers")


async def test_election_on_a_real_lease(akube: AsyncClient, namespace: str) -> None:
    api_a = KubeLeaseApi(akube, namespace, "lvs-director-gint")
    api_b = KubeLeaseApi(akube, namespace, "lvs-director-gint")
    # a hears from b over the heartbeat (outage-tolerant mode, as shipped): its writes list b
    heard = {"node-b": Confirmation("10.0.0.2", time.monotonic(), gated=True)}
    a = Elector(ElectionConfig("node-a"), api_a, confirmations=lambda: heard)
    b = Elector(ElectionConfig("node-b"), api_b)
    await a.tick()
    assert a.is_leader
    first = await api_a.get()
    assert first is not None and first.holder == "node-a"
    assert first.duration_seconds == DEFAULT_LEASE_DURATION
    assert parse_members(first) == {"node-b": "10.0.0.2"}  # stored and read back as written

    a.set_annotation(PROGRAMMED_ANNOTATION, '{"demo/web": 2}')
    await a.tick()
    renewed = await api_a.get()
    assert renewed is not None
    assert renewed.resource_version != first.resource_version
    assert renewed.annotations[PROGRAMMED_ANNOTATION] == '{"demo/web": 2}'

    with pytest.raises(LeaseConflict):  # the real server's 409 on a stale resourceVersion
        await api_b.update(replace(first, holder="node-b"))

    task = asyncio.create_task(b.run())
    try:
        await asyncio.sleep(1.0)
        assert not b.is_leader
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await a.release()
        released = await api_a.get()
        assert released is not None
        while not b.is_leader and loop.time() - t0 < 5:
            await asyncio.sleep(0.02)
        assert b.is_leader, "the standby did not take the released Lease"
        print(f"\n[integration] takeover after release: {loop.time() - t0:.3f}s")
        assert loop.time() - t0 < 1.0
        now = await api_a.get()
        assert now is not None and now.holder == "node-b" and now.transitions == 1
    finally:
        await b.release()
        await asyncio.wait_for(task, 5)


def _vs(namespace: str, name: str, group: str, vip: str) -> Any:
    return VS.from_dict({
        "apiVersion": "lvs.io/v1alpha1",
        "kind": "VirtualServer",
        "metadata": {"name": name, "namespace": namespace, "labels": {GROUP_LABEL: group}},
        "spec": {"vip": vip, "ports": [{"port": 80}], "poolRef": {"name": "web"}},
    })  # fmt: skip


async def test_watch_sees_only_the_groups_virtual_servers(
    akube: AsyncClient, namespace: str, crds: list[str]
) -> None:
    seen: dict[str, dict[str, Any]] = {}
    events: list[tuple[str, str]] = []

    def reset(items: list[dict[str, Any]]) -> None:
        seen.clear()
        seen.update({o["metadata"]["name"]: o for o in items})

    def apply(kind: str, obj: dict[str, Any]) -> None:
        events.append((kind, obj["metadata"]["name"]))
        if kind == "DELETED":
            seen.pop(obj["metadata"]["name"], None)
        else:
            seen[obj["metadata"]["name"]] = obj

    await akube.create(_vs(namespace, "mine", "gint", "192.0.2.10"))
    task = asyncio.create_task(
        list_then_watch(
            akube,
            VS,
            namespace=ALL_NS,
            labels={GROUP_LABEL: "gint"},
            reset=reset,
            apply=apply,
            what="VS",
            server_timeout=240,
        )
    )
    try:
        for _ in range(100):
            if "mine" in seen:
                break
            await asyncio.sleep(0.05)
        await akube.create(_vs(namespace, "other", "gother", "192.0.2.11"))
        await akube.create(_vs(namespace, "late", "gint", "192.0.2.12"))
        for _ in range(100):
            if "late" in seen:
                break
            await asyncio.sleep(0.05)
        await akube.delete(VS, "mine", namespace=namespace)
        for _ in range(100):
            if "mine" not in seen:
                break
            await asyncio.sleep(0.05)
        assert set(seen) == {"late"}
        assert ("ADDED", "late") in events and ("DELETED", "mine") in events
        assert all(name != "other" for _, name in events)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_new_groups_agent_keeps_a_virtualserver_through_the_hand_over(
    akube: AsyncClient, namespace: str, crds: list[str]
) -> None:
    """The agent's two VirtualServer watches against the real server, the controller's writes
    of a hand-over made by hand in its order (status, then labels): the VirtualServer is
    staged, then served, and never missing from the agent's view in between, although the
    server sends the label change as DELETED (with the object as it was) on one watch and
    ADDED on the other, in no guaranteed order across the two."""
    from lightkube.types import PatchType

    from lvs_operator.api.contract import NEXT_GROUP_LABEL
    from lvs_operator.director.watches import Watches

    group, old, key = "gnew", "gold", (namespace, "moving")
    absent_after_seen: list[str] = []
    watches = Watches(lambda: None, lambda vip: None, group, None)

    def check() -> None:
        if key not in watches.virtual_servers and seen:
            absent_after_seen.append("missing")

    seen: list[bool] = []
    apply_main, apply_next = watches.apply_vs, watches.apply_next_vs

    def main(kind: str, o: dict[str, Any]) -> None:
        apply_main(kind, o)
        check()

    def nxt(kind: str, o: dict[str, Any]) -> None:
        apply_next(kind, o)
        check()

    watches.apply_vs, watches.apply_next_vs = main, nxt  # type: ignore[method-assign,assignment]
    body = _vs(namespace, "moving", old, "192.0.2.40").to_dict()
    body["metadata"]["labels"][NEXT_GROUP_LABEL] = group
    await akube.create(VS.from_dict(body))
    staged = {"directorGroup": old, "nextDirectorGroup": group, "acceptedVIP": "192.0.2.40"}
    await akube.patch(
        VS.Status, "moving", {"status": staged}, namespace=namespace, patch_type=PatchType.MERGE
    )
    tasks = watches.start(akube)
    try:
        await asyncio.wait_for(watches.vs_synced.wait(), 10)
        for _ in range(100):
            if key in watches.virtual_servers:
                break
            await asyncio.sleep(0.05)
        assert watches.staged == {key}
        seen.append(True)
        served = {"directorGroup": group, "nextDirectorGroup": None, "acceptedVIP": "192.0.2.40"}
        await akube.patch(
            VS.Status, "moving", {"status": served}, namespace=namespace,
            patch_type=PatchType.MERGE,
        )  # fmt: skip
        await akube.patch(
            VS, "moving", {"metadata": {"labels": {GROUP_LABEL: group, NEXT_GROUP_LABEL: None}}},
            namespace=namespace, patch_type=PatchType.MERGE,
        )  # fmt: skip
        for _ in range(100):
            if key in watches._stores["main"] and key not in watches._stores["next"]:
                break
            await asyncio.sleep(0.05)
        assert key in watches._stores["main"] and key not in watches._stores["next"]
        assert watches.staged == set() and absent_after_seen == []
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
