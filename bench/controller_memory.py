"""Where the controller's memory goes, in-process: no cluster, no VM.

    python bench/controller_memory.py [--virtualservers 1000] [--pods-per-pool 10]
        [--runs 3] [--mode list|watch] [--chunk-size N] [--idle-timeout S] [--no-trim]
        [--sizes] [--attribute]

Bodies as the API server would send them (pods as kwok shows them: labels, managedFields of
their creator and of kwok, the ServiceAccount volume, status with conditions; the pools'
EndpointSlices as the endpointslice controller writes them; the pools, VirtualServers and
their Services as the controller converged them) are written once to a temporary
directory by a separate process (``--phase prepare``). Each run is a fresh process:

- ``json``: what parsing a LIST of every pod at once holds (VmRSS before, parsed, dropped,
  after ``gc.collect()``, after glibc ``malloc_trim(0)``), and the same LIST in chunks;
- ``controller``: kopf's own watcher (``queueing.watcher``: one worker per object, its
  per-object memory, its indexes) fed the bodies — ``--mode list``: every kind as one
  initial LIST (a controller restarted on a full cluster) in pieces of kopf's
  ``settings.watching.chunk_size``, ``--mode watch``: one parsed event per object, pools
  and their objects first, then the pods after a first pass (a controller started before
  the objects were created, as ``bench/controller_scale.py`` does) — with the controller's
  real registry (``app.build_registry``: its index and event handlers, and the reconciler's
  ``kick``) and its kopf settings (``app.build_settings``: ``--chunk-size`` and
  ``--idle-timeout`` override them, ``--chunk-size 0`` lists unchunked), the pods going to
  the reconciler's own ``PodCache`` instead (podcache.py, as in the controller: the same
  pages, or one event each), then a full planning pass (``Reconciler._plan``) as after
  convergence.
  VmRSS after each step; ``--attribute``: tracemalloc (top files, and by owner: the
  innermost frame in the controller, kopf or a client library) and the deep size of each
  structure (kopf's per-object memories, each index, the pod cache, ``PlanState``).

Prints medians of ``--runs`` runs. In-process figures: not the controller's RSS against a
real control plane (``bench/controller_scale.py`` measures that).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import ctypes
import ctypes.util
import faulthandler
import gc
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lvs_operator.controller.pools import SliceInfo

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(REPO / "bench"))

KINDS = ("virtualservers", "realserverpools", "services", "endpointslices", "pods")
STAMP = "2026-01-01T00:00:00Z"


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


_LIBC: Any = None


def malloc_trim() -> bool:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(_LIBC.malloc_trim(0))


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]  # fmt: skip


def heap_stats() -> dict[str, float]:
    """MiB: pymalloc's arenas (and the bytes of live objects in them), glibc's heap in
    use and free (mallinfo2), and its mmapped blocks."""
    out: dict[str, float] = {}
    with tempfile.TemporaryFile("w+") as tmp:
        saved = os.dup(2)
        sys.stderr.flush()
        os.dup2(tmp.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        for line in tmp:
            if line.startswith("# arenas allocated current"):
                out["pymalloc arenas"] = int(
                    line.split("=")[1].replace(",", "")
                )  # 1 MiB each (3.11)
            elif line.startswith("# bytes in allocated blocks"):
                out["pymalloc live"] = int(line.split("=")[1].replace(",", "")) / 2**20
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if hasattr(libc, "mallinfo2"):
        libc.mallinfo2.restype = MallInfo2
        mi = libc.mallinfo2()
        out["malloc in use"] = mi.uordblks / 2**20
        out["malloc free"] = mi.fordblks / 2**20
        out["malloc mmapped"] = mi.hblkhd / 2**20
    return {k: round(v, 1) for k, v in out.items()}


# --------------------------------------------------------------------------- the bodies


def uid(*parts: object) -> str:
    h = hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def server_meta(meta: dict[str, Any], kind: str, i: int, managers: list[dict[str, Any]]) -> None:
    meta.setdefault("uid", uid(kind, meta.get("namespace"), meta["name"]))
    meta["uid"] = uid(kind, meta.get("namespace"), meta["name"])
    meta["resourceVersion"] = str(100000 + i)
    meta.setdefault("creationTimestamp", STAMP)
    meta["managedFields"] = managers


def fields(paths: dict[str, Any]) -> dict[str, Any]:
    """A fieldsV1 set from a nested dict of field names (the API server's shape)."""
    out: dict[str, Any] = {}
    for key, sub in paths.items():
        out[key] = fields(sub) if isinstance(sub, dict) else {}
    return out


def manager(name: str, op: str, fset: dict[str, Any], subresource: str = "") -> dict[str, Any]:
    m = {"manager": name, "operation": op, "apiVersion": "v1", "time": STAMP,
         "fieldsType": "FieldsV1", "fieldsV1": fset}  # fmt: skip
    if subresource:
        m["subresource"] = subresource
    return m


POD_SPEC_FIELDS = fields(
    {
        "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
        "f:spec": {
            'f:containers': {'k:{"name":"web"}': {".": {}, "f:image": {}, "f:imagePullPolicy": {},
                             "f:name": {}, "f:ports": {".": {}, 'k:{"containerPort":8080,'
                             '"protocol":"TCP"}': {".": {}, "f:containerPort": {}, "f:name": {},
                             "f:protocol": {}}}, "f:resources": {},
                             "f:terminationMessagePath": {}, "f:terminationMessagePolicy": {}}},
            "f:dnsPolicy": {}, "f:enableServiceLinks": {}, "f:nodeName": {},
            "f:restartPolicy": {}, "f:schedulerName": {}, "f:securityContext": {},
            "f:terminationGracePeriodSeconds": {},
        },
    }
)  # fmt: skip

POD_STATUS_FIELDS = fields(
    {
        "f:status": {
            "f:conditions": {
                **{f'k:{{"type":"{t}"}}': {".": {}, "f:lastProbeTime": {},
                   "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}}
                   for t in ("ContainersReady", "Initialized", "Ready", "PodScheduled")},
            },
            "f:containerStatuses": {}, "f:hostIP": {}, "f:hostIPs": {}, "f:phase": {},
            "f:podIP": {}, "f:podIPs": {".": {}, 'k:{"ip":"x"}': {".": {}, "f:ip": {}}},
            "f:startTime": {},
        }
    }
)  # fmt: skip


def kwok_pod(
    ns: str, name: str, labels: dict[str, str], node: str, ip: str, i: int, ready: bool = True
) -> dict[str, Any]:
    """A bare pod as the API server holds it once kwok runs it (bench/controller_scale.py's
    pods: one container, a named port; the ServiceAccount admission's volume)."""
    token = f"kube-api-access-{hashlib.md5(name.encode()).hexdigest()[:5]}"
    host_ip = f"10.0.{hash(node) % 250}.{1 + hash(node) % 250}"
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": dict(labels)},
        "spec": {
            "containers": [{
                "name": "web", "image": "registry.local/web:1.0", "imagePullPolicy": "IfNotPresent",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "resources": {}, "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "volumeMounts": [{"name": token, "readOnly": True,
                                  "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
            }],
            "dnsPolicy": "ClusterFirst", "enableServiceLinks": True, "nodeName": node,
            "preemptionPolicy": "PreemptLowerPriority", "priority": 0,
            "restartPolicy": "Always", "schedulerName": "default-scheduler",
            "securityContext": {}, "serviceAccount": "default", "serviceAccountName": "default",
            "terminationGracePeriodSeconds": 0,
            "tolerations": [
                {"effect": "NoExecute", "key": f"node.kubernetes.io/{k}", "operator": "Exists",
                 "tolerationSeconds": 300} for k in ("not-ready", "unreachable")
            ],
            "volumes": [{"name": token, "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt",
                               "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
                    "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ]}}],
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": t, "status": "True" if ready or t in ("Initialized", "PodScheduled")
                 else "False", "lastProbeTime": None, "lastTransitionTime": STAMP}
                for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
            ],
            "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
            "podIP": ip, "podIPs": [{"ip": ip}], "startTime": STAMP, "qosClass": "BestEffort",
            "containerStatuses": [{
                "name": "web", "image": "registry.local/web:1.0", "imageID": "",
                "ready": ready, "restartCount": 0, "started": True,
                "state": {"running": {"startedAt": STAMP}}, "lastState": {},
            }],
        },
    }  # fmt: skip
    server_meta(
        pod["metadata"], "pod", i,
        [manager("python-httpx", "Update", POD_SPEC_FIELDS),
         manager("kwok", "Update", POD_STATUS_FIELDS, "status")],
    )  # fmt: skip
    return pod


def slice_body(ns: str, svc: dict[str, Any], raw: SliceInfo, i: int) -> dict[str, Any]:
    """An EndpointSlice as the endpointslice controller writes it for a headless Service
    (``raw``: what controller_plan.build made of it)."""
    name = svc["metadata"]["name"]
    labels = {**(svc["metadata"].get("labels") or {}),
              "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
              "kubernetes.io/service-name": name, "service.kubernetes.io/headless": ""}  # fmt: skip
    endpoints = []
    for ep in raw.endpoints:
        target = {"kind": "Pod", "name": ep.pod, "namespace": ns, "uid": uid("pod", ns, ep.pod)}
        endpoints.append({"addresses": list(ep.addresses), "nodeName": ep.node,
                          "conditions": {"ready": True, "serving": True, "terminating": False},
                          "targetRef": target})  # fmt: skip
    body = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {
            "name": f"{name}-{hashlib.md5(name.encode()).hexdigest()[:5]}", "namespace": ns,
            "generateName": f"{name}-", "generation": 3, "labels": labels,
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": STAMP},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name,
                                 "uid": uid("service", ns, name), "controller": True,
                                 "blockOwnerDeletion": True}],
        },
        "endpoints": endpoints,
        "ports": [{"name": n, "port": port, "protocol": "TCP"} for n, port in raw.ports],
    }  # fmt: skip
    server_meta(body["metadata"], "slice", i, [manager("kube-controller-manager", "Update",
                fields({"f:addressType": {}, "f:endpoints": {}, "f:metadata": {
                    "f:annotations": {}, "f:generateName": {}, "f:labels": {},
                    "f:ownerReferences": {}}, "f:ports": {}}))])  # fmt: skip
    return body


