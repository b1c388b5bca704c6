"""Threads for blocking kernel calls.

Netlink calls block and each socket serves one request at a time: IPVS calls run on one
lane, address calls on another, so a VIP change never waits behind a long IPVS converge.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Lane:
    """One thread; calls run on it one after the other, in order. ``threads`` > 1: a pool
    of its own (no order), so its work never waits behind another's: asyncio's default
    executor has only CPUs + 4 threads (6 on a 2-core node), and at 1,000 VIPs the
    announcements (each sleeping between its rounds) filled it, leaving a converge's steps,
    the probes and /healthz waiting in line."""

    def __init__(self, name: str, threads: int = 1) -> None:
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix=name)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    def call(self, fn: Callable[[], T]) -> T:
        """Before the event loop runs: e.g. open a socket on the thread that will use it."""
        return self.executor.submit(fn).result()
