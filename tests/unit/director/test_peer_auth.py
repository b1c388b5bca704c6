"""Authenticated heartbeats (peer.py): the MAC over every field of probes and replies, the
responder checking it (and the probe's freshness) before it charges a sender's reply budget,
the standby dropping forged replies, the key file, and the unauthenticated fallback."""

from __future__ import annotations

import asyncio
import logging
import socket
from types import SimpleNamespace
from typing import Any

import pytest

from lvs_operator.director import peer as peer_mod
from lvs_operator.director.peer import (
    FORGET_AFTER,
    HeartbeatMonitor,
    HeartbeatResponder,
    PeerHealth,
    make_probe,
    make_reply,
    parse_probe_full,
    parse_reply,
    verify,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
STANDBY = ("10.0.0.2", 40000)  # where the real standby's probes come from
A = ("10.0.0.1", 9643)
NONCE = "0123456789abcdef"
ACK = "fedcba9876543210"


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any) -> int:
        self.sent.append((data, addr))
        return len(data)


def replace_field(data: bytes, index: int, value: bytes) -> bytes:
    parts = data.split(b" ")
    parts[index] = value
    return b" ".join(parts)


# -- the MAC -----------------------------------------------------------------------------------


def test_mac_round_trip() -> None:
    probe = make_probe(NONCE, "node-b", ACK, gated=True, seq=42, key=KEY)
    text, _, mac = probe.rpartition(b" ")
    assert text == b"LVSHB2 0123456789abcdef node-b fedcba9876543210 1 000000000000002a"
    assert len(mac) == 32 and mac != b"-"
    assert verify("probe", probe, KEY)
    assert parse_probe_full(probe) == peer_mod.Probe(NONCE, "node-b", ACK, True, 42)
    reply = make_reply(NONCE, "node-a", True, KEY)
    assert verify("reply", reply, KEY)
    assert parse_reply(reply) == (NONCE, "node-a", True)
    anonymous = make_probe(NONCE, key=KEY)
    assert verify("probe", anonymous, KEY)
    # another key, the other kind of message, or no MAC at all: not verified
    assert not verify("probe", probe, OTHER_KEY)
    assert not verify("reply", probe, KEY)
    assert not verify("probe", reply, KEY)
    assert not verify("probe", make_probe(NONCE, "node-b", ACK, True, 42), KEY)
    assert not verify("reply", make_reply(NONCE, "node-a", True), KEY)


@pytest.mark.parametrize(
    ("index", "value"),
    [
        (1, b"0123456789abcdee"),  # nonce
        (2, b"node-c"),  # identity
        (3, b"-"),  # ack
        (3, b"fedcba9876543211"),
        (4, b"0"),  # gated flag
        (5, b"000000000000002b"),  # seq
        (6, b"0" * 32),  # the MAC itself
        (6, b"-"),  # no MAC
    ],
)
def test_a_tampered_probe_field_is_rejected(index: int, value: bytes) -> None:
    probe = make_probe(NONCE, "node-b", ACK, gated=True, seq=42, key=KEY)
    tampered = replace_field(probe, index, value)
    assert parse_probe_full(tampered) is not None  # well-formed, only the MAC says no
    assert not verify("probe", tampered, KEY)
    responder = HeartbeatResponder("node-a", lambda: True, clock=lambda: 0.0, key=KEY)
    sock = FakeSocket()
    responder._on_probe(sock, tampered, STANDBY)  # type: ignore[arg-type]
    assert sock.sent == [] and responder.rejected == 1 and responder.confirmations() == {}
    responder._on_probe(sock, probe, STANDBY)  # type: ignore[arg-type]
    assert len(sock.sent) == 1 and verify("reply", sock.sent[0][0], KEY)


@pytest.mark.parametrize(("index", "value"), [(1, b"0000000000000000"), (2, b"node-x"), (3, b"1")])
def test_a_tampered_reply_field_is_rejected(index: int, value: bytes) -> None:
    reply = make_reply(NONCE, "node-a", False, KEY)
    assert not verify("reply", replace_field(reply, index, value), KEY)


# -- the responder: the budget is spent only by the key's holders ------------------------------