def service_body(applied: dict[str, Any], i: int) -> dict[str, Any]:
    body = copy.deepcopy(applied)
    body["spec"].update(
        {
            "clusterIP": "None",
            "clusterIPs": ["None"],
            "type": "ClusterIP",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster",
            "sessionAffinity": "None",
        }
    )
    body["status"] = {"loadBalancer": {}}
    server_meta(body["metadata"], "service", i,
                [manager("lvs-operator", "Apply", fields({"f:metadata": {"f:labels": {}},
                         "f:spec": {"f:ports": {}, "f:selector": {}}}))])  # fmt: skip
    return body


def prepare(out: Path, n: int, pods: int) -> None:
    """Write each kind's list, as the API server would send it, to ``out``."""
    import controller_plan as cp

    from lvs_operator.api.contract import COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL
    from lvs_operator.controller.groups import GROUP_LABEL
    from lvs_operator.controller.manifests import DIRECTOR_COMPONENT

    world = cp.build(n, pods)
    now = cp.NOW + timedelta(seconds=1)
    for _ in range(5):
        p = cp.plan(world, cp.CONFIG, now)
        if not p.writes:
            break
        cp.apply(world, p)
    lists: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    for i, vs in enumerate(world.virtualservers):
        body = copy.deepcopy(dict(vs))
        server_meta(body["metadata"], "vs", i, [
            manager("kubectl", "Apply", fields({"f:spec": {"f:vip": {}, "f:ports": {},
                                                "f:poolRef": {"f:name": {}}}})),
            manager("lvs-operator", "Apply", fields({"f:status": {"f:conditions": {},
                                                     "f:acceptedVIP": {}}}), "status"),
        ])  # fmt: skip
        lists["virtualservers"].append(body)
    for i, pool in enumerate(world.pools):
        body = copy.deepcopy(dict(pool))
        server_meta(body["metadata"], "pool", i, [
            manager("kubectl", "Apply", fields({"f:spec": {"f:selector": {}}})),
            manager("lvs-operator", "Apply", fields({"f:status": {"f:members": {},
                                                     "f:conditions": {}}}), "status"),
        ])  # fmt: skip
        lists["realserverpools"].append(body)
    for i, (key, svc) in enumerate(sorted(world.services.items())):
        lists["services"].append(service_body(dict(svc), i))
        raws = world.slices.get(key) or []
        for raw in raws:
            lists["endpointslices"].append(slice_body(key[0], dict(svc), raw, i))
    k = 0
    for (ns, _), raws in sorted(world.slices.items()):
        for raw in raws:
            for ep in raw.endpoints:
                labels = dict(world.pods[(ns, ep.pod)].labels)
                lists["pods"].append(kwok_pod(ns, ep.pod, labels, ep.node, ep.addresses[0], k))
                k += 1
    for d in world.director_pods:
        labels = {MANAGED_BY_LABEL: MANAGED_BY, COMPONENT_LABEL: DIRECTOR_COMPONENT,
                  GROUP_LABEL: d.group}  # fmt: skip
        lists["pods"].append(kwok_pod(cp.CONFIG.namespace, d.name, labels, d.node, "10.9.0.1", k))
        k += 1
    for kind, items in lists.items():
        doc = {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "200000"},
               "items": items}  # fmt: skip
        (out / f"{kind}.json").write_text(json.dumps(doc, separators=(",", ":")))
    extra = {"leases": dict(world.leases), "daemonsets": dict(world.daemonsets)}
    (out / "informers.json").write_text(json.dumps(extra))


