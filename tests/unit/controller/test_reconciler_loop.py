"""The Reconciler's execution: write order, read-your-writes, failures, event gating."""

from __future__ import annotations

import copy
import ipaddress
import logging
from typing import Any

import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import Status

from lvs_operator.controller.config import ControllerConfig
from lvs_operator.controller.manifests import service_name
from lvs_operator.controller.pools import PodInfo, index_body, slice_info
from lvs_operator.controller.reconciler import Reconciler

from . import objects as o

CONFIG = ControllerConfig(vip_ranges=(ipaddress.ip_network("192.0.2.0/24"),))


class Returned:
    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.obj)


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


class FakeClient:
    """Answers writes like an API server would (a new resourceVersion each time)."""

    def __init__(
        self, missing_namespace: str | None = None, refuse_services: str | None = None
    ) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.rv = 1000
        self.missing_namespace = missing_namespace
        self.refuse_services = refuse_services  # a 422 message for every Service
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.create_error: int | None = None  # the status a Secret create fails with

    def _kind(self, res: Any) -> str:
        name = getattr(res, "__name__", str(res))
        return name

    async def patch(self, res: Any, name: str, body: Any, namespace: str = "", **_: Any) -> Any:
        kind = self._kind(res)
        if namespace == self.missing_namespace:
            raise ApiError(status=Status(code=404, message=f'namespaces "{namespace}" not found'))
        self.calls.append(("patch", kind, f"{namespace}/{name}"))
        if kind == "Service" and self.refuse_services:
            raise ApiError(status=Status(code=422, message=self.refuse_services))
        self.rv += 1
        key = (kind.removesuffix("Status"), namespace, name)
        obj = _merge(self.objects.get(key, {}), body)
        obj.setdefault("metadata", {})
        obj["metadata"].update(
            {"name": name, "namespace": namespace, "resourceVersion": str(self.rv)}
        )
        obj["metadata"].setdefault("uid", f"uid-{kind}-{name}")
        self.objects[key] = obj
        return Returned(obj)

    async def delete(self, res: Any, name: str, namespace: str = "", **_: Any) -> None:
        self.calls.append(("delete", self._kind(res), f"{namespace}/{name}"))

    async def create(self, obj: Any, **_: Any) -> Any:
        if type(obj).__name__ != "Secret":
            self.calls.append(("create", type(obj).__name__, obj.reason))
            return obj
        meta = obj.metadata
        self.calls.append(("create", "Secret", f"{meta.namespace}/{meta.name}"))
        key = ("Secret", meta.namespace, meta.name)
        if self.create_error is not None:
            raise ApiError(status=Status(code=self.create_error, message="create refused"))
        if key in self.objects:
            raise ApiError(status=Status(code=409, message="already exists"))
        self.objects[key] = obj.to_dict()
        return obj


KEEP = ("apiVersion", "kind", "metadata", "spec", "status")


def reconciler(client: FakeClient) -> Reconciler:
    r = Reconciler(CONFIG, client)  # type: ignore[arg-type]
    vs = o.vs("site")
    vs["metadata"]["resourceVersion"] = "1"
    pool = o.pool("web")
    pool["metadata"]["resourceVersion"] = "2"
    sl = slice_info(o.endpoint_slice("web", [o.endpoint("10.0.0.1", "web-1")], {"http": 8080}))
    r.indices = {
        # as the index handlers keep them (the status as text)
        "lvs_virtualservers": {("web", "site"): [index_body(vs, KEEP)]},
        "lvs_pools": {("web", "web"): [index_body(pool, KEEP)]},
        "lvs_slices": {("web", service_name("web")): [sl]},
        "lvs_services": {},
    }
    r.pods.pods[("web", "web-1")] = PodInfo({"app": "web"})
    r.indexed.set()
    client.objects[("VirtualServer", "web", "site")] = copy.deepcopy(vs)
    client.objects[("RealServerPool", "web", "web")] = copy.deepcopy(pool)
    return r


