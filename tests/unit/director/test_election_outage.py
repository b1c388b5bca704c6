"""Outage-tolerant election (the default): the leader keeps its VIPs through API-server
outages and slowness while every listed standby hears it lead; nobody ever takes a Lease from
a holder that answers, or while another node answers ARP for the VIP; a silent member is
removed from the Lease or the leader steps down *before* that member could take over.

``Group`` simulates a director group on a fake clock: each director's Elector against one
in-memory Lease, the UDP heartbeat between them (links can be cut per pair), which node's
kernel holds the VIP (a frozen process keeps it), and the ARP check. Every step asserts that
at most one kernel holds the VIP.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from lvs_operator.director.election import (
    MEMBERS_ANNOTATION,
    VIP_RECHECK,
    ElectionConfig,
    Elector,
    parse_members,
)
from lvs_operator.director.peer import (
    HeartbeatMonitor,
    HeartbeatResponder,
    PeerHealth,
    make_reply,
    parse_probe_full,
)
from tests.unit.director.fake_lease import FakeClock, FakeLeaseApi, FakeLeaseStore

STEP = 0.01  # simulation step (s)
PROBE = 0.05  # heartbeat interval (the shipped default)
TIMEOUT = 0.4  # peer timeout (the shipped default)
ARM = 1.0


class Node:
    """One director: its Elector, its heartbeat ends (peer.py's PeerHealth and the
    responder's bookkeeping, driven without sockets), its kernel's VIP."""

    def __init__(self, name: str, group: Group) -> None:
        self.name, self.group = name, group
        self.address = f"10.0.0.{len(group.nodes) + 1}"
        self.api = FakeLeaseApi(group.store)
        self.frozen = False  # SIGSTOP: no ticks, no heartbeat, the kernel keeps the VIP
        self.crashed = False  # the whole node is gone (VIP too)
        self.vip = False  # this node's kernel holds the VIP
        self.next_tick = 0.0
        self.task: asyncio.Future[float] | None = None
        self.changes: list[tuple[float, bool]] = []
        self.was_lost = False  # the heartbeat had lost the holder at the last step
        clock = group.clock
        self.health = PeerHealth(timeout=TIMEOUT, arm_after=ARM, identity=name)
        self.health.gated = group.gated
        self.responder = HeartbeatResponder(
            name, lambda: self.elector.serving, clock=clock.monotonic
        )

        async def on_change(leader: bool) -> None:
            self.changes.append((clock.monotonic(), leader))
            self.vip = leader

        self.early: list[tuple[float, bool]] = []  # early takes: (time, up)

        async def early_take(up: bool) -> None:
            self.early.append((clock.monotonic(), up))
            self.vip = up

        async def vip_in_use() -> bool:
            return group.arp and any(
                n.vip and n is not self and not n.crashed and group.linked(self, n, arp=True)
                for n in group.nodes.values()
            )

        self.elector = Elector(
            group.config(name),
            self.api,
            on_change,
            clock,
            holder_unreachable=lambda h: self.health.unreachable(h, clock.monotonic()),
            holder_heard=lambda h: self.health.heard_leading(h, clock.monotonic()),
            confirmations=self.responder.confirmations,
            vip_in_use=vip_in_use if group.arp else None,
            gated=lambda: self.health.gated,
            on_record=lambda r: self.health.target(r.holder, self._address_of(r.holder)),
            early_take=early_take,
        )
        self.api.clock = clock

    def _address_of(self, holder: str) -> tuple[str, int] | None:
        node = self.group.nodes.get(holder)
        return None if node is None or node is self else (node.address, 9643)

    def probe(self, now: float) -> None:
        """One heartbeat round trip to the holder this node follows, if the link allows."""
        holder = self.group.nodes.get(self.health.holder)
        data = self.health.next_probe(now)
        if holder is None or not holder.alive or not self.group.linked(self, holder):
            return
        probe = parse_probe_full(data)
        assert probe is not None
        holder.responder.note_ack(probe, self.address)
        leading = holder.elector.serving
        if leading:
            holder.responder._remember(probe.nonce, now)
        reply = make_reply(probe.nonce, holder.name, leading)
        self.health.on_reply(reply, (holder.address, 9643), now)

    @property
    def alive(self) -> bool:
        return not (self.frozen or self.crashed)


class Group:
    def __init__(
        self,
        *names: str,
        arp: bool = True,
        gated: bool = False,
        edge_wake: bool = False,
        **timings: float,
    ) -> None:
        self.gated = gated  # the standbys tell the leader they check ARP before a takeover
        self.edge_wake = edge_wake
        self.clock = FakeClock()
        self.store = FakeLeaseStore()
        self.arp = arp
        self.timings = timings
        self.nodes: dict[str, Node] = {}
        self.cut: set[frozenset[str]] = set()  # heartbeat links down
        self.arp_cut: set[frozenset[str]] = set()
        self._next_probe = 0.0
        for name in names:
            self.nodes[name] = Node(name, self)
        self.two_holders = 0.0  # seconds with the VIP in two kernels

    def config(self, name: str) -> ElectionConfig:
        return ElectionConfig(name, peer_timeout=TIMEOUT, **self.timings)  # type: ignore[arg-type]

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def linked(self, a: Node, b: Node, arp: bool = False) -> bool:
        pair = frozenset((a.name, b.name))
        return pair not in (self.arp_cut if arp else self.cut)

    def api_down(self, down: bool = True, *names: str) -> None:
        for node in self.nodes.values():
            if not names or node.name in names:
                node.api.down = down

    @property
    def holders(self) -> list[str]:
        return [n.name for n in self.nodes.values() if n.vip and not n.crashed]

    @property
    def now(self) -> float:
        return self.clock.monotonic()

    def _heartbeat(self) -> None:
        for node in self.nodes.values():
            if node.alive and not node.elector.is_leader:
                node.probe(self.now)

    async def run(self, seconds: float) -> None:
        """Advance the clock step by step; each director ticks when its Elector asked to (or
        when its heartbeat lost the holder), its tick running as a task of its own (a slow
        API call spans steps, as it spans time)."""
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.clock.advance(STEP)
            if self.now >= self._next_probe:
                self._heartbeat()
                self._next_probe = self.now + PROBE - 1e-9
            for node in self.nodes.values():
                if node.task is not None and node.task.done():
                    node.next_tick = self.now + node.task.result()
                    node.task = None
                lost = not node.elector.is_leader and node.elector._holder_lost(node.elector.holder)
                # the agent's monitor wakes it once per loss (edge_wake); most cases here
                # wake it at every step of a loss, which covers its own retries
                woken = lost and not (self.edge_wake and node.was_lost)
                node.was_lost = lost
                due = self.now >= node.next_tick - 1e-9 or woken
                if node.alive and node.task is None and due:
                    node.task = asyncio.ensure_future(node.elector.tick())
            for _ in range(5):
                await asyncio.sleep(0)
            if len(self.holders) > 1:
                self.two_holders += STEP

    async def settle(self) -> str:
        """Start: the first node leads, the others are listed members."""
        first = next(iter(self.nodes.values()))
        first.next_tick = self.now + first.elector.config.retry_period
        await first.elector.tick()
        await self.run(ARM + 1.5)
        assert self.holders == [first.name]
        listed = parse_members(self.store.record)
        assert listed is not None and set(listed) == set(self.nodes) - {first.name}
        return first.name


@pytest.fixture
def group() -> Group:
    return Group("a", "b")


def transitions(group: Group) -> int:
    assert group.store.record is not None
    return group.store.record.transitions


async def test_the_leader_lists_the_standbys_that_hear_it(group: Group) -> None:
    await group.settle()
    record = group.store.record
    assert record is not None and record.holder == "a"
    assert parse_members(record) == {"b": group["b"].address}
    assert MEMBERS_ANNOTATION in record.annotations


async def test_api_outage_for_everyone_keeps_the_vip(group: Group) -> None:
    await group.settle()
    before = transitions(group)
    group.api_down()
    await group.run(60)
    assert group.holders == ["a"]
    assert group["a"].changes == [(group["a"].changes[0][0], True)]  # never stepped down
    group.api_down(False)
    await group.run(5)
    assert group.holders == ["a"] and transitions(group) == before  # no Lease transition
    assert group.store.record.holder == "a"
    assert group.two_holders == 0


async def test_leader_cut_from_the_api_only_keeps_serving(group: Group) -> None:
    await group.settle()
    group.api_down(True, "a")
    await group.run(60)
    assert group.holders == ["a"] and not group["b"].elector.is_leader
    assert group.two_holders == 0


async def test_outage_hold_bounds_a_leader_without_the_api(group: Group) -> None:
    group = Group("a", "b", outage_hold=20.0)
    await group.settle()
    group.api_down(True, "a")
    await group.run(19)
    assert group.holders == ["a"]
    await group.run(3)  # the hold ends: a steps down, says so, and b (API fine) takes over
    assert group.holders == ["b"]
    assert group.two_holders == 0


async def test_directors_cut_from_each_other_no_ping_pong_never_two_holders() -> None:
    # without the ARP check too: the member list alone must keep b out
    group = Group("a", "b", arp=False)
    await group.settle()
    group.cut.add(frozenset(("a", "b")))
    group.arp_cut.add(frozenset(("a", "b")))
    await group.run(30)
    assert group.holders == ["a"] and not group["b"].elector.is_leader
    assert parse_members(group.store.record) == {}  # a removed the silent b
    assert len(group["a"].changes) == 1 and group["b"].changes == []
    group.cut.clear()
    group.arp_cut.clear()
    await group.run(3)
    assert parse_members(group.store.record) == {"b": group["b"].address}  # listed again
    assert group.two_holders == 0


async def test_silent_member_during_an_outage_makes_the_leader_step_down_in_time() -> None:
    """Cut from b while the API is down, a cannot remove b from the Lease: it steps down at
    b's last proof + (timeout - margin), before b could judge it silent, and not at its next
    tick."""
    group = Group("a", "b", arp=False)
    await group.settle()
    group.api_down()
    group.cut.add(frozenset(("a", "b")))
    group.arp_cut.add(frozenset(("a", "b")))
    proof = group["a"].responder.confirmations()["b"].at
    await group.run(2)
    down = [t for t, leader in group["a"].changes if not leader]
    assert down, "a kept the VIP without proof that b would not take over"
    cfg = group["a"].elector.config
    assert down[0] - proof == pytest.approx(cfg.confirm_within, abs=STEP + 1e-6)
    assert down[0] < proof + TIMEOUT  # before b's own judgement
    assert group.two_holders == 0


async def test_stopped_leader_its_kernel_answering_is_never_joined_by_a_second_holder(
    group: Group,
) -> None:
    await group.settle()
    group["a"].frozen = True  # SIGSTOP: its kernel keeps the VIP and answers ARP
    await group.run(3)
    assert not group["b"].elector.is_leader  # the ARP check kept b out
    group["a"].frozen = False  # SIGCONT: its authority has lapsed; it steps down
    await group.run(2)
    assert group.holders == ["b"]
    assert group.two_holders == 0


async def test_a_crashed_leader_fails_over_within_the_peer_timeout(group: Group) -> None:
    await group.settle()
    group["a"].crashed = True
    group["a"].vip = False  # the node is gone
    crashed_at = group.now
    while not group["b"].elector.is_leader and group.now - crashed_at < 5:
        await group.run(STEP)
    assert group["b"].elector.is_leader
    assert group.now - crashed_at <= TIMEOUT + PROBE + 2 * STEP


async def test_a_crash_during_an_api_outage_waits_for_the_api(group: Group) -> None:
    """Nobody can write the Lease: the standby takes over when the API is back."""
    await group.settle()
    group.api_down()
    group["a"].crashed = True
    group["a"].vip = False
    await group.run(10)
    assert group.holders == []
    group.api_down(False)
    await group.run(1)
    assert group.holders == ["b"]


async def test_three_directors_a_crashed_standby_is_removed_while_the_api_works() -> None:
    group = Group("a", "b", "c")
    await group.settle()
    group["c"].crashed = True
    await group.run(5)
    assert group.holders == ["a"]
    assert parse_members(group.store.record) == {"b": group["b"].address}
    group.api_down()  # then an outage: b still hears a, so a keeps the VIP
    await group.run(30)
    assert group.holders == ["a"]
    assert group.two_holders == 0


async def test_three_directors_a_standby_crash_during_an_outage_stops_the_leader() -> None:
    """a cannot tell a crashed c from one cut off with the API in reach: it steps down
    (safety first), then retakes the VIP once the API lets it remove c."""
    group = Group("a", "b", "c")
    await group.settle()
    group.api_down()
    group["c"].crashed = True
    await group.run(3)
    assert group.holders == []
    group.api_down(False)
    await group.run(5)
    assert len(group.holders) == 1
    assert group.two_holders == 0


async def test_an_unlisted_newcomer_does_not_take_over_fast() -> None:
    group = Group("a", "b")
    await group.settle()
    newcomer = Node("n", group)
    group.nodes["n"] = newcomer
    group.cut.add(frozenset(("a", "n")))  # it never hears a: unlisted
    group.arp_cut.add(frozenset(("a", "n")))
    await group.run(group["a"].elector.config.lease_duration + 5)
    assert not newcomer.elector.is_leader
    assert group.holders == ["a"]


async def test_slow_api_no_flapping() -> None:
    """Every write takes 1.5 s (longer than the old renew deadline): the leader keeps the VIP,
    proven by its standby, and never steps down."""
    group = Group("a", "b")
    await group.settle()
    clock = group.clock
    for node in group.nodes.values():
        real = node.api.update

        async def slow(record, real=real):  # type: ignore[no-untyped-def]
            until = clock.monotonic() + 1.5
            while clock.monotonic() < until:
                await asyncio.sleep(0)
            return await real(record)

        node.api.update = slow  # type: ignore[method-assign]
    await group.run(30)
    assert group.holders == ["a"]
    assert [leader for _, leader in group["a"].changes] == [True]


async def test_backoff_instead_of_flapping_when_authority_keeps_lapsing() -> None:
    """API down, and the link to b flaps: every lapse is followed by a longer wait before a
    takes its own Lease back (1 s, 2 s, 4 s ...), never a retake at once."""
    group = Group("a", "b", arp=False)
    await group.settle()
    pair = frozenset(("a", "b"))
    group.api_down(True, "b")  # b cannot take over; a can write (and retake)
    group.api_down(True, "a")
    retakes: list[float] = []
    downs: list[float] = []
    for _ in range(3):
        group.cut.add(pair)
        await group.run(1.0)
        group.cut.discard(pair)
        group.api_down(False, "a")
        await group.run(10)
        group.api_down(True, "a")
    for t, leader in group["a"].changes[1:]:
        (retakes if leader else downs).append(t)
    gaps = [r - d for d, r in zip(downs, retakes, strict=False)]
    assert len(gaps) >= 2
    assert all(g >= 1.0 - 1e-6 for g in gaps)
    assert gaps[1] >= gaps[0] * 2 - 2 * STEP
    assert group.two_holders == 0


async def test_restart_takes_back_its_own_lease_listing_nobody(group: Group) -> None:
    """A restarted holder's take-back lists no member (it has no proof from anyone yet), so
    a standby's takeover write built on the old record fails."""
    await group.settle()
    restarted = Elector(group.config("a"), FakeLeaseApi(group.store), confirmations=dict)
    await restarted.tick()
    assert restarted.is_leader
    assert parse_members(group.store.record) == {}
    assert group.store.record.holder == "a"


def test_authority_is_infinite_only_in_no_case() -> None:
    elector = Elector(ElectionConfig("a"), FakeLeaseApi(FakeLeaseStore()), confirmations=dict)
    assert math.isfinite(elector._authority_until())


# -- gated standbys (they check ARP before any takeover, and say so in their probes) ----------


async def test_gated_standby_cut_off_during_an_outage_leaves_the_leader_serving() -> None:
    """The strict case above, with standbys that check ARP: b's silence no longer ends a's
    hold (b cannot take a VIP a's kernel answers for), so a keeps serving."""
    group = Group("a", "b", gated=True)
    await group.settle()
    group.api_down()
    group.cut.add(frozenset(("a", "b")))  # heartbeat only: ARP still crosses
    await group.run(30)
    assert group.holders == ["a"] and not group["b"].elector.is_leader
    assert [leader for _, leader in group["a"].changes] == [True]
    assert group.two_holders == 0


async def test_gated_standby_a_stopped_leader_keeps_the_vip_without_a_failover() -> None:
    group = Group("a", "b", gated=True)
    await group.settle()
    group["a"].frozen = True
    await group.run(3)
    group["a"].frozen = False
    await group.run(3)
    assert group.holders == ["a"]  # its kernel served throughout; nobody took over
    assert [leader for _, leader in group["a"].changes] == [True]
    assert group.two_holders == 0


async def test_gated_standby_still_fails_over_on_a_crash() -> None:
    group = Group("a", "b", gated=True)
    await group.settle()
    group["a"].crashed = True
    group["a"].vip = False
    crashed_at = group.now
    while not group["b"].elector.is_leader and group.now - crashed_at < 5:
        await group.run(STEP)
    assert group.now - crashed_at <= TIMEOUT + PROBE + 2 * STEP


async def test_gated_standby_keeps_its_listing_through_a_stall() -> None:
    """A gated standby whose probes stop for a moment (a busy node) stays listed: its silence
    does not bound the leader, so no write churns the member list."""
    group = Group("a", "b", gated=True)
    await group.settle()
    writes = len(group.store.writes)
    group["b"].frozen = True
    await group.run(0.6)
    group["b"].frozen = False
    await group.run(0.5)
    assert parse_members(group.store.record) == {"b": group["b"].address}
    assert len(group.store.writes) - writes <= 1  # the regular renewal at most


async def test_gated_standby_not_yet_listed_fails_over_at_expiry_not_after_the_hold() -> None:
    """The leader's node crashes before its standby was ever listed (it had just restarted,
    or the heartbeat never got through) and before its heartbeat armed. Gated, the standby
    takes over once the Lease expired and no node answers for the VIP, not after the outage
    hold on top (seen in e2e: nobody held the VIP for 60 s)."""
    group = Group("a", "b", gated=True)
    group.cut.add(frozenset(("a", "b")))  # no proof ever reaches a: b is never listed
    a = group["a"]
    a.next_tick = group.now + a.elector.config.retry_period
    await a.elector.tick()
    await group.run(2)
    assert group.holders == ["a"] and parse_members(group.store.record) == {}
    a.crashed = True
    a.vip = False
    crashed_at = group.now
    while not group["b"].elector.is_leader and group.now - crashed_at < 30:
        await group.run(0.1)
    assert group["b"].elector.is_leader
    assert group.now - crashed_at <= a.elector.config.lease_duration + 1


async def test_over_loopback_the_leader_lists_a_probing_standby_within_a_second() -> None:
    """The real responder and monitor threads on 127.0.0.1, the real clock: a standby that
    starts probing the leader is listed on the Lease within about a second (the listing
    follows its acknowledgements; arming takes a second of answers too)."""
    store = FakeLeaseStore()
    leader = Elector(ElectionConfig("a"), FakeLeaseApi(store))
    responder = HeartbeatResponder("a", lambda: leader.serving, host="127.0.0.1", port=0)
    await responder.start()
    leader.confirmations = responder.confirmations
    monitor = HeartbeatMonitor(identity="b")
    await monitor.start()
    task = asyncio.create_task(leader.run())
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while not leader.is_leader and loop.time() - t0 < 5:
            await asyncio.sleep(0.01)
        assert responder.address is not None
        monitor.set_target("a", responder.address)
        t1 = loop.time()
        members: dict[str, str] | None = {}
        while loop.time() - t1 < 10:
            members = parse_members(store.record) if store.record else None
            if members:
                break
            await asyncio.sleep(0.02)
        listed_after = loop.time() - t1
        assert members == {"b": "127.0.0.1"}, members
        assert listed_after < 3.0, listed_after  # generous: a loaded machine
        await asyncio.sleep(1.5)
        assert monitor.health.armed
        assert parse_members(store.record) == {"b": "127.0.0.1"}  # still listed
    finally:
        await leader.release()
        await asyncio.wait_for(task, 5)
        await monitor.close()
        responder.close()


@pytest.mark.parametrize("gated", [False, True])
async def test_a_dead_agents_vip_lapses_and_the_standby_takes_it_at_once(gated: bool) -> None:
    """SIGKILL of the leading agent with no restart: its kernel keeps the VIP, and answers
    ARP for it, only until the VIP's lifetime runs out (vip.py's dead-man switch); the
    standby, held back until then, looks again every VIP_RECHECK and takes over within that
    of the lapse. Never two holders."""
    group = Group("a", "b", gated=gated, edge_wake=True)
    await group.settle()
    group["a"].frozen = True  # the agent is gone for good; its kernel keeps the VIP
    await group.run(8.0)  # the shipped lifetime
    assert group.holders == ["a"] and not group["b"].elector.is_leader
    group["a"].vip = False  # the kernel removes the lapsed VIP
    lapsed = group.now
    while not group["b"].elector.is_leader and group.now - lapsed < 5:
        await group.run(STEP)
    assert group.holders == ["b"]
    assert group.now - lapsed <= VIP_RECHECK + 2 * STEP
    assert group.two_holders == 0


# -- early take: the VIPs up while the takeover's Lease write is in flight ------------------


async def test_a_crash_puts_the_vip_up_before_a_slow_lease_write_returns(group: Group) -> None:
    """Two directors, the API answering but slowly (0.3 s per write): the standby that lost
    the holder's heartbeat, with no ARP answer, adds the VIP at once, then the write lands."""
    await group.settle()
    group["b"].api.write_delay = 0.3
    group["a"].crashed = True
    group["a"].vip = False
    crashed_at = group.now
    while not group["b"].vip and group.now - crashed_at < 5:
        await group.run(STEP)
    assert group["b"].vip and not group["b"].elector.is_leader  # ahead of the write
    assert group.now - crashed_at <= TIMEOUT + PROBE + 2 * STEP
    await group.run(1)
    assert group["b"].elector.is_leader and group.holders == ["b"]
    assert [up for _, up in group["b"].early] == [True]
    assert group.two_holders == 0


async def test_an_early_take_whose_write_fails_takes_the_vip_back_and_backs_off(
    group: Group,
) -> None:
    """The write fails (here: the API goes down while it is in flight): the VIP comes off
    again, and no early take follows for the backoff: no flapping."""
    await group.settle()
    group["b"].api.write_delay = 0.3
    group["a"].crashed = True
    group["a"].vip = False
    crashed_at = group.now
    while not group["b"].early and group.now - crashed_at < 5:
        await group.run(STEP)
    group.api_down(True, "b")
    await group.run(10)
    assert [up for _, up in group["b"].early] == [True, False]
    assert group.holders == []
    group.api_down(False, "b")
    await group.run(3)
    assert group.holders == ["b"] and group["b"].elector.is_leader
    assert [up for _, up in group["b"].early] == [True, False]  # the write decided, alone
    assert group.two_holders == 0


async def test_no_early_take_while_the_api_has_been_silent(group: Group) -> None:
    """The holder's renewals stopped arriving (an outage) well before its crash: the write
    is unlikely to return soon, so the VIP waits for it (no up-and-down)."""
    await group.settle()
    group.api_down()
    await group.run(5)
    group["a"].crashed = True
    group["a"].vip = False
    await group.run(5)
    assert group["b"].early == [] and group.holders == []
    group.api_down(False)
    await group.run(3)
    assert group.holders == ["b"] and group["b"].early == []


async def test_no_early_take_with_two_standbys() -> None:
    """Three directors: the other standby could be taking over too; the write decides first."""
    group = Group("a", "b", "c")
    await group.settle()
    group["a"].crashed = True
    group["a"].vip = False
    await group.run(3)
    assert len(group.holders) == 1
    assert group["b"].early == [] and group["c"].early == []
    assert group.two_holders == 0
