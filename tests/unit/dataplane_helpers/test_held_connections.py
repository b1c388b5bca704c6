"""tests/dataplane/held_connections.py's verdict: which connections survived an event."""

from __future__ import annotations

from typing import Any

from tests.dataplane.held_connections import survival

AT = 100.0  # the event (a crash)


def row(port: int, answers: list[float], broken: str | None = None) -> dict[str, Any]:
    return {"port": port, "servers": ["rs1"], "answers": answers, "broken": broken,
            "broken_at": None if broken is None else answers[-1]}  # fmt: skip


def test_a_slow_exit_of_the_client_does_not_count_live_connections_as_broken() -> None:
    # all answered up to 106.0; the client wrote its "end" 1.5 s later (sockets closed)
    rows = [row(1, [99.9, 101.2, 106.0]), row(2, [99.8, 101.5, 105.9])]
    stats = survival(rows, AT, end=107.5)
    assert stats["survived"] == 2 and stats["broken"] == []
    assert stats["max_stall"] == 1.7  # 101.5 - 99.8


def test_a_connection_stalled_since_the_event_did_not_survive() -> None:
    rows = [row(1, [99.9, 101.2, 106.0]), row(2, [99.8])]
    stats = survival(rows, AT, end=106.2)
    assert stats["survived"] == 1
    assert stats["broken"] == [{"port": 2, "servers": ["rs1"], "broken": None, "after": None,
                                "last": -0.2, "answers_after": 0}]  # fmt: skip


def test_a_connection_that_stopped_answering_later_did_not_survive() -> None:
    rows = [row(1, [99.9, 101.2, 106.0]), row(2, [99.8, 101.0, 102.0])]
    assert survival(rows, AT, end=106.2)["survived"] == 1


def test_when_every_connection_stalled_at_the_event_none_survived() -> None:
    rows = [row(1, [99.9]), row(2, [99.8])]  # the latest answer is before the event
    assert survival(rows, AT, end=106.0)["survived"] == 0


def test_a_reset_connection_did_not_survive() -> None:
    rows = [row(1, [99.9, 101.2, 106.0]), row(2, [99.8, 101.0], broken="recv: reset")]
    stats = survival(rows, AT, end=106.2)
    assert stats["survived"] == 1 and stats["broken"][0]["after"] == 1.0
