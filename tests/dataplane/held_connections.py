"""Long-lived connections through a VIP: do established connections survive a crash
failover (connection synchronisation, director/sync.py)?

Run in the client namespace as a process of its own (``Lab.start_held``)::

    python -m tests.dataplane.held_connections --vip V --port P --count 50 --out F

It opens ``count`` keep-alive HTTP connections, then sends a GET on each every
``interval`` seconds (one request outstanding per connection), single-threaded, until
SIGTERM or ``--max-seconds``. A connection that is reset, closed by the other end, or
leaves a request unanswered for ``--stall`` seconds is *broken* and is not used again: a
client of a real service would have to reconnect. The file written at the end holds, per
connection, its local port, the servers that answered, every answer's time, and the break.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.dataplane import topology as t

REQUEST = b"GET / HTTP/1.1\r\nHost: held\r\n\r\n"


def now() -> float:
    return time.monotonic()  # the guest's clock of scenarios_agent (one per VM)


@dataclass
class Held:
    """One connection as the client saw it."""

    port: int
    servers: list[str] = field(default_factory=list)  # each name once, in order
    answers: list[float] = field(default_factory=list)  # when each answer completed
    broken: str | None = None
    broken_at: float | None = None


@dataclass
class _Conn:
    sock: socket.socket
    held: Held
    buf: bytes = b""
    sent_at: float | None = None  # the outstanding request's send time
    next_at: float = 0.0


def _answer(buf: bytes) -> tuple[str, bytes] | None:
    """One complete HTTP answer at the start of ``buf``: (body, the rest), or None."""
    head, sep, rest = buf.partition(b"\r\n\r\n")
    if not sep:
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if len(rest) < length:
        return None
    return rest[:length].decode(errors="replace").strip(), rest[length:]


def hold(vip: str, port: int, count: int, interval: float, stall: float,
         max_seconds: float, started: Path, stop: list[bool]) -> list[Held]:  # fmt: skip
    conns: list[_Conn] = []
    for _ in range(count):
        s = t.connect(None, vip, port, timeout=5.0)
        s.setblocking(False)
        conns.append(_Conn(s, Held(s.getsockname()[1])))
    sel = selectors.DefaultSelector()
    for i, c in enumerate(conns):
        sel.register(c.sock, selectors.EVENT_READ, c)
        c.next_at = now() + interval * i / count  # spread the requests over the interval
    end = now() + max_seconds
    while not stop[0] and now() < end:
        t0 = now()
        for c in conns:
            if c.held.broken is not None:
                continue
            if c.sent_at is None and t0 >= c.next_at:
                try:
                    c.sock.send(REQUEST)
                    c.sent_at = t0
                except OSError as e:
                    _break(sel, c, f"send: {type(e).__name__}: {e}")
            elif c.sent_at is not None and t0 - c.sent_at > stall:
                _break(sel, c, f"no answer for {stall:.0f} s")
        for key, _ in sel.select(timeout=0.01):
            c = key.data
            try:
                data = c.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                _break(sel, c, f"recv: {type(e).__name__}: {e}")
                continue
            if not data:
                _break(sel, c, "closed by the other end")
                continue
            c.buf += data
            got = _answer(c.buf)
            while got is not None:
                name, c.buf = got
                if name not in c.held.servers:
                    c.held.servers.append(name)
                c.held.answers.append(now())
                c.sent_at, c.next_at = None, (c.sent_at or now()) + interval
                got = _answer(c.buf)
        if not started.exists() and all(c.held.answers for c in conns):
            started.write_text(str(now()))  # every connection has answered once
    for c in conns:
        c.sock.close()
    return [c.held for c in conns]


def _break(sel: selectors.BaseSelector, c: _Conn, why: str) -> None:
    c.held.broken, c.held.broken_at = why, now()
    sel.unregister(c.sock)


def survival(rows: list[dict[str, Any]], at: float, end: float) -> dict[str, Any]:
    """Across an event at guest time ``at``: a connection *survived* when it never broke,
    was answered after the event, and was still answering at the end (an answer in the
    last second before the client's last answer on any connection, or before ``end``). For the
    survivors, ``stall``: the longest wait for an answer across the event (what the
    failover cost a client that kept its connection)."""
    survived, broken, stalls = 0, [], []
    # "the end": when the client last made progress, its latest answer on any connection, if
    # before ``end`` (written once it has stopped and closed every socket: over a second
    # after the last answers in a loaded VM, which had counted live connections as broken)
    latest = max((r["answers"][-1] for r in rows if r["answers"]), default=end)
    last_progress = min(end, latest)
    for r in rows:
        answers = r["answers"]
        answered_after = any(a >= at for a in answers)
        if r["broken"] is None and answered_after and answers[-1] >= last_progress - 1.0:
            survived += 1
            before = max((a for a in answers if a < at), default=at)
            after = min((a for a in answers if a >= at), default=None)
            if after is not None:
                stalls.append(after - before)
        else:
            broken.append({"port": r["port"], "servers": r["servers"], "broken": r["broken"],
                           "after": None if r["broken_at"] is None
                           else round(r["broken_at"] - at, 3),
                           # its last answer and how many came after the event: stalled
                           # from the event on, or later
                           "last": round(answers[-1] - at, 3) if answers else None,
                           "answers_after": sum(1 for a in answers if a >= at)})  # fmt: skip
    servers: dict[str, int] = {}
    for r in rows:
        for name in r["servers"][:1]:
            servers[name] = servers.get(name, 0) + 1
    return {
        "connections": len(rows),
        "survived": survived,
        "servers": servers,
        "switched_server": sum(1 for r in rows if len(r["servers"]) > 1),
        "max_stall": round(max(stalls), 3) if stalls else None,
        "broken": broken[:10],
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--vip", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=50)
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--stall", type=float, default=10.0)
    p.add_argument("--max-seconds", type=float, default=180)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    stop = [False]

    def on_term(*_: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_term)
    rows = hold(a.vip, a.port, a.count, a.interval, a.stall, a.max_seconds,
                Path(a.out + ".started"), stop)  # fmt: skip
    tmp = Path(a.out + ".tmp")
    tmp.write_text(json.dumps({"end": now(), "connections": [asdict(h) for h in rows]}))
    os.replace(tmp, a.out)
    return 0


def read(path: str) -> dict[str, Any]:
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else {}  # type: ignore[no-any-return]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
