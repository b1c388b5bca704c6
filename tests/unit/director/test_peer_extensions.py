"""Heartbeat extension fields (peer.py, "Extension fields"): a newer agent's fields are
ignored by one that does not know them, a known field that is malformed drops the message,
and the ``sync=`` field round-trips."""

from __future__ import annotations

from typing import Any

import pytest

from lvs_operator.director.peer import (
    MAX_DATAGRAM,
    HeartbeatResponder,
    Probe,
    SyncReport,
    make_probe,
    make_reply,
    parse_probe_full,
    parse_reply,
    verify,
)

KEY = bytes(range(32))
NONCE = "0123456789abcdef"
ACK = "fedcba9876543210"


def with_fields(message: bytes, fields: bytes, key: bytes | None = None) -> bytes:
    """``message`` with ``fields`` inserted before its mac, signed again (as the newer
    agent that sends them would sign it)."""
    import hmac

    text = message.rpartition(b" ")[0] + b" " + fields
    kind = b"reply" if len(message.split(b" ")) == 5 else b"probe"
    if key is None:
        return text + b" -"
    mac = hmac.digest(key, kind + b" " + text, "sha256")[:16].hex().encode()
    return text + b" " + mac


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any) -> int:
        self.sent.append((data, addr))
        return len(data)


def test_unknown_probe_fields_are_ignored_and_covered_by_the_mac() -> None:
    base = make_probe(NONCE, "node-b", ACK, gated=True, seq=7, key=KEY)
    newer = with_fields(base, b"zz=1 future=a,b,c empty=", KEY)
    assert parse_probe_full(newer) == parse_probe_full(base) == Probe(NONCE, "node-b", ACK, True, 7)
    assert verify("probe", newer, KEY)
    # the mac covers the extension fields: changed in flight, the probe is not verified
    assert not verify("probe", newer.replace(b"zz=1", b"zz=2"), KEY)


def test_unknown_reply_fields_are_ignored() -> None:
    base = make_reply(NONCE, "node-a", True, KEY)
    newer = with_fields(base, b"load=3", KEY)
    assert parse_reply(newer) == (NONCE, "node-a", True)
    assert verify("reply", newer, KEY)


@pytest.mark.parametrize(
    "fields",
    [
        b"sync=garbage",  # a known field, malformed
        b"sync=backup,300,eth0,0,-",  # sync id beyond 8 bits
        b"sync=backup,12,eth0,x,-",
        b"sync=leader,12,eth0,0,-",  # no such role
        b"sync=backup,12,an-interface-too-long,0,-",
        b"zz",  # not name=value
        b"Zz=1",  # names are lower case
        b"zz=1  yy=2",  # an empty token
    ],
)
def test_malformed_fields_drop_the_probe(fields: bytes) -> None:
    message = with_fields(make_probe(NONCE, "node-b", ACK, seq=7), fields)
    assert parse_probe_full(message) is None


@pytest.mark.parametrize("fields", [b"zz", b"zz=1  yy=2", b"zz=\xc3\xa9"])
def test_malformed_fields_drop_the_reply(fields: bytes) -> None:
    assert parse_reply(with_fields(make_reply(NONCE, "node-a", True), fields)) is None


def test_the_datagram_bound_still_holds() -> None:
    probe = make_probe(NONCE, "node-b", ACK, seq=7)
    filler = b"zz=" + b"x" * (MAX_DATAGRAM - len(probe) - 3)  # one byte over
    assert len(with_fields(probe, filler)) == MAX_DATAGRAM + 1
    assert parse_probe_full(with_fields(probe, filler)) is None
    assert parse_probe_full(with_fields(probe, filler[:-1])) is not None


def test_known_fields_stay_strict_with_extensions() -> None:
    probe = with_fields(make_probe(NONCE, "node-b", ACK, seq=7), b"zz=1")
    parts = probe.split(b" ")
    parts[4] = b"2"  # the gate flag
    assert parse_probe_full(b" ".join(parts)) is None
    # 4 to 6 fields: the known ones incomplete, whatever follows
    assert parse_probe_full(b"LVSHB2 " + NONCE.encode() + b" node-b zz=1 -") is None


def test_sync_report_round_trip() -> None:
    report = SyncReport("backup", 12, "eth0", 42, 3)
    probe = make_probe(NONCE, "node-b", ACK, seq=7, key=KEY, sync=report)
    assert b" sync=backup,12,eth0,42,3 " in probe
    assert verify("probe", probe, KEY)
    parsed = parse_probe_full(probe)
    assert parsed is not None and parsed.sync == report
    never = SyncReport("off")
    assert SyncReport.decode(never.encode()) == never
    assert never.encode() == b"off,0,,0,-"
    with pytest.raises(ValueError):
        SyncReport("backup", 12, "eth 0").encode()
    # figures beyond the wire's ten digits are capped, not refused
    assert SyncReport.decode(SyncReport("backup", 1, "e", 10**12, 10**12).encode()) == (
        SyncReport("backup", 1, "e", 10**10 - 1, 10**10 - 1)
    )


