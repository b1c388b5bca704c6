"""The agent's HTTP endpoints: ``/healthz`` and ``/readyz`` on ``LVS_HEALTH_PORT``,
``/metrics`` on ``LVS_METRICS_PORT`` (0: that port off).

A tiny HTTP/1.0 GET server: no web framework in the agent's memory budget.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence

from .lanes import Lane

# status, body (or its chunks, written one after the other), content type
Response = tuple[int, bytes | Sequence[bytes], str]
Route = Callable[[], Response]

TEXT = "text/plain"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
REASONS = {200: "OK", 404: "Not Found", 503: "Service Unavailable", 400: "Bad Request"}
# the routes run here, not in asyncio's default executor: /healthz must answer while the
# VIP announcements fill that one (lanes.py)
HTTP_LANE = Lane("http", threads=2)
WRITE_SLICE = 1 << 16  # bytes written to the socket between two turns of the loop


def handler(
    routes: Mapping[str, Route],
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            parts = line.decode("latin-1").split()
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            answer: Response
            if len(parts) < 2:
                answer = 400, b"bad request\n", TEXT
            else:
                route = routes.get(parts[1].split("?", 1)[0])
                # off the event loop: /metrics at 1,000 x 10 renders ~75,000 series (0.7 s
                # here: bench/scrape_cost.py) and reads the kernel's connection table
                answer = await HTTP_LANE.run(route) if route else (404, b"not found\n", TEXT)
            status, body, ctype = answer
            chunks = [body] if isinstance(body, bytes) else body
            head = (
                f"HTTP/1.0 {status} {REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {sum(len(c) for c in chunks)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode())
            for chunk in chunks:  # not joined: /metrics at scale is ~11 MB
                # in slices, each drained, with a turn of the loop after each: one write of
                # a family's MBs held the loop ~0.3 s under TCG, and so did the slices
                # while the socket took them all (drain returns at once then; each send
                # waits for the GIL again, behind the threads parsing netlink dumps)
                view = memoryview(chunk)
                for start in range(0, len(view), WRITE_SLICE):
                    writer.write(view[start : start + WRITE_SLICE])
                    await writer.drain()
                    await asyncio.sleep(0)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return handle


async def serve(
    health_port: int,
    metrics_port: int,
    ready: Callable[[], bool],
    metrics: Callable[[], bytes | Sequence[bytes]],
) -> list[asyncio.Server]:
    """Start the endpoints; both on one port when the ports are equal."""

    def readyz() -> Response:
        if ready():
            return 200, b"ok\n", TEXT
        return 503, b"not ready: waiting for the initial lists and the first converge\n", TEXT

    routes: dict[int, dict[str, Route]] = {}
    if health_port:
        routes.setdefault(health_port, {}).update(
            {"/healthz": lambda: (200, b"ok\n", TEXT), "/readyz": readyz}
        )
    if metrics_port:
        routes.setdefault(metrics_port, {})["/metrics"] = lambda: (200, metrics(), PROMETHEUS)
    return [
        await asyncio.start_server(handler(table), None, port) for port, table in routes.items()
    ]
