"""Peer heartbeat: wire format, the PeerHealth state machine, responder + monitor over UDP."""

from __future__ import annotations

import asyncio
import socket

import pytest

from lvs_operator.director.peer import (
    GATED_TIMEOUT_SHARE,
    HEARTBEAT_ANNOTATION,
    MAX_REPLY_LEN,
    HeartbeatMonitor,
    HeartbeatResponder,
    PeerHealth,
    format_address,
    make_probe,
    make_reply,
    parse_address,
    parse_probe,
    parse_reply,
)

A = ("10.0.0.1", 9643)
B = ("10.0.0.2", 9643)


def answer(probe: bytes, identity: str, leader: bool = True) -> bytes:
    nonce = parse_probe(probe)
    assert nonce is not None
    return make_reply(nonce, identity, leader)


def ping(health: PeerHealth, now: float, identity: str = "node-a", leader: bool = True) -> bool:
    """One probe answered by ``identity`` from the target's address."""
    assert health.address is not None
    return health.on_reply(answer(health.next_probe(now), identity, leader), health.address, now)


def armed_health(arm_after: float = 0.3) -> tuple[PeerHealth, float]:
    health = PeerHealth(timeout=0.35, arm_after=arm_after)
    health.target("node-a", A)
    now = 0.0
    while True:
        assert ping(health, now)
        if health.armed:
            return health, now
        now = round(now + 0.1, 6)


# -- wire format -------------------------------------------------------------------------------


def test_probe_and_reply_round_trip() -> None:
    probe = make_probe("0123456789abcdef")
    assert probe == b"LVSHB2 0123456789abcdef -"  # unauthenticated: mac "-"
    assert parse_probe(probe) == "0123456789abcdef"
    reply = make_reply("0123456789abcdef", "node-a", True)
    assert reply == b"LVSHB2 0123456789abcdef node-a 1 -"
    assert parse_reply(reply) == ("0123456789abcdef", "node-a", True)
    assert parse_reply(make_reply("0123456789abcdef", "node-a", False)) == (
        "0123456789abcdef",
        "node-a",
        False,
    )
    key = b"k" * 32
    longest = make_reply("0123456789abcdef", "n" * 253, True, key)
    assert len(longest) == MAX_REPLY_LEN
    # reply = probe + identity + flag: a poor reflector
    assert len(longest) <= len(make_probe("0123456789abcdef", key=key)) + 253 + 3


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"LVSHB2",
        b"LVSHB2 0123456789ABCDEF -",  # upper case
        b"LVSHB2 0123456789abcde -",  # short
        b"LVSHB2 0123456789abcdefg -",
        b"LVSHB2 0123456789abcdef -\n",
        b"LVSHB2 0123456789abcdef",  # no mac field
        b"LVSHB1 0123456789abcdef",  # the previous version
        b"LVSHB1 0123456789abcdef -",
        b"LVSHB2  123456789abcdef -",
        b"LVSHB2 0123456789abcdef " + b"0" * 31,  # mac too short
        b"LVSHB2 0123456789abcdef " + b"A" * 32,  # mac upper case
        b"LVSHB2 0123456789abcdef -" + b" " * 300,
    ],
)
def test_malformed_probes_are_ignored(data: bytes) -> None:
    assert parse_probe(data) is None


@pytest.mark.parametrize(
    "data",
    [
        b"LVSHB2 0123456789abcdef node-a -",
        b"LVSHB2 0123456789abcdef node-a 1",  # no mac field
        b"LVSHB1 0123456789abcdef node-a 1",  # the previous version
        b"LVSHB1 0123456789abcdef node-a 1 -",
        b"LVSHB2 0123456789abcdef node-a 2 -",
        b"LVSHB2 0123456789abcdef node-a 1 - ",
        b"LVSHB2 0123456789abcdef node-a 1 -\n",
        b"LVSHB2 0123456789abcdef  node-a 1 -",
        b"LVSHB2 0123456789abcdef node\x00a 1 -",
        b"LVSHB2 0123456789abcdef n\xc3\xa9 1 -",
        b"LVSHB2 0123456789abcdeX node-a 1 -",
        b"LVSHB2 0123456789abcdef node-a 1 xyz",
        b"LVSHB2 0123456789abcdef " + b"n" * 254 + b" 1 -",
        b"XXXXXX 0123456789abcdef node-a 1 -",
    ],
)
def test_malformed_replies_are_ignored(data: bytes) -> None:
    assert parse_reply(data) is None


