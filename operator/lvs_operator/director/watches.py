"""The agent's caches of the API: the group's VirtualServers and every RealServerPool's
members and health check, kept by list+watch (``informer``).

A cache change calls ``on_change()`` (the agent converges); a VIP seen in a VirtualServer
calls ``on_vip(vip)`` (the agent owns it from then on). The first converge waits for both
initial lists (``vs_synced``, ``pools_synced``), so a restart never removes anything
because of a partial view.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, Protocol

from lvs_operator.api.contract import GROUP_LABEL
from lvs_operator.api.realserverpool import (
    HealthCheck,
    PoolMember,
    RealServerPool,
    RealServerPoolStatus,
)
from lvs_operator.api.validation import ValidationError
from lvs_operator.api.virtualserver import VirtualServer

from .table import ServiceKey
from .vip import canonical

log = logging.getLogger("lvs_operator.director.watches")

ObjectKey = tuple[str, str]  # (namespace, name)
Raw = dict[str, Any]  # an object as the API serves it


class KubeObject(Protocol):
    def to_dict(self) -> Raw: ...


class KubeList(Protocol):
    resourceVersion: str

    def __aiter__(self) -> AsyncIterator[KubeObject]: ...


class KubeClient(Protocol):
    """What the agent uses of lightkube's AsyncClient."""

    def list(self, *args: Any, **kwargs: Any) -> Any: ...

    def watch(self, *args: Any, **kwargs: Any) -> Any: ...

    async def close(self) -> None: ...


def object_key(obj: Mapping[str, Any]) -> ObjectKey:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace", "")), str(meta.get("name", "")))


@functools.cache
def resources() -> dict[str, Any]:
    """lightkube's generic resources for the kinds the agent watches, by kind (made once)."""
    from lightkube.generic_resource import create_namespaced_resource

    return {
        kind: create_namespaced_resource("lvs.io", "v1alpha1", kind, plural)
        for kind, plural in (
            ("VirtualServer", "virtualservers"),
            ("RealServerPool", "realserverpools"),
        )
    }


async def informer(
    client: KubeClient,
    resource: Any,
    labels: Mapping[str, str] | None,
    apply: Callable[[str, Raw], None],
    reset: Callable[[list[Raw]], None],
    what: str,
    server_timeout: int = 240,
) -> None:
    """List then watch, for ever; any watch error (410 Gone included) relists."""
    from lightkube import ALL_NS

    backoff = 0.2
    while True:
        try:
            listing = client.list(resource, namespace=ALL_NS, labels=dict(labels or {}) or None)
            items = [obj.to_dict() async for obj in listing]
            reset(items)
            version = listing.resourceVersion
            backoff = 0.2
            async for kind, obj in client.watch(
                resource,
                namespace=ALL_NS,
                labels=dict(labels or {}) or None,
                resource_version=version,
                server_timeout=server_timeout,
            ):
                apply(kind, obj.to_dict())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("watch of %s failed, relisting: %s", what, exc or type(exc).__name__)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


class Watches:
    def __init__(self, on_change: Callable[[], None], on_vip: Callable[[str], None]) -> None:
        self.on_change = on_change
        self.on_vip = on_vip
        self.virtual_servers: dict[ObjectKey, VirtualServer] = {}
        self.pools: dict[ObjectKey, tuple[PoolMember, ...]] = {}
        self.pool_checks: dict[ObjectKey, HealthCheck | None] = {}
        self.vs_synced = asyncio.Event()
        self.pools_synced = asyncio.Event()

    def start(self, client: KubeClient, group: str) -> list[asyncio.Task[None]]:
        vs_res, pool_res = resources()["VirtualServer"], resources()["RealServerPool"]
        by_group = {GROUP_LABEL: group}
        watch_vs = informer(
            client, vs_res, by_group, self.apply_vs, self.reset_vs, "VirtualServers"
        )
        watch_pools = informer(
            client, pool_res, None, self.apply_pool, self.reset_pools, "RealServerPools"
        )
        return [
            asyncio.create_task(watch_vs, name="watch-vs"),
            asyncio.create_task(watch_pools, name="watch-pools"),
        ]

    async def synced(self) -> None:
        await self.vs_synced.wait()
        await self.pools_synced.wait()

    def health_checks(self) -> dict[ServiceKey, HealthCheck]:
        """The health check of each service whose pool has one."""
        checks: dict[ServiceKey, HealthCheck] = {}
        for vs in self.virtual_servers.values():
            check = self.pool_checks.get((vs.namespace, vs.spec.pool_name))
            if check is None:
                continue
            for vport in vs.spec.ports:
                checks[ServiceKey(vport.protocol, vs.spec.vip, vport.port)] = check
        return checks

    # -- VirtualServers ------------------------------------------------------------------------

    def _parse_vs(self, obj: Raw) -> VirtualServer | None:
        try:
            return VirtualServer.from_object(obj)
        except ValidationError as exc:
            # the controller only labels valid ones: an old controller or a hand edit
            log.warning("VirtualServer ignored: %s", exc, extra={"vs": "/".join(object_key(obj))})
            return None

    def _store_vs(self, key: ObjectKey, vs: VirtualServer | None) -> None:
        if vs is None:
            self.virtual_servers.pop(key, None)
        else:
            self.virtual_servers[key] = vs
            self.on_vip(canonical(vs.spec.vip))

    def reset_vs(self, items: Iterable[Raw]) -> None:
        self.virtual_servers = {}
        for obj in items:
            self._store_vs(object_key(obj), self._parse_vs(obj))
        self.vs_synced.set()
        self.on_change()

    def apply_vs(self, kind: str, obj: Raw) -> None:
        key = object_key(obj)
        if kind == "DELETED":
            self.virtual_servers.pop(key, None)
        elif kind in ("ADDED", "MODIFIED"):
            self._store_vs(key, self._parse_vs(obj))
        else:
            return
        log.debug("VirtualServer %s", kind.lower(), extra={"vs": "/".join(key)})
        self.on_change()

    # -- RealServerPools -----------------------------------------------------------------------

    @staticmethod
    def _check(obj: Mapping[str, Any]) -> HealthCheck | None:
        try:
            return RealServerPool.from_object(obj).spec.health_check
        except (ValidationError, TypeError, ValueError, KeyError):
            return None

    @staticmethod
    def _members(obj: Mapping[str, Any]) -> tuple[PoolMember, ...]:
        try:
            return RealServerPoolStatus.from_object(obj.get("status")).members
        except (TypeError, ValueError, KeyError) as exc:
            log.warning(
                "pool status unreadable: %s", exc, extra={"pool": "/".join(object_key(obj))}
            )
            return ()

    def reset_pools(self, items: Iterable[Raw]) -> None:
        items = list(items)
        self.pools = {object_key(obj): self._members(obj) for obj in items}
        self.pool_checks = {object_key(obj): self._check(obj) for obj in items}
        self.pools_synced.set()
        self.on_change()

    def apply_pool(self, kind: str, obj: Raw) -> None:
        key = object_key(obj)
        if kind == "DELETED":
            self.pools.pop(key, None)
            self.pool_checks.pop(key, None)
        elif kind in ("ADDED", "MODIFIED"):
            members, check = self._members(obj), self._check(obj)
            if self.pools.get(key) == members and self.pool_checks.get(key) == check:
                return  # nothing the agent uses changed
            self.pools[key] = members
            self.pool_checks[key] = check
        else:
            return
        if any((vs.namespace, vs.spec.pool_name) == key for vs in self.virtual_servers.values()):
            self.on_change()
