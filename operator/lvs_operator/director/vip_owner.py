"""The VIPs on this node: one object owns which VIPs are the group's, where each goes, which
are held (leader) and which are retired to ``lo`` by a planned handover.

- ``owned``: every VIP of the group's VirtualServers seen while running: what this agent may
  touch (IPVS services on them, the addresses). Never "every address of the node".
- ``placements``: vip -> interface it goes on, computed by every director (so a takeover adds
  the VIPs without any dump first).
- ``held``: vip -> interface, while leader.
- ``retired``: vip -> the interface it left, while an old leader drains (handover.py).
- ``problems``: vip -> why this node cannot place, add or remove it (the fix in the text).

Each VIP's change stands alone: one that fails (an interface that does not exist, an address
the kernel refuses) is recorded in ``problems`` and logged once per change of its reason; the
others are added and announced. Until the group's VIPs are known (the first converge) a
leader adds and removes nothing: a restarted leader keeps the VIPs its kernel holds, and then
adopts them (announced, never removed and added again).

Address changes run on the VIP lane (vip.py's netlink); announcements on threads of their own,
stopped (and waited for) before a step-down removes the addresses.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .handover import LOOPBACK
from .lanes import Lane
from .metrics import Metrics
from .vip import (
    RENEWAL_PROBE_COUNT,
    RENEWAL_PROBE_WINDOWS,
    ForeignAddress,
    NoSuchInterface,
    Route,
    RouteIndex,
    plan_vips,
)

log = logging.getLogger("lvs_operator.director.vip_owner")

Link = tuple[int, str]  # (interface index, MAC)
Announcement = tuple[str, str, Link]  # (vip, interface, link)

NO_ROUTE = (
    "no route to the VIP on this node: add a route to its subnet, or set spec.directors.interface"
)
ANNOUNCE_STOP_WAIT = 0.2  # seconds a step-down waits for announcements to stop (one frame)
PROBE_TIMEOUT = 0.06  # seconds ``answered`` listens: three probes 20 ms apart, then answers
# A VIP another node answers for is not added (the hand-over from another director group:
# its leader drops it within a converge); past this many seconds that is reported.
HAND_IN_PATIENCE = 2.0
RENEWAL_PROBE_EVERY = 2  # a renewal of the VIPs present probes for other holders every N rounds
ANNOUNCE_THREADS = 4  # announcement batches sending at once (more wait for a thread)
TAKE_BATCH = 32  # VIPs a takeover adds in one kernel batch before it announces them


class VipNode(Protocol):
    """The node's addresses and announcements (vip.py's VipManager); blocking calls."""

    def routes(self) -> list[Route]: ...

    def present(self) -> dict[str, str]: ...

    def add(self, vip: str, ifname: str) -> bool: ...

    def add_many(self, items: Sequence[tuple[str, str]]) -> list[Exception | None]:
        """``add`` for each (vip, interface) in one go; the error of each (None: done)."""
        ...

    def remove(self, vip: str, ifname: str) -> bool: ...

    def move(self, moves: Mapping[str, str], to: str) -> tuple[list[str], list[str]]:
        """Each VIP (vip -> its interface) added to ``to``, then removed from its
        interface; (now on ``to``, of those the ones off their interface)."""
        ...

    def renew(self, items: Iterable[tuple[str, str]]) -> list[str]: ...

    def link_info(self, ifname: str) -> Link | None: ...

    def send_many(
        self, items: list[Announcement], count: int | None, stop: threading.Event
    ) -> None: ...

    def answered(
        self, items: list[Announcement], timeout: float, count: int = ..., windows: int = ...
    ) -> set[str]: ...


@dataclass(frozen=True)
class LaneWait:
    """How long a lifetime renewal waited in line on the VIP lane, and behind which call
    (its name and how long it had run when the renewal queued; None: the lane was idle)."""

    seconds: float
    behind: tuple[str, float] | None


class VipOwner:
    def __init__(
        self,
        node: VipNode,
        lane: Lane,
        metrics: Metrics,
        on_placed: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.node = node
        self.lane = lane
        self.metrics = metrics
        self.on_placed = on_placed  # after each placement, under the lock (peer address)
        self.owned: set[str] = set()
        self.placements: dict[str, str] = {}
        self.held: dict[str, str] = {}
        self.retired: dict[str, str] = {}
        self.problems: dict[str, str] = {}  # vip -> reason (names the interface and the fix)
        # on_problem(vip, reason): told of each new or changed problem (the agent's Event)
        self.on_problem: Callable[[str, str], None] | None = None
        self.adopted: set[str] = set()  # held since start-up, not announced yet
        self._left: set[str] = set()  # VIPs another node answers for: not renewed (logged)
        self._present_rounds = 0  # rounds of renew_present: the probe runs every few
        # VIPs the leader wants that another node still answers for -> since when (monotonic)
        self.arriving: dict[str, float] = {}
        self._links: dict[str, Link] = {}
        self._lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[None]] = set()  # announcements, background reconciles
        # announcements started since the last step-down see this event; a step-down sets it
        self._stop = threading.Event()
        self._announcing: set[asyncio.Task[None]] = set()
        # the announcements sleep between their rounds: threads of their own (lanes.py)
        self._announcer = Lane("announce", threads=ANNOUNCE_THREADS)
        self.renewal_wait: LaneWait | None = None  # the last lifetime renewal's wait in line

    def own(self, vips: Iterable[str]) -> None:
        self.owned.update(vips)

    def keep_only(self, vips: Iterable[str]) -> None:
        """After a converge and a VIP reconcile both succeeded, VIPs no VirtualServer of the
        group uses any more are gone from this node (services and address): stop owning
        them, so a VIP that moves to another director group is left to that group."""
        self.owned = set(vips)

    def not_node_addresses(self) -> list[str]:
        """Every VIP this agent knows: never this node's own address on a link."""
        return sorted(self.owned | set(self.placements) | set(self.held))

    # -- placement -----------------------------------------------------------------------------

    def _place(self, vips: Mapping[str, str | None]) -> dict[str, str]:
        """Where each VIP goes (vip -> interface): the override, or the interface of its
        route (one route dump for all). A VIP without a route is left out."""
        routes: RouteIndex | None = None
        placed: dict[str, str] = {}
        for vip, override in vips.items():
            if override:
                placed[vip] = override
                continue
            if routes is None:
                routes = RouteIndex(self.node.routes())
            name = routes.pick(vip)
            if name is not None:
                placed[vip] = name
        return placed

    async def _link(self, ifname: str) -> Link | None:
        """The interface's (index, MAC), cached; None (not cached: the interface may come
        later) when it has none or cannot be read."""
        if ifname not in self._links:
            try:
                link = await self.lane.run(self.node.link_info, ifname)
            except Exception as exc:
                log.warning("cannot announce on the interface: %s", exc,
                            extra={"interface": ifname})  # fmt: skip
                return None
            if link is None:
                return None
            self._links[ifname] = link
        return self._links[ifname]

    # -- problems ------------------------------------------------------------------------------

    async def _change(self, add: bool, vip: str, ifname: str) -> str | None:
        """Add or remove one VIP on the lane; None when done, else why not (never raises:
        one VIP's failure must not keep the others off the node)."""
        try:
            await self.lane.run(self.node.add if add else self.node.remove, vip, ifname)
        except Exception as exc:
            return problem_text(add, ifname, exc)
        return None

    def _settle(self, failed: Mapping[str, tuple[str | None, str]], scope: Iterable[str]) -> None:
        """Record a pass's failures (vip -> (interface, reason)) for the VIPs it dealt with
        (``scope``). A new or changed reason is logged, once: a retry failing the same way
        is quiet. A VIP of the scope that no longer fails is cleared, and logged once as
        placed if it is held now."""
        for vip in set(scope) | set(failed):
            if vip in failed:
                ifname, reason = failed[vip]
                if self.problems.get(vip) != reason:  # the reason names the interface
                    extra = {"vip": vip} if ifname is None else {"vip": vip, "interface": ifname}
                    log.error("VIP problem: %s", reason, extra=extra)
                    if self.on_problem is not None:
                        self.on_problem(vip, reason)
                self.problems[vip] = reason
            elif self.problems.pop(vip, None) is not None and vip in self.held:
                log.info("VIP placed", extra={"vip": vip, "interface": self.held[vip]})
        self.metrics.vip_problems.set(len(self.problems))

    # -- holding -------------------------------------------------------------------------------

    async def reconcile(
        self, vips: Mapping[str, str | None] | None, leader: bool, announce: bool = False
    ) -> None:
        """Make the node hold exactly the VIPs it should (``vips``: the group's, vip ->
        interface override); announce the ones newly held (added, or adopted: already on
        their interface), or all of them with ``announce``.

        ``vips`` None (not known yet: no converge since the start): a leader changes nothing
        (a restarted leader must not drop the VIPs its kernel holds before it knows them); a
        standby still removes the group's VIPs it knows of (``owned``, from the listed
        VirtualServers): it wants none, so it needs no desired set."""
        if vips is None and leader:
            return
        stop = self._stop  # a step-down during this pass stops its announcements too
        async with self._lock:
            failed: dict[str, tuple[str | None, str]] = {}
            if vips is not None:
                self.placements = await self.lane.run(self._place, vips)
                if self.on_placed is not None:
                    await self.on_placed()
                failed = {vip: (None, NO_ROUTE) for vip in vips if vip not in self.placements}
            wanted = dict(self.placements) if leader else {}
            present = await self.lane.run(self.node.present)
            # VIPs retired by a handover stay on lo until their connections are done
            present = {vip: i for vip, i in present.items() if vip not in self.retired}
            candidates = (self.owned | set(wanted)) - set(self.retired)
            plan = plan_vips(wanted, present, candidates)
            if plan.remove and not leader:
                await self._stop_announcements()  # no frame for a VIP after it is gone
            for vip, ifname in plan.remove.items():
                reason = await self._change(False, vip, ifname)
                if reason is None:
                    log.info("VIP dropped", extra={"vip": vip, "interface": ifname})
                else:
                    failed[vip] = (ifname, reason)
            not_added: set[str] = set()
            waiting = await self._answered_elsewhere(plan.add) if leader else set()
            now = asyncio.get_running_loop().time()
            self.arriving = {v: self.arriving.get(v, now) for v in waiting}
            for vip in waiting:
                not_added.add(vip)
                if now - self.arriving[vip] >= HAND_IN_PATIENCE:
                    failed[vip] = (
                        plan.add[vip],
                        hand_in_text(vip, plan.add[vip], now - self.arriving[vip]),
                    )
            before = set(self.held)
            # In batches, each VIP held (so renewed by the lifetime thread) as soon as its
            # batch is in: one request per VIP took ~25 ms in the test VM, so 1,000 VIPs took
            # longer than their lifetime and the first ones lapsed before they were held, were
            # added again, and the re-adds kept the VIP lane (and the renewals) busy.
            todo = [(vip, ifname) for vip, ifname in plan.add.items() if vip not in waiting]
            for start in range(0, len(todo), TAKE_BATCH):
                chunk = todo[start : start + TAKE_BATCH]
                try:
                    errors = await self.lane.run(self.node.add_many, chunk)
                except Exception as exc:  # the batch as a whole (the socket)
                    errors = [exc] * len(chunk)
                for (vip, ifname), error in zip(chunk, errors, strict=True):
                    if error is not None:
                        failed[vip] = (ifname, problem_text(True, ifname, error))
                        not_added.add(vip)
                    else:
                        self.held[vip] = ifname
            self.held = {vip: i for vip, i in wanted.items() if vip not in not_added}
            self.metrics.vips.set(len(self.held))
            # a full pass: every problem not seen again is gone
            self._settle(failed, set(self.problems) if vips is not None else plan.remove)
            new: list[Announcement] = []
            again: list[Announcement] = []
            for vip, ifname in self.held.items():
                fresh = vip in plan.add or vip not in before or vip in self.adopted
                if not (fresh or announce):
                    continue
                link = await self._link(ifname)
                if link is not None:
                    (new if fresh else again).append((vip, ifname, link))
            self._announce(new, None, stop)
            self._announce(again, 1, stop)
            if vips is not None:
                self.adopted.clear()

    async def take_fast(self, still_leader: Callable[[], bool]) -> None:
        """On takeover: add the VIPs where they were last placed and announce them, before the
        full reconcile (which dumps routes and addresses: slow on a busy node). Without
        placements yet (a restarted leader before its first converge) nothing happens."""
        stop = self._stop
        failed: dict[str, tuple[str | None, str]] = {}
        tried: list[str] = []
        # up already (an early take ahead of the Lease write): announced
        todo = [(v, i) for v, i in dict(self.placements).items() if self.held.get(v) != i]
        # batches: the first VIPs go out while the rest are being added
        for start in range(0, len(todo), TAKE_BATCH):
            if not still_leader():
                break
            chunk = todo[start : start + TAKE_BATCH]
            tried += [vip for vip, _ in chunk]
            try:
                errors = await self.lane.run(self.node.add_many, chunk)
            except Exception as exc:  # the batch as a whole (the socket)
                errors = [exc] * len(chunk)
            batch: list[Announcement] = []
            for (vip, ifname), error in zip(chunk, errors, strict=True):
                if error is not None:
                    failed[vip] = (ifname, problem_text(True, ifname, error))
                    continue
                self.held[vip] = ifname
                link = await self._link(ifname)
                if link is not None:
                    batch.append((vip, ifname, link))
            self._announce(batch, None, stop)
        self.metrics.vips.set(len(self.held))
        self._settle(failed, tried)

    async def drop_held(self) -> None:
        """On stepping down: stop the announcements, then remove what we hold, without the
        dumps of a full reconcile (the Lease's clock runs for the others)."""
        await self._stop_announcements()
        held, self.held = dict(self.held), {}
        self.metrics.vips.set(0)
        failed: dict[str, tuple[str | None, str]] = {}
        for vip, ifname in held.items():
            reason = await self._change(False, vip, ifname)
            if reason is None:
                log.info("VIP dropped", extra={"vip": vip, "interface": ifname})
            else:
                failed[vip] = (ifname, reason)  # the reconcile after the step-down retries
        self._settle(failed, held)

    # -- lifetimes (the dead-man switch: vip.py) -------------------------------------------------

    # Renewals block (a thread of their own, agent.py): the event loop can stall for seconds
    # under load (a first import, a big decode) and a VIP must not lapse meanwhile. Every
    # address change still goes through the VIP lane, in order with the loop's; the state
    # read here (held, retired, owned) is copied whole first.

    async def renew_lifetimes(self) -> None:
        await asyncio.to_thread(self.renew_lifetimes_blocking)

    def renew_lifetimes_blocking(self) -> None:
        """Restart the lifetime of what this node holds: the VIPs while leader, and those
        retired to lo while a handover drains. A VIP no longer on its interface is left out
        (vip.py's ``renew`` looks first)."""
        held, retired = dict(self.held), dict(self.retired)
        items = list(held.items()) + [(vip, LOOPBACK) for vip in retired]
        if items:
            self._renew_on_lane(items)

    def _renew_on_lane(self, items: list[tuple[str, str]]) -> None:
        """``node.renew`` on the VIP lane, timing its wait in line (``renewal_wait``)."""
        queued, behind = time.monotonic(), self.lane.running()
        began: list[float] = []

        def renew() -> None:
            began.append(time.monotonic())
            self.node.renew(items)

        self.lane.call(renew)
        self.renewal_wait = LaneWait(began[0] - queued, behind)

    async def renew_present(self, only: Iterable[str] | None, probe: bool = True) -> None:
        only = None if only is None else set(only)
        await asyncio.to_thread(self.renew_present_blocking, only, probe)

    def renew_present_blocking(self, only: set[str] | None, probe: bool = True) -> None:
        """Restart the lifetime of the agent-added VIPs on this node that no other node
        answered for at the last probe: of those in ``only``, or of all (None: the group's
        VIPs not known yet). A VIP another node answers for is left to lapse (this node was
        cut off and a standby took over), logged once. ``probe`` False: no probe (a leader:
        no standby holds a VIP while this node holds the Lease)."""
        present = self.lane.call(self.node.present)
        items = [(v, i) for v, i in present.items() if only is None or v in only]
        if not items:
            return
        # the renewal first, then the probe (every RENEWAL_PROBE_EVERY rounds), whose answer
        # the next round heeds: a probe of 1,000 VIPs took 2-4 s per round under TCG, and
        # renewals behind it came 5-6 s apart, VIPs lapsing. A VIP another node answers for
        # is renewed at most a round or two more: no standby takes a VIP this node answers
        # for, so that is a probe that missed it (or a partition), found at the next probe
        unclaimed = [(vip, ifname) for vip, ifname in items if vip not in self._left]
        if unclaimed:
            self._renew_on_lane(unclaimed)
        self._present_rounds += 1
        if not probe or self._present_rounds % RENEWAL_PROBE_EVERY != 1:
            return
        probed: list[Announcement] = []
        # one look per interface, not per VIP: at 1,000 VIPs a look each (a lane call, two
        # ioctls) made a restarted leader's round take 14 s under TCG, and its VIPs lapsed
        links: dict[str, Link | None] = {}
        for vip, ifname in items:
            if ifname not in links:
                link = self._links.get(ifname)
                if link is None:
                    link = self.lane.call(functools.partial(self.node.link_info, ifname))
                    if link is not None:
                        self._links[ifname] = link
                links[ifname] = link
            link = links[ifname]
            if link is not None:  # lo: nobody else answers there
                probed.append((vip, ifname, link))
        # the probe here (it listens), the renewals on the VIP lane (which orders every
        # address change: it never re-adds a VIP removed meanwhile)
        taken = (
            self.node.answered(probed, PROBE_TIMEOUT, RENEWAL_PROBE_COUNT, RENEWAL_PROBE_WINDOWS)
            if probed
            else set()
        )
        for vip in taken:
            if vip not in self._left:
                log.warning("VIP left to lapse: another node answers for it", extra={"vip": vip})
        self._left = set(taken)

    async def adopt_present(self) -> list[str]:
        """A restarted leader, before anything slow: restart the lifetime of the group's
        VIPs (``owned``, from its VirtualServers) that this node still has, so they do not
        lapse while the agent reads the kernel and converges. Returns them."""
        present = await self.lane.run(self.node.present)
        items = [(vip, ifname) for vip, ifname in present.items() if vip in self.owned]
        if items:
            await self.lane.run(self.node.renew, items)
            # held (so renewed) from now on; announced by the first reconcile that knows them
            self.held.update(items)
            self.adopted.update(vip for vip, _ in items)
            self.metrics.vips.set(len(self.held))
        return sorted(vip for vip, _ in items)

    # -- announcements -------------------------------------------------------------------------

    def _announce(
        self, items: list[Announcement], count: int | None, stop: threading.Event
    ) -> None:
        """Announce a batch (rounds over all of them, ``announce_interval`` apart) on a
        thread of its own: the rounds sleep, and a thousand VIPs must not wait in line.
        ``stop``: the event of the pass that chose them (a step-down since then: none)."""
        if items and not stop.is_set():
            task = asyncio.create_task(self._announcer.run(self.node.send_many, items, count, stop))
            self._announcing.add(task)
            task.add_done_callback(self._announcing.discard)
            self._track(task)

    async def _stop_announcements(self) -> None:
        """Stop every announcement started so far and wait (briefly) until none is sending,
        so that no gratuitous ARP / NA leaves after the caller removes the addresses."""
        self._stop.set()
        self._stop = threading.Event()
        if self._announcing:
            _, late = await asyncio.wait(set(self._announcing), timeout=ANNOUNCE_STOP_WAIT)
            if late:
                log.warning("announcements still sending after the step-down",
                            extra={"announcements": len(late)})  # fmt: skip

    # -- probing -------------------------------------------------------------------------------

    async def _answered_elsewhere(self, vips: Mapping[str, str]) -> set[str]:
        """Of the VIPs about to be added (vip -> interface), those another node answers ARP
        (NDP) for: one VIP, one holder, also when it comes from another director group."""
        items: list[Announcement] = []
        for vip, ifname in vips.items():
            link = await self._link(ifname)
            if link is not None:
                items.append((vip, ifname, link))
        if not items:
            return set()
        try:
            return await asyncio.to_thread(self.node.answered, items, PROBE_TIMEOUT)
        except Exception as exc:
            log.debug("probing for the VIPs failed: %s", exc)
            return set()

    async def answered(self, timeout: float = PROBE_TIMEOUT) -> set[str]:
        """The placed VIPs another host answers for on their link (vip.py's ARP probe /
        neighbour solicitation), e.g. a stopped leader whose kernel still holds them.
        Blocks neither the event loop nor the VIP lane (a thread of its own); never raises:
        a probe that cannot run answers "nobody" (see ``VipManager.answered``)."""
        return await self._answered(dict(self.placements), timeout)

    async def answered_retired(self, timeout: float = PROBE_TIMEOUT) -> set[str]:
        """The VIPs retired to lo (a planned handover) that another host answers for on the
        link each left: the new leader has announced them (``answered``'s probe)."""
        return await self._answered(dict(self.retired), timeout)

    async def _answered(self, where: dict[str, str], timeout: float) -> set[str]:
        items: list[Announcement] = []
        for vip, ifname in where.items():
            link = await self._link(ifname)
            if link is not None:
                items.append((vip, ifname, link))
        if not items:
            return set()
        try:
            return await asyncio.to_thread(self.node.answered, items, timeout)
        except Exception as exc:
            log.debug("probing for the VIPs failed: %s", exc)
            return set()

    def background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` (a reconcile) without holding up the election; it logs its failure."""

        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("VIP reconcile failed")

        self._track(asyncio.create_task(guarded()))

    def _track(self, task: asyncio.Task[None]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- retired (handover.py) -----------------------------------------------------------------

    async def retire(
        self,
        relay_via: Callable[[str, str], Awaitable[str | None]],
        before_move: Callable[[Mapping[str, tuple[str, str]]], Awaitable[None]] | None = None,
    ) -> dict[str, str]:
        """Move each held VIP to lo, added there before it leaves its interface (so it is
        never missing). ``relay_via(vip, ifname)`` says the address the VIP's connections
        are relayed to (None: the VIP stays where it is); ``before_move`` gets the plan (vip
        -> (interface, that address)) just before the VIPs move (the ARP filter).
        Returns vip -> that address for the VIPs moved."""
        relays: dict[str, str] = {}
        await self._stop_announcements()  # the VIPs leave their interface: no GARP after
        async with self._lock:
            plan: dict[str, tuple[str, str]] = {}  # vip -> (interface, relay address)
            for vip, ifname in dict(self.held).items():
                try:
                    via = await relay_via(vip, ifname)
                except Exception as exc:
                    log.warning("handover: cannot move the VIP to lo: %s", exc, extra={"vip": vip})
                    continue
                if via is not None:
                    plan[vip] = (ifname, via)
            if not plan:
                return relays
            if before_move is not None:
                await before_move(plan)
            # one trip to the kernel's thread for all of them: the Lease is released after
            # this, so every hop here delays the new leader
            moves = {vip: ifname for vip, (ifname, _) in plan.items()}
            on_lo, moved = await self.lane.run(self._move_to_lo, moves)
            for vip in on_lo:
                self.retired[vip] = moves[vip]
            for vip in moved:
                del self.held[vip]
                relays[vip] = plan[vip][1]
        return relays

    def _move_to_lo(self, moves: Mapping[str, str]) -> tuple[list[str], list[str]]:
        """(On the kernel's thread.) Add each VIP to lo, then remove it from its interface.
        Returns the VIPs now on lo, and those of them that left their interface."""
        try:
            return self.node.move(moves, LOOPBACK)
        except Exception as exc:  # e.g. the netlink socket: none of them moved
            log.warning("handover: cannot move the VIPs to lo: %s", exc,
                        extra={"vips": sorted(moves)})  # fmt: skip
            return [], []

    async def drop_retired(self) -> None:
        for vip in list(self.retired):
            try:
                await self.lane.run(self.node.remove, vip, LOOPBACK)
            except Exception as exc:
                log.warning("cannot drop the VIP from lo: %s", exc, extra={"vip": vip})
            del self.retired[vip]
            log.info("VIP dropped", extra={"vip": vip, "interface": LOOPBACK})


def hand_in_text(vip: str, ifname: str, waited: float) -> str:
    return (
        f"another node still answers ARP/NDP for the VIP on interface {ifname} after "
        f"{waited:.0f}s: not added until it lets go (the director group it moves from keeps it "
        "while its agent is down, at most --vip-lifetime seconds; a host using the address "
        "keeps it for ever: find it by its MAC)"
    )


def problem_text(add: bool, ifname: str, exc: Exception) -> str:
    """Why a VIP could not be added to / removed from ``ifname``, with what to fix. Always
    names the interface: a VIP's problem is logged again only when this text changes."""
    if isinstance(exc, (NoSuchInterface, ForeignAddress)):
        return str(exc)
    action = "add" if add else "remove"
    if isinstance(exc, OSError):
        return (
            f"the kernel refused to {action} the VIP on interface {ifname}: "
            f"{exc.strerror or exc}; check spec.directors.interface, that the interface is "
            "up, and that the agent has CAP_NET_ADMIN"
        )
    return f"cannot {action} the VIP on interface {ifname}: {exc!r}"


def _address_order(vip: str) -> tuple[bool, bytes]:
    """IPv4 first, then by address: ``ipaddress``'s order, from one C call (inet_pton)."""
    v6 = ":" in vip
    return v6, socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, vip)


_first_vip: tuple[frozenset[tuple[str, str]], tuple[str, str]] | None = None


def first_vip(placements: Mapping[str, str]) -> tuple[str, str] | None:
    """The group's first VIP (by address) and its interface: the link the VIPs move over.

    Asked after every VIP reconcile (the heartbeat's address, the sync daemons' link), on
    the event loop: at 1,000 VIPs, parsing each with ``ipaddress`` held the loop 0.3-0.6 s
    under TCG (the stall sampler caught it). One C call per VIP, and the last answer reused
    while the placements are the same."""
    global _first_vip
    if not placements:
        return None
    items = frozenset(placements.items())
    if _first_vip is not None and _first_vip[0] == items:
        return _first_vip[1]
    vip = min(placements, key=_address_order)
    _first_vip = (items, (vip, placements[vip]))
    return vip, placements[vip]