def test_make_rejects_bad_nonce_and_identity() -> None:
    with pytest.raises(ValueError):
        make_probe("xyz")
    with pytest.raises(ValueError):
        make_reply("0123456789abcdef", "has space", True)
    with pytest.raises(ValueError):
        make_reply("0123456789abcdef", "n" * 254, True)
    with pytest.raises(ValueError):
        make_reply("0123456789abcdef", "nö", True)


def test_parse_and_format_address() -> None:
    assert parse_address("10.0.0.1:9643") == ("10.0.0.1", 9643)
    assert parse_address(" [fd00::1]:9643 ") == ("fd00::1", 9643)
    assert parse_address("[FD00:0::1]:1") == ("fd00::1", 1)
    assert format_address(("10.0.0.1", 9643)) == "10.0.0.1:9643"
    assert format_address(("fd00::1", 9643)) == "[fd00::1]:9643"
    for text in ("[fd00::1]:9643", "10.0.0.1:9643"):
        assert format_address(parse_address(text)) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.1", "ip:port"),
        ("fd00::1:9643", "ip:port"),
        ("[fd00::1]9643", r"\[ipv6\]:port"),
        ("node-a:9643", "not an IP"),
        ("10.0.0.1:0", "port"),
        ("10.0.0.1:65536", "port"),
        ("10.0.0.1:http", "port"),
        ("10.0.0.1:-1", "port"),
        ("[10.0.0.1]:9643", "IPv6 only"),
    ],
)
def test_parse_address_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_address(text)


# -- PeerHealth --------------------------------------------------------------------------------


def test_never_unreachable_before_armed() -> None:
    health = PeerHealth(timeout=0.35, arm_after=0.3)
    assert not health.unreachable("node-a", 100.0)  # no target
    health.target("node-a", A)
    assert not health.unreachable("node-a", 100.0)  # no reply ever
    assert ping(health, 0.0)
    assert not health.armed  # one reply, arm_after not reached
    assert not health.unreachable("node-a", 10.0)


def test_armed_then_silent_for_the_timeout_is_unreachable() -> None:
    health, last = armed_health()
    assert not health.unreachable("node-a", last + 0.34)
    assert health.unreachable("node-a", last + 0.351)
    assert health.lost_for(last + 0.5) == pytest.approx(0.5)
    assert not health.unreachable("node-b", last + 1)  # only about the targeted holder
    assert not health.unreachable("", last + 1)
    assert health.deadline() == pytest.approx(last + 0.35)
    assert ping(health, last + 1)  # answers again
    assert not health.unreachable("node-a", last + 1.1)


def test_a_gated_standby_judges_sooner() -> None:
    """Gated (it checks ARP before any takeover, every VIP placed on its node): the holder
    is judged silent after GATED_TIMEOUT_SHARE of the timeout, and "heard leading" ends
    then too; not gated, the whole timeout holds (the leader's own bound relies on it)."""
    health, last = armed_health()
    health.gated = True
    limit = 0.35 * GATED_TIMEOUT_SHARE
    assert health.limit == pytest.approx(limit)
    assert health.heard_leading("node-a", last + limit - 0.01)
    assert not health.unreachable("node-a", last + limit - 0.01)
    assert health.unreachable("node-a", last + limit + 0.001)
    assert not health.heard_leading("node-a", last + limit + 0.001)
    assert health.deadline() == pytest.approx(last + limit)
    health.gated = False  # a VIP of the group not placed here any more: strict again
    assert not health.unreachable("node-a", last + limit + 0.001)
    assert health.heard_leading("node-a", last + limit + 0.001)
    assert health.deadline() == pytest.approx(last + 0.35)


def test_arm_after_zero_arms_on_the_first_reply() -> None:
    health = PeerHealth(timeout=0.35, arm_after=0)
    health.target("node-a", A)
    assert ping(health, 0.0)
    assert health.armed
    assert health.unreachable("node-a", 0.35)


def test_a_gap_restarts_the_arming_run() -> None:
    health = PeerHealth(timeout=0.35, arm_after=0.3)
    health.target("node-a", A)
    assert ping(health, 0.0)
    assert ping(health, 0.2)
    assert ping(health, 0.6)  # gap 0.4 >= timeout: a new run starts here
    assert not health.armed
    assert ping(health, 0.8)
    assert not health.armed
    assert ping(health, 0.9)
    assert health.armed