def real_probes(count: int, key: bytes | None = KEY) -> list[bytes]:
    health = PeerHealth(identity="node-b", key=key, wall_ns=lambda: 0)
    health.target("node-a", A)
    return [health.next_probe(0.0) for _ in range(count)]


def test_a_spoofed_probe_flood_does_not_silence_the_leader_for_the_real_standby() -> None:
    """1,000 probes without the key, spoofed from the standby's own address at 200/s (twice
    the reply budget) for 5 s, interleaved with the standby's real probes every 0.05 s:
    every real probe is answered, and the flood costs it no token and forges nothing."""
    clock = [0.0]
    responder = HeartbeatResponder("node-a", lambda: True, clock=lambda: clock[0], key=KEY)
    sock = FakeSocket()
    unsigned = make_probe("00000000000000aa", "node-b", None, True, 1 << 62)  # "gated"
    floods = [
        make_probe(f"{i:016x}", "node-b", None, True, i)  # no MAC
        if i % 3 == 0
        else make_probe(f"{i:016x}", "node-b", None, True, i, key=OTHER_KEY)  # another key
        if i % 3 == 1
        else unsigned[:-1] + b"%032x" % i  # a guessed MAC
        for i in range(1000)
    ]
    standby = PeerHealth(timeout=0.4, arm_after=1.0, identity="node-b", key=KEY)
    standby.target("node-a", A)
    answered = 0
    for i, flood in enumerate(floods):
        clock[0] = i * 0.005  # 200/s
        responder._on_probe(sock, flood, STANDBY)  # type: ignore[arg-type]
        if i % 10 == 0:  # every 0.05 s
            before = len(sock.sent)
            responder._on_probe(sock, standby.next_probe(clock[0]), STANDBY)  # type: ignore[arg-type]
            if len(sock.sent) > before:
                answered += 1
                assert standby.on_reply(sock.sent[-1][0], A, clock[0])
    assert answered == 100
    assert responder.rejected == 1000 and responder.dropped == 0 and responder.replies == 100
    assert standby.armed and not standby.unreachable("node-a", clock[0])
    # the leader's view of the standby is the standby's own: not gated, heard it lead
    confirmation = responder.confirmations()["node-b"]
    assert confirmation.gated is False and confirmation.address == STANDBY[0]
    assert confirmation.at >= clock[0] - 0.1


