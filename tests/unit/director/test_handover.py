"""handover.py's pure parts: the Lease note, relay planning, the nftables script, drain."""

from __future__ import annotations

import pytest

from lvs_operator.director.handover import (
    MAX_AGE,
    RELAY_TABLE,
    DrainWatch,
    Handover,
    Relay,
    plan_relays,
    render_relay_table,
)

NOTE = Handover(
    "node-a", 1000.0, 10.0, {"192.0.2.10": "192.0.2.11", "2001:db8::10": "2001:db8::11"}
)


def test_note_round_trips_through_the_annotation() -> None:
    assert Handover.from_annotation(NOTE.to_annotation()) == NOTE


@pytest.mark.parametrize(
    "text",
    ["", None, "{", "[]", '{"from": "a"}',
     '{"from": "a", "at": 1, "drain": 5, "relays": {"x": "y"}}',
     '{"from": "", "at": 1, "drain": 5}', '{"from": "a", "at": 1, "drain": 0}'],
)  # fmt: skip
def test_a_malformed_or_empty_note_is_ignored(text: str | None) -> None:
    assert Handover.from_annotation(text) is None


def test_a_note_applies_to_another_director_while_fresh() -> None:
    assert NOTE.applies("node-b", 1001.0)
    assert not NOTE.applies("node-a", 1001.0)  # its own (a restart took the Lease back)
    assert not NOTE.applies("node-b", 1000.0 + MAX_AGE)  # left on the Lease long ago
    assert not Handover("node-a", 1000.0, 10.0, {}).applies("node-b", 1001.0)


def test_relays_follow_this_directors_placements() -> None:
    note = Handover("node-a", 0, 10, {"192.0.2.10": "192.0.2.11", "192.0.2.20": "192.0.2.11",
                                      "198.51.100.5": "198.51.100.11", "192.0.2.30": "2001:db8::1",
                                      "192.0.2.40": "192.0.2.11"})  # fmt: skip
    placements = {"192.0.2.10": "front", "192.0.2.20": "front", "198.51.100.5": "dmz",
                  "192.0.2.30": "front"}  # fmt: skip
    assert plan_relays(note, placements) == [
        Relay("dmz", "198.51.100.11", ("198.51.100.5",)),
        Relay("front", "192.0.2.11", ("192.0.2.10", "192.0.2.20")),
    ]  # family mismatch and unplaced VIPs left out


def test_relay_table_forwards_only_tcp_flows_not_started_here() -> None:
    script = render_relay_table(
        [
            Relay("front", "192.0.2.11", ("192.0.2.10",)),
            Relay("eth1", "2001:db8::11", ("2001:db8::10",)),
        ],
        70.2,
    )
    assert script.startswith(f"table netdev {RELAY_TABLE} {{")
    assert "timeout 71s" in script
    assert 'hook ingress device "front"' in script and 'hook ingress device "eth1"' in script
    assert (
        "ip daddr { 192.0.2.10 } tcp flags & (syn | ack) == syn update @seen4 "
        "{ ip saddr . tcp sport . ip daddr . tcp dport }" in script
    )
    assert (
        "ip daddr { 192.0.2.10 } tcp flags & syn == 0 ip saddr . tcp sport . ip daddr . tcp dport "
        '!= @seen4 fwd ip to 192.0.2.11 device "front"' in script
    )
    assert 'fwd ip6 to 2001:db8::11 device "eth1"' in script


def test_an_interface_name_cannot_inject_nftables_syntax() -> None:
    with pytest.raises(ValueError, match="interface name"):
        render_relay_table([Relay('x" ; flush ruleset', "192.0.2.11", ("192.0.2.10",))], 10)


def test_drain_needs_a_quiet_moment_not_one_zero() -> None:
    watch = DrainWatch(quiet=1.0)
    assert not watch.observe(0, 0.0)
    assert not watch.observe(1, 0.5)  # a handshake completed: established again
    assert not watch.observe(0, 0.6)
    assert not watch.observe(0, 1.5)
    assert watch.observe(0, 1.6)