def test_replies_with_wrong_nonce_identity_or_source_are_ignored() -> None:
    health, last = armed_health()
    now = last + 0.2
    probe = health.next_probe(now)
    good = answer(probe, "node-a")
    assert not health.on_reply(make_reply("0123456789abcdef", "node-a", True), A, now)
    assert not health.on_reply(answer(probe, "node-b"), A, now)
    assert not health.on_reply(good, ("10.0.0.9", 9643), now)
    assert not health.on_reply(good + b"x", A, now)
    assert health.last_ok == last
    assert not health.on_reply(answer(probe, "node-a", False), ("10.0.0.9", 1), now)
    assert not health.disowned
    assert health.on_reply(good, ("10.0.0.1", 40000), now)  # any source port
    assert health.last_ok == now
    assert not health.on_reply(good, A, now + 0.1)  # replayed: nonce no longer pending
    assert health.last_ok == now


def test_ipv4_mapped_source_matches() -> None:
    health = PeerHealth(timeout=0.35, arm_after=0)
    health.target("node-a", A)
    reply = answer(health.next_probe(0), "node-a")
    assert health.on_reply(reply, ("::ffff:10.0.0.1", 9643, 0, 0), 0.0)


def test_a_late_reply_to_an_older_probe_is_stale() -> None:
    health, last = armed_health()
    old = health.next_probe(last + 0.1)
    new = health.next_probe(last + 0.2)
    assert health.on_reply(answer(new, "node-a", False), A, last + 0.25)
    assert health.disowned
    # the "1" to the older probe arrives after the "0": it must not undo the step-down
    assert not health.on_reply(answer(old, "node-a", True), A, last + 0.26)
    assert health.disowned


def test_only_the_last_outstanding_nonces_are_kept() -> None:
    health = PeerHealth(timeout=0.35, arm_after=0, outstanding=8)
    health.target("node-a", A)
    probes = [health.next_probe(0.0) for _ in range(9)]
    assert not health.on_reply(answer(probes[0], "node-a"), A, 0.0)  # forgotten
    assert health.on_reply(answer(probes[1], "node-a"), A, 0.0)


def test_holder_saying_it_no_longer_leads_is_unreachable_at_once() -> None:
    health, last = armed_health()
    assert ping(health, last + 0.05, leader=False)
    assert health.disowned
    assert health.unreachable("node-a", last + 0.05)
    assert health.deadline() is None
    assert ping(health, last + 0.1, leader=True)  # leads again (e.g. took its Lease back)
    assert not health.unreachable("node-a", last + 0.1)


def test_not_leading_before_armed_means_nothing() -> None:
    health = PeerHealth(timeout=0.35, arm_after=0)
    health.target("node-a", A)
    assert ping(health, 0.0, leader=False)
    assert not health.armed and not health.disowned
    assert not health.unreachable("node-a", 5.0)


def test_retarget_resets_and_the_same_target_does_not() -> None:
    health, last = armed_health()
    assert not health.target("node-a", A)  # observed again: no change
    assert health.armed
    assert health.target("node-a", ("10.0.0.1", 9644))  # new address: start over
    assert not health.armed and health.last_ok is None
    assert not health.unreachable("node-a", last + 5)
    health, last = armed_health()
    assert health.target("node-b", B)
    assert not health.armed
    assert not health.unreachable("node-a", last + 5)
    assert not health.unreachable("node-b", last + 5)
    health, last = armed_health()
    pending = health.next_probe(last + 0.1)
    health.target("node-b", B)
    assert not health.on_reply(answer(pending, "node-b"), B, last + 0.1)  # probe of the old


def test_partition_between_directors_does_not_ping_pong() -> None:
    """A leads, B is armed on A. The link between them breaks (both still reach the API):
    B judges A lost and takes the Lease; A steps down and targets B, but never hears B, so A
    is never armed and never judges B lost: it waits for Lease expiry (B keeps renewing)."""
    b_view, last = armed_health()
    assert b_view.unreachable("node-a", last + 0.351)  # B takes the Lease
    a_view = PeerHealth(timeout=0.35, arm_after=0.3)
    a_view.target("node-b", B)  # A observes the record held by B
    now = last + 0.4
    for _ in range(100):  # 10 s of probes without an answer
        a_view.next_probe(now)
        assert not a_view.unreachable("node-b", now)
        now += 0.1
    # one stray reply (the link flickers) does not arm A either
    assert a_view.on_reply(answer(a_view.next_probe(now), "node-b"), B, now)
    assert not a_view.unreachable("node-b", now + 0.5)


