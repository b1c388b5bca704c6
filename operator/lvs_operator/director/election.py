"""Lease election per director group: acquire, renew, step down, release.

One ``coordination.k8s.io/v1`` Lease per director group (``LVS_LEASE_NAME`` in the operator's
namespace); ``holderIdentity`` is the director's node name. Every write is a PUT carrying the
``resourceVersion`` last read, so two directors racing for the Lease cannot both win: the API
server rejects the stale one with 409 Conflict.

Timing (defaults: duration 2 s, renew deadline 1.5 s, retry period 0.4 s):

- **Expiry** is judged the way client-go does it: by the *local* time since this agent last
  saw the Lease record change (holder, renewTime or resourceVersion), not by comparing wall
  clocks between nodes. A standby that has watched an unchanged record for
  ``leaseDurationSeconds`` takes it over.
- **Renew**: the leader renews every ``retry_period``. If no renewal has succeeded for
  ``renew_deadline`` (< duration) it steps down and its ``on_change(False)`` callback drops
  the VIPs *before* any standby can consider the Lease expired: a standby starts counting no
  earlier than the leader sent its last successful renewal.
- **Release** (SIGTERM): the leader writes ``holderIdentity: ""`` (empty) with renewTime =
  now. A Lease with an empty holder is free at once; the standby, which watches the Lease,
  sees the release and acquires it without waiting for expiry.
- **Restart**: a record whose holder is this node's own identity is taken back at once (the
  agent restarted; its VIP and IPVS state are still in the kernel).
- **Peer heartbeat** (optional, ``holder_unreachable``; see ``peer.py``): expiry bounds crash
  failover by the duration, so a standby also probes the holder directly (UDP, every 0.1 s)
  and takes the Lease *before* expiry once the holder stopped answering (0.35 s) or answers
  that it no longer leads. Anti-flap: only a standby that had good replies from *this* holder
  ("armed") may judge it lost; a director displaced by a partition between the directors
  never hears the new holder, so it waits for expiry, which a renewing holder never allows.
  The Lease remains the fence: the takeover is a conflict-checked PUT like every write, and a
  leader whose watch shows the Lease taken by another director (a record with more
  ``leaseTransitions`` than its own) steps down at once instead of at its next renewal. This
  trades the "leader steps down before anyone takes over" guarantee for speed: a leader that
  is alive but cut off from both its peer and the API keeps its VIP until its renew deadline
  while the standby already holds it.

``Elector.tick()`` is one step of the state machine and returns the delay until the next;
``Elector.run()`` loops over it and wakes early on watch events. Clock and API are injected,
so the unit tests drive ticks with a fake clock against an in-memory Lease API.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from lvs_operator.api import contract

log = logging.getLogger("lvs_operator.director.election")

PROGRAMMED_ANNOTATION = contract.PROGRAMMED_ANNOTATION

DEFAULT_LEASE_DURATION = 2
DEFAULT_RENEW_DEADLINE = 1.5
DEFAULT_RETRY_PERIOD = 0.4


class LeaseConflict(Exception):
    """The API server answered 409: stale resourceVersion, or the Lease already exists."""


@dataclass(frozen=True)
class LeaseRecord:
    holder: str  # "" = nobody
    duration_seconds: int = DEFAULT_LEASE_DURATION
    acquire_time: dt.datetime | None = None
    renew_time: dt.datetime | None = None
    transitions: int = 0
    resource_version: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)

    def identity_key(self) -> tuple[str, dt.datetime | None, str | None]:
        """What must change for the record to count as renewed."""
        return (self.holder, self.renew_time, self.resource_version)


class LeaseApi(Protocol):
    async def get(self) -> LeaseRecord | None: ...

    async def create(self, record: LeaseRecord) -> LeaseRecord: ...

    async def update(self, record: LeaseRecord) -> LeaseRecord:
        """PUT with ``record.resource_version``; raise LeaseConflict on 409."""
        ...

    def changes(self) -> AsyncIterator[LeaseRecord | None]:
        """Yield the Lease whenever it changes (a watch; None: deleted); may end or raise,
        run() restarts it."""
        ...


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def now(self) -> dt.datetime: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class ElectionConfig:
    identity: str
    lease_duration: int = DEFAULT_LEASE_DURATION
    renew_deadline: float = DEFAULT_RENEW_DEADLINE
    retry_period: float = DEFAULT_RETRY_PERIOD

    def __post_init__(self) -> None:
        if not self.identity:
            raise ValueError("election identity is empty: set NODE_NAME (or --node-name)")
        if self.lease_duration < 1:
            raise ValueError("lease duration must be an integer >= 1 second")
        if not 0 < self.renew_deadline < self.lease_duration:
            raise ValueError(
                f"renew deadline ({self.renew_deadline}s) must be > 0 and shorter than the lease "
                f"duration ({self.lease_duration}s), or a leader could hold the VIP after its "
                "Lease expired"
            )
        if not 0 < self.retry_period < self.renew_deadline:
            raise ValueError(
                f"retry period ({self.retry_period}s) must be > 0 and shorter than the renew "
                f"deadline ({self.renew_deadline}s)"
            )


OnChange = Callable[[bool], Awaitable[None]]
HolderUnreachable = Callable[[str], bool]
OnRecord = Callable[[LeaseRecord], None]


class Elector:
    """Leader election on one Lease. Call ``run()``; stop with ``release()``."""

    def __init__(
        self,
        config: ElectionConfig,
        api: LeaseApi,
        on_change: OnChange | None = None,
        clock: Clock | None = None,
        *,
        holder_unreachable: HolderUnreachable | None = None,
        on_record: OnRecord | None = None,
    ) -> None:
        self.config = config
        self.api = api
        self.on_change = on_change
        self.clock = clock or SystemClock()
        # holder_unreachable(holder): the peer heartbeat says the holder is gone (take its
        # Lease before expiry). on_record(record): every Lease record observed (read, watched
        # or written), e.g. to point the heartbeat monitor at the holder. Both synchronous.
        self.holder_unreachable = holder_unreachable
        self.on_record = on_record
        self.is_leader = False
        self._serving = False  # leader, or stepping down and on_change(False) not done yet
        self._releasing = False  # release() until its write is done
        self._taken: LeaseRecord | None = None  # the watch saw the Lease taken (leader only)
        self.transitions = 0  # local leader/standby transitions (metrics)
        self.holder: str = ""  # last holder seen
        self._record: LeaseRecord | None = None  # last record read or written
        self._observed_at = 0.0  # local time the record last changed
        self._last_renew = 0.0  # local time the last successful renewal was *sent*
        self._annotations: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._stopped = False
        # A standby with a live watch of the Lease judges from the watched record instead of
        # reading it every retry period (the watch delivers every renewal); writes still carry
        # the resourceVersion, so a stale view costs a 409, never a wrong acquisition.
        self._watching = False
        self._stale_view = True

    # -- public --------------------------------------------------------------------------------

    def set_annotation(self, key: str, value: str) -> None:
        """Written on the Lease with the next renewal (leader only)."""
        if self._annotations.get(key) == value:
            return
        self._annotations[key] = value
        if self.is_leader:
            self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    @property
    def record(self) -> LeaseRecord | None:
        """The last Lease record read, watched (standby) or written (leader)."""
        return self._record

    @property
    def serving(self) -> bool:
        """True from becoming leader until ``on_change(False)`` has returned (while the VIP
        may still be up), and through a release until the Lease is written free: what the
        heartbeat should report as "leading". A standby hearing "not leading" before the
        release is written would take the Lease *from* us, without the annotations the
        release carries (the handover note)."""
        return self._serving or self._releasing

    async def run(self) -> None:
        watcher = asyncio.create_task(self._watch())
        try:
            while not self._stopped:
                delay = await self.tick()
                self._wake.clear()
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
                # that races with the event being set
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher

    async def release(self, timeout: float = 2.0) -> bool:
        """Stop; if leader, clear holderIdentity so a standby takes over at once.

        ``on_change(False)`` runs first, so the VIP is gone before the Lease is free."""
        self._stopped = True
        self._wake.set()
        if not self.is_leader:
            return False
        self._releasing = True
        try:
            return await self._release(timeout)
        finally:
            self._releasing = False

    async def _release(self, timeout: float) -> bool:
        await self._set_leader(False, "releasing the Lease (shutdown)")
        record = self._record
        if record is None:
            return False
        for _ in range(3):
            released = replace(
                record, holder="", renew_time=self.clock.now(), annotations=self._merged(record)
            )
            try:
                await asyncio.wait_for(self.api.update(released), timeout)
                log.info("lease released", extra={"identity": self.config.identity})
                return True
            except LeaseConflict:
                current = await asyncio.wait_for(self.api.get(), timeout)
                if current is None or current.holder != self.config.identity:
                    return False
                record = current
            except Exception as exc:
                log.warning("lease release failed: %s", exc)
                return False
        return False

    # -- state machine -------------------------------------------------------------------------

    async def tick(self) -> float:
        """One step; returns the seconds until the next."""
        if self.is_leader and self._taken is not None:
            taken = self._taken
            await self._step_down(f"Lease taken by {taken.holder!r}")
            self._observe(taken)
        elif self.is_leader:
            await self._renew()
        else:
            await self._try_acquire()
        return self.config.retry_period

    async def _renew(self) -> None:
        cfg = self.config
        start = self.clock.monotonic()
        remaining = self._last_renew + cfg.renew_deadline - start
        if remaining <= 0:
            await self._step_down("renew deadline exceeded")
            return
        record = self._record
        assert record is not None
        try:
            for _ in range(2):  # one retry after a conflict on a record that is still ours
                renewed = replace(
                    record,
                    holder=cfg.identity,
                    renew_time=self.clock.now(),
                    duration_seconds=cfg.lease_duration,
                    annotations=self._merged(record),
                )
                try:
                    written = await asyncio.wait_for(self.api.update(renewed), remaining)
                except LeaseConflict:
                    current = await asyncio.wait_for(
                        self.api.get(), max(0.01, self._deadline_left())
                    )
                    if current is None or current.holder != cfg.identity:
                        self._observe(current)
                        await self._step_down(
                            f"lost the Lease to {current.holder if current else 'nobody'!r}"
                        )
                        return
                    record = current
                    continue
                self._record = written
                self._last_renew = start
                self._observe(written)
                return
        except Exception as exc:
            log.warning(
                "lease renewal failed: %s",
                exc or type(exc).__name__,
                extra={"identity": cfg.identity},
            )
        if self._deadline_left() <= 0:
            await self._step_down("renew deadline exceeded")

    def _deadline_left(self) -> float:
        return self._last_renew + self.config.renew_deadline - self.clock.monotonic()

    async def _try_acquire(self) -> None:
        cfg = self.config
        timeout = cfg.renew_deadline
        if self._watching and not self._stale_view and self._record is not None:
            current: LeaseRecord | None = self._record
        else:
            try:
                current = await asyncio.wait_for(self.api.get(), timeout)
            except Exception as exc:
                log.warning("reading the Lease failed: %s", exc or type(exc).__name__)
                return
            self._stale_view = False
        start = self.clock.monotonic()
        now = self.clock.now()
        if current is None:
            fresh = LeaseRecord(
                holder=cfg.identity,
                duration_seconds=cfg.lease_duration,
                acquire_time=now,
                renew_time=now,
                transitions=0,
                annotations=dict(self._annotations),
            )
            try:
                written = await asyncio.wait_for(self.api.create(fresh), timeout)
            except LeaseConflict:
                return  # someone else created it first
            except Exception as exc:
                log.warning("creating the Lease failed: %s", exc or type(exc).__name__)
                return
            await self._became_leader(written, start, "created the Lease")
            return
        self._observe(current)
        free = current.holder in ("", cfg.identity)
        expired = self.clock.monotonic() - self._observed_at >= current.duration_seconds
        lost = not (free or expired) and self._holder_lost(current.holder)
        if not (free or expired or lost):
            return
        taken = replace(
            current,
            holder=cfg.identity,
            duration_seconds=cfg.lease_duration,
            acquire_time=now if current.holder != cfg.identity else current.acquire_time or now,
            renew_time=now,
            transitions=current.transitions + (1 if current.holder != cfg.identity else 0),
            annotations=self._merged(current),
        )
        try:
            written = await asyncio.wait_for(self.api.update(taken), timeout)
        except LeaseConflict:
            self._stale_view = True  # another director was faster: read it next tick
            return
        except Exception as exc:
            log.warning("acquiring the Lease failed: %s", exc or type(exc).__name__)
            return
        if current.holder == cfg.identity:
            why = "took back its own Lease (restart)"
        elif lost:
            why = f"peer heartbeat from {current.holder!r} lost"
        elif current.holder:
            why = f"Lease of {current.holder!r} expired"
        else:
            why = "Lease was free"
        await self._became_leader(written, start, why)

    def _holder_lost(self, holder: str) -> bool:
        if self.holder_unreachable is None:
            return False
        try:
            return bool(self.holder_unreachable(holder))
        except Exception as exc:
            log.warning("peer heartbeat check failed: %s", exc or type(exc).__name__)
            return False

    async def _became_leader(self, record: LeaseRecord, sent_at: float, why: str) -> None:
        self._record = record
        self._last_renew = sent_at
        self._observe(record)
        await self._set_leader(True, why)

    async def _step_down(self, why: str) -> None:
        await self._set_leader(False, why)

    async def _set_leader(self, leader: bool, why: str) -> None:
        if leader == self.is_leader:
            return
        self.is_leader = leader
        self.transitions += 1
        self._stale_view = True  # the watch was ignored while leading
        self._taken = None
        if leader:
            self.holder = self.config.identity
            self._serving = True
        log.info(
            "%s: %s",
            "became leader" if leader else "stepped down",
            why,
            extra={"identity": self.config.identity, "leader": leader},
        )
        try:
            if self.on_change is not None:
                await self.on_change(leader)
        finally:
            if not leader:
                self._serving = False

    def _observe(self, record: LeaseRecord | None) -> None:
        if record is None:
            return
        if self._record is None or record.identity_key() != self._record.identity_key():
            self._observed_at = self.clock.monotonic()
        if not self.is_leader:
            self._record = record
        self.holder = record.holder
        if self.on_record is not None:
            try:
                self.on_record(record)
            except Exception as exc:
                log.warning("on_record callback failed: %s", exc or type(exc).__name__)

    def _taken_by_other(self, record: LeaseRecord) -> bool:
        """Whether a watched record shows our Lease taken over. The watch may lag behind our
        writes: right after we took the Lease it can still deliver the previous holder's
        records. Every change of holder bumps ``leaseTransitions`` and every write builds on
        the current record, so only a record with more transitions than ours is newer."""
        own = self._record
        return (
            own is not None
            and record.holder not in ("", self.config.identity)
            and record.resource_version != own.resource_version
            and record.transitions > own.transitions
        )

    def _merged(self, record: LeaseRecord) -> dict[str, str]:
        merged = dict(record.annotations)
        merged.update(self._annotations)
        return merged

    async def _watch(self) -> None:
        """Wake the state machine whenever the Lease changes; restart the watch on errors."""
        while not self._stopped:
            try:
                self._watching = True
                async for record in self.api.changes():
                    if self.is_leader:
                        # step down in tick() (not here: on_change must not run concurrently
                        # with a renewal)
                        if record is not None and self._taken_by_other(record):
                            self._taken = record
                            self._wake.set()
                    else:
                        if record is None:
                            self._stale_view = True
                        elif self._record is None or _newer(record, self._record):
                            self._observe(record)
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("lease watch ended: %s", exc)
            finally:
                self._watching = False
                self._stale_view = True
            await asyncio.sleep(self.config.retry_period)


def _newer(a: LeaseRecord, b: LeaseRecord) -> bool:
    """Whether ``a`` is a later version than ``b`` (resourceVersions are opaque, but the
    watch delivers them in order; a different one from the watch is the newer)."""
    return a.resource_version != b.resource_version


# -- the Kubernetes API (lightkube) -------------------------------------------------------------


class KubeLeaseApi:
    """LeaseApi over lightkube's AsyncClient."""

    def __init__(self, client: Any, namespace: str, name: str) -> None:
        self.client, self.namespace, self.name = client, namespace, name

    @staticmethod
    def _record(obj: Any) -> LeaseRecord:
        spec, meta = obj.spec, obj.metadata
        return LeaseRecord(
            holder=spec.holderIdentity or "",
            duration_seconds=int(spec.leaseDurationSeconds or DEFAULT_LEASE_DURATION),
            acquire_time=spec.acquireTime,
            renew_time=spec.renewTime,
            transitions=int(spec.leaseTransitions or 0),
            resource_version=meta.resourceVersion,
            annotations=dict(meta.annotations or {}),
            labels=dict(meta.labels or {}),
        )

    def _object(self, record: LeaseRecord) -> Any:
        from lightkube.models.coordination_v1 import LeaseSpec
        from lightkube.models.meta_v1 import ObjectMeta
        from lightkube.resources.coordination_v1 import Lease

        return Lease(
            metadata=ObjectMeta(
                name=self.name,
                namespace=self.namespace,
                resourceVersion=record.resource_version,
                annotations=dict(record.annotations) or None,
                labels=dict(record.labels) or None,
            ),
            spec=LeaseSpec(
                holderIdentity=record.holder,
                leaseDurationSeconds=record.duration_seconds,
                acquireTime=record.acquire_time,
                renewTime=record.renew_time,
                leaseTransitions=record.transitions,
            ),
        )

    async def get(self) -> LeaseRecord | None:
        from lightkube import ApiError
        from lightkube.resources.coordination_v1 import Lease

        try:
            obj = await self.client.get(Lease, self.name, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise
        return self._record(obj)

    async def create(self, record: LeaseRecord) -> LeaseRecord:
        from lightkube import ApiError

        try:
            obj = await self.client.create(self._object(replace(record, resource_version=None)))
        except ApiError as exc:
            if exc.status.code == 409:
                raise LeaseConflict(str(exc)) from exc
            raise
        return self._record(obj)

    async def update(self, record: LeaseRecord) -> LeaseRecord:
        from lightkube import ApiError

        try:
            obj = await self.client.replace(self._object(record))
        except ApiError as exc:
            if exc.status.code == 409:
                raise LeaseConflict(str(exc)) from exc
            if exc.status.code == 404:
                raise LeaseConflict("the Lease was deleted") from exc
            raise
        return self._record(obj)

    async def changes(self) -> AsyncIterator[LeaseRecord | None]:
        from lightkube.resources.coordination_v1 import Lease

        async for kind, obj in self.client.watch(
            Lease, namespace=self.namespace, fields={"metadata.name": self.name}
        ):
            yield None if kind == "DELETED" else self._record(obj)
