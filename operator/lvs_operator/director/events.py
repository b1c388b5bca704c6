"""Kubernetes Events from a director agent, on the objects concerned: a takeover or a release
of the VIPs (on each VirtualServer of the group, naming the node), a VIP the leader cannot
place, an IPVS change the kernel refused, a real server quiesced or restored by its health
check (on each VirtualServer it serves), so ``kubectl describe virtualserver`` tells who
served it when and why, not only one node's log.

Posting never holds anything up: events queue (bounded; the overflow is counted and logged)
and a background task posts them, each bounded in time. A failure is logged once per reason
until posting works again: an API server that refuses or is away must not flood the log.
The same event (object, reason, message) within ``REPEAT_AFTER`` seconds is posted once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from .. import GROUP, VERSION
from ..api.events import DIRECTOR, NORMAL, WARNING, EventSpec, ObjectRef, build_event
from ..api.network import canonical_ip
from ..api.virtualserver import KIND as VS_KIND

if TYPE_CHECKING:
    from ..api.common import ObjectKey
    from ..api.virtualserver import VirtualServer

log = logging.getLogger("lvs_operator.director.events")

QUEUE = 100  # events waiting at most; more are dropped (counted)
POST_TIMEOUT = 5.0
REPEAT_AFTER = 60.0


class EventPoster(Protocol):
    """Creates one core/v1 Event (the agent's API client; a fake in the unit tests)."""

    async def post(self, event: dict[str, Any]) -> None: ...


def vip_events(node: str, group: str, leader: bool,
               virtual_servers: Mapping[ObjectKey, VirtualServer],
               vips: Iterable[str]) -> list[EventSpec]:  # fmt: skip
    """A takeover (``leader``) or a release by ``node``: one Event on each VirtualServer
    whose VIP is among ``vips`` (the group's)."""
    wanted = {canonical_ip(v) for v in vips}
    out = []
    for (namespace, name), vs in sorted(virtual_servers.items()):
        vip = canonical_ip(vs.spec.vip)
        if vip not in wanted:
            continue
        ref = ObjectRef(f"{GROUP}/{VERSION}", VS_KIND, namespace, name, vs.meta.uid)
        if leader:
            spec = EventSpec(ref, NORMAL, "VIPTakenOver",
                             f"director {node} (group {group}) now holds VIP {vip}")  # fmt: skip
        else:
            spec = EventSpec(ref, NORMAL, "VIPReleased",
                             f"director {node} (group {group}) released VIP {vip}")  # fmt: skip
        out.append(spec)
    return out


def _ref(key: ObjectKey, vs: VirtualServer) -> ObjectRef:
    return ObjectRef(f"{GROUP}/{VERSION}", VS_KIND, key[0], key[1], vs.meta.uid)


def vip_problem_events(node: str, virtual_servers: Mapping[ObjectKey, VirtualServer],
                       problems: Mapping[str, str]) -> list[EventSpec]:  # fmt: skip
    """A Warning ``VIPNotPlaced`` on each VirtualServer whose VIP ``node`` (the leader)
    cannot place, add or remove (``problems``: vip -> the reason, naming the fix)."""
    wanted = {canonical_ip(v): why for v, why in problems.items()}
    return [
        EventSpec(_ref(key, vs), WARNING, "VIPNotPlaced", f"director {node}: {wanted[vip]}")
        for key, vs in sorted(virtual_servers.items())
        if (vip := canonical_ip(vs.spec.vip)) in wanted
    ]


def kernel_refused_events(node: str, virtual_servers: Mapping[ObjectKey, VirtualServer],
                          vip: str, why: str) -> list[EventSpec]:  # fmt: skip
    """A Warning ``KernelRefused`` on each VirtualServer of ``vip``: the kernel refused a
    change of its IPVS service on ``node`` (``why`` names the change and the error)."""
    address = canonical_ip(vip)
    message = f"director {node}: the kernel refused an IPVS change: {why}"
    return [
        EventSpec(_ref(key, vs), WARNING, "KernelRefused", message)
        for key, vs in sorted(virtual_servers.items())
        if canonical_ip(vs.spec.vip) == address
    ]


def health_events(node: str, virtual_servers: Mapping[ObjectKey, VirtualServer],
                  vips: Iterable[str], real_server: str, healthy: bool,
                  check: str) -> list[EventSpec]:  # fmt: skip
    """A real server's health check flipped on ``node`` (the leader): an Event on each
    VirtualServer among ``vips`` (those whose services send to it): Warning
    ``RealServerQuiesced`` (weight 0: no new connections, established ones go on) or
    Normal ``RealServerRestored``."""
    serving = {canonical_ip(v) for v in vips}
    if healthy:
        kind, reason, what = NORMAL, "RealServerRestored", "passes its health check again"
    else:
        kind, reason, what = (
            WARNING,
            "RealServerQuiesced",
            ("fails its health check: quiesced (no new connections; established ones go on)"),
        )
    message = f"real server {real_server} {what} ({check}; director {node})"
    return [
        EventSpec(_ref(key, vs), kind, reason, message)
        for key, vs in sorted(virtual_servers.items())
        if canonical_ip(vs.spec.vip) in serving
    ]


class AgentEvents:
    def __init__(self, poster: EventPoster | None, node: str,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.poster, self.node, self.clock = poster, node, clock
        self.dropped = 0
        self._queue: asyncio.Queue[EventSpec] | None = None
        self._task: asyncio.Task[None] | None = None
        self._recent: dict[tuple[str, str, str], float] = {}
        self._failing = ""

    def emit(self, spec: EventSpec) -> None:
        """Queue ``spec`` (from the event loop; never blocks, never raises)."""
        if self.poster is None:
            return
        now = self.clock()
        key = (spec.ref.key, spec.reason, spec.message)
        if now - self._recent.get(key, -REPEAT_AFTER) < REPEAT_AFTER:
            return
        self._recent = {k: t for k, t in self._recent.items() if now - t < REPEAT_AFTER}
        self._recent[key] = now
        if self._queue is None:
            self._queue = asyncio.Queue(QUEUE)
            self._task = asyncio.create_task(self._post_all(self._queue), name="events")
        try:
            self._queue.put_nowait(spec)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("events dropped: %d (the API server is slow or away)", self.dropped)

    async def _post_all(self, queue: asyncio.Queue[EventSpec]) -> None:
        assert self.poster is not None
        while True:
            spec = await queue.get()
            body = build_event(spec, datetime.now(UTC), DIRECTOR, self.node)
            try:
                await asyncio.wait_for(self.poster.post(body), POST_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                why = str(exc) or type(exc).__name__
                if why != self._failing:
                    log.warning("cannot post Event %s on %s: %s", spec.reason, spec.ref.key, why)
                self._failing = why
            else:
                if self._failing:
                    log.info("posting Events works again")
                self._failing = ""
            finally:
                queue.task_done()

    async def close(self, timeout: float = 2.0) -> None:
        """Post what is queued (bounded), then stop."""
        if self._task is None or self._queue is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