# -- over loopback UDP -------------------------------------------------------------------------


async def wait_for(predicate, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.005)


@pytest.fixture
async def responder():
    state = {"leader": True}
    responder = HeartbeatResponder("node-a", lambda: state["leader"], host="127.0.0.1", port=0)
    await responder.start()
    responder.state = state  # type: ignore[attr-defined]
    yield responder
    responder.close()


@pytest.fixture
async def monitor():
    lost = asyncio.Event()
    monitor = HeartbeatMonitor(lost.set, interval=0.02, timeout=0.1, arm_after=0.05)
    monitor.lost = lost  # type: ignore[attr-defined]
    await monitor.start()
    yield monitor
    await monitor.close()


async def test_monitor_is_armed_by_replies_then_loses_a_closed_responder(
    responder, monitor
) -> None:
    address = responder.address
    assert address is not None and address[1] != 0
    monitor.set_target("node-a", address)
    await wait_for(lambda: monitor.health.armed)
    assert not monitor.unreachable("node-a")
    assert responder.replies >= 3
    loop = asyncio.get_running_loop()
    responder.close()
    t0 = loop.time()
    await asyncio.wait_for(monitor.lost.wait(), 1.0)
    elapsed = loop.time() - t0
    assert elapsed < 0.1 + 5 * 0.02 + 0.05  # timeout + a few intervals (+ scheduling)
    assert monitor.unreachable("node-a")
    assert not monitor.unreachable("node-b")


async def test_a_monitor_made_not_probing_sends_nothing_until_told(responder) -> None:
    monitor = HeartbeatMonitor(None, interval=0.02, timeout=0.1, arm_after=0.05, probing=False)
    await monitor.start()
    try:
        monitor.set_target("node-a", responder.address)
        await asyncio.sleep(0.2)
        assert monitor.probes == 0 and responder.replies == 0  # nothing to list us by
        monitor.start_probing()
        await wait_for(lambda: monitor.health.armed)
        assert responder.replies > 0
    finally:
        await monitor.close()


async def test_monitor_loses_a_holder_that_stops_leading(responder) -> None:
    # A silence timeout far beyond the wait below: the loss can only come from the holder's
    # next answer ("not leading"), however slow the machine is (an absolute bound on the
    # delay, 0.1 s, failed on a loaded machine).
    lost = asyncio.Event()
    monitor = HeartbeatMonitor(lost.set, interval=0.02, timeout=60.0, arm_after=0.05)
    await monitor.start()
    try:
        monitor.set_target("node-a", responder.address)
        await wait_for(lambda: monitor.health.armed)
        responder.state["leader"] = False
        await asyncio.wait_for(lost.wait(), 10.0)
        assert monitor.health.disowned and monitor.unreachable("node-a")
    finally:
        await monitor.close()


async def test_on_lost_fires_once_per_loss(responder, monitor) -> None:
    calls: list[float] = []
    monitor.on_lost = lambda: calls.append(0)
    monitor.set_target("node-a", responder.address)
    await wait_for(lambda: monitor.health.armed)
    responder.state["leader"] = False
    await wait_for(lambda: len(calls) == 1)
    await asyncio.sleep(0.1)  # keeps answering "not leading": still one call
    assert len(calls) == 1
    responder.state["leader"] = True
    await wait_for(lambda: not monitor.unreachable("node-a"))
    responder.state["leader"] = False
    await wait_for(lambda: len(calls) == 2)


async def test_monitor_ignores_a_responder_with_another_identity(responder, monitor) -> None:
    monitor.set_target("node-b", responder.address)  # the Lease says node-b, node-a answers
    await asyncio.sleep(0.2)
    assert responder.replies > 0
    assert not monitor.health.armed
    assert monitor.replies == 0
    assert not monitor.unreachable("node-b")
    assert not monitor.lost.is_set()