async def test_writes_in_order_then_nothing_while_the_watch_lags() -> None:
    client = FakeClient()
    r = reconciler(client)
    failed, _ = await r.reconcile_once()
    assert failed == 0
    writes = [(verb, kind) for verb, kind, _ in client.calls if verb != "create"]
    assert writes == [
        ("patch", "Service"),
        ("patch", "RealServerPoolStatus"),
        ("patch", "DaemonSet"),
        # the status (what authorises the agents) before the group labels they watch by
        ("patch", "VirtualServerStatus"),
        ("patch", "VirtualServer"),
    ]
    events = {reason for verb, _, reason in client.calls if verb == "create"}
    assert {"DirectorGroupCreated", "MembersReady", "NoActiveDirector"} <= events

    # The indexes have not seen those writes yet: nothing is written again.
    client.calls.clear()
    failed, _ = await r.reconcile_once()
    assert (failed, client.calls) == (0, [])

    # The watch delivers what was written (kept as the index handlers keep it): still
    # nothing, and the overlay is dropped.
    r.indices["lvs_services"] = {
        key[1:]: [index_body(obj, ("metadata", "spec"), as_text="spec")]
        for key, obj in _returned(r, "service").items()
    }
    r.indices["lvs_virtualservers"] = {
        ("web", "site"): [index_body(_returned(r, "vs")[("vs", ("web", "site"))], KEEP)]
    }
    r.indices["lvs_pools"] = {
        ("web", "web"): [index_body(_returned(r, "pool")[("pool", ("web", "web"))], KEEP)]
    }
    r.daemonsets.store = {k[1]: v for k, v in _returned(r, "daemonset").items()}
    failed, _ = await r.reconcile_once()
    assert (failed, client.calls) == (0, [])
    assert r._overlay == {}


def _returned(r: Reconciler, kind: str) -> dict[Any, dict[str, Any]]:
    out = {}
    for (k, key), (_, obj) in r._overlay.items():
        if k == kind:
            out[(k, key) if kind != "service" else (k, *key)] = obj
    return out


async def test_each_groups_heartbeat_key_secret_is_created_once_after_its_daemonset() -> None:
    import base64

    client = FakeClient()
    r = reconciler(client)
    failed, _ = await r.reconcile_once()
    assert failed == 0
    kinds = [kind for _, kind, _ in client.calls if kind in ("DaemonSet", "Secret")]
    assert kinds == ["DaemonSet", "Secret"]  # the DaemonSet first: it owns the Secret
    ((key, secret),) = [(k, v) for k, v in client.objects.items() if k[0] == "Secret"]
    ((ds_key, ds),) = [(k, v) for k, v in client.objects.items() if k[0] == "DaemonSet"]
    assert key[1] == CONFIG.namespace and key[2] == ds_key[2] + "-peer"
    (owner,) = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "DaemonSet",
        ds_key[2],
        ds["metadata"]["uid"],
    )
    assert len(base64.b64decode(secret["data"]["key"])) == 32
    mounted = ds["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"]
    assert mounted == key[2]
    # known to exist: not asked again on the next passes
    client.calls.clear()
    assert (await r.reconcile_once())[0] == 0
    assert [c for c in client.calls if c[1] == "Secret"] == []


async def test_an_existing_key_secret_is_kept_and_a_refused_create_is_retried() -> None:
    client = FakeClient()
    r = reconciler(client)
    client.create_error = 403
    failed, _ = await r.reconcile_once()
    assert failed == 1  # retried with backoff; the agents wait for their key meanwhile
    client.create_error = None
    secret_name = next(c[2] for c in client.calls if c[1] == "Secret").split("/")[1]
    client.objects[("Secret", CONFIG.namespace, secret_name)] = {"data": {"key": "mine"}}
    client.calls.clear()
    failed, _ = await r.reconcile_once()
    assert failed == 0  # present (409): kept as it is, e.g. a key the admin provided
    assert [c[1] for c in client.calls if c[0] == "create" and c[1] == "Secret"] == ["Secret"]
    assert client.objects[("Secret", CONFIG.namespace, secret_name)] == {"data": {"key": "mine"}}
    client.calls.clear()
    assert (await r.reconcile_once())[0] == 0
    assert [c for c in client.calls if c[1] == "Secret"] == []


async def test_missing_operator_namespace_fails_and_posts_no_group_event() -> None:
    client = FakeClient(missing_namespace=CONFIG.namespace)
    r = reconciler(client)
    failed, _ = await r.reconcile_once()
    assert failed == 1
    reasons = {reason for verb, _, reason in client.calls if verb == "create"}
    assert "DirectorGroupCreated" not in reasons


def _pod_event(namespace: str, name: str, labels: dict[str, str], **meta: Any) -> dict[str, Any]:
    body = {"metadata": {"namespace": namespace, "name": name, "labels": labels, **meta}}
    return {"pod_event": True, "namespace": namespace, "name": name, "body": body}


