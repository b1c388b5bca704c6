"""The pods the controller reads, watched cluster-wide by the controller itself, not by kopf.

What a pass reads of a pod is small: its labels and ``lvs.io/weight`` (``PodInfo``, shared
by the pods that read the same), and, for a director agent's pod in the operator's
namespace, its group, node and readiness (``DirectorPod``). kopf kept far more for each of
the cluster's pods: its own per-object memory and, per index, a store, a reverse entry and
the object's keys (~1.7 KiB a pod; 10,000 pods were ~17 MiB of the controller's live
objects, and a worker task per event). ``PodCache`` keeps a dict entry a pod.

The LIST is paged (``chunk_size``) and each page is folded in as it comes: no page's
bodies outlive it. Every object listed is passed to ``on_event`` (type ``None``, as kopf
passes the objects of a listing) and every one that went missing since the last list as
``DELETED``, so that the reconciler's memory of what each pod meant stays true across a
relist. A watch that expires (410) relists at once, any other failure after a backoff.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any

from ..listwatch import Backoff, KubeClient, Raw
from .groups import DIRECTOR_POD_LABELS, DirectorPod, director_pod
from .pools import PodInfo, PodKey, pod_info

log = logging.getLogger("lvs_operator.controller.pods")

LIST_CHUNK_SIZE = 500  # as kopf's LISTs (app.LIST_CHUNK_SIZE)
BACKOFF = Backoff(first=1.0, most=30.0)  # as the namespace informers'


_POD_RESOURCE: Any = None


def pod_resource() -> Any:
    """core/v1 pods as a lightkube generic resource: each object stays the dict the API
    server sent (lightkube's typed ``Pod`` builds a model of every field of every pod). Not
    put in lightkube's registry, where its typed ``Pod`` already is."""
    global _POD_RESOURCE
    if _POD_RESOURCE is None:
        from lightkube.generic_resource import GenericNamespacedResource, create_api_info

        class RawPod(GenericNamespacedResource):
            _api_info = create_api_info("", "v1", "Pod", "pods")

        _POD_RESOURCE = RawPod
    return _POD_RESOURCE


def _key(meta: Mapping[str, Any]) -> PodKey:
    # namespaces repeat across pods: one string each
    return (sys.intern(str(meta.get("namespace") or "")), str(meta.get("name") or ""))


class PodCache:
    """``pods``: (namespace, name) -> ``PodInfo`` of every pod in the cluster;
    ``directors``: name -> ``DirectorPod`` of the director agents' pods in ``namespace``;
    ``synced`` is set after the first full list. ``on_event(type, body)`` is called for
    every object listed (type None) or watched (``ADDED``, ``MODIFIED``, ``DELETED``)."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        on_event: Callable[[str | None, Raw], None],
        *,
        resource: Any = None,
        chunk_size: int = LIST_CHUNK_SIZE,
        backoff: Backoff = BACKOFF,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.on_event = on_event
        self.resource = resource
        self.chunk_size = chunk_size
        self.backoff = backoff
        self.on_restart = on_restart
        self.pods: dict[PodKey, PodInfo] = {}
        self.directors: dict[str, DirectorPod] = {}
        self.synced = asyncio.Event()

    def _is_director(self, key: PodKey, meta: Mapping[str, Any]) -> bool:
        labels = meta.get("labels") or {}
        return key[0] == self.namespace and all(
            labels.get(k) == v for k, v in DIRECTOR_POD_LABELS.items()
        )

    def apply(self, kind: str | None, body: Raw) -> PodKey:
        """Fold one object in (``kind`` None: listed), then tell ``on_event``."""
        meta = body.get("metadata") or {}
        key = _key(meta)
        if kind == "DELETED":
            self.pods.pop(key, None)
            if key[0] == self.namespace:
                self.directors.pop(key[1], None)
        else:
            self.pods[key] = pod_info(body)
            director = director_pod(body) if self._is_director(key, meta) else None
            if director is not None:
                self.directors[key[1]] = director
            elif key[0] == self.namespace:
                self.directors.pop(key[1], None)
        self.on_event(kind, body)
        return key

    def _gone(self, key: PodKey) -> None:
        """A pod the last list or watch had and this list has not: deleted meanwhile."""
        body = {"metadata": {"namespace": key[0], "name": key[1]}}
        self.apply("DELETED", body)

    def _restarted(self, reason: str) -> None:
        if self.on_restart is not None:
            self.on_restart(reason)

    async def _list(self) -> str:
        """List every pod, page by page; returns the list's resourceVersion."""
        seen: set[PodKey] = set()
        listing = self.client.list(
            self.resource or pod_resource(), namespace="*", chunk_size=self.chunk_size
        )
        async for obj in listing:
            seen.add(self.apply(None, obj.to_dict()))
        for key in [k for k in self.pods if k not in seen]:
            self._gone(key)
        self.synced.set()
        return str(listing.resourceVersion)

    async def run(self) -> None:
        """List, then watch from the list's resourceVersion, until cancelled."""
        from lightkube import ApiError

        resource = self.resource or pod_resource()
        delay = self.backoff.first
        while True:
            try:
                version = await self._list()
                delay = self.backoff.first
                while True:
                    async for kind, obj in self.client.watch(
                        resource, namespace="*", resource_version=version
                    ):
                        raw = obj.to_dict()
                        version = (raw.get("metadata") or {}).get("resourceVersion") or version
                        self.apply(kind, raw)
                    self._restarted("ended")  # watch again from the last version seen
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                if exc.status.code == 410:  # fell too far behind: list again now
                    log.info("watch of pods expired, relisting")
                    self._restarted("expired")
                    continue
                hint = ""
                if exc.status.code == 403:
                    hint = "; grant the controller list/watch on pods (deploy/rbac/controller.yaml)"
                log.warning("list/watch of pods failed (%s), relisting in %.1f s%s",
                            exc.status.message, delay, hint)  # fmt: skip
                self._restarted("failed")
            except Exception as exc:
                log.warning("list/watch of pods failed (%s), relisting in %.1f s",
                            str(exc) or type(exc).__name__, delay)  # fmt: skip
                self._restarted("failed")
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff.most)
