"""The agent's HTTP endpoints (director/endpoints.py)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest

from lvs_operator.director.endpoints import serve


async def get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


async def test_a_slow_metrics_render_does_not_stall_the_event_loop() -> None:
    """/metrics at scale takes most of a second to render (bench/scrape_cost.py): it runs on
    a thread, and the loop (elections, VIPs) keeps its pace meanwhile."""
    rendered_on: list[str] = []

    def metrics() -> bytes:
        rendered_on.append(threading.current_thread().name)
        time.sleep(0.3)  # a big render (it holds the GIL in slices; sleep releases it)
        return b"lvs_director_leader 1\n"

    assert await serve(0, 0, lambda: True, metrics) == []  # both ports 0: nothing served
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # a free port
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    servers = await serve(0, port, lambda: True, metrics)
    try:
        loop = asyncio.get_running_loop()
        longest, last = 0.0, loop.time()

        async def ticker() -> None:
            nonlocal longest, last
            while True:
                await asyncio.sleep(0.01)
                now = loop.time()
                longest, last = max(longest, now - last), now

        tick = asyncio.create_task(ticker())
        body = await get(port, "/metrics")
        tick.cancel()
        assert b"200 OK" in body and body.endswith(b"lvs_director_leader 1\n")
        assert rendered_on and rendered_on[0] != threading.main_thread().name
        assert longest < 0.15, longest
        assert b"404" in await get(port, "/nothing")
    finally:
        for s in servers:
            s.close()


async def test_metrics_in_chunks_are_written_whole_with_their_length() -> None:
    """/metrics at scale is rendered a family at a time (metrics.py): the chunks go out one
    after the other, under one Content-Length."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # a free port
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    chunks = [b"# TYPE a gauge\na 1.0\n", b"# TYPE b gauge\nb 2.0\n"]
    servers = await serve(0, port, lambda: True, lambda: chunks)
    try:
        answer = await get(port, "/metrics")
    finally:
        for s in servers:
            s.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert body == b"".join(chunks)
    assert f"Content-Length: {len(body)}".encode() in head


async def test_a_big_chunk_goes_out_whole_in_slices() -> None:
    """A family of MBs is written in slices, each drained (one write of it all held the loop
    ~0.3 s under TCG); the body arrives whole and in order."""
    from lvs_operator.director import endpoints

    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # a free port
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    big = bytes(range(256)) * (3 * endpoints.WRITE_SLICE // 256 + 7)  # 3 slices and a part
    chunks = [b"head\n", big, b"tail\n"]
    servers = await serve(0, port, lambda: True, lambda: chunks)
    try:
        answer = await get(port, "/metrics")
    finally:
        for s in servers:
            s.close()
    _, _, body = answer.partition(b"\r\n\r\n")
    assert body == b"".join(chunks)


async def test_the_loop_gets_a_turn_after_each_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    """While the socket takes every slice (drain returns at once), the loop still runs its
    other work between two slices: the scrape's slices held it ~0.3-0.5 s under TCG."""
    from lvs_operator.director import endpoints

    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # a free port
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    slices = 16
    big = b"x" * (slices * endpoints.WRITE_SLICE)
    servers = await serve(0, port, lambda: True, lambda: [big])
    turns = 0
    seen: list[int] = []  # the spinner's turns at each slice's write
    write = asyncio.StreamWriter.write

    def spied(self: asyncio.StreamWriter, data: bytes | bytearray | memoryview) -> None:
        if len(data) == endpoints.WRITE_SLICE:
            seen.append(turns)
        write(self, data)

    monkeypatch.setattr(asyncio.StreamWriter, "write", spied)

    async def spinner() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    spin = asyncio.create_task(spinner())
    try:
        answer = await get(port, "/metrics")
    finally:
        spin.cancel()
        for s in servers:
            s.close()
    assert answer.endswith(big)
    assert len(seen) == slices
    assert all(b > a for a, b in itertools.pairwise(seen)), seen
