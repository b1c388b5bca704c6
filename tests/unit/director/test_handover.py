"""handover.py's pure parts: the Lease note, relay planning, the nftables scripts (relay,
ARP filter), drain; and HandoverKernel's nftables transactions on a fake runner."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lvs_operator.director.handover import (
    ARP_FILTER_TABLE,
    MAX_AGE,
    RELAY_TABLE,
    WARM_TABLE,
    DrainWatch,
    Handover,
    HandoverKernel,
    Relay,
    plan_relays,
    render_arp_filter,
    render_relay_table,
    warm_up,
)
from lvs_operator.director.kernel.nft import NftError

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
        # SYN and SYN-ACK: the real servers' answers to a VIP-sourced masquerade (handshakes
        # of connections this director forwarded) are its own too
        "ip daddr { 192.0.2.10 } tcp flags & syn == syn update @seen4 "
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


def test_the_arp_filter_quiets_the_old_leader_about_its_vips_only() -> None:
    """Replies naming a VIP as sender dropped; requests sent from a VIP re-sourced to this
    node's address on that link (arp_announce=2's choice); anything else from a VIP dropped.
    Output hook only: what others send, and this node's ARP for its own addresses, pass."""
    script = render_arp_filter(
        ["192.0.2.20", "192.0.2.10", "192.0.2.10"], {"front": "192.0.2.11", "dmz": "198.51.100.11"}
    )
    assert script == (
        f"table arp {ARP_FILTER_TABLE} {{\n"
        "  set vips { type ipv4_addr; elements = { 192.0.2.10, 192.0.2.20 } }\n"
        "  chain output {\n"
        "    type filter hook output priority filter; policy accept;\n"
        "    arp operation reply arp saddr ip @vips drop\n"
        '    oifname "dmz" arp saddr ip @vips arp saddr ip set 198.51.100.11\n'
        '    oifname "front" arp saddr ip @vips arp saddr ip set 192.0.2.11\n'
        "    arp saddr ip @vips drop\n"
        "  }\n"
        "}\n"
    )


def test_the_arp_filter_takes_ipv4_only_and_no_injected_names() -> None:
    with pytest.raises(ValueError):
        render_arp_filter(["2001:db8::10"], {})  # IPv6 needs none (handover.py)
    with pytest.raises(ValueError):
        render_arp_filter([], {})
    with pytest.raises(ValueError, match="interface name"):
        render_arp_filter(["192.0.2.10"], {'x" ; flush ruleset': "192.0.2.11"})
    with pytest.raises(ValueError):
        render_arp_filter(["192.0.2.10"], {"front": "2001:db8::11"})


class FakeNft:
    """nft.NftRunner: records each transaction; ``tables``: the (family, name) that exist."""

    def __init__(self, tables: set[tuple[str, str]] | None = None) -> None:
        self.tables = set(tables or ())
        self.commands: list[tuple[str, str | None]] = []

    def __call__(
        self, commands: str, netns: str | None = None, *, json_output: bool = False
    ) -> str:
        self.commands.append((commands, netns))
        first = commands.split("\n")[0].split()
        if first[0] == "list" and (first[2], first[3]) not in self.tables:
            raise NftError(f"nft: No such file or directory\n{commands}")
        if first[0] == "delete":
            self.tables.discard((first[2], first[3]))
        elif first[0] == "table":
            self.tables.add((first[1], first[2]))
        return ""


def test_the_arp_filter_is_replaced_in_one_transaction_and_removed_only_if_there() -> None:
    run = FakeNft()
    node = HandoverKernel("dir-a", run)
    assert node.remove_arp_filter() is False  # none: nothing deleted
    assert [c for c, _ in run.commands] == [f"list table arp {ARP_FILTER_TABLE}"]
    run.commands.clear()
    node.filter_arp(["192.0.2.10"], {"front": "192.0.2.11"})
    ((script, netns),) = run.commands
    assert netns == "dir-a"
    assert script.startswith(
        f"table arp {ARP_FILTER_TABLE} {{}}\ndelete table arp {ARP_FILTER_TABLE}\n"
        f"table arp {ARP_FILTER_TABLE} {{\n"
    )  # created empty first so the delete never fails: no flush, no other table touched
    run.commands.clear()
    assert node.remove_arp_filter() is True
    assert [c for c, _ in run.commands] == [
        f"list table arp {ARP_FILTER_TABLE}",
        f"delete table arp {ARP_FILTER_TABLE}",
    ]
    assert ("arp", ARP_FILTER_TABLE) not in run.tables


def test_the_relay_table_goes_through_the_same_runner() -> None:
    run = FakeNft({("netdev", RELAY_TABLE)})
    node = HandoverKernel(None, run)
    node.install_relays([Relay("front", "192.0.2.11", ("192.0.2.10",))], 10)
    assert run.commands[0][0].startswith(f"table netdev {RELAY_TABLE} {{}}\ndelete table")
    assert node.remove_relays() is True and node.remove_relays() is False


def test_the_scripts_can_be_rendered_under_another_table_name() -> None:
    relay = render_relay_table([Relay("front", "192.0.2.11", ("192.0.2.10",))], 10, "other")
    arp = render_arp_filter(["192.0.2.10"], {"front": "192.0.2.11"}, "other")
    assert relay.startswith("table netdev other {") and RELAY_TABLE not in relay
    assert arp.startswith("table arp other {") and ARP_FILTER_TABLE not in arp


def _library_here() -> str | None:
    """Why the real-nftables check cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (a network namespace of its own)"
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux)"
    try:
        import ctypes

        ctypes.CDLL("libnftables.so.1")
    except OSError:
        return "needs Debian's libnftables1"
    return None


@pytest.mark.skipif(_library_here() is not None, reason=str(_library_here()))
def test_the_warm_up_passes_the_real_nftables_check_and_applies_nothing() -> None:
    """The warm-up's scripts go through the real library and kernel (in a network namespace
    of their own): a typo there would only show as a warning at every agent's start."""
    operator = Path(__file__).resolve().parents[3] / "operator"
    code = (
        f"import sys; sys.path.insert(0, {str(operator)!r})\n"
        "from lvs_operator.director.handover import HandoverKernel\n"
        "from lvs_operator.director.kernel import nft\n"
        "print(HandoverKernel().warm()); print(repr(nft.nft('list tables')))\n"
    )
    out = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert out.stdout.splitlines() == ["True", "''"], out  # warmed; no table left
    assert WARM_TABLE not in out.stdout


class _WarmNode:
    def __init__(self, error: Exception | None = None) -> None:
        self.error, self.calls = error, 0

    def warm(self) -> bool:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return True


def test_warm_up_says_when_nftables_refuses_the_handover_tables(
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = _WarmNode(NftError("nft: Error: Could not process rule: Not supported"))
    with caplog.at_level(logging.INFO, "lvs_operator.director.handover"):
        asyncio.run(warm_up(node))
    assert node.calls == 1
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and "will not relay" in record.getMessage()
    assert "Not supported" in record.getMessage()


def test_warm_up_logs_its_time(caplog: pytest.LogCaptureFixture) -> None:
    node = _WarmNode()
    with caplog.at_level(logging.INFO, "lvs_operator.director.handover"):
        asyncio.run(warm_up(node))
    (record,) = caplog.records
    assert record.levelno == logging.INFO and isinstance(record.__dict__["seconds"], float)