async def test_pod_events_wake_only_when_they_can_change_the_plan() -> None:
    r = reconciler(FakeClient())
    await r.kick(**_pod_event("elsewhere", "x", {}))
    assert r._wake.is_set()  # no pass yet: no pool known
    await r.reconcile_once()  # learns the pools and their selectors
    r._wake.clear()
    await r.kick(**_pod_event("elsewhere", "x", {"app": "web"}))
    await r.kick(**_pod_event("web", "db-1", {"app": "db"}))  # no pool selects it
    assert not r._wake.is_set()
    await r.kick(**_pod_event("web", "web-2", {"app": "web"}))  # selected by pool web
    assert r._wake.is_set()
    r._wake.clear()
    await r.kick(**_pod_event("web", "web-2", {"app": "web"}, resourceVersion="9"))
    assert not r._wake.is_set()  # nothing membership reads changed
    await r.kick(**_pod_event("web", "web-2", {"app": "web"}, annotations={"lvs.io/weight": "3"}))
    assert r._wake.is_set()
    r._wake.clear()
    gone = _pod_event("web", "web-2", {"app": "web"}, annotations={"lvs.io/weight": "3"})
    await r.kick(**gone, type="DELETED")
    assert r._wake.is_set()
    r._wake.clear()
    director = {
        "app.kubernetes.io/managed-by": "lvs-operator",
        "app.kubernetes.io/component": "director",
        "lvs.io/director-group": "g1",
    }
    await r.kick(**_pod_event(CONFIG.namespace, "d1", director))  # a director agent
    assert r._wake.is_set()


async def test_lease_renewals_do_not_wake_but_reports_do() -> None:
    from datetime import UTC, datetime

    r = reconciler(FakeClient())
    woken: list[int] = []
    r.leases.on_change = lambda: woken.append(1)
    now = datetime.now(UTC)

    def lease(renew: datetime, programmed: dict[str, int], rv: str) -> dict[str, Any]:
        stamp = renew.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        obj = o.lease("lvs-director-g1", holder="n1", renew=stamp, programmed=programmed)
        obj["metadata"]["resourceVersion"] = rv
        return obj

    r.leases._apply("ADDED", lease(now, {"web/site": 1}, "1"))
    assert woken == [1]
    r.leases._apply("MODIFIED", lease(now, {"web/site": 1}, "2"))
    r.leases._apply("MODIFIED", lease(now, {"web/site": 1}, "3"))
    assert woken == [1]  # renewals: the store follows, nothing is planned
    assert r.leases.store["lvs-director-g1"]["metadata"]["resourceVersion"] == "3"
    r.leases._apply("MODIFIED", lease(now, {"web/site": 2}, "4"))
    assert woken == [1, 1]


async def test_capture_takes_the_indexes_from_handler_kwargs() -> None:
    r = Reconciler(CONFIG, FakeClient())  # type: ignore[arg-type]
    indices = {i: {} for i in Reconciler.INDEX_IDS}
    await r.kick(**indices, namespace="x")
    assert r.indices is not None and set(r.indices) == set(Reconciler.INDEX_IDS)
    assert r.indexed.is_set()