# --------------------------------------------------------------------------- json phase


def phase_json(data: Path, chunk: int) -> dict[str, float]:
    """What a LIST of every pod holds parsed, and what is left once it is dropped."""
    raw = (data / "pods.json").read_bytes()
    if chunk:
        items = json.loads(raw)["items"]
        pieces = [
            json.dumps({"items": items[i : i + chunk]}, separators=(",", ":")).encode()
            for i in range(0, len(items), chunk)
        ]
        del items
    else:
        pieces = [raw]
    del raw
    gc.collect()
    malloc_trim()
    out = {"input MiB": sum(map(len, pieces)) / 2**20, "before": rss_mib()}
    peak = 0.0
    for piece in pieces:  # as aiohttp's response.json(): bytes -> str -> objects
        text = piece.decode()
        doc = json.loads(text)
        del text
        peak = max(peak, rss_mib())
        del doc
    out["parsed (peak)"] = peak
    out["dropped"] = rss_mib()
    gc.collect()
    out["gc.collect()"] = rss_mib()
    malloc_trim()
    out["malloc_trim(0)"] = rss_mib()
    return out


# --------------------------------------------------------------------------- controller


class NoClient:
    """The reconciler's client: never called (the bench plans, it does not write)."""


def owner_of(frames: Any) -> str:
    """The innermost frame of a traceback in code the controller is made of."""
    for frame in frames:  # tracemalloc: most recent first
        f = frame.filename
        for mark in ("lvs_operator/", "kopf/", "aiohttp/", "lightkube/", "httpx/", "bench/"):
            at = f.find(mark)
            if at >= 0:
                return f[at:] + ":" + str(frame.lineno)
    return frames[0].filename.rsplit("/", 1)[-1] + ":" + str(frames[0].lineno)


