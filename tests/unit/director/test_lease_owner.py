"""The Lease's owner: the agents name their group's DaemonSet as an ownerReference of the
Lease, so the garbage collector removes the Lease with it (``helm uninstall``), and every
whole-object write keeps the owners the Lease already has."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from lightkube import ApiError
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta, OwnerReference, Status
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Pod

from lvs_operator.director.election import (
    KubeLeaseApi,
    LeaseOwner,
    LeaseRecord,
    controlling_daemonset,
    with_owner,
)

DS = LeaseOwner("DaemonSet", "lvs-director-edge", "uid-1")
ARGO = LeaseOwner("Application", "edge", "uid-argo", "argoproj.io/v1alpha1")


def ref(kind: str, name: str, uid: str, controller: bool | None, api: str = "apps/v1") -> Any:
    return OwnerReference(apiVersion=api, kind=kind, name=name, uid=uid, controller=controller)


class FakeClient:
    """The calls KubeLeaseApi makes on lightkube's AsyncClient: get, create, replace."""

    def __init__(self, pod: Pod | None = None, get_errors: list[Exception] | None = None):
        self.pod = pod
        self.get_errors = list(get_errors or [])
        self.gets = 0
        self.written: list[Lease] = []

    async def get(self, kind: Any, name: str, namespace: str) -> Any:
        self.gets += 1
        if self.get_errors:
            raise self.get_errors.pop(0)
        assert kind is Pod and self.pod is not None
        return self.pod

    async def _echo(self, obj: Lease) -> Lease:
        self.written.append(obj)
        assert obj.metadata is not None
        obj.metadata.resourceVersion = str(len(self.written))
        return obj

    async def create(self, obj: Lease) -> Lease:
        return await self._echo(obj)

    async def replace(self, obj: Lease) -> Lease:
        return await self._echo(obj)


def agent_pod(*refs: Any) -> Pod:
    return Pod(metadata=ObjectMeta(name="lvs-director-edge-x1", ownerReferences=list(refs)))


def error(code: int) -> ApiError:
    return ApiError(status=Status(code=code, message="nope"))


def written_owners(lease: Lease) -> list[tuple[str, str, str, str]]:
    assert lease.metadata is not None
    return [(o.apiVersion, o.kind, o.name, o.uid) for o in lease.metadata.ownerReferences or []]


def test_with_owner_adds_keeps_others_and_replaces_a_recreated_daemonset() -> None:
    assert with_owner((), DS) == (DS,)
    assert with_owner((ARGO,), DS) == (ARGO, DS)
    assert with_owner((ARGO, DS), DS) == (ARGO, DS)  # already there: unchanged
    recreated = LeaseOwner("DaemonSet", DS.name, "uid-2")
    assert with_owner((DS, ARGO), recreated) == (ARGO, recreated)
    assert with_owner((ARGO,), None) == (ARGO,)


def test_controlling_daemonset_is_the_controller_reference_of_kind_daemonset() -> None:
    assert controlling_daemonset([ref("DaemonSet", DS.name, DS.uid, True)]) == DS
    assert controlling_daemonset([ref("DaemonSet", "other", "u", None)]) is None  # not controller
    assert controlling_daemonset([ref("ReplicaSet", "rs", "u", True)]) is None
    assert controlling_daemonset([ref("DaemonSet", "x", "u", True, api="example.io/v1")]) is None
    assert controlling_daemonset([]) is None


def test_writes_carry_the_owners_read_and_add_the_known_one() -> None:
    async def scenario() -> None:
        client = FakeClient()
        api = KubeLeaseApi(client, "lvs-system", "lvs-director-edge")
        # created before the owner is known: no ownerReferences at all
        first = await api.create(LeaseRecord(holder="node-a"))
        assert written_owners(client.written[-1]) == []
        assert first.owners == ()
        # a record read with an owner someone else added keeps it through a renewal
        renewed = await api.update(LeaseRecord(holder="node-a", resource_version="1",
                                               owners=(ARGO,)))  # fmt: skip
        assert written_owners(client.written[-1]) == [
            ("argoproj.io/v1alpha1", "Application", "edge", "uid-argo")
        ]
        assert renewed.owners == (ARGO,)  # read back from the object the server returned
        # once the agent knows its DaemonSet, the next write adds it beside the others
        api.owner = DS
        await api.update(LeaseRecord(holder="node-a", resource_version="2", owners=(ARGO,)))
        assert written_owners(client.written[-1]) == [
            ("argoproj.io/v1alpha1", "Application", "edge", "uid-argo"),
            ("apps/v1", "DaemonSet", DS.name, DS.uid),
        ]

    asyncio.run(scenario())


def test_find_owner_reads_the_pod_and_owns_every_later_write() -> None:
    async def scenario() -> None:
        pod = agent_pod(ref("DaemonSet", DS.name, DS.uid, True))
        client = FakeClient(pod, get_errors=[ConnectionError("refused"), error(500)])
        api = KubeLeaseApi(client, "lvs-system", "lvs-director-edge")
        owner = await api.find_owner(pod.metadata.name, first_wait=0.001)  # type: ignore[union-attr]
        assert owner == DS and api.owner == DS
        assert client.gets == 3  # two transient failures retried
        await api.create(LeaseRecord(holder="node-a"))
        assert written_owners(client.written[-1]) == [("apps/v1", "DaemonSet", DS.name, DS.uid)]

    asyncio.run(scenario())


@pytest.mark.parametrize("code", [403, 404])
def test_find_owner_gives_up_on_a_refusal_and_says_why(
    code: int, caplog: pytest.LogCaptureFixture
) -> None:
    client = FakeClient(agent_pod(), get_errors=[error(code)])
    api = KubeLeaseApi(client, "lvs-system", "lvs-director-edge")
    with caplog.at_level(logging.WARNING, logger="lvs_operator.director.election"):
        assert asyncio.run(api.find_owner("lvs-director-edge-x1", first_wait=0.001)) is None
    assert client.gets == 1 and api.owner is None
    (record,) = [r for r in caplog.records if "no owner" in r.getMessage()]
    assert record.__dict__["pod"] == "lvs-director-edge-x1"
    if code == 403:
        assert "`get` on pods" in record.getMessage()


def test_a_pod_no_daemonset_controls_leaves_the_lease_unowned() -> None:
    client = FakeClient(agent_pod(ref("ReplicaSet", "rs", "u", True)))
    api = KubeLeaseApi(client, "lvs-system", "lvs-director-edge")
    assert asyncio.run(api.find_owner("lvs-director-edge-x1")) is None
    assert api.owner is None


def test_the_spec_is_written_whole() -> None:
    """The owners ride along; the election's fields are still all written (a PUT is whole)."""

    async def scenario() -> None:
        client = FakeClient()
        api = KubeLeaseApi(client, "lvs-system", "lvs-director-edge", owner=DS)
        await api.create(LeaseRecord(holder="node-a", duration_seconds=3, transitions=4))
        spec = client.written[-1].spec
        assert isinstance(spec, LeaseSpec)
        assert (spec.holderIdentity, spec.leaseDurationSeconds, spec.leaseTransitions) == (
            "node-a", 3, 4,
        )  # fmt: skip

    asyncio.run(scenario())
