"""The VIPs on this node: one object owns which VIPs are the group's, where each goes, which
are held (leader) and which are retired to ``lo`` by a planned handover.

- ``owned``: every VIP of the group's VirtualServers seen while running: what this agent may
  touch (IPVS services on them, the addresses). Never "every address of the node".
- ``placements``: vip -> interface it goes on, computed by every director (so a takeover adds
  the VIPs without any dump first).
- ``held``: vip -> interface, while leader.
- ``retired``: vip -> the interface it left, while an old leader drains (handover.py).

Address changes run on the VIP lane (vip.py's netlink); announcements on threads of their own.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any, Protocol

from .handover import LOOPBACK
from .lanes import Lane
from .metrics import Metrics
from .vip import Route, pick_interface, plan_vips

log = logging.getLogger("lvs_operator.director.vip_owner")

Link = tuple[int, str]  # (interface index, MAC)
Announcement = tuple[str, str, Link]  # (vip, interface, link)


class VipNode(Protocol):
    """The node's addresses and announcements (vip.py's VipManager); blocking calls."""

    def routes(self) -> list[Route]: ...

    def present(self) -> dict[str, str]: ...

    def add(self, vip: str, ifname: str) -> bool: ...

    def remove(self, vip: str, ifname: str) -> bool: ...

    def link_info(self, ifname: str) -> Link | None: ...

    def send_many(self, items: list[Announcement], count: int | None) -> None: ...


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
        self._links: dict[str, Link | None] = {}
        self._unplaced: set[str] = set()  # VIPs without a route (reported once)
        self._lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[None]] = set()  # announcements, background reconciles

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
        route (one route dump for all)."""
        routes = None
        placed: dict[str, str] = {}
        for vip, override in vips.items():
            if override:
                placed[vip] = override
                continue
            if routes is None:
                routes = self.node.routes()
            name = pick_interface(vip, routes)
            if name is None:
                if vip not in self._unplaced:  # once, not on every reconcile
                    log.error(
                        "VIP cannot be placed: no route to it on this node; add a route to "
                        "its subnet, or set spec.directors.interface",
                        extra={"vip": vip},
                    )
                self._unplaced.add(vip)
            else:
                placed[vip] = name
                self._unplaced.discard(vip)
        return placed

    async def _link(self, ifname: str) -> Link | None:
        if ifname not in self._links:
            self._links[ifname] = await self.lane.run(self.node.link_info, ifname)
        return self._links[ifname]

    # -- holding -------------------------------------------------------------------------------

    async def reconcile(
        self, vips: Mapping[str, str | None] | None, leader: bool, announce: bool = False
    ) -> None:
        """Make the node hold exactly the VIPs it should (``vips``: the group's, vip ->
        interface override; None: not known yet); announce new ones (or all)."""
        async with self._lock:
            self.placements = await self.lane.run(self._place, vips or {})
            if self.on_placed is not None:
                await self.on_placed()
            wanted = dict(self.placements) if leader else {}
            present = await self.lane.run(self.node.present)
            # VIPs retired by a handover stay on lo until their connections are done
            present = {vip: i for vip, i in present.items() if vip not in self.retired}
            candidates = (self.owned | set(wanted)) - set(self.retired)
            plan = plan_vips(wanted, present, candidates)
            for vip, ifname in plan.remove.items():
                await self.lane.run(self.node.remove, vip, ifname)
                log.info("VIP dropped", extra={"vip": vip, "interface": ifname})
            for vip, ifname in plan.add.items():
                await self.lane.run(self.node.add, vip, ifname)
            self.held = dict(wanted)
            self.metrics.vips.set(len(wanted))
            new: list[Announcement] = []
            again: list[Announcement] = []
            for vip, ifname in (wanted if announce else plan.add).items():
                link = await self._link(ifname)
                if link is not None:
                    (new if vip in plan.add else again).append((vip, ifname, link))
            self._announce(new, None)
            self._announce(again, 1)

    async def take_fast(self, still_leader: Callable[[], bool]) -> None:
        """On takeover: add the VIPs where they were last placed and announce them, before the
        full reconcile (which dumps routes and addresses: slow on a busy node)."""
        batch: list[Announcement] = []
        for vip, ifname in dict(self.placements).items():
            if not still_leader():
                break
            await self.lane.run(self.node.add, vip, ifname)
            self.held[vip] = ifname
            link = await self._link(ifname)
            if link is not None:
                batch.append((vip, ifname, link))
            if len(batch) >= 32:  # the first VIPs go out while the rest are being added
                self._announce(batch, None)
                batch = []
        self._announce(batch, None)

    async def drop_held(self) -> None:
        """On stepping down: remove what we hold, without the dumps of a full reconcile (the
        Lease's clock runs for the others)."""
        held, self.held = dict(self.held), {}
        for vip, ifname in held.items():
            await self.lane.run(self.node.remove, vip, ifname)
            log.info("VIP dropped", extra={"vip": vip, "interface": ifname})

    def _announce(self, items: list[Announcement], count: int | None) -> None:
        """Announce a batch (rounds over all of them, ``announce_interval`` apart) on a
        thread of its own: the rounds sleep, and a thousand VIPs must not wait in line."""
        if items:
            self._track(asyncio.create_task(asyncio.to_thread(self.node.send_many, items, count)))

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
        self, relay_via: Callable[[str, str], Awaitable[str | None]]
    ) -> dict[str, str]:
        """Move each held VIP to lo, added there before it leaves its interface (so it is
        never missing). ``relay_via(vip, ifname)`` prepares the interface and says the
        address the VIP's connections are relayed to (None: the VIP stays where it is).
        Returns vip -> that address for the VIPs moved."""
        relays: dict[str, str] = {}
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
        on_lo: list[str] = []
        for vip in moves:
            try:
                self.node.add(vip, LOOPBACK)
            except Exception as exc:
                log.warning("handover: cannot move the VIP to lo: %s", exc, extra={"vip": vip})
                continue
            on_lo.append(vip)
        moved: list[str] = []
        for vip in on_lo:
            try:
                self.node.remove(vip, moves[vip])
            except Exception as exc:
                log.warning("handover: cannot remove the VIP from its interface: %s", exc,
                            extra={"vip": vip, "interface": moves[vip]})  # fmt: skip
                continue
            moved.append(vip)
        return on_lo, moved

    async def drop_retired(self) -> None:
        for vip in list(self.retired):
            try:
                await self.lane.run(self.node.remove, vip, LOOPBACK)
            except Exception as exc:
                log.warning("cannot drop the VIP from lo: %s", exc, extra={"vip": vip})
            del self.retired[vip]
            log.info("VIP dropped", extra={"vip": vip, "interface": LOOPBACK})


def first_vip(placements: Mapping[str, str]) -> tuple[str, str] | None:
    """The group's first VIP (by address) and its interface: the link the VIPs move over."""
    if not placements:
        return None
    vip = min(placements, key=ipaddress.ip_address)
    return vip, placements[vip]