async def test_unanswered_probes_never_fire(monitor) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monitor.set_target("node-a", ("127.0.0.1", port))  # nobody listens: ICMP unreachable
    await asyncio.sleep(0.2)
    assert monitor.probes >= 3
    assert not monitor.health.armed and not monitor.lost.is_set()
    monitor.set_target("node-a", ("192.0.2.1", 9))  # TEST-NET: dropped or unroutable
    await asyncio.sleep(0.1)
    assert not monitor.lost.is_set()


async def test_follow_targets_the_lease_holder(responder, monitor) -> None:
    address = format_address(responder.address)
    monitor.follow("node-a", {HEARTBEAT_ANNOTATION: address}, identity="node-b")
    assert monitor.health.holder == "node-a"
    assert monitor.health.address == responder.address
    await wait_for(lambda: monitor.health.armed)
    monitor.follow("node-a", {HEARTBEAT_ANNOTATION: address, "x": "y"}, identity="node-b")
    assert monitor.health.armed  # same target: state kept
    monitor.follow("node-b", {HEARTBEAT_ANNOTATION: "10.0.0.2:1"}, identity="node-b")
    assert monitor.health.holder == "" and monitor.health.address is None  # we hold it
    monitor.follow("node-a", {HEARTBEAT_ANNOTATION: "garbage"}, identity="node-b")
    assert monitor.health.holder == "node-a" and monitor.health.address is None
    monitor.follow("node-a", {HEARTBEAT_ANNOTATION: "0.0.0.0:9643"}, identity="node-b")
    assert monitor.health.address is None
    monitor.follow("", {}, identity="node-b")
    assert monitor.health.holder == ""