def test_a_responder_answers_and_confirms_a_newer_standbys_probe() -> None:
    """The rolling-update case: this version's leader, a newer standby's probe with a
    field it does not know: answered, and its ack counts."""
    clock = [10.0]
    responder = HeartbeatResponder("node-a", lambda: True, clock=lambda: clock[0], key=KEY)
    responder._remember(ACK, 9.5)
    sock = FakeSocket()
    probe = with_fields(make_probe(NONCE, "node-b", ACK, seq=7, key=KEY), b"zz=1", KEY)
    responder._on_probe(sock, probe, ("10.0.0.2", 40000))  # type: ignore[arg-type]
    assert len(sock.sent) == 1 and parse_reply(sock.sent[0][0]) == (NONCE, "node-a", True)
    assert responder.confirmations()["node-b"].at == 9.5
    # a malformed known field: dropped, no answer
    bad = with_fields(make_probe(NONCE, "node-b", ACK, seq=8, key=KEY), b"sync=x", KEY)
    responder._on_probe(sock, bad, ("10.0.0.2", 40000))  # type: ignore[arg-type]
    assert len(sock.sent) == 1 and responder.dropped == 1


def test_a_standby_sends_its_sync_state_only_to_a_holder_that_writes_the_record() -> None:
    """The holder's Lease record says whether it understands ``sync=``: it writes the sync
    record naming itself. A record another holder wrote (carried over by an older agent,
    which would drop the probe) or none: no field."""
    from lvs_operator.api.contract import SYNC_ANNOTATION, SyncRecord, format_sync
    from lvs_operator.director.peer import HEARTBEAT_ANNOTATION, HeartbeatMonitor

    monitor = HeartbeatMonitor(identity="node-b")
    report = SyncReport("backup", 12, "eth0", 4, 0)
    monitor.health.sync_report = lambda: report
    address = {HEARTBEAT_ANNOTATION: "10.0.0.1:9643"}

    def probe_after(annotations: dict[str, str]) -> Probe:
        monitor.follow("node-a", annotations, "node-b")
        parsed = parse_probe_full(monitor.health.next_probe(0.0))
        assert parsed is not None
        return parsed

    assert probe_after(address).sync is None
    stale = format_sync(SyncRecord("node-c", {}))
    assert probe_after({**address, SYNC_ANNOTATION: stale}).sync is None
    current = format_sync(SyncRecord("node-a", {}))
    assert probe_after({**address, SYNC_ANNOTATION: current}).sync == report
    # the holder changed to one of an older version: the field stops at once
    monitor.follow("node-c", {**address, SYNC_ANNOTATION: current}, "node-b")
    parsed = parse_probe_full(monitor.health.next_probe(0.0))
    assert parsed is not None and parsed.sync is None


def test_the_responder_keeps_each_standbys_newest_sync_state() -> None:
    clock = [10.0]
    responder = HeartbeatResponder("node-a", lambda: True, clock=lambda: clock[0])
    responder._remember(ACK, 9.5)
    report = SyncReport("backup", 12, "eth0", 0, None)
    responder.note_ack(Probe(NONCE, "node-b", ACK, sync=report), "10.0.0.2")
    assert responder.confirmations()["node-b"].sync == report
    newer = SyncReport("backup", 12, "eth0", 7, 0)
    responder.note_ack(Probe("00000000000000dd", "node-b", None, sync=newer), "10.0.0.2")
    assert responder.confirmations()["node-b"].sync == newer


def test_a_sync_state_the_wire_cannot_carry_never_costs_the_probe() -> None:
    from lvs_operator.director.peer import PeerHealth

    health = PeerHealth(identity="node-b")
    health.target("node-a", ("10.0.0.1", 9643))
    health.extensions = True
    health.sync_report = lambda: SyncReport("backup", 12, "eth,0")  # a comma: no field for it
    parsed = parse_probe_full(health.next_probe(0.0))
    assert parsed is not None and parsed.identity == "node-b" and parsed.sync is None

    def broken() -> SyncReport:
        raise RuntimeError("no state")

    health.sync_report = broken
    parsed = parse_probe_full(health.next_probe(0.0))
    assert parsed is not None and parsed.sync is None
