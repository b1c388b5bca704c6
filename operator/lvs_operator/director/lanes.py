"""Threads for blocking kernel calls.

Netlink calls block and each socket serves one request at a time: IPVS calls run on one
lane, address calls on another, so a VIP change never waits behind a long IPVS converge.
"""

from __future__ import annotations

import asyncio
import functools
import time
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
        self._ordered = threads == 1
        # a one-thread lane's call now running: its name and start (monotonic), so that a
        # call that waited long in line can say behind what (``running``)
        self._running: tuple[str, float] | None = None

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._tracked(fn, *args, **kwargs))

    def call(self, fn: Callable[[], T]) -> T:
        """From a thread (or before the event loop runs: e.g. open a socket on the thread
        that will use it); blocks until ``fn`` has run on the lane."""
        return self.executor.submit(self._tracked(fn)).result()

    def running(self) -> tuple[str, float] | None:
        """What a one-thread lane runs now and for how many seconds so far (None: idle, or
        a lane of several threads)."""
        running = self._running
        if running is None:
            return None
        name, since = running
        return name, time.monotonic() - since

    def _tracked(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Callable[[], T]:
        if not self._ordered:
            return lambda: fn(*args, **kwargs)
        name = call_name(fn)

        def job() -> T:
            self._running = (name, time.monotonic())
            try:
                return fn(*args, **kwargs)
            finally:
                self._running = None

        return job


def call_name(fn: Callable[..., object]) -> str:
    """A readable name for a lane's call: ``VipManager.add_many``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__qualname__", None) or type(fn).__name__