async def test_responder_drops_malformed_and_rate_limits() -> None:
    t = [0.0]
    responder = HeartbeatResponder(
        "node-a", lambda: True, host="127.0.0.1", port=0, rate=3, clock=lambda: t[0]
    )
    await responder.start()
    loop = asyncio.get_running_loop()
    got: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr) -> None:
            got.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(
        Client, remote_addr=responder.address, family=socket.AF_INET
    )
    try:
        transport.sendto(b"LVSHB2 nonsense")
        transport.sendto(b"LVSHB2 0123456789abcdef -" + b"x" * 600)
        for i in range(5):
            transport.sendto(make_probe(f"{i:016x}"))
        replies = [await asyncio.wait_for(got.get(), 1.0) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert got.empty()  # the burst of 3 is spent
        assert replies[0] == b"LVSHB2 0000000000000000 node-a 1 -"
        assert responder.replies == 3 and responder.dropped == 4
        # another address has its own budget: a flood cannot starve the standby's probes
        other, _ = await loop.create_datagram_endpoint(
            Client, local_addr=("127.0.0.2", 0), remote_addr=responder.address
        )
        other.sendto(make_probe("00000000000000aa"))
        assert await asyncio.wait_for(got.get(), 1.0) == b"LVSHB2 00000000000000aa node-a 1 -"
        other.close()
        t[0] += 1.0  # refilled
        transport.sendto(make_probe("00000000000000ff"))
        assert await asyncio.wait_for(got.get(), 1.0) == b"LVSHB2 00000000000000ff node-a 1 -"
    finally:
        transport.close()
        responder.close()


def test_monitor_rejects_an_interval_not_below_the_timeout() -> None:
    with pytest.raises(ValueError, match="interval"):
        HeartbeatMonitor(interval=0.4, timeout=0.35)


async def test_elector_takes_over_as_soon_as_the_leader_stops_answering() -> None:
    """The whole path over loopback: A leads and publishes its responder on the Lease; B's
    monitor follows the records B's Elector observes; A crashes (no release); B's monitor
    fires on_lost, which wakes B's Elector, which takes the Lease long before expiry (2 s)."""
    from lvs_operator.director.election import ElectionConfig, Elector
    from tests.unit.director.fake_lease import FakeLeaseApi, FakeLeaseStore

    store = FakeLeaseStore()
    # Lease and retry far beyond the wait below: only the heartbeat can make B the holder in
    # time (an absolute bound on the delay is what a loaded machine breaks)
    slow = {"lease_duration": 120, "renew_deadline": 90.0, "retry_period": 60.0}
    a = Elector(ElectionConfig("node-a", **slow), FakeLeaseApi(store))
    responder = HeartbeatResponder("node-a", lambda: a.serving, host="127.0.0.1", port=0)
    await responder.start()
    assert responder.address is not None
    a.set_annotation(HEARTBEAT_ANNOTATION, format_address(responder.address))
    monitor = HeartbeatMonitor(interval=0.02, timeout=0.1, arm_after=0.05)
    b = Elector(
        ElectionConfig("node-b", **slow),
        FakeLeaseApi(store),
        holder_unreachable=monitor.unreachable,
        on_record=lambda record: monitor.follow(record.holder, record.annotations, "node-b"),
    )
    monitor.on_lost = b.wake
    await monitor.start()
    await a.tick()
    a_task = asyncio.create_task(a.run())
    b_task = asyncio.create_task(b.run())
    try:
        await wait_for(lambda: monitor.health.armed)
        assert not b.is_leader
        a_task.cancel()  # crash: no release, the Lease stays A's until it expires
        responder.close()
        await wait_for(lambda: b.is_leader, timeout=10.0)  # the Lease had 2 minutes left
        assert store.record is not None and store.record.holder == "node-b"
        assert monitor.health.holder == ""  # B holds it now: nobody to probe
    finally:
        a_task.cancel()
        responder.close()
        await b.release()
        await asyncio.wait_for(asyncio.gather(a_task, b_task, return_exceptions=True), 2)
        await monitor.close()


def test_probe_carries_identity_ack_and_gate() -> None:
    from lvs_operator.director.peer import Probe, parse_probe_full

    data = make_probe("0123456789abcdef", "node-b", "fedcba9876543210", gated=True, seq=7)
    assert data == b"LVSHB2 0123456789abcdef node-b fedcba9876543210 1 0000000000000007 -"
    assert parse_probe_full(data) == Probe(
        "0123456789abcdef", "node-b", "fedcba9876543210", True, 7
    )
    assert parse_probe_full(make_probe("0123456789abcdef", "node-b")) == Probe(
        "0123456789abcdef", "node-b", None, False
    )
    assert parse_probe_full(data + b" x") is None
    flag = data.index(b" 1 ") + 1
    assert parse_probe_full(data[:flag] + b"2" + data[flag + 1 :]) is None


def test_responder_confirms_only_acks_of_its_leading_replies() -> None:
    from lvs_operator.director.peer import Probe

    clock = [10.0]
    responder = HeartbeatResponder("node-a", lambda: True, clock=lambda: clock[0])
    responder._remember("00000000000000aa", 9.5)
    responder.note_ack(Probe("00000000000000bb", "node-b", "00000000000000ff"), "10.0.0.2")
    assert responder.confirmations() == {}  # an ack of nothing we sent
    responder.note_ack(Probe("00000000000000bb", "node-b", "00000000000000aa", True), "10.0.0.2")
    (c,) = responder.confirmations().values()
    assert (c.address, c.at, c.gated) == ("10.0.0.2", 9.5, True)
    # from another address, the same ack is no proof for node-b at its old address
    responder.note_ack(Probe("00000000000000cc", "node-b", None, False), "10.0.0.9")
    assert responder.confirmations()["node-b"].address == "10.0.0.2"
    # a later probe without a new ack keeps the time and follows the flag
    responder.note_ack(Probe("00000000000000dd", "node-b", None, False), "10.0.0.2")
    assert responder.confirmations()["node-b"].gated is False
    assert responder.confirmations()["node-b"].at == 9.5


async def test_monitor_suspects_the_holder_before_it_judges_it_lost() -> None:
    """Armed, then the holder goes silent: ``on_suspect`` once, ``suspect_lead`` before
    ``on_lost`` once (the takeover's ARP probe starts on the suspicion)."""
    import asyncio

    from lvs_operator.director.peer import HeartbeatMonitor

    loop = asyncio.get_running_loop()
    events: list[tuple[str, float]] = []
    responder = HeartbeatResponder("node-a", lambda: True, host="127.0.0.1", port=0)
    await responder.start()
    monitor = HeartbeatMonitor(
        lambda: events.append(("lost", loop.time())),
        interval=0.05, timeout=0.3, arm_after=0.2, identity="node-b",
        on_suspect=lambda: events.append(("suspect", loop.time())),
    )  # fmt: skip
    await monitor.start()
    try:
        assert responder.address is not None
        monitor.set_target("node-a", responder.address)
        t0 = loop.time()
        while not monitor.health.armed and loop.time() - t0 < 10:
            await asyncio.sleep(0.02)
        assert monitor.health.armed and events == []
        responder.close()
        t0 = loop.time()
        while len(events) < 2 and loop.time() - t0 < 10:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        assert [name for name, _ in events] == ["suspect", "lost"], events
        assert events[1][1] - events[0][1] >= 0.05  # ahead of the judgement
    finally:
        await monitor.close()
        responder.close()


async def test_the_default_responder_answers_both_families() -> None:
    """Bound to "0.0.0.0" (the default): IPv4 and IPv6 probers are both answered (an agent
    may publish its address on an IPv6 VIP's link), and an IPv4 prober is known by its IPv4
    address."""
    import socket as _socket

    responder = HeartbeatResponder("leader", lambda: True, host="0.0.0.0", port=0)
    await responder.start()
    try:
        assert responder.address is not None
        port = responder.address[1]
        for family, host in ((_socket.AF_INET, "127.0.0.1"), (_socket.AF_INET6, "::1")):
            with _socket.socket(family, _socket.SOCK_DGRAM) as sock:
                sock.settimeout(2)
                sock.sendto(make_probe("0" * 15 + "1", "standby", None, False, 1), (host, port))
                reply = sock.recv(1024)
            assert parse_reply(reply) is not None, (host, reply)
        # the IPv4 prober's acknowledgement is recorded under its IPv4 address
        with _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM) as sock:
            sock.settimeout(2)
            first = "0" * 15 + "2"
            sock.sendto(make_probe(first, "standby", None, False, 2), ("127.0.0.1", port))
            sock.recv(1024)
            sock.sendto(make_probe("0" * 15 + "3", "standby", first, False, 3), ("127.0.0.1", port))
            sock.recv(1024)
        assert responder.confirmations()["standby"].address == "127.0.0.1"
    finally:
        responder.close()


