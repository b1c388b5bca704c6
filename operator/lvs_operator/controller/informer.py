"""A small list+watch cache of one kind in one namespace (lightkube), for the objects the
controller reads only in its own namespace (the groups' Leases and DaemonSets), so its RBAC
stays namespaced for them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from lightkube import ApiError, AsyncClient

log = logging.getLogger(__name__)


class Informer:
    """Keeps ``store`` (name → object as a dict) in step with the API server and calls
    ``on_change`` after the first full list and after every event."""

    def __init__(
        self,
        client: AsyncClient,
        resource: Any,
        namespace: str,
        on_change: Callable[[], None],
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.labels: dict[str, Any] = dict(labels or {})
        self.on_change = on_change
        self.store: dict[str, dict[str, Any]] = {}
        self.synced = asyncio.Event()
        self.kind = getattr(resource, "__name__", str(resource))

    async def run(self) -> None:
        delay = 1.0
        while True:
            try:
                listing = self.client.list(
                    self.resource, namespace=self.namespace, labels=self.labels or None
                )
                items: dict[str, dict[str, Any]] = {}
                async for obj in listing:
                    items[obj.metadata.name] = obj.to_dict()
                version = listing.resourceVersion
                self.store = items
                self.synced.set()
                self.on_change()
                delay = 1.0
                async for kind, obj in self.client.watch(
                    self.resource,
                    namespace=self.namespace,
                    labels=self.labels or None,
                    resource_version=version,
                ):
                    name = obj.metadata.name
                    if kind == "DELETED":
                        self.store.pop(name, None)
                    else:
                        self.store[name] = obj.to_dict()
                    self.on_change()
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                if exc.status.code == 410:  # the watch fell too far behind: list again
                    continue
                log.warning(
                    "watching %s in namespace %s failed (%s); retrying in %.0f s; if this is "
                    "403, grant the controller list/watch on them (deploy/rbac/controller.yaml)",
                    self.kind,
                    self.namespace,
                    exc.status.message,
                    delay,
                )
            except Exception as exc:
                log.warning(
                    "watching %s in namespace %s failed: %s; retrying in %.0f s",
                    self.kind,
                    self.namespace,
                    exc,
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