async def test_a_lease_renewed_since_the_last_pass_needs_no_pass_at_its_old_expiry() -> None:
    import asyncio
    from datetime import UTC, datetime, timedelta

    r = Reconciler(CONFIG, FakeClient(), debounce=0.0)  # type: ignore[arg-type]
    calls: list[datetime] = []

    def lease(expires: datetime) -> dict[str, Any]:
        renew = (expires - timedelta(seconds=10)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return o.lease("lvs-director-g1", holder="n1", renew=renew, duration=10)

    async def once() -> tuple[int, datetime]:
        r._planned_at = datetime.now(UTC)
        calls.append(r._planned_at)
        return 0, r._planned_at + timedelta(seconds=0.2)  # the Lease's expiry then

    r.reconcile_once = once  # type: ignore[method-assign]
    # renewed meanwhile (renewals wake nothing): it now runs out in 10 s
    r.leases.store = {"lvs-director-g1": lease(datetime.now(UTC) + timedelta(seconds=10))}
    task = asyncio.create_task(r._loop())
    r.wake()
    await asyncio.sleep(0.6)
    assert len(calls) == 1  # nothing ran out at 0.2 s: no pass
    # not renewed: it runs out at the time it was due, and that pass happens
    r.leases.store = {"lvs-director-g1": lease(datetime.now(UTC) + timedelta(seconds=0.1))}
    r.wake()
    for _ in range(50):  # due ~0.25 s after that pass; a loaded machine may take longer
        await asyncio.sleep(0.1)
        if len(calls) == 3:
            break
    task.cancel()
    assert len(calls) == 3


async def test_loop_retries_failed_writes_and_keeps_serving_events() -> None:
    import asyncio
    import time

    r = Reconciler(CONFIG, FakeClient(), debounce=0.0)  # type: ignore[arg-type]
    calls: list[float] = []
    t0 = time.monotonic()

    async def once() -> tuple[int, None]:
        calls.append(time.monotonic() - t0)
        return (1 if len(calls) <= 2 else 0), None

    r.reconcile_once = once  # type: ignore[method-assign]
    task = asyncio.create_task(r._loop())
    r.wake()
    await asyncio.sleep(0.2)
    assert len(calls) == 1  # failed: a retry is scheduled in ~1 s
    r.wake()  # an event meanwhile is served at once
    await asyncio.sleep(0.2)
    assert len(calls) == 2
    await asyncio.sleep(1.0)  # the scheduled retry
    task.cancel()
    assert len(calls) == 3 and calls[2] >= 1.0


async def test_a_refused_service_is_reported_on_the_pool_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refusal = 'Service "lvs-web" is invalid: spec.selector: Invalid value: "my app"'
    client = FakeClient(refuse_services=refusal)
    r = reconciler(client)
    caplog.set_level(logging.INFO, logger="lvs_operator.controller.reconciler")
    failed, _ = await r.reconcile_once()
    assert failed == 0  # reported, not retried
    # The pool's first status already says why (no NoMembers first).
    pool = client.objects[("RealServerPool", "web", "web")]
    ready = {c["type"]: c for c in pool["status"]["conditions"]}["Ready"]
    assert ready["reason"] == "ServiceRejected" and refusal in ready["message"]
    assert [c for c in client.calls if c[1] == "RealServerPoolStatus"] == [
        ("patch", "RealServerPoolStatus", "web/web")
    ]
    events = [reason for verb, _, reason in client.calls if verb == "create"]
    assert "ServiceRejected" in events and "NoMembers" not in events
    warned = [rec for rec in caplog.records if "write refused: Service" in rec.getMessage()]
    assert len(warned) == 1 and "RealServerPool web/web" in warned[0].getMessage()

    # Next passes: the same Service is not sent again, nothing is logged again.
    r.indices["lvs_pools"][("web", "web")] = [pool]  # type: ignore[index]
    client.calls.clear()
    for _ in range(3):
        failed, _ = await r.reconcile_once()
        assert failed == 0
    assert [c for c in client.calls if c[1] == "Service"] == []
    assert len([x for x in caplog.records if "write refused" in x.getMessage()]) == 1

    # The pool's selector is fixed: the new Service is applied, and the status follows.
    client.refuse_services = None
    changed = copy.deepcopy(pool)
    changed["spec"]["selector"] = {"matchLabels": {"app": "web", "tier": "front"}}
    changed["metadata"]["generation"] = 2
    r.indices["lvs_pools"][("web", "web")] = [changed]  # type: ignore[index]
    failed, _ = await r.reconcile_once()
    assert failed == 0
    assert ("patch", "Service", f"web/{service_name('web')}") in client.calls
    status = client.objects[("RealServerPool", "web", "web")]["status"]
    assert {c["type"]: c for c in status["conditions"]}["Ready"]["reason"] == "MembersReady"
    assert r._service_rejections == {}


async def test_the_heap_is_trimmed_after_full_passes_only() -> None:
    from types import SimpleNamespace

    from lvs_operator.heap import HeapTrimmer

    client = FakeClient()
    r = reconciler(client)
    trims: list[int] = []
    r.trimmer = HeapTrimmer(load=lambda: lambda pad: trims.append(pad) or 1)
    await r.reconcile_once()
    assert r.full_passes == 1 and trims == [0]
    pool_event = SimpleNamespace(plural="realserverpools")
    await r.kick(resource=pool_event, namespace="web", name="web")
    await r.reconcile_once()
    assert r.full_passes == 1 and trims == [0]  # a pass over what the event touched
    r.wake()
    await r.reconcile_once()
    assert r.full_passes == 2 and trims == [0, 0]