def test_unmapped() -> None:
    from lvs_operator.director.peer import unmapped

    assert unmapped("::ffff:10.10.0.12") == "10.10.0.12"
    assert unmapped("2001:db8::1") == "2001:db8::1" and unmapped("10.0.0.1") == "10.0.0.1"


async def test_a_suspicion_lead_is_at_most_half_the_limit() -> None:
    """``suspect_with``: a lead longer than half the limit would suspect a holder that
    missed one or two replies; it is cut to half (of the gated limit, when gated)."""
    monitor = HeartbeatMonitor(interval=0.05, timeout=0.3, probing=False)
    try:
        monitor.suspect_with(lambda: None, 0.15)
        assert monitor.effective_lead == pytest.approx(0.15)
        monitor.suspect_with(lambda: None, 0.25)
        assert monitor.effective_lead == pytest.approx(0.15)
        monitor.health.gated = True
        assert monitor.effective_lead == pytest.approx(0.3 * GATED_TIMEOUT_SHARE / 2)
    finally:
        await monitor.close()


async def test_a_starved_monitor_reads_queued_replies_before_it_judges(
    responder, caplog: pytest.LogCaptureFixture
) -> None:
    """The monitor's thread did not run for longer than the limit (a busy node) while the
    holder's reply waited in the socket: the reply counts first, so the holder is not judged
    silent from stale state (the step is driven by hand, the clock is fake)."""
    import logging
    import time as _time

    now = [0.0]
    monitor = HeartbeatMonitor(interval=0.05, timeout=0.3, arm_after=0.0, clock=lambda: now[0])
    try:
        monitor.set_target("node-a", responder.address)
        monitor._step()  # the first probe, answered within the wait that ends the step
        assert monitor.health.armed and monitor.health.last_ok == 0.0
        now[0] = 0.1
        with monitor._lock:
            probe = monitor.health.next_probe(now[0])
        monitor._send(responder.address, probe)
        monitor._next_probe = 10.0  # no further probe: only the queued reply can help
        _time.sleep(0.1)  # the reply arrives while the thread "sleeps"
        now[0] = 0.5  # past the limit since the last reply read
        with caplog.at_level(logging.INFO, logger="lvs_operator.director.peer"):
            monitor._step()
        assert monitor.health.last_ok == 0.5
        assert "peer heartbeat lost" not in caplog.text
    finally:
        await monitor.close()