def deep_size(root: Any, seen: set[int]) -> int:
    """Bytes of the objects reachable from ``root`` not in ``seen`` (adds them), not
    following modules, classes, functions or the event loop."""
    import types

    stop = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
            types.CodeType, types.FrameType, types.MethodType,
            asyncio.AbstractEventLoop)  # fmt: skip
    total = 0
    todo = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, stop):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        todo.extend(gc.get_referents(obj))
    return total


async def phase_controller(data: Path, args: argparse.Namespace) -> dict[str, Any]:
    import functools
    import ipaddress
    import tracemalloc

    import controller_plan as cp
    from kopf._cogs.aiokits import aiotoggles
    from kopf._cogs.clients import watching
    from kopf._cogs.structs import ephemera, references
    from kopf._core.actions import lifecycles
    from kopf._core.engines import indexing
    from kopf._core.reactor import inventory, processing, queueing

    from lvs_operator.controller import app
    from lvs_operator.controller.config import ControllerConfig
    from lvs_operator.controller.reconciler import Reconciler

    config = ControllerConfig(vip_ranges=(ipaddress.ip_network("10.0.0.0/8"),))
    from lvs_operator.heap import HeapTrimmer, load_malloc_trim

    trim_ms: list[float] = []

    def timed_trim() -> Callable[[int], int] | None:
        fn = load_malloc_trim()
        if fn is None or args.no_trim:
            return None

        def trim(pad: int) -> int:
            t = time.perf_counter()
            try:
                return fn(pad)
            finally:
                trim_ms.append((time.perf_counter() - t) * 1000)

        return trim

    reconciler = Reconciler(config, NoClient(), trimmer=HeapTrimmer(timed_trim))  # type: ignore[arg-type]
    registry = app.build_registry(reconciler, config)
    settings = app.build_settings()
    if args.idle_timeout is not None:
        settings.queueing.idle_timeout = args.idle_timeout
    if args.chunk_size is not None:
        settings.watching.chunk_size = args.chunk_size or None
    extra = json.loads((data / "informers.json").read_text())
    reconciler.leases.store = extra["leases"]
    reconciler.daemonsets.store = extra["daemonsets"]
    del extra
    gc.collect()
    malloc_trim()
    out: dict[str, Any] = {
        "kopf settings": f"watching.chunk_size={settings.watching.chunk_size}, "
        f"queueing.idle_timeout={settings.queueing.idle_timeout}",
        "imports, registry": rss_mib(),
    }
    if args.attribute:
        tracemalloc.start(args.frames)

    resources = {
        "virtualservers": references.Resource("lvs.io", "v1alpha1", "virtualservers",
                                              kind="VirtualServer", namespaced=True),
        "realserverpools": references.Resource("lvs.io", "v1alpha1", "realserverpools",
                                               kind="RealServerPool", namespaced=True),
        "services": references.Resource("", "v1", "services", kind="Service", namespaced=True),
        "endpointslices": references.Resource("discovery.k8s.io", "v1", "endpointslices",
                                              kind="EndpointSlice", namespaced=True),
    }  # fmt: skip
    indexers = indexing.OperatorIndexers()
    indexers.ensure(registry._indexing.get_all_handlers())
    memories = inventory.ResourceMemories()
    memo = ephemera.AnyMemo(ephemera.Memo())
    event_queue: asyncio.Queue[Any] = asyncio.Queue()
    operator_indexed = aiotoggles.ToggleSet(all)
    delivered = {k: asyncio.Event() for k in KINDS}
    go = {k: asyncio.Event() for k in KINDS}

    async def events(resource: references.Resource, **_: Any) -> AsyncIterator[Any]:
        kind = resource.plural
        async for event in bodies(kind):
            yield event
        await asyncio.Event().wait()

    async def bodies(kind: str) -> AsyncIterator[Any]:
        """The events of a kind as the API server would send them (after ``go[kind]``)."""
        await go[kind].wait()
        raw = (data / f"{kind}.json").read_bytes()
        if args.mode == "list":
            pieces = [raw]
            chunk = settings.watching.chunk_size
            if chunk:
                items = json.loads(raw)["items"]
                pieces = [json.dumps({"items": items[i : i + chunk]}, separators=(",", ":"))
                          .encode() for i in range(0, len(items), chunk)]  # fmt: skip
                del items
            del raw
            for piece in pieces[:]:
                pieces.pop(0)
                doc = json.loads(piece.decode())
                del piece
                for obj in doc["items"]:
                    yield {"type": None, "object": obj}
                    del obj
                del doc
            yield watching.Bookmark.LISTED
        else:
            yield watching.Bookmark.LISTED
            lines = [json.dumps(o).encode() for o in json.loads(raw)["items"]]
            del raw
            gc.collect()
            for k, line in enumerate(lines):  # one watch event each, parsed on arrival
                lines[k] = b""
                yield {"type": "ADDED", "object": json.loads(line.decode())}
                del line
                if k % args.rate == args.rate - 1:
                    await asyncio.sleep(1)
            del lines
        delivered[kind].set()

    async def pod_cache() -> None:
        """The pods go to the reconciler's own cache (podcache.py), as the controller's
        watch of them does: the listed pods page by page, then one event each."""
        async for event in bodies("pods"):
            if isinstance(event, dict):
                reconciler.pods.apply(event["type"], event["object"])
        await asyncio.Event().wait()

    watching.infinite_watch = events  # type: ignore[assignment]
    processor = functools.partial(
        processing.process_resource_event,
        lifecycle=lifecycles.get_default_lifecycle(),
        registry=registry, settings=settings, indexers=indexers, memories=memories,
        memobase=memo, event_queue=event_queue,
    )  # fmt: skip
    watchers = []
    for kind, resource in resources.items():
        toggle = await operator_indexed.make_toggle(name=kind) if args.indexed_wait else None
        watchers.append(asyncio.create_task(queueing.watcher(
            namespace=None, settings=settings, resource=resource,
            processor=functools.partial(processor, resource=resource),
            operator_indexed=operator_indexed if args.indexed_wait else None,
            resource_indexed=toggle,
        )))  # fmt: skip
    watchers.append(asyncio.create_task(pod_cache()))

    async def settle() -> None:
        """Until every worker of kopf's is gone (idle_timeout after its last event)."""
        await asyncio.sleep(0.2)
        while [t for t in asyncio.all_tasks() if t.get_coro().__name__ == "worker"]:  # type: ignore[union-attr]
            await asyncio.sleep(0.2)

    async def until(event: asyncio.Event) -> None:
        """``event``, or the exception of a watcher that died."""
        waiter = asyncio.ensure_future(event.wait())
        await asyncio.wait([waiter, *watchers], return_when=asyncio.FIRST_COMPLETED)
        for w in watchers:
            if w.done():
                w.result()
                raise RuntimeError("a watcher stopped")

    now = cp.NOW + timedelta(seconds=1)  # the time the bodies were converged at
    t0 = time.process_time()
    first = [k for k in KINDS if k != "pods"]
    for kind in first:
        go[kind].set()
    for kind in first:
        await until(delivered[kind])
    if args.mode == "watch":
        await settle()
        p = reconciler._plan(None, now)  # a first pass: pod events then know the pools
        reconciler._pool_selectors = p.pool_selectors
        del p
    go["pods"].set()
    await until(delivered["pods"])
    out["events delivered"] = rss_mib()
    await settle()
    out["workers gone"] = rss_mib()
    p = reconciler._plan(None, now)
    reconciler._pool_selectors = p.pool_selectors
    out["plan"] = f"{p.writes} writes, {len(reconciler._pods_read)} pods remembered"
    del p
    out["CPU s"] = time.process_time() - t0
    out["trims after full passes (ms each)"] = [round(ms, 1) for ms in trim_ms]
    out["full pass"] = rss_mib()
    gc.collect()
    out["gc.collect()"] = rss_mib()
    out["heap"] = heap_stats()
    malloc_trim()
    out["malloc_trim(0)"] = rss_mib()
    import threading

    out["threads"] = threading.active_count()
    counts = {k: len(v.index) for k, v in indexers.items()}
    out["objects"] = f"{len(memories._items)} kopf memories; index keys {counts}"
    if args.attribute:
        out["traced peak MiB"] = tracemalloc.get_traced_memory()[1] / 2**20
        snap = tracemalloc.take_snapshot()
        tracemalloc.stop()
        by_file: dict[str, int] = {}
        by_owner: dict[str, int] = {}
        for stat in snap.statistics("traceback"):
            f = stat.traceback[0].filename
            f = f[f.find("site-packages/") + 14 :] if "site-packages/" in f else f
            by_file[f] = by_file.get(f, 0) + stat.size
            owner = owner_of(stat.traceback)
            by_owner[owner] = by_owner.get(owner, 0) + stat.size
        out["traced MiB"] = sum(by_file.values()) / 2**20
        out["top files"] = sorted(by_file.items(), key=lambda kv: -kv[1])[:12]
        out["top owners"] = sorted(by_owner.items(), key=lambda kv: -kv[1])[:20]
    if args.attribute or args.sizes:
        seen: set[int] = set()
        for w in watchers:
            seen.add(id(w))
        sizes = {"kopf memories": deep_size(memories._items, seen)}
        for k, v in indexers.items():
            sizes[f"index {k}"] = deep_size(v.index, seen)
        sizes["pod cache"] = deep_size((reconciler.pods.pods, reconciler.pods.directors), seen)
        sizes["PlanState"] = deep_size(reconciler._state, seen)
        sizes["reconciler._pods_read"] = deep_size(reconciler._pods_read, seen)
        sizes["reconciler._world (rest)"] = deep_size(reconciler._world, seen)
        out["deep sizes (MiB, each without what those before it hold)"] = {
            k: round(v / 2**20, 1) for k, v in sizes.items()
        }
        del seen
        kinds: dict[str, list[int]] = {}
        for o in gc.get_objects():
            c = kinds.setdefault(type(o).__qualname__, [0, 0])
            c[0] += 1
            c[1] += sys.getsizeof(o)
        out["gc-tracked objects by type (count, MiB), top 12"] = [
            (k, c, round(b / 2**20, 1))
            for k, (c, b) in sorted(kinds.items(), key=lambda kv: -kv[1][1])[:12]
        ]
    for w in watchers:
        w.cancel()
    return out


