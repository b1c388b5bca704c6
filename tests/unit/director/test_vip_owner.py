"""VipOwner with the fake node: each VIP stands alone, no announcement after a step-down, a
restarted leader keeps its VIPs until it knows the desired set, the "anyone answering?" probe.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Sequence

import pytest

from lvs_operator.director.lanes import Lane
from lvs_operator.director.metrics import Metrics
from lvs_operator.director.vip import NoSuchInterface
from lvs_operator.director.vip_owner import NO_ROUTE, Announcement, VipOwner
from tests.unit.director.fakes import FakeVips

A, B, C = "10.10.0.100", "10.10.0.101", "10.10.0.102"
LOGGER = "lvs_operator.director.vip_owner"
MISSING = NoSuchInterface(
    "interface eth9 does not exist on this node: fix spec.directors.interface, or leave it "
    "out to use the interface routing to the VIP"
)


def owner(node: FakeVips) -> VipOwner:
    return VipOwner(node, Lane("vip-test"), Metrics("g1"))


def problems_gauge(vips: VipOwner) -> str:
    text = vips.metrics.render().decode()
    return next(line for line in text.splitlines() if line.startswith("lvs_director_vip_problems"))


async def settled(vips: VipOwner) -> None:
    """Wait for the announcements in flight (threads of their own)."""
    await asyncio.gather(*vips.tasks)


def problem_logs(caplog: pytest.LogCaptureFixture, vip: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.ERROR and getattr(r, "vip", None) == vip]  # fmt: skip


# -- 1. failure isolation per VIP ----------------------------------------------------------------


async def test_a_failing_vip_is_skipped_and_the_others_are_added_and_announced() -> None:
    node = FakeVips()
    node.failures["eth9"] = MISSING
    vips = owner(node)
    # the failing VIP comes first: the ones after it are still added
    await vips.reconcile({A: "eth9", B: None, C: None}, leader=True)
    await settled(vips)
    assert node.addresses == {B: "front", C: "front"}
    assert vips.held == {B: "front", C: "front"}
    assert {vip for vip, _, _ in node.announced} == {B, C}
    assert vips.problems == {A: str(MISSING)}
    assert "eth9" in vips.problems[A] and "spec.directors.interface" in vips.problems[A]
    assert problems_gauge(vips) == 'lvs_director_vip_problems{group="g1"} 1.0'


async def test_a_problem_is_logged_once_per_reason_and_its_recovery_once(caplog) -> None:
    node = FakeVips()
    node.failures["eth9"] = MISSING
    vips = owner(node)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(3):  # retries failing the same way are quiet
            await vips.reconcile({A: "eth9", B: None}, leader=True)
        assert len(problem_logs(caplog, A)) == 1
        assert "eth9 does not exist" in problem_logs(caplog, A)[0]

        node.failures["eth9"] = OSError(errno.EPERM, "Operation not permitted")
        await vips.reconcile({A: "eth9", B: None}, leader=True)
        await vips.reconcile({A: "eth9", B: None}, leader=True)
        assert len(problem_logs(caplog, A)) == 2  # a new reason: logged, once
        assert vips.problems[A].startswith("the kernel refused to add the VIP on interface eth9")

        del node.failures["eth9"]
        await vips.reconcile({A: "eth9", B: None}, leader=True)
        await vips.reconcile({A: "eth9", B: None}, leader=True)
    await settled(vips)
    assert vips.problems == {} and node.addresses == {A: "eth9", B: "front"}
    placed = [r for r in caplog.records if r.getMessage() == "VIP placed"]
    assert [(r.vip, r.interface) for r in placed] == [(A, "eth9")]
    assert problems_gauge(vips) == 'lvs_director_vip_problems{group="g1"} 0.0'
    assert (A, "eth9", None) in node.announced  # announced once it is added


async def test_a_vip_without_a_route_is_a_problem_the_others_are_placed() -> None:
    node = FakeVips()
    vips = owner(node)
    await vips.reconcile({"192.0.2.1": None, A: None}, leader=True)
    assert vips.problems == {"192.0.2.1": NO_ROUTE}
    assert node.addresses == {A: "front"}


async def test_take_fast_and_drop_held_go_on_past_a_failing_vip() -> None:
    node = FakeVips()
    vips = owner(node)
    await vips.reconcile({A: None, B: "back", C: None}, leader=False)  # a standby places them
    node.failures["back"] = OSError(errno.EINVAL, "Invalid argument")
    await vips.take_fast(lambda: True)
    assert node.addresses == {A: "front", C: "front"} and vips.held == {A: "front", C: "front"}
    assert set(vips.problems) == {B}
    node.failures.clear()
    node.failures[A] = OSError(errno.EBUSY, "Device or resource busy")
    await vips.drop_held()
    await settled(vips)
    assert node.addresses == {A: "front"}  # C removed; A's failure recorded, the rest went on
    assert vips.problems[A].startswith("the kernel refused to remove the VIP on interface front")
    assert vips.held == {}


async def test_a_standby_pass_clears_the_problems_of_vips_it_no_longer_adds() -> None:
    node = FakeVips()
    node.failures["eth9"] = MISSING
    vips = owner(node)
    await vips.reconcile({A: "eth9"}, leader=True)
    assert set(vips.problems) == {A}
    await vips.reconcile({A: "eth9"}, leader=False)
    assert vips.problems == {}


# -- 2. no announcement after a step-down ----------------------------------------------------------


async def wait_for_frame(node: FakeVips) -> None:
    while ("frame", A) not in node.events:
        await asyncio.sleep(0.01)


async def test_a_step_down_during_an_announcement_sends_nothing_after_the_drop() -> None:
    node = FakeVips(interval=0.2)  # three rounds 0.2 s apart
    vips = owner(node)
    await vips.reconcile({A: None, B: None}, leader=True)
    await asyncio.wait_for(wait_for_frame(node), 5)
    await vips.drop_held()
    dropped = node.events.index(("remove", A))
    await asyncio.sleep(0.5)  # past the rounds the announcement would have sent
    await settled(vips)
    assert node.addresses == {}
    assert [e for e in node.events[dropped:] if e[0] == "frame"] == []
    assert node.events.count(("frame", A)) < 3  # stopped mid-way


async def test_a_standby_reconcile_stops_the_announcements_before_removing() -> None:
    node = FakeVips(interval=0.2)
    vips = owner(node)
    vips.own([A])
    await vips.reconcile({A: None}, leader=True)
    await asyncio.wait_for(wait_for_frame(node), 5)
    await vips.reconcile({A: None}, leader=False)  # the step-down seen by a reconcile
    dropped = node.events.index(("remove", A))
    await asyncio.sleep(0.5)
    await settled(vips)
    assert [e for e in node.events[dropped:] if e[0] == "frame"] == []


async def test_announcements_after_a_step_down_start_again_on_takeover() -> None:
    node = FakeVips()
    vips = owner(node)
    await vips.reconcile({A: None}, leader=True)
    await vips.drop_held()
    await vips.take_fast(lambda: True)
    await settled(vips)
    assert node.events[-3:] == [("frame", A)] * 3  # the new leadership's announcement


# -- 3. a restarted leader keeps its VIPs until it knows the desired set ---------------------------


async def test_a_restarted_leader_never_removes_a_vip_it_holds_and_adopts_it() -> None:
    node = FakeVips({A: "front"})
    vips = owner(node)
    vips.own([A])  # the VirtualServers were listed, the first converge not done
    await vips.take_fast(lambda: True)  # no placements yet: nothing
    await vips.reconcile(None, leader=True)  # desired set unknown: nothing
    assert node.events == [] and node.addresses == {A: "front"}
    await vips.reconcile({A: None}, leader=True)
    await settled(vips)
    assert [e for e in node.events if e[0] != "frame"] == []  # no remove, no add
    assert node.addresses == {A: "front"} and vips.held == {A: "front"}
    assert node.announced == [(A, "front", None)]  # adopted: announced like a takeover
    await vips.reconcile({A: None}, leader=True)
    await settled(vips)
    assert node.announced == [(A, "front", None)]  # once


async def test_take_fast_adds_in_batches_and_announces_each_batch() -> None:
    node = FakeVips()
    vips = owner(node)
    many = {f"10.10.0.{i}": None for i in range(100, 140)}  # 40: a batch of 32, one of 8
    await vips.reconcile(many, leader=False)  # a standby places them
    await vips.take_fast(lambda: True)
    await settled(vips)
    assert [len(b) for b in node.add_batches] == [32, 8]
    assert vips.held == dict.fromkeys(many, "front")
    assert {vip for vip, _, _ in node.announced} == set(many)


async def test_reconcile_adds_in_batches_each_held_once_its_batch_is_in() -> None:
    """1,000 VIPs added one request at a time took longer than their lifetime in the test VM:
    the first lapsed before the pass ended, since only held VIPs are renewed."""
    node = FakeVips()
    vips = owner(node)
    held_at_each_batch: list[set[str]] = []
    add_many = node.add_many

    def recording(items: Sequence[tuple[str, str]]) -> list[Exception | None]:
        held_at_each_batch.append(set(vips.held))  # what a renewal now would cover
        return add_many(items)

    node.add_many = recording  # type: ignore[method-assign]
    node.failures["10.10.0.101"] = OSError(errno.EADDRNOTAVAIL, "refused")
    many = {f"10.10.0.{i}": None for i in range(100, 140)}  # 40: a batch of 32, one of 8
    await vips.reconcile(many, leader=True)
    await settled(vips)
    assert [len(b) for b in node.add_batches] == [32, 8]
    first = set(node.add_batches[0]) - {"10.10.0.101"}
    assert held_at_each_batch == [set(), first]
    assert vips.held == {v: "front" for v in many if v != "10.10.0.101"}
    assert set(vips.problems) == {"10.10.0.101"}
    assert [e for e in node.events if e[0] == "add"] == [
        ("add", v) for v in many if v != "10.10.0.101"
    ]
    assert {vip for vip, _, _ in node.announced} == set(many) - {"10.10.0.101"}


async def test_take_fast_stops_between_batches_once_no_longer_leader() -> None:
    node = FakeVips()
    vips = owner(node)
    many = {f"10.10.0.{i}": None for i in range(100, 140)}
    await vips.reconcile(many, leader=False)
    await vips.take_fast(lambda: not node.add_batches)  # leader for the first batch only
    await settled(vips)
    assert [len(b) for b in node.add_batches] == [32]
    assert len(vips.held) == 32


async def test_take_fast_without_placements_does_nothing() -> None:
    node = FakeVips({A: "front"})
    vips = owner(node)
    await vips.take_fast(lambda: True)
    await settled(vips)
    assert node.events == [] and node.announced == [] and vips.held == {}


async def test_a_standby_without_the_desired_set_still_drops_the_groups_vips() -> None:
    node = FakeVips({A: "front", "10.10.0.11": "front"})  # a stale VIP and the node's own
    vips = owner(node)
    vips.own([A])
    await vips.reconcile(None, leader=False)
    assert node.addresses == {"10.10.0.11": "front"}


# -- 4. does anyone answer for the VIPs? -----------------------------------------------------------


async def test_answered_probes_the_placed_vips() -> None:
    node = FakeVips()
    vips = owner(node)
    assert await vips.answered() == set() and node.probed == []  # nothing placed: no probe
    await vips.reconcile({A: None, B: None}, leader=False)
    node.answering = {B}
    assert await vips.answered(timeout=0.05) == {B}
    items, timeout = node.probed[-1]
    assert sorted(items) == [(A, "front", (2, "02:00:00:00:00:0b")),
                             (B, "front", (2, "02:00:00:00:00:0b"))]  # fmt: skip
    assert timeout == 0.05


async def test_answered_never_raises() -> None:
    class Broken(FakeVips):
        def answered(self, items: list[Announcement], timeout: float) -> set[str]:
            raise OSError(errno.EPERM, "Operation not permitted")

    vips = owner(Broken())
    await vips.reconcile({A: None}, leader=False)
    assert await vips.answered() == set()


# -- lifetimes: what the dead-man switch renews --------------------------------------------------


async def test_the_leader_renews_what_it_holds_and_what_drains_on_lo() -> None:
    node = FakeVips()
    vips = owner(node)
    await vips.reconcile({A: None, B: None}, leader=True)
    await settled(vips)
    node.events.clear()
    await vips.renew_lifetimes()
    assert sorted(node.events) == [("renew", A), ("renew", B)]
    vips.held.pop(B)
    node.addresses[B] = "lo"  # moved to lo by a handover: retired
    vips.retired[B] = "front"
    node.events.clear()
    await vips.renew_lifetimes()
    assert sorted(node.events) == [("renew", A), ("renew", B)]


async def test_a_standby_renews_nothing_and_a_vip_gone_is_not_renewed() -> None:
    node = FakeVips({A: "front"})
    vips = owner(node)
    await vips.renew_lifetimes()  # holds nothing
    assert node.events == []
    vips.held = {A: "front", B: "front"}  # B lapsed meanwhile: not on the node
    await vips.renew_lifetimes()
    assert node.events == [("renew", A)]


async def test_a_renewal_times_its_wait_in_line_and_names_what_the_lane_ran() -> None:
    """The lifetime thread's late-round line says whether the round waited on the VIP lane
    and behind what (a reconcile's dump, a batch of adds)."""
    import threading

    node = FakeVips()
    vips = owner(node)
    await vips.reconcile({A: None}, leader=True)
    await settled(vips)
    await vips.renew_lifetimes()
    idle = vips.renewal_wait
    assert idle is not None and idle.behind is None and idle.seconds < 1
    started, release = threading.Event(), threading.Event()

    def busy_present() -> dict[str, str]:
        started.set()
        release.wait(5)
        return {}

    blocker = threading.Thread(target=lambda: vips.lane.call(busy_present))
    blocker.start()
    assert started.wait(5)
    threading.Timer(0.2, release.set).start()
    await vips.renew_lifetimes()
    blocker.join(5)
    waited = vips.renewal_wait
    assert waited is not None and waited.behind is not None
    assert waited.behind[0].endswith("busy_present") and waited.seconds >= 0.15


async def test_adopt_present_keeps_only_the_groups_vips() -> None:
    node = FakeVips({A: "front", C: "front"})
    vips = owner(node)
    vips.own([A, B])
    assert await vips.adopt_present() == [A]
    assert vips.held == {A: "front"} and node.events == [("renew", A)]


def test_the_first_vip_of_a_dual_stack_group() -> None:
    """IPv4 and IPv6 VIPs in one group: no TypeError comparing them; IPv4 first."""
    from lvs_operator.director.vip_owner import first_vip

    placements = {"2001:db8::10": "front", "192.0.2.10": "front", "2001:db8::1": "front"}
    assert first_vip(placements) == ("192.0.2.10", "front")
    assert first_vip({"2001:db8::10": "a", "2001:db8::1": "b"}) == ("2001:db8::1", "b")


def test_the_first_vip_is_ipaddress_order_and_follows_every_change() -> None:
    """The address order of ``ipaddress`` (not the strings': 10.0.0.9 before 10.0.0.10),
    answered again from its last computation only while the placements are the same."""
    import ipaddress
    import random

    from lvs_operator.director.vip_owner import first_vip

    rng = random.Random(7)
    for _ in range(50):
        vips = {
            f"10.{rng.randrange(3)}.{rng.randrange(256)}.{rng.randrange(256)}" for _ in range(9)
        }
        vips |= {f"2001:db8::{rng.randrange(1 << 16):x}" for _ in range(rng.randrange(3))}
        placements = {v: rng.choice(["front", "back"]) for v in vips}
        want = min(vips, key=lambda v: (ipaddress.ip_address(v).version, ipaddress.ip_address(v)))
        assert first_vip(placements) == (want, placements[want])
        assert first_vip(dict(placements)) == (want, placements[want])  # the same, reused
    placements = {"10.0.0.9": "front", "10.0.0.10": "front"}
    assert first_vip(placements) == ("10.0.0.9", "front")
    assert first_vip({**placements, "10.0.0.9": "back"}) == ("10.0.0.9", "back")  # moved
    assert first_vip({"10.0.0.10": "front"}) == ("10.0.0.10", "front")  # the first one gone
    assert first_vip({}) is None


async def test_renew_present_looks_up_each_interface_once_not_each_vip() -> None:
    """A restarted leader renews 1,000 VIPs on one interface: one link lookup (a lane call
    and two ioctls each took a 1,000-VIP round to 14 s under TCG, longer than a lifetime)."""
    node = FakeVips({f"192.0.2.{i}": "front" for i in range(1, 201)} | {"192.0.3.1": "lo"})
    looked: list[str] = []
    real = node.link_info

    def link_info(ifname: str) -> tuple[int, str] | None:
        looked.append(ifname)
        return None if ifname == "lo" else real(ifname)

    node.link_info = link_info  # type: ignore[method-assign]
    vips = owner(node)
    await vips.renew_present(None)
    assert sorted(looked) == ["front", "lo"]
    assert len([e for e in node.events if e[0] == "renew"]) == 201
    await vips.renew_present(None)  # a round without the probe: no link looked up
    assert sorted(looked) == ["front", "lo"]
    await vips.renew_present(None)  # the interface's link is kept; lo (none) is asked again
    assert sorted(looked) == ["front", "lo", "lo"]


async def test_renew_present_leaves_a_vip_another_node_answers_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = FakeVips({A: "front", B: "front"})
    node.answering = {B}  # this node was cut off; its standby holds B now
    vips = owner(node)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        await vips.renew_present(None)  # renews both, then the probe finds B held elsewhere
        await vips.renew_present(None)  # A only; no probe this round
        await vips.renew_present(None)  # A only; probed again
    assert node.events == [("renew", A), ("renew", B), ("renew", A), ("renew", A)]
    # a renewal's light probe, every RENEWAL_PROBE_EVERY rounds
    assert node.probe_frames == [(1, 1), (1, 1)]
    lines = [r for r in caplog.records if "left to lapse" in r.getMessage()]
    assert len(lines) == 1 and lines[0].__dict__["vip"] == B  # said once
