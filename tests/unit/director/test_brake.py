"""The withdrawal brake: many services going at once stay (with their VIPs) for the hold,
and go when still unwanted then; a few going, new ones and changes pass at once."""

from __future__ import annotations

import logging

import pytest

from lvs_operator.director.brake import BrakeConfig, WithdrawalBrake
from lvs_operator.director.desired import Desired
from lvs_operator.director.table import (
    IpvsDestination,
    IpvsService,
    IpvsTable,
    Protocol,
    ServiceKey,
)


def desired(*vips: str, weight: int = 1) -> Desired:
    table = IpvsTable.of(
        (IpvsService(vip, 80, Protocol.TCP, "rr"), [IpvsDestination("10.20.0.21", 8080, weight)])
        for vip in vips
    )
    return Desired(table=table, vips={vip: None for vip in vips})


def key(vip: str) -> ServiceKey:
    return ServiceKey(Protocol.TCP, vip, 80)


FOUR = ("192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4")


def test_most_services_going_at_once_stay_with_their_vips_for_the_hold(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="lvs_operator.director.brake")
    brake = WithdrawalBrake(BrakeConfig(share=0.5, minimum=2, hold=60))
    before = desired(*FOUR)
    emptied = desired()  # e.g. --vip-ranges emptied: the controller accepts nothing
    kept = brake.apply(emptied, before, now=100.0)
    assert set(kept.table) == set(before.table) and set(kept.vips) == set(FOUR)
    assert brake.held == {key(v) for v in FOUR} and brake.next_release() == 160.0
    (line,) = [r.getMessage() for r in caplog.records]
    assert "4 of the 4 services" in line and "60s" in line
    # still unwanted, before the hold ends: kept, nothing logged again
    again = brake.apply(emptied, kept, now=159.0)
    assert set(again.table) == set(before.table) and len(caplog.records) == 1
    # after the hold: confirmed by time, it goes
    gone = brake.apply(emptied, again, now=160.0)
    assert len(gone.table) == 0 and gone.vips == {} and brake.held == frozenset()
    assert "going ahead" in caplog.records[-1].getMessage()


def test_changes_and_new_services_pass_while_a_withdrawal_is_held() -> None:
    brake = WithdrawalBrake(BrakeConfig(hold=60))
    before = desired(*FOUR)
    want = desired("192.0.2.1", "192.0.2.9", weight=5)  # 3 of 4 go, one is new, one changes
    out = brake.apply(want, before, now=0.0)
    assert set(out.table) == {key(v) for v in (*FOUR, "192.0.2.9")}
    assert out.table[key("192.0.2.1")].destinations[0].weight == 5  # the change went in
    assert out.table[key("192.0.2.2")] == before.table[key("192.0.2.2")]  # kept as it was


@pytest.mark.parametrize(
    ("after", "why"),
    [
        (desired(*FOUR[:3]), "one of four: under the share and the minimum"),
        (desired(*FOUR[:2]), "half: not more than the share"),
    ],
)
def test_a_few_going_is_not_braked(after: Desired, why: str) -> None:
    brake = WithdrawalBrake(BrakeConfig(share=0.5, minimum=2, hold=60))
    assert brake.apply(after, desired(*FOUR), now=0.0) == after, why
    assert brake.held == frozenset()


def test_a_service_wanted_again_is_released_from_the_hold_and_no_hold_means_no_brake() -> None:
    brake = WithdrawalBrake(BrakeConfig(hold=60))
    before = desired(*FOUR)
    brake.apply(desired(), before, now=0.0)
    back = desired(*FOUR)  # the GitOps tool re-created them
    assert brake.apply(back, before, now=5.0) == back and brake.held == frozenset()
    off = WithdrawalBrake(BrakeConfig(hold=0))
    assert off.apply(desired(), before, now=0.0) == desired()
    assert WithdrawalBrake().apply(desired(), None, now=0.0) == desired()  # first converge


def test_moved_and_staged_services_are_never_braked_nor_their_vips_kept() -> None:
    """A withdrawal the controller handed to another group (``moved``) goes at once, and so do
    services that were staged without their VIP; a kept VIP is only one that was held."""
    held, staged = desired("192.0.2.1", "192.0.2.2"), desired("192.0.2.3", "192.0.2.4")
    previous = Desired(
        IpvsTable.of([*held.table.values(), *staged.table.values()]),
        vips=held.vips,
        staged_vips=frozenset(staged.vips),
    )
    brake = WithdrawalBrake(BrakeConfig(share=0.4, minimum=2, hold=60))
    out = brake.apply(Desired(IpvsTable()), previous, 0.0, moved=set(held.table))
    assert len(out.table) == 0 and dict(out.vips) == {} and brake.held == frozenset()
    # without the hand-over the held ones are braked, and only their VIPs kept
    out = brake.apply(Desired(IpvsTable()), previous, 0.0)
    assert set(out.table) == set(held.table) and set(out.vips) == {"192.0.2.1", "192.0.2.2"}