def test_without_a_key_the_same_flood_silences_the_leader() -> None:
    """What authentication is for: unauthenticated, the spoofed probes spend the budget."""
    clock = [0.0]
    responder = HeartbeatResponder("node-a", lambda: True, clock=lambda: clock[0])
    sock = FakeSocket()
    reals = real_probes(100, key=None)
    answered = 0
    for i in range(1000):
        clock[0] = i * 0.005
        responder._on_probe(sock, make_probe(f"{i:016x}"), STANDBY)  # type: ignore[arg-type]
        if i % 10 == 0:
            before = len(sock.sent)
            responder._on_probe(sock, reals[i // 10], STANDBY)  # type: ignore[arg-type]
            answered += len(sock.sent) - before
    assert answered < 100  # real probes went unanswered: the standby hears a silent leader


def test_replayed_probes_are_rejected_before_the_budget() -> None:
    """A recorded real probe sent again (e.g. an old one saying "gated") is dropped: its seq
    is not above the newest accepted from that prober; it neither spends the budget nor
    changes what the leader knows of the standby."""
    clock = [0.0]
    responder = HeartbeatResponder("node-a", lambda: True, rate=5, clock=lambda: clock[0], key=KEY)
    sock = FakeSocket()
    seqs = iter(range(1, 100))
    health = PeerHealth(identity="node-b", key=KEY, wall_ns=lambda: next(seqs))
    health.target("node-a", A)
    health.gated = True
    old_gated = health.next_probe(0.0)
    responder._on_probe(sock, old_gated, STANDBY)  # type: ignore[arg-type]
    assert health.on_reply(sock.sent[-1][0], A, 0.0)  # now the ack
    health.gated = False
    responder._on_probe(sock, health.next_probe(0.0), STANDBY)  # type: ignore[arg-type]
    assert responder.confirmations()["node-b"].gated is False
    for _ in range(1000):
        responder._on_probe(sock, old_gated, STANDBY)  # type: ignore[arg-type]
    assert responder.rejected == 1000 and len(sock.sent) == 2
    assert responder.confirmations()["node-b"].gated is False
    responder._on_probe(sock, health.next_probe(0.0), STANDBY)  # type: ignore[arg-type]
    assert len(sock.sent) == 3  # the budget (5) was not spent by the replays
    # a prober silent for FORGET_AFTER is forgotten (its clock may have stepped back)
    clock[0] = FORGET_AFTER + 1
    behind = PeerHealth(identity="node-b", key=KEY, wall_ns=lambda: 0)
    behind.target("node-a", A)
    responder._on_probe(sock, behind.next_probe(0.0), STANDBY)  # type: ignore[arg-type]
    assert len(sock.sent) == 4


def test_without_a_key_probes_are_answered_unchecked() -> None:
    responder = HeartbeatResponder("node-a", lambda: True, clock=lambda: 0.0)
    sock = FakeSocket()
    for probe in (*real_probes(2, key=None), real_probes(1)[0], make_probe(NONCE)):
        responder._on_probe(sock, probe, STANDBY)  # type: ignore[arg-type]
    assert len(sock.sent) == 4 and responder.rejected == 0
    assert all(data.endswith(b" -") for data, _ in sock.sent)


# -- the standby: forged replies ---------------------------------------------------------------


def test_peer_health_rejects_forged_replies() -> None:
    rejects: list[tuple[str, str]] = []
    health = PeerHealth(
        timeout=0.4, arm_after=0, identity="node-b", key=KEY, on_reject=lambda *r: rejects.append(r)
    )
    health.target("node-a", A)
    probe = parse_probe_full(health.next_probe(0.0))
    assert probe is not None
    for forged in (
        make_reply(probe.nonce, "node-a", True),  # no MAC (a spoofer who saw the nonce)
        make_reply(probe.nonce, "node-a", True, OTHER_KEY),
        replace_field(make_reply(probe.nonce, "node-a", False, KEY), 3, b"1"),  # flag flipped
    ):
        assert not health.on_reply(forged, A, 0.0)
    assert health.rejected == 3 and rejects == [("mac", "10.0.0.1")] * 3
    assert health.last_ok is None and not health.armed
    assert health.on_reply(make_reply(probe.nonce, "node-a", True, KEY), A, 0.0)
    assert health.armed and health.last_ok == 0.0
    # "not leading", forged: the armed standby must not take over on it
    probe = parse_probe_full(health.next_probe(0.1))
    assert probe is not None
    assert not health.on_reply(make_reply(probe.nonce, "node-a", False), A, 0.1)
    assert not health.disowned and not health.unreachable("node-a", 0.1)


def test_probe_seq_increases_even_when_the_wall_clock_does_not() -> None:
    health = PeerHealth(identity="node-b", key=KEY, wall_ns=lambda: 1000)
    health.target("node-a", A)
    seqs = [parse_probe_full(health.next_probe(0.0)).seq for _ in range(3)]  # type: ignore[union-attr]
    assert seqs == [1000, 1001, 1002]


# -- over loopback UDP -------------------------------------------------------------------------


async def wait_for(predicate: Any, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_keyed_monitor_and_responder_arm_and_another_key_never_does() -> None:
    responder = HeartbeatResponder("node-a", lambda: True, host="127.0.0.1", port=0, key=KEY)
    await responder.start()
    good = HeartbeatMonitor(interval=0.02, timeout=0.1, arm_after=0.05, identity="b", key=KEY)
    bad = HeartbeatMonitor(interval=0.02, timeout=0.1, arm_after=0.05, identity="c", key=OTHER_KEY)
    await good.start()
    await bad.start()
    try:
        good.set_target("node-a", responder.address)
        bad.set_target("node-a", responder.address)
        await wait_for(lambda: good.health.armed)
        await wait_for(lambda: responder.rejected >= 3)
        assert not bad.health.armed and bad.replies == 0
        assert set(responder.confirmations()) == {"b"}
    finally:
        responder.close()
        await good.close()
        await bad.close()


# -- the key file and the agent's wiring -------------------------------------------------------


def test_load_key(tmp_path: Any) -> None:
    path = tmp_path / "key"
    assert peer_mod.load_key("") is None
    assert peer_mod.load_key(str(path)) is None  # missing at the default: unauthenticated
    with pytest.raises(ValueError, match="does not exist"):
        peer_mod.load_key(str(path), required=True)
    path.write_bytes(b"short")
    with pytest.raises(ValueError, match="at least 16"):
        peer_mod.load_key(str(path))
    path.write_bytes(KEY)
    assert peer_mod.load_key(str(path)) == KEY
    with pytest.raises(ValueError, match="cannot read"):
        peer_mod.load_key(str(tmp_path))  # a directory


def test_agent_key_file_option_and_loading(tmp_path: Any) -> None:
    from lvs_operator.api import contract
    from lvs_operator.director.main import load_peer_key, parse_args

    base = {"NODE_NAME": "n", "POD_NAMESPACE": "ns", "LVS_DIRECTOR_GROUP": "g"}
    cfg = parse_args([], base)
    assert cfg.peer_key_file == contract.DEFAULT_PEER_KEY_FILE == "/etc/lvs-operator/peer/key"
    path = tmp_path / "key"
    path.write_bytes(KEY)
    cfg = parse_args([], {**base, "LVS_PEER_KEY_FILE": str(path)})
    assert cfg.peer_key_file == str(path) and load_peer_key(cfg) == KEY
    cfg = parse_args(["--peer-key-file", str(tmp_path / "missing")], base)
    with pytest.raises(ValueError, match="does not exist"):
        load_peer_key(cfg)  # named explicitly: must exist
    cfg = parse_args(["--peer-port", "0", "--peer-key-file", str(tmp_path / "missing")], base)
    assert load_peer_key(cfg) is None  # no heartbeat, no key needed


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def heartbeat(key: bytes | None) -> tuple[Any, Any]:
    """The agent's heartbeat wiring (heartbeat.py) on loopback, with its metrics."""
    from lvs_operator.director.heartbeat import Heartbeat
    from lvs_operator.director.metrics import Metrics

    elector = SimpleNamespace(wake=lambda: None, serving=True)
    metrics = Metrics("g1")

    async def node_address(*_: Any) -> str | None:
        return None

    hb = Heartbeat(
        "node-a", free_udp_port(), 0.02, 0.1, "127.0.0.1", elector,  # type: ignore[arg-type]
        metrics, node_address, key=key, key_file="/etc/lvs-operator/peer/key",
    )  # fmt: skip
    return hb, metrics


def unauthenticated_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "NOT authenticated" in r.getMessage()]


async def test_no_key_warns_once_and_still_answers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    hb, _ = heartbeat(None)
    await hb.start()
    try:
        assert hb.responder is not None and hb.responder.address is not None
        (record,) = unauthenticated_warnings(caplog)
        assert record.levelno == logging.WARNING
        message = record.getMessage()
        assert "/etc/lvs-operator/peer/key" in message and "LVS_PEER_KEY_FILE" in message
        assert "spoof" in message and "Secret" in message
        monitor = HeartbeatMonitor(interval=0.02, timeout=0.1, arm_after=0.05, identity="b")
        await monitor.start()
        try:
            monitor.set_target("node-a", ("127.0.0.1", hb.responder.address[1]))
            await wait_for(lambda: monitor.health.armed)  # unauthenticated still works
        finally:
            await monitor.close()
        assert len(unauthenticated_warnings(caplog)) == 1
    finally:
        await hb.close()


async def test_with_a_key_no_warning_and_rejections_are_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    hb, metrics = heartbeat(KEY)
    await hb.start()
    try:
        assert unauthenticated_warnings(caplog) == []
        assert hb.responder is not None and hb.responder.address is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for i in range(5):
                probe = make_probe(f"{i:016x}", "x", None, False, i)
                sock.sendto(probe, ("127.0.0.1", hb.responder.address[1]))
            await wait_for(lambda: hb.responder.rejected == 5)
        text = metrics.render().decode()
        assert 'lvs_director_peer_rejected_total{group="g1",reason="mac"} 5.0' in text
        warnings = [r for r in caplog.records if "heartbeat messages rejected" in r.getMessage()]
        assert len(warnings) == 1  # the first at once, then at most one a minute
    finally:
        await hb.close()
