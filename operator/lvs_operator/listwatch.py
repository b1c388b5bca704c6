"""List, then watch from the list's resourceVersion, for ever: the one list+watch loop of the
operator's processes (lightkube).

The agents keep their group's VirtualServers and the pools in parsed caches
(director/watches.py); the controller keeps the Leases and DaemonSets of its own namespace in
an ``Informer`` (name → object), so its RBAC for them stays namespaced. Both run
``list_then_watch``: a full list replaces the cache (``reset``), each watch event updates it
(``apply``); an expired watch (410 Gone) relists at once, any other failure relists after a
backoff that doubles up to a bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("lvs_operator.listwatch")

# objects per page of a list (the API's ``limit``; the pages continue from one snapshot).
# A page is decoded on the event loop in one go (JSON, then lightkube's objects): 1,000
# RealServerPools of 10 members in one page held an agent's loop ~0.35 s under TCG.
LIST_PAGE = 100

Raw = dict[str, Any]  # an object as the API serves it


class KubeObject(Protocol):
    def to_dict(self) -> Raw: ...


class KubeList(Protocol):
    resourceVersion: str

    def __aiter__(self) -> AsyncIterator[KubeObject]: ...


class KubeClient(Protocol):
    """What the list+watch loop (and the agent) use of lightkube's AsyncClient."""

    def list(self, *args: Any, **kwargs: Any) -> Any: ...

    def watch(self, *args: Any, **kwargs: Any) -> Any: ...

    async def get(self, *args: Any, **kwargs: Any) -> Any: ...

    async def create(self, *args: Any, **kwargs: Any) -> Any: ...  # the agent's Events

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Backoff:
    """Seconds before relisting after a failure: ``first``, doubling up to ``most``."""

    first: float = 0.2
    most: float = 5.0


async def list_then_watch(
    client: KubeClient,
    resource: Any,
    *,
    namespace: str,
    labels: Mapping[str, str] | None,
    reset: Callable[[list[Raw]], Awaitable[None] | None],
    apply: Callable[[str, Raw], None],
    what: str,
    backoff: Backoff = Backoff(),
    server_timeout: int | None = None,
    hint: str = "",
    on_restart: Callable[[str], None] | None = None,
    page: int = LIST_PAGE,
) -> None:
    """Run until cancelled. ``namespace``: one namespace, or lightkube's ``ALL_NS``;
    ``hint``: what to do about a 403, for the warning; ``on_restart(reason)`` is told of
    each restart after the first list: ``expired`` (410: a relist), ``failed`` (a relist
    after the backoff) or ``ended`` (the watch stream ended: watched again from the last
    resourceVersion seen, without a list); ``page``: objects per page of a list
    (``LIST_PAGE``'s note)."""
    from lightkube import ApiError

    def restarted(reason: str) -> None:
        if on_restart is not None:
            on_restart(reason)

    selector = dict(labels or {}) or None
    delay = backoff.first
    while True:
        try:
            listing = client.list(resource, namespace=namespace, labels=selector, chunk_size=page)
            done = reset([obj.to_dict() async for obj in listing])
            if done is not None:  # a reset that parses in slices, yielding to the loop
                await done
            delay = backoff.first
            extra = {} if server_timeout is None else {"server_timeout": server_timeout}
            version = listing.resourceVersion
            while True:
                async for kind, obj in client.watch(
                    resource,
                    namespace=namespace,
                    labels=selector,
                    resource_version=version,
                    **extra,
                ):
                    raw = obj.to_dict()
                    version = (raw.get("metadata") or {}).get("resourceVersion") or version
                    apply(kind, raw)
                # The stream ended (the server's timeout): watch again from the last version
                # seen, no list. A relist every ``server_timeout`` re-read every object (at
                # 1,000 pools, seconds of the agent's event loop in a slow VM); a version
                # the server no longer has gives 410, and then a relist.
                restarted("ended")
        except asyncio.CancelledError:
            raise
        except ApiError as exc:
            if exc.status.code == 410:  # the watch fell too far behind: list again now
                log.info("watch of %s expired, relisting", what)
                restarted("expired")
                continue
            advice = f"; {hint}" if hint and exc.status.code == 403 else ""
            log.warning("list/watch of %s failed (%s), relisting in %.1f s%s", what,
                        exc.status.message, delay, advice)  # fmt: skip
            restarted("failed")
        except Exception as exc:
            log.warning("list/watch of %s failed (%s), relisting in %.1f s", what,
                        str(exc) or type(exc).__name__, delay)  # fmt: skip
            restarted("failed")
        await asyncio.sleep(delay)
        delay = min(delay * 2, backoff.most)


class Informer:
    """A cache of one kind in one namespace: ``store`` (name → object as a dict) kept in step
    with the API server; ``on_change`` is called after the first full list and after every
    event, ``synced`` is set after the first list."""

    def __init__(
        self,
        client: KubeClient,
        resource: Any,
        namespace: str,
        on_change: Callable[[], None],
        labels: Mapping[str, str] | None = None,
        hint: str = "",
        on_restart: Callable[[str], None] | None = None,
        matters: Callable[[Raw | None, Raw | None], bool] | None = None,
    ) -> None:
        """``matters(old, new)``: whether an event is worth ``on_change`` (default: all);
        the store takes every event either way."""
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.labels: dict[str, str] = dict(labels or {})
        self.on_change = on_change
        self.hint = hint
        self.on_restart = on_restart
        self.matters = matters
        self.store: dict[str, Raw] = {}
        self.synced = asyncio.Event()
        self.kind = getattr(resource, "__name__", str(resource))

    def _reset(self, items: list[Raw]) -> None:
        self.store = {item["metadata"]["name"]: item for item in items}
        self.synced.set()
        self.on_change()

    def _apply(self, kind: str, obj: Raw) -> None:
        name = obj["metadata"]["name"]
        old = self.store.get(name)
        if kind == "DELETED":
            self.store.pop(name, None)
        else:
            self.store[name] = obj
        if self.matters is None or self.matters(old, None if kind == "DELETED" else obj):
            self.on_change()

    async def run(self) -> None:
        await list_then_watch(
            self.client,
            self.resource,
            namespace=self.namespace,
            labels=self.labels,
            reset=self._reset,
            apply=self._apply,
            what=f"{self.kind} in namespace {self.namespace}",
            backoff=Backoff(first=1.0, most=30.0),
            hint=self.hint,
            on_restart=self.on_restart,
        )
