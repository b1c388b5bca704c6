"""Lease election per director group: acquire, renew, step down, release, and keep serving
through API-server outages.

One ``coordination.k8s.io/v1`` Lease per director group (``LVS_LEASE_NAME`` in the operator's
namespace); ``holderIdentity`` is the director's node name. Every write is a PUT carrying the
``resourceVersion`` last read, so two directors racing for the Lease cannot both win: the API
server rejects the stale one with 409 Conflict.

Two modes:

- **Classic** (no peer heartbeat, ``--peer-port 0``): the leader renews every retry period
  and steps down when no renewal succeeded for the renew deadline (< duration); a standby
  takes the Lease once it watched it unchanged for ``leaseDurationSeconds`` (judged by its
  *local* clock since the record last changed, as client-go does).
- **Outage-tolerant** (the default; ``confirmations`` given): the directors' UDP heartbeat
  (peer.py) is the second channel. A standby's probes acknowledge the leader's "leading"
  replies, so the leader knows, per standby, a time ``c`` since which that standby has heard
  it lead. Rules (docs/director.md, "Outage tolerance", has the argument):

  * **members**: every leader write lists, in ``lvs.io/directors``, the standbys that confirmed
    within ``peer_timeout / 2`` (identity -> address). Only a listed standby may take the
    Lease by heartbeat loss or by plain expiry; an unlisted one only after
    ``lease_duration + outage_hold`` without a change of the record.
  * **standby**: never takes a Lease, expired or not, while the holder answered "leading"
    within ``peer_timeout`` (a gated standby: ``GATED_TIMEOUT_SHARE`` of it, peer.py: its
    takeover rests on the ARP check); never takes it while another node still answers ARP for the
    group's VIPs (``vip_in_use``; looked at every ``VIP_RECHECK`` seconds while it does: a
    dead agent's VIPs lapse, vip.py).
  * **leader**: keeps its VIPs — with or without the API server — while every member listed
    by a write that may have succeeded confirmed within ``peer_timeout - margin``, and for at
    most ``outage_hold`` after its last successful write. A member silent for
    ``peer_timeout / 2`` is removed by a write; if that write has not succeeded in time, the
    leader steps down *at* the deadline (scheduled, not at the next tick), before that member
    could judge it silent.
  * after such a step-down the old leader answers "not leading" (a listed standby takes over
    at once) and retakes its own Lease only after a backoff (1 s, doubling to 30 s) and with
    a successful write: no flapping on a slow API path.

- **Release** (SIGTERM): the leader writes ``holderIdentity: ""`` (empty) with renewTime =
  now; the standby, which watches the Lease, acquires it at once.
- **Restart**: a record whose holder is this node's own identity is taken back at once (the
  agent restarted; its VIP and IPVS state are still in the kernel).
- A leader whose watch shows the Lease taken by another director (a record with more
  ``leaseTransitions`` than its own) steps down at once.

``Elector.tick()`` is one step of the state machine and returns the delay until the next;
``Elector.run()`` loops over it and wakes early on watch events. Clock and API are injected,
so the unit tests drive ticks with a fake clock against an in-memory Lease API.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from lvs_operator.api import contract

if TYPE_CHECKING:
    from collections.abc import Iterable

    from lightkube.models.meta_v1 import OwnerReference

log = logging.getLogger("lvs_operator.director.election")

PROGRAMMED_ANNOTATION = contract.PROGRAMMED_ANNOTATION

# Real clusters see API latency of a second and more: with outage tolerance the Lease no
# longer decides crash failover (the heartbeat does), so it can be long.
DEFAULT_LEASE_DURATION = 10
DEFAULT_RENEW_DEADLINE = 7.0  # classic mode only
DEFAULT_RETRY_PERIOD = 2.0
DEFAULT_PEER_TIMEOUT = 0.3  # = peer.DEFAULT_PEER_TIMEOUT (a standby's silence threshold)
DEFAULT_OUTAGE_HOLD = 120.0
STEPDOWN_MARGIN = 0.1  # the leader's VIPs are gone this long before a standby may judge it
MAX_BACKOFF = 30.0
# A standby held back by a VIP that still answers ARP looks again this often: the VIP of a
# dead agent lapses (vip.py's lifetime) and is taken within this of its going.
VIP_RECHECK = 0.25
MEMBERS_ANNOTATION = contract.DIRECTORS_ANNOTATION
# Early take (a heartbeat-loss takeover where nobody else can be taking the VIPs): they go
# up while the Lease write is in flight, the write is bounded by this, and a failed one
# takes them back and allows no early take for EARLY_TAKE_BACKOFF.
EARLY_TAKE_WRITE_BOUND = 1.0
EARLY_TAKE_BACKOFF = 30.0


class LeaseConflict(Exception):
    """The API server answered 409: stale resourceVersion, or the Lease already exists."""


@dataclass(frozen=True)
class LeaseOwner:
    """An ownerReference of the Lease. The agents make their group's DaemonSet one, so that
    the garbage collector removes the Lease with the DaemonSet (and so with the controller's
    Deployment, which owns the DaemonSets: ``helm uninstall``)."""

    kind: str
    name: str
    uid: str
    api_version: str = "apps/v1"


def with_owner(owners: tuple[LeaseOwner, ...], owner: LeaseOwner | None) -> tuple[LeaseOwner, ...]:
    """``owners`` with ``owner`` among them. An earlier owner of the same kind and name (a
    DaemonSet deleted and created again: a new uid) is replaced; any other owner is kept."""
    if owner is None or owner in owners:
        return owners
    same = (owner.kind, owner.name)
    return (*(o for o in owners if (o.kind, o.name) != same), owner)


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
    owners: tuple[LeaseOwner, ...] = ()  # carried through every write (the PUT is whole)

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
    peer_timeout: float = DEFAULT_PEER_TIMEOUT  # outage-tolerant mode: the standbys' timeout
    outage_hold: float = DEFAULT_OUTAGE_HOLD  # ... and the longest hold without the API

    @property
    def remove_after(self) -> float:
        """A member silent this long is removed from the Lease by a write."""
        return self.peer_timeout / 2

    @property
    def confirm_within(self) -> float:
        """A listed member must have confirmed within this, or the leader steps down."""
        return self.peer_timeout - STEPDOWN_MARGIN

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
        if not self.peer_timeout > 2 * STEPDOWN_MARGIN:
            raise ValueError(
                f"peer timeout ({self.peer_timeout}s) must be above {2 * STEPDOWN_MARGIN}s: the "
                f"leader steps down {STEPDOWN_MARGIN}s before a silent standby may take over"
            )
        if self.outage_hold < 0:
            raise ValueError(f"outage hold ({self.outage_hold}s) must be >= 0")


OnChange = Callable[[bool], Awaitable[None]]
HolderUnreachable = Callable[[str], bool]
HolderHeard = Callable[[str], bool]
OnRecord = Callable[[LeaseRecord], None]
VipInUse = Callable[[], Awaitable[bool]]


class Confirmed(Protocol):
    """A standby heard this director leading at ``at`` or later (peer.Confirmation)."""

    @property
    def address(self) -> str: ...

    @property
    def at(self) -> float: ...

    @property
    def gated(self) -> bool: ...


Confirmations = Callable[[], Mapping[str, Confirmed]]


def parse_members(record: LeaseRecord) -> dict[str, str] | None:
    """The directors a record lists (identity -> address); None: the record lists none at
    all (classic mode, every director counts as listed); malformed: nobody is listed."""
    raw = record.annotations.get(MEMBERS_ANNOTATION)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items() if isinstance(v, str)}


def format_members(members: Mapping[str, str]) -> str:
    return json.dumps(dict(sorted(members.items())), separators=(",", ":"))


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
        holder_heard: HolderHeard | None = None,
        confirmations: Confirmations | None = None,
        vip_in_use: VipInUse | None = None,
        gated: Callable[[], bool] | None = None,
        on_record: OnRecord | None = None,
        early_take: OnChange | None = None,
    ) -> None:
        self.config = config
        self.api = api
        self.on_change = on_change
        self.clock = clock or SystemClock()
        # The peer heartbeat (heartbeat.py wires them; all synchronous but vip_in_use):
        # holder_unreachable(holder): an armed standby judges the holder gone (take its Lease
        # before expiry); holder_heard(holder): it answered "leading" within the peer
        # timeout (then nobody takes its Lease, expired or not); confirmations(): the
        # standbys that heard *us* lead, since when (given: outage-tolerant mode);
        # vip_in_use(): another node answers ARP for one of the group's VIPs (a stopped
        # leader's kernel still holds it: no takeover); on_record(record): every Lease record
        # observed (read, watched or written), e.g. to point the heartbeat at the holder.
        self.holder_unreachable = holder_unreachable
        self.holder_heard = holder_heard
        self.confirmations = confirmations
        self.vip_in_use = vip_in_use
        # gated(): this director checks ARP for *every* VIP of the group before a takeover
        # (and tells the leader so in its probes): its takeover needs no listing
        self.gated = gated
        self.on_record = on_record
        # early_take(True): put the VIPs up before the takeover's Lease write returns;
        # early_take(False): take them back (the write failed)
        self.early_take = early_take
        self.taking_early = False  # the VIPs are up ahead of the Lease write
        self._early_blocked_until = 0.0
        self._renewal_seen_at = -math.inf  # local time a holder's renewal last arrived
        self.is_leader = False
        self._serving = False  # leader, or stepping down and on_change(False) not done yet
        self._releasing = False  # release() until its write is done
        self._taken: LeaseRecord | None = None  # the watch saw the Lease taken (leader only)
        self.transitions = 0  # local leader/standby transitions (metrics)
        self.holder: str = ""  # last holder seen
        self._record: LeaseRecord | None = None  # last record read or written
        self._observed_at = 0.0  # local time the record last changed
        self._last_renew = 0.0  # local time the last successful write was *sent*
        self._annotations: dict[str, str] = {}
        self._dirty = False  # an annotation changed since the last write (leader)
        self._dropped: tuple[str, ...] = ()  # annotations left out of the last write (size)
        self._listed: dict[str, str] = {}  # members in our last successful write
        self._unsure: dict[str, str] = {}  # members in writes since, whose outcome is unknown
        self._next_write = 0.0  # no write attempt before this (after a failure)
        self._retake_after = 0.0  # backoff: no taking back our own Lease before this
        self._backoff = 0.0
        self._led_since = 0.0
        self._blocked_by_vip = False  # logged once per episode
        self._waiting_logged = False
        self.last_stepdown_reason = ""
        self._wake = asyncio.Event()
        self._stopped = False
        # A standby with a live watch of the Lease judges from the watched record instead of
        # reading it every retry period (the watch delivers every renewal); writes still carry
        # the resourceVersion, so a stale view costs a 409, never a wrong acquisition.
        self._watching = False
        self._stale_view = True

    # -- public --------------------------------------------------------------------------------

    @property
    def outage_tolerant(self) -> bool:
        return self.confirmations is not None

    def set_annotation(self, key: str, value: str) -> None:
        """Written on the Lease with the next renewal (leader only)."""
        if self._annotations.get(key) == value:
            return
        self._annotations[key] = value
        self._dirty = True
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

    @property
    def not_holder(self) -> bool:
        """A Lease record was seen and it names another director, or nobody: a VIP this
        standby's kernel holds is stale. False while unknown (no record yet: a restarted
        leader must not drop the VIPs it is about to take back)."""
        record = self._record
        return record is not None and record.holder != self.config.identity

    def authority_left(self) -> float:
        """Seconds the leader may still hold the VIPs without news (metrics); 0 if not."""
        if not self.is_leader:
            return 0.0
        return max(0.0, self._authority_until() - self.clock.monotonic())

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
        loop = asyncio.get_running_loop()
        start = loop.time()
        await self._set_leader(False, "releasing the Lease (shutdown)")
        stepped_down = loop.time()
        record = self._record
        if record is None:
            return False
        for attempt in range(1, 4):
            released = replace(
                record, holder="", renew_time=self.clock.now(), annotations=self._merged(record)
            )
            try:
                await asyncio.wait_for(self.api.update(released), timeout)
                # the handover waits on this: where its time went (the step-down, the writes)
                log.info("lease released", extra={
                    "identity": self.config.identity, "attempts": attempt,
                    "step_down_s": round(stepped_down - start, 3),
                    "write_s": round(loop.time() - stepped_down, 3),
                })  # fmt: skip
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
            return self.config.retry_period
        if self.is_leader:
            return await self._lead()
        await self._try_acquire()
        return self._standby_delay()

    # -- leader --------------------------------------------------------------------------------

    def _confirmed(self) -> Mapping[str, Confirmed]:
        if self.confirmations is None:
            return {}
        try:
            return self.confirmations()
        except Exception as exc:  # no news is no confirmation
            log.warning(
                "reading heartbeat confirmations failed: %s", str(exc) or type(exc).__name__
            )
            return {}

    def _keep_for(self, c: Confirmed) -> float:
        """How long a member's proof keeps it listed: a gated member's silence does not bound
        our hold, so it stays listed (removing it would only churn writes under jitter) for
        the Lease duration; a strict one is removed quickly, before its silence makes us
        step down."""
        cfg = self.config
        return float(cfg.lease_duration) if c.gated else cfg.remove_after

    def _fresh_members(self, now: float) -> dict[str, str]:
        """The standbys to list in the next write."""
        cfg = self.config
        return {
            name: c.address
            for name, c in self._confirmed().items()
            if name != cfg.identity and now - c.at < self._keep_for(c)
        }

    def _authority_until(self) -> float:
        """Until when the leader may hold the VIPs without further news."""
        cfg = self.config
        if not self.outage_tolerant:
            return self._last_renew + cfg.renew_deadline
        until = self._last_renew + cfg.outage_hold
        confirmed = self._confirmed()
        for members in (self._listed, self._unsure):
            for name, address in members.items():
                c = confirmed.get(name)
                if c is not None and c.address == address and c.gated:
                    continue  # it never takes over while our kernel answers ARP for the VIPs
                at = c.at if c is not None and c.address == address else -math.inf
                until = min(until, at + cfg.confirm_within)
        return until

    def _silent_member(self) -> str:
        """The listed member whose silence ends our authority (for the log)."""
        confirmed = self._confirmed()
        worst, worst_at = "", math.inf
        for members in (self._listed, self._unsure):
            for name, address in members.items():
                c = confirmed.get(name)
                at = c.at if c is not None and c.address == address else -math.inf
                if at < worst_at:
                    worst, worst_at = name, at
        return worst

    async def _lead(self) -> float:
        cfg = self.config
        now = self.clock.monotonic()
        if now >= self._authority_until():
            await self._lose_authority()
            return self._standby_delay()
        members = self._fresh_members(now) if self.outage_tolerant else {}
        due = (
            now >= self._last_renew + cfg.retry_period
            or self._dirty
            or (self.outage_tolerant and members != self._listed)
        )
        if due and now >= self._next_write:
            await self._renew(members)
            if not self.is_leader:
                return self._standby_delay()
            now = self.clock.monotonic()
            if now >= self._authority_until():
                await self._lose_authority()
                return self._standby_delay()
        return self._leader_delay(now)

    def _leader_delay(self, now: float) -> float:
        cfg = self.config
        change = self._dirty or (self.outage_tolerant and self._fresh_members(now) != self._listed)
        due = now if change else self._last_renew + cfg.retry_period
        wake = min(max(due, self._next_write), self._authority_until())
        if self.outage_tolerant:
            # a listed member going stale (remove it) or a new one (list it)
            confirmed = self._confirmed()
            for name in self._listed:
                c = confirmed.get(name)
                if c is not None:
                    wake = min(wake, max(c.at + self._keep_for(c), self._next_write))
            wake = min(wake, now + 0.25)
        return max(0.005, wake - now)

    async def _lose_authority(self) -> None:
        cfg = self.config
        now = self.clock.monotonic()
        if self.outage_tolerant and now < self._last_renew + cfg.outage_hold:
            why = (
                f"director {self._silent_member()!r}, listed on the Lease, did not confirm "
                f"within {cfg.confirm_within:.2f}s and no write has removed it since (it "
                "could take over)"
            )
        elif self.outage_tolerant:
            why = f"no Lease write succeeded for the outage hold ({cfg.outage_hold:.0f}s)"
        else:
            why = "renew deadline exceeded"
        # back off before taking our own Lease back: a slow API path must not flap the VIPs
        stable = now - self._led_since > 60.0
        self._backoff = 1.0 if stable or not self._backoff else min(MAX_BACKOFF, 2 * self._backoff)
        self._retake_after = now + self._backoff
        await self._step_down(f"{why}; retaking no sooner than in {self._backoff:.0f}s")

    async def _renew(self, members: Mapping[str, str]) -> None:
        cfg = self.config
        start = self.clock.monotonic()
        record = self._record
        assert record is not None
        self._dirty = False
        try:
            for _ in range(2):  # one retry after a conflict on a record that is still ours
                left = self._authority_until() - self.clock.monotonic()
                if left <= 0:
                    return
                renewed = replace(
                    record,
                    holder=cfg.identity,
                    renew_time=self.clock.now(),
                    duration_seconds=cfg.lease_duration,
                    annotations=self._merged(record, members),
                )
                self._unsure.update(members)
                try:
                    written = await asyncio.wait_for(
                        self.api.update(renewed), min(left, cfg.renew_deadline)
                    )
                except LeaseConflict:
                    left = self._authority_until() - self.clock.monotonic()
                    current = await asyncio.wait_for(self.api.get(), max(0.01, left))
                    if current is None or current.holder != cfg.identity:
                        self._observe(current)
                        await self._step_down(
                            f"lost the Lease to {current.holder if current else 'nobody'!r}"
                        )
                        return
                    record = current
                    continue
                self._wrote(written, start, members)
                return
        except Exception as exc:
            self._dirty = True
            self._next_write = self.clock.monotonic() + min(cfg.retry_period, 0.25)
            log.warning(
                "lease renewal failed: %s",
                str(exc) or type(exc).__name__,
                extra={"identity": cfg.identity},
            )

    def _wrote(self, written: LeaseRecord, sent_at: float, members: Mapping[str, str]) -> None:
        if self.outage_tolerant and dict(members) != self._listed:
            log.info(
                "standbys listed on the Lease: %s",
                ", ".join(sorted(members)) or "none",
                extra={"identity": self.config.identity},
            )
        self._record = written
        self._last_renew = sent_at
        self._listed = dict(members) if self.outage_tolerant else {}
        self._unsure = {}
        self._next_write = 0.0
        self._observe(written)

    # -- standby -------------------------------------------------------------------------------

    def _standby_delay(self) -> float:
        """Until the next look: the retry period, or sooner when the Lease expires."""
        cfg = self.config
        now = self.clock.monotonic()
        delay = cfg.retry_period
        record = self._record
        if record is not None and record.holder not in ("", cfg.identity):
            expires = self._observed_at + self._expiry(record)
            if expires > now:
                delay = min(delay, expires - now)
        if self._retake_after > now:
            delay = min(delay, self._retake_after - now)
        if self._blocked_by_vip:
            delay = min(delay, VIP_RECHECK)
        return max(0.005, delay)

    def _eligible(self, record: LeaseRecord) -> bool:
        """Whether this standby may take ``record`` by heartbeat loss or plain expiry: the
        record lists it (or lists nobody: classic mode), or it is gated (it takes over only
        where no node answers for the VIPs, which the holder's hold does not rely on)."""
        members = parse_members(record)
        if members is None or self.config.identity in members:
            return True
        if self.gated is None:
            return False
        try:
            return bool(self.gated())
        except Exception:
            return False

    def _expiry(self, record: LeaseRecord) -> float:
        """How long this director must see ``record`` unchanged before it may take it."""
        if self._eligible(record):
            return float(record.duration_seconds)
        return record.duration_seconds + self.config.outage_hold

    async def _try_acquire(self) -> None:
        cfg = self.config
        timeout = cfg.renew_deadline
        if self._watching and not self._stale_view and self._record is not None:
            current: LeaseRecord | None = self._record
        else:
            try:
                current = await asyncio.wait_for(self.api.get(), timeout)
            except Exception as exc:
                log.warning("reading the Lease failed: %s", str(exc) or type(exc).__name__)
                return
            self._stale_view = False
        start = self.clock.monotonic()
        now = self.clock.now()
        members = self._fresh_members(start) if self.outage_tolerant else {}
        if current is None:
            # a deleted Lease is no proof that nobody holds the VIPs
            if self.vip_in_use is not None and await self._vip_answered():
                return
            fresh = LeaseRecord(
                holder=cfg.identity,
                duration_seconds=cfg.lease_duration,
                acquire_time=now,
                renew_time=now,
                transitions=0,
                annotations=self._merged(LeaseRecord(holder=""), members),
            )
            try:
                written = await asyncio.wait_for(self.api.create(fresh), timeout)
            except LeaseConflict:
                return  # someone else created it first
            except Exception as exc:
                log.warning("creating the Lease failed: %s", str(exc) or type(exc).__name__)
                return
            await self._became_leader(written, start, members, "created the Lease")
            return
        self._observe(current)
        own = current.holder == cfg.identity
        if own and start < self._retake_after:
            return  # backing off after losing our authority
        free = current.holder == "" or own
        why = ""
        if not free:
            why = self._takeover_reason(current)
            if not why:
                return
            if self.vip_in_use is not None and await self._vip_answered():
                return
        taken = replace(
            current,
            holder=cfg.identity,
            duration_seconds=cfg.lease_duration,
            acquire_time=start_time(current, cfg.identity, now),
            renew_time=now,
            transitions=current.transitions + (0 if own else 1),
            annotations=self._merged(current, members),
        )
        early = not free and self._early_take_allowed(current)
        if early:
            await self._take_early(True, why)
            timeout = min(timeout, EARLY_TAKE_WRITE_BOUND)
        landed: LeaseRecord | None = None
        try:
            landed = await asyncio.wait_for(self.api.update(taken), timeout)
        except LeaseConflict:
            self._stale_view = True  # another director was faster: read it next tick
            return
        except Exception as exc:
            log.warning("acquiring the Lease failed: %s", str(exc) or type(exc).__name__)
            return
        finally:
            if early and landed is None:  # failed, timed out or cancelled (stopping)
                await self._take_early(False, "the Lease write did not succeed")
        written = landed
        if own:
            why = "took back its own Lease"
        elif not current.holder:
            why = "Lease was free"
        await self._became_leader(written, start, members, why)

    def _early_take_allowed(self, current: LeaseRecord) -> bool:
        """Whether this takeover may put the VIPs up while its Lease write is in flight:
        nobody else can be taking them. The holder is silent on the heartbeat and no node
        answers ARP for the VIPs (just checked), and the Lease lists this director as the
        holder's only standby, so no other standby takes over by heartbeat loss (a director
        unlisted and gated could, in the moment between its first probe and the holder's
        next write: docs/director.md). The API delivered the holder's renewals lately (a
        write is likely to return soon; during an outage the VIPs would go up and down)."""
        if self.early_take is None or self.vip_in_use is None:
            return False
        now = self.clock.monotonic()
        if now < self._early_blocked_until:
            return False
        members = parse_members(current)
        if members is None or set(members) != {self.config.identity}:
            return False
        if not self._holder_lost(current.holder):
            return False  # expiry, not the heartbeat: slower anyway, no need
        return now - self._renewal_seen_at <= self.config.retry_period + 1.0

    async def _take_early(self, up: bool, why: str) -> None:
        assert self.early_take is not None
        if not up and not self.taking_early:
            return
        self.taking_early = up
        log.info(
            "%s: %s",
            "VIPs up ahead of the Lease write" if up else "VIPs taken back",
            why,
            extra={"identity": self.config.identity},
        )
        if not up:
            self._early_blocked_until = self.clock.monotonic() + EARLY_TAKE_BACKOFF
        try:
            await self.early_take(up)
        except Exception:
            log.exception("early take (%s) failed", "up" if up else "back")

    def _takeover_reason(self, current: LeaseRecord) -> str:
        """Why this standby may take ``current`` from its live-looking holder ("": it may
        not)."""
        holder = current.holder
        if self._holder_heard(holder):
            return ""  # it answers "leading": never, expired or not
        eligible = self._eligible(current)
        lost = self._holder_lost(holder)
        if eligible and lost:
            return f"peer heartbeat from {holder!r} lost"
        if lost and not self._waiting_logged:
            self._waiting_logged = True
            log.warning(
                "the holder is silent, but this director is neither listed on the Lease nor "
                "checking ARP for every VIP of the group: it waits for the Lease to expire "
                "(%.0fs) plus the outage hold",
                current.duration_seconds,
                extra={"identity": self.config.identity, "holder": holder},
            )
        if self.clock.monotonic() - self._observed_at >= self._expiry(current):
            return f"Lease of {holder!r} expired"
        return ""

    async def _vip_answered(self) -> bool:
        assert self.vip_in_use is not None
        try:
            answered = await self.vip_in_use()
        except Exception as exc:
            log.warning("VIP check failed: %s", str(exc) or type(exc).__name__)
            answered = False  # the heartbeat and the Lease decided; the check only adds
        if answered and not self._blocked_by_vip:
            log.warning(
                "not taking over: another node still answers ARP for the group's VIPs "
                "(its kernel holds them; they lapse when their lifetime ends)",
                extra={"identity": self.config.identity, "holder": self.holder},
            )
        self._blocked_by_vip = answered
        return answered

    def _holder_lost(self, holder: str) -> bool:
        if self.holder_unreachable is None:
            return False
        try:
            return bool(self.holder_unreachable(holder))
        except Exception as exc:
            log.warning("peer heartbeat check failed: %s", str(exc) or type(exc).__name__)
            return False

    def _holder_heard(self, holder: str) -> bool:
        if self.holder_heard is None:
            return False
        try:
            return bool(self.holder_heard(holder))
        except Exception as exc:
            log.warning("peer heartbeat check failed: %s", str(exc) or type(exc).__name__)
            return False

    async def _became_leader(
        self, record: LeaseRecord, sent_at: float, members: Mapping[str, str], why: str
    ) -> None:
        self._wrote(record, sent_at, members)
        self._led_since = sent_at
        self.taking_early = False  # on_change(True) below takes them over
        self._blocked_by_vip = False
        self._waiting_logged = False
        await self._set_leader(True, why)

    async def _step_down(self, why: str) -> None:
        self.last_stepdown_reason = why
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
        now = self.clock.monotonic()
        if self._record is None or record.identity_key() != self._record.identity_key():
            self._observed_at = now
        if self._record is None or record.resource_version != self._record.resource_version:
            self._renewal_seen_at = now
        if not self.is_leader:
            self._record = record
        self.holder = record.holder
        if self.on_record is not None:
            try:
                self.on_record(record)
            except Exception as exc:
                log.warning("on_record callback failed: %s", str(exc) or type(exc).__name__)

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

    def _merged(
        self, record: LeaseRecord, members: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        merged = dict(record.annotations)
        merged.update(self._annotations)
        if not self.outage_tolerant:
            merged.pop(MEMBERS_ANNOTATION, None)  # a list nobody keeps current
        elif members is not None:
            merged[MEMBERS_ANNOTATION] = format_members(members)
        # every Lease write goes through here: bounded once, so that no report can make the
        # API server refuse a renewal (the group would lose its leader)
        kept, dropped = contract.bound_annotations(merged)
        if dropped != self._dropped:
            self._dropped = dropped
            if dropped:
                log.error(
                    "Lease annotations too large: left out %s (the controller reads them as "
                    "empty) so that the Lease stays writable",
                    ", ".join(dropped),
                    extra={"identity": self.config.identity},
                )
        return kept

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


def start_time(current: LeaseRecord, identity: str, now: dt.datetime) -> dt.datetime:
    """acquireTime of a takeover: kept when we take back our own record."""
    if current.holder == identity and current.acquire_time is not None:
        return current.acquire_time
    return now


def controlling_daemonset(references: Iterable[OwnerReference]) -> LeaseOwner | None:
    """The DaemonSet among a Pod's ownerReferences (lightkube models) that controls it."""
    for ref in references:
        if ref.kind == "DaemonSet" and ref.controller and ref.apiVersion.startswith("apps/"):
            return LeaseOwner(ref.kind, ref.name, ref.uid, ref.apiVersion)
    return None


def _newer(a: LeaseRecord, b: LeaseRecord) -> bool:
    """Whether ``a`` is a later version than ``b`` (resourceVersions are opaque, but the
    watch delivers them in order; a different one from the watch is the newer)."""
    return a.resource_version != b.resource_version


# -- the Kubernetes API (lightkube) -------------------------------------------------------------


class KubeLeaseApi:
    """LeaseApi over lightkube's AsyncClient. Every write carries the Lease's owners as read,
    plus ``owner`` once known (``find_owner``)."""

    def __init__(
        self, client: Any, namespace: str, name: str, owner: LeaseOwner | None = None
    ) -> None:
        self.client, self.namespace, self.name = client, namespace, name
        self.owner = owner

    async def find_owner(
        self, pod_name: str, first_wait: float = 1.0, retry_max: float = 60.0
    ) -> LeaseOwner | None:
        """Read this agent's Pod for the DaemonSet that controls it; from the next write on,
        the Lease names that DaemonSet as an owner. Runs beside the election, never before it
        (a takeover must not wait for this read): a transient failure is retried, doubling
        the wait up to ``retry_max``; a refusal (403: the agent's Role lacks ``get`` on pods)
        or a missing Pod (an agent run by hand) ends it with a log line, and the Lease stays
        unowned (it then outlives an uninstall, as before)."""
        from lightkube import ApiError
        from lightkube.resources.core_v1 import Pod

        wait = first_wait
        while True:
            try:
                pod = await self.client.get(Pod, pod_name, namespace=self.namespace)
            except ApiError as exc:
                if exc.status.code in (403, 404):
                    log.warning(
                        "the Lease gets no owner: reading this agent's Pod was refused (%s)%s",
                        exc.status.code,
                        " -- grant the director's Role `get` on pods in its namespace "
                        "(deploy/rbac/director.yaml)"
                        if exc.status.code == 403
                        else "",
                        extra={"lease": f"{self.namespace}/{self.name}", "pod": pod_name},
                    )
                    return None
                log.info("reading this agent's Pod failed, retrying: %s", exc)
            except Exception as exc:  # the API server unreachable: keep trying, off the path
                log.info("reading this agent's Pod failed, retrying: %s", exc)
            else:
                self.owner = controlling_daemonset(pod.metadata.ownerReferences or [])
                log.info(
                    "Lease owner: %s",
                    f"DaemonSet {self.owner.name}" if self.owner else
                    "none (no DaemonSet controls this Pod)",
                    extra={"lease": f"{self.namespace}/{self.name}", "pod": pod_name},
                )  # fmt: skip
                return self.owner
            await asyncio.sleep(wait)
            wait = min(wait * 2, retry_max)

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
            owners=tuple(
                LeaseOwner(o.kind, o.name, o.uid, o.apiVersion) for o in meta.ownerReferences or []
            ),
        )

    def _object(self, record: LeaseRecord) -> Any:
        from lightkube.models.coordination_v1 import LeaseSpec
        from lightkube.models.meta_v1 import ObjectMeta, OwnerReference
        from lightkube.resources.coordination_v1 import Lease

        owners = with_owner(record.owners, self.owner)
        return Lease(
            metadata=ObjectMeta(
                name=self.name,
                namespace=self.namespace,
                resourceVersion=record.resource_version,
                annotations=dict(record.annotations) or None,
                labels=dict(record.labels) or None,
                ownerReferences=[
                    OwnerReference(apiVersion=o.api_version, kind=o.kind, name=o.name, uid=o.uid)
                    for o in owners
                ]
                or None,
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