# --------------------------------------------------------------------------- driver


def run_phase(data: Path, phase: str, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--phase", phase, "--data", str(data), *extra]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def show(title: str, runs: list[dict[str, Any]]) -> None:
    print(f"{title} (median of {len(runs)} runs)")
    for key, value in runs[0].items():
        if isinstance(value, (int, float)):
            vals = [r[key] for r in runs]
            unit = "" if key.endswith("s") or "MiB" in key else " MiB"
            print(f"  {key:24} {statistics.median(vals):8.1f}{unit}   "
                  f"(runs: {', '.join(f'{v:.1f}' for v in vals)})")  # fmt: skip
        elif isinstance(value, dict) and all(isinstance(v, (int, float)) for v in value.values()):
            medians = {k: statistics.median(r[key][k] for r in runs) for k in value}
            print(f"  {key}: {medians}")
        elif isinstance(value, list) and value and isinstance(value[0], (list, tuple)):
            print(f"  {key} (first run):")
            for row in value:
                if len(row) == 2:  # (name, bytes)
                    print(f"    {row[1] / 2**20:7.1f} MiB  {row[0]}")
                else:
                    print(f"    {row}")
        else:
            print(f"  {key}: {value}")


def main() -> int:
    faulthandler.register(signal.SIGUSR1)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--virtualservers", type=int, default=1000)
    ap.add_argument("--pods-per-pool", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mode", choices=("list", "watch"), default="list")
    ap.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="kopf's settings.watching.chunk_size (default: the controller's; 0: unchunked)",
    )
    ap.add_argument("--rate", type=int, default=2000, help="watch mode: events per second")
    ap.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        help="kopf's settings.queueing.idle_timeout, for its workers (default: the controller's)",
    )
    ap.add_argument(
        "--indexed-wait",
        action="store_true",
        help="kopf's wait of each listed object for the whole operator's indexing "
        "(each toggle wakes every waiting worker: quadratic CPU; no memory)",
    )
    ap.add_argument("--no-trim", action="store_true", help="no malloc_trim after full passes")
    ap.add_argument("--attribute", action="store_true", help="tracemalloc and deep sizes")
    ap.add_argument("--frames", type=int, default=8, help="tracemalloc's frames per trace")
    ap.add_argument("--sizes", action="store_true", help="deep sizes only (fast)")
    ap.add_argument("--skip-json", action="store_true")
    ap.add_argument("--phase", default="", help=argparse.SUPPRESS)
    ap.add_argument("--data", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase == "prepare":
        prepare(Path(args.data), args.virtualservers, args.pods_per_pool)
        return 0
    if args.phase == "json":
        print(json.dumps(phase_json(Path(args.data), args.chunk_size or 0)))
        return 0
    if args.phase == "controller":
        print(json.dumps(asyncio.run(phase_controller(Path(args.data), args))))
        return 0
    with tempfile.TemporaryDirectory(prefix="controller-memory-") as tmp:
        data = Path(tmp)
        subprocess.run([sys.executable, __file__, "--phase", "prepare", "--data", tmp,
                        "--virtualservers", str(args.virtualservers),
                        "--pods-per-pool", str(args.pods_per_pool)], check=True)  # fmt: skip
        sizes = {p.stem: p.stat().st_size / 2**20 for p in sorted(data.glob("*.json"))}
        print("bodies (MiB of JSON): " + ", ".join(f"{k} {v:.1f}" for k, v in sizes.items()))
        from lvs_operator.controller import app

        shipped = app.build_settings()
        if args.chunk_size is None:
            args.chunk_size = shipped.watching.chunk_size or 0
        common = ["--chunk-size", str(args.chunk_size)]
        if not args.skip_json:
            show(f"LIST of every pod parsed and dropped (chunk size {args.chunk_size or 'none'})",
                 [run_phase(data, "json", args, common) for _ in range(args.runs)])  # fmt: skip
        ctl = [*common, "--frames", str(args.frames), "--mode", args.mode, "--rate",
               str(args.rate)]  # fmt: skip
        ctl += [] if args.idle_timeout is None else ["--idle-timeout", str(args.idle_timeout)]
        ctl += ["--no-trim"] if args.no_trim else []
        ctl += ["--indexed-wait"] if args.indexed_wait else []
        ctl += ["--sizes"] if args.sizes else []
        show(
            f"controller in-process, {args.mode} mode",
            [run_phase(data, "controller", args, ctl) for _ in range(args.runs)],
        )
        if args.attribute:
            show(
                "controller with tracemalloc (its RSS includes tracemalloc's own)",
                [run_phase(data, "controller", args, [*ctl, "--attribute"])],
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
