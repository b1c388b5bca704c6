"""A small Kubernetes API emulator for the data-plane tier (runs on the host, in a thread).

Just what the director agent uses, with the server behaviour its election depends on:

- one global ``resourceVersion`` counter; every write bumps it; a PUT whose
  ``metadata.resourceVersion`` is not the stored one is rejected with **409 Conflict** (as
  the real API server does), a POST of an existing name with 409 AlreadyExists;
- ``metadata.generation`` bumped when ``spec`` changes (custom resources);
- list and watch (``?watch=1``, from a ``resourceVersion``, ``timeoutSeconds``), across all
  namespaces or one, filtered by ``labelSelector`` (equality terms) and
  ``fieldSelector=metadata.name=...``; as the real watch cache does, a change that makes an
  object leave a watch's selection is sent to it as DELETED with the object as it was, and
  one that makes it enter as ADDED;
- lists in pages (``limit``, ``continue``: each page from the first page's snapshot, a
  token used or unknown answered 410 Expired);
- Leases (``coordination.k8s.io/v1``), VirtualServers and RealServerPools (``lvs.io/v1alpha1``),
  Events (accepted and kept).

The test drives objects directly (``api.apply(obj)``, ``api.delete(...)``, ``api.get(...)``)
and the agents in the VM reach it at ``http://10.0.2.2:<port>`` (qemu user networking maps the
host's loopback there). ``kubeconfig()`` writes a kubeconfig for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import json
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

# (group/version path prefix, plural) -> kind
KINDS = {
    ("apis/coordination.k8s.io/v1", "leases"): "Lease",
    ("apis/lvs.io/v1alpha1", "virtualservers"): "VirtualServer",
    ("apis/lvs.io/v1alpha1", "realserverpools"): "RealServerPool",
    ("api/v1", "events"): "Event",
    ("apis/events.k8s.io/v1", "events"): "Event",
}
API_VERSION = {
    "apis/coordination.k8s.io/v1": "coordination.k8s.io/v1",
    "apis/lvs.io/v1alpha1": "lvs.io/v1alpha1",
    "api/v1": "v1",
    "apis/events.k8s.io/v1": "events.k8s.io/v1",
}
CUSTOM = {"VirtualServer", "RealServerPool"}


def _json(body: Any, status: int = 200) -> web.Response:
    # exactly "application/json", as the API server sends it (lightkube compares the header)
    return web.Response(
        body=json.dumps(body).encode(), status=status, headers={"Content-Type": "application/json"}
    )


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return _json(body, status=code)


def _matches(obj: Mapping[str, Any], labels: str | None, fields: str | None) -> bool:
    meta = obj.get("metadata", {})
    for term in filter(None, (labels or "").split(",")):
        key, _, value = term.partition("=")
        key = key.rstrip("!")
        value = value.lstrip("=")
        if term.find("!=") >= 0:
            if meta.get("labels", {}).get(key) == value:
                return False
        elif meta.get("labels", {}).get(key) != value:
            return False
    for term in filter(None, (fields or "").split(",")):
        key, _, value = term.partition("=")
        value = value.lstrip("=")
        if key == "metadata.name" and meta.get("name") != value:
            return False
        if key == "metadata.namespace" and meta.get("namespace") != value:
            return False
    return True


class FakeApi:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        # rv, type, prefix/plural, object, the object before (None: created or deleted)
        self.history: list[tuple[int, str, str, dict[str, Any], dict[str, Any] | None]] = []
        self.rv = 100
        self.conflicts = 0  # 409s answered (a test can assert the agents met them)
        self.list_pages: list[tuple[str, int]] = []  # (resource, items) of each list answer
        self._continued: dict[str, tuple[list[dict[str, Any]], str]] = {}  # token -> rest, rv
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cond: asyncio.Condition | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._closing = False

    # -- storage (thread-safe; used by the server and by tests) ---------------------------------

    def _key(self, resource: str, namespace: str, name: str) -> tuple[str, str, str, str]:
        prefix, plural = resource.rsplit("/", 1)
        return (prefix, plural, namespace, name)

    def _record(
        self, kind: str, resource: str, obj: dict[str, Any], prev: dict[str, Any] | None = None
    ) -> None:
        self.history.append((self.rv, kind, resource, copy.deepcopy(obj), prev))
        if self._loop is not None and self._cond is not None:
            cond = self._cond

            async def notify() -> None:
                async with cond:
                    cond.notify_all()

            asyncio.run_coroutine_threadsafe(notify(), self._loop)

    def _write(self, resource: str, obj: dict[str, Any], create: bool) -> dict[str, Any]:
        prefix, plural = resource.rsplit("/", 1)
        kind = KINDS[(prefix, plural)]
        meta = obj.setdefault("metadata", {})
        key = self._key(resource, meta.get("namespace", ""), meta["name"])
        old = self.objects.get(key)
        self.rv += 1
        obj["apiVersion"] = API_VERSION[prefix]
        obj["kind"] = kind
        meta["resourceVersion"] = str(self.rv)
        if old is None:
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            if kind in CUSTOM:
                meta["generation"] = 1
        else:
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            if kind in CUSTOM:
                gen = old["metadata"].get("generation", 1)
                meta["generation"] = gen + (1 if obj.get("spec") != old.get("spec") else 0)
        self.objects[key] = obj
        prev = copy.deepcopy(old) if old is not None else None
        self._record("ADDED" if old is None or create else "MODIFIED", resource, obj, prev)
        return copy.deepcopy(obj)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace (no resourceVersion check): how a test sets the world up."""
        resource = self.resource_of(obj)
        obj = copy.deepcopy(obj)
        with self._lock:
            return self._write(resource, obj, create=False)

    def delete(
        self, obj_or_kind: dict[str, Any] | str, namespace: str = "", name: str = ""
    ) -> None:
        if isinstance(obj_or_kind, dict):
            resource = self.resource_of(obj_or_kind)
            namespace = obj_or_kind["metadata"].get("namespace", "")
            name = obj_or_kind["metadata"]["name"]
        else:
            resource = self.resource_for_kind(obj_or_kind)
        with self._lock:
            old = self.objects.pop(self._key(resource, namespace, name), None)
            if old is not None:
                self.rv += 1
                old["metadata"]["resourceVersion"] = str(self.rv)
                self._record("DELETED", resource, old)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            obj = self.objects.get(self._key(self.resource_for_kind(kind), namespace, name))
            return copy.deepcopy(obj) if obj else None

    @staticmethod
    def resource_for_kind(kind: str) -> str:
        for (prefix, plural), k in KINDS.items():
            if k == kind:
                return f"{prefix}/{plural}"
        raise KeyError(kind)

    def resource_of(self, obj: Mapping[str, Any]) -> str:
        return self.resource_for_kind(obj["kind"])

    # -- HTTP ------------------------------------------------------------------------------------

    def _parse(self, request: web.Request) -> tuple[str, str | None, str | None] | None:
        """(resource, namespace, name) from /api/v1/... or /apis/g/v/... paths."""
        parts = [p for p in request.path.split("/") if p]
        if not parts:
            return None
        if parts[0] == "api":
            prefix, rest = "/".join(parts[:2]), parts[2:]
        elif parts[0] == "apis":
            prefix, rest = "/".join(parts[:3]), parts[3:]
        else:
            return None
        namespace = None
        if len(rest) >= 2 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest or (prefix, rest[0]) not in KINDS:
            return None
        name = rest[1] if len(rest) > 1 else None
        return f"{prefix}/{rest[0]}", namespace, name

    async def handle(self, request: web.Request) -> web.StreamResponse:
        parsed = self._parse(request)
        if parsed is None:
            if request.path in ("/healthz", "/readyz", "/livez"):
                return web.Response(text="ok")
            return _status(404, "NotFound", f"the server could not find {request.path}")
        resource, namespace, name = parsed
        prefix, plural = resource.rsplit("/", 1)
        kind = KINDS[(prefix, plural)]
        method = request.method
        if method == "GET" and name is None:
            if request.query.get("watch") in ("1", "true"):
                return await self._watch(request, resource, namespace)
            return self._list(request, resource, namespace, kind)
        if method == "GET":
            with self._lock:
                obj = self.objects.get(self._key(resource, namespace or "", name or ""))
                if obj is None:
                    return _status(404, "NotFound", f'{plural} "{name}" not found')
                return _json(copy.deepcopy(obj))
        body = await request.json()
        if method == "POST":
            body.setdefault("metadata", {})
            body["metadata"]["namespace"] = namespace or ""
            if kind == "Event" and "name" not in body["metadata"]:
                body["metadata"]["name"] = f"ev-{uuid.uuid4().hex[:10]}"
            with self._lock:
                key = self._key(resource, namespace or "", body["metadata"].get("name", ""))
                if key in self.objects:
                    self.conflicts += 1
                    return _status(409, "AlreadyExists", f'{plural} "{key[3]}" already exists')
                body["metadata"].pop("resourceVersion", None)
                return _json(self._write(resource, body, create=True), status=201)
        if method == "PUT":
            with self._lock:
                key = self._key(resource, namespace or "", name or "")
                old = self.objects.get(key)
                if old is None:
                    return _status(404, "NotFound", f'{plural} "{name}" not found')
                sent = body.get("metadata", {}).get("resourceVersion")
                if sent and sent != old["metadata"]["resourceVersion"]:
                    self.conflicts += 1
                    return _status(
                        409,
                        "Conflict",
                        f'Operation cannot be fulfilled on {plural} "{name}": the object has '
                        "been modified; please apply your changes to the latest version and "
                        "try again",
                    )
                body.setdefault("metadata", {})
                body["metadata"]["name"] = name
                body["metadata"]["namespace"] = namespace or ""
                if kind in CUSTOM and "status" not in body and "status" in old:
                    body["status"] = old["status"]
                return _json(self._write(resource, body, create=False))
        if method == "DELETE":
            self.delete(kind, namespace or "", name or "")
            return _json({"kind": "Status", "status": "Success"})
        return _status(405, "MethodNotAllowed", method)

    def _selected(
        self, request: web.Request, resource: str, namespace: str | None, obj: dict[str, Any]
    ) -> bool:
        meta = obj["metadata"]
        if namespace is not None and meta.get("namespace") != namespace:
            return False
        return _matches(obj, request.query.get("labelSelector"), request.query.get("fieldSelector"))

    def _list(
        self, request: web.Request, resource: str, namespace: str | None, kind: str
    ) -> web.Response:
        prefix, plural = resource.rsplit("/", 1)
        limit = int(request.query.get("limit") or 0)
        token = request.query.get("continue")
        with self._lock:
            if token:
                pending = self._continued.pop(token, None)
                if pending is None:
                    return _status(410, "Expired", "the provided continue parameter is too "
                                   "old or malformed; list again without it")  # fmt: skip
                items, rv = pending
            else:
                items = [
                    copy.deepcopy(obj)
                    for (p, pl, _ns, _n), obj in sorted(self.objects.items())
                    if (p, pl) == (prefix, plural)
                    and self._selected(request, resource, namespace, obj)
                ]
                rv = str(self.rv)
            meta: dict[str, Any] = {"resourceVersion": rv}
            if 0 < limit < len(items):
                items, rest = items[:limit], items[limit:]
                meta["continue"] = next_token = uuid.uuid4().hex
                meta["remainingItemCount"] = len(rest)
                self._continued[next_token] = (rest, rv)
            self.list_pages.append((resource, len(items)))
        return _json(
            {
                "kind": f"{kind}List",
                "apiVersion": API_VERSION[prefix],
                "metadata": meta,
                "items": items,
            }
        )

    async def _watch(
        self, request: web.Request, resource: str, namespace: str | None
    ) -> web.StreamResponse:
        assert self._cond is not None
        since = int(request.query.get("resourceVersion") or 0)
        timeout = float(request.query.get("timeoutSeconds") or 300)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        if since == 0:  # no resourceVersion: the current state as ADDED, then changes
            with self._lock:
                prefix, plural = resource.rsplit("/", 1)
                initial = [
                    copy.deepcopy(o)
                    for (p, pl, _, _), o in self.objects.items()
                    if (p, pl) == (prefix, plural)
                    and self._selected(request, resource, namespace, o)
                ]
                since = self.rv
            for obj in initial:
                line = json.dumps({"type": "ADDED", "object": obj}) + "\n"
                await response.write(line.encode())
        try:
            while loop.time() < end and not self._closing:
                with self._lock:
                    events = [
                        (rv, t, o, prev)
                        for rv, t, res, o, prev in self.history
                        if rv > since and res == resource
                    ]
                    latest = self.rv
                for rv, type_, obj, prev in events:
                    now_in = self._selected(request, resource, namespace, obj)
                    was_in = prev is not None and self._selected(request, resource, namespace, prev)
                    if type_ == "MODIFIED" and was_in and not now_in:
                        # left the selection: DELETED, the object as it was (the real cache)
                        gone = copy.deepcopy(prev)
                        gone["metadata"]["resourceVersion"] = str(rv)
                        type_, obj, now_in = "DELETED", gone, True
                    elif type_ == "MODIFIED" and now_in and prev is not None and not was_in:
                        type_ = "ADDED"
                    if now_in:
                        line = json.dumps({"type": type_, "object": obj}) + "\n"
                        await response.write(line.encode())
                since = max(since, latest)
                async with self._cond:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._cond.wait(), min(1.0, end - loop.time()))
        except (ConnectionResetError, asyncio.CancelledError):
            return response
        return response

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeApi:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)

            async def main() -> None:
                self._cond = asyncio.Condition()
                app = web.Application()
                app.router.add_route("*", "/{tail:.*}", self.handle)
                self._runner = web.AppRunner(app, access_log=None)
                await self._runner.setup()
                site = web.TCPSite(self._runner, host, port)
                await site.start()
                server = site._server
                assert server is not None
                self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
                ready.set()

            loop.run_until_complete(main())
            loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True, name="fakeapi")
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake API server did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        self._closing = True
        if self._runner is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def kubeconfig(self, path: Path, server_host: str = "10.0.2.2") -> Path:
        """A kubeconfig pointing at this server (plain HTTP, no credentials)."""
        conf = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "fake", "cluster": {"server": f"http://{server_host}:{self.port}"}}
            ],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
        path.write_text(json.dumps(conf))
        return path
