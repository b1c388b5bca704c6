"""How late the event loop runs: the agent's stall monitor.

The loop runs the election (Lease renewals, the step-down deadline) beside everything else:
anything that holds it (a big table built on it, a long garbage collection, a blocking call)
delays a step-down, and a stall of about half a second can leave two VIP holders. A callback
is scheduled every ``interval`` seconds; how late it runs is the stall. Every stall goes to
the ``lvs_director_event_loop_stall_seconds`` histogram, the longest since start to the
``lvs_director_event_loop_longest_stall_seconds`` gauge, and one above ``threshold`` is
logged as a warning, at most once per ``warn_every`` seconds (the warning counts the others).

``LoopWatch.tick`` is the arithmetic, on an injected clock (unit-tested); ``run`` the task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .metrics import Metrics

log = logging.getLogger("lvs_operator.director.loop_watch")

INTERVAL = 0.05  # seconds between looks
THRESHOLD = 0.25  # a stall this long is logged (half of a step-down margin)
WARN_EVERY = 10.0  # seconds, at most one warning


class LoopWatch:
    def __init__(
        self,
        metrics: Metrics | None = None,
        interval: float = INTERVAL,
        threshold: float = THRESHOLD,
        warn_every: float = WARN_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.interval = interval
        self.threshold = threshold
        self.warn_every = warn_every
        self.clock = clock
        self.longest = 0.0  # seconds, since start
        self.ticks = 0
        self.over = 0  # stalls above the threshold, since start
        self._last_warning: float | None = None
        self._unwarned = 0  # stalls above the threshold not logged (rate limit)
        self._unwarned_longest = 0.0

    def due(self) -> float:
        """When the next look is due (the clock's now plus the interval)."""
        return self.clock() + self.interval

    def tick(self, due: float) -> float:
        """The look that was due at ``due`` runs now: its lateness (the stall), recorded."""
        now = self.clock()
        stall = max(0.0, now - due)
        self.ticks += 1
        if self.metrics is not None:
            self.metrics.loop_stall.observe(stall)
        if stall > self.longest:
            self.longest = stall
            if self.metrics is not None:
                self.metrics.loop_longest_stall.set(stall)
        if stall >= self.threshold:
            self.over += 1
            if self._last_warning is None or now - self._last_warning >= self.warn_every:
                self._warn(stall, now)
            else:
                self._unwarned += 1
                self._unwarned_longest = max(self._unwarned_longest, stall)
        return stall

    def _warn(self, stall: float, now: float) -> None:
        extra: dict[str, object] = {"stall_seconds": round(stall, 3)}
        if self._unwarned:
            extra["unlogged_stalls"] = self._unwarned
            extra["unlogged_longest_seconds"] = round(self._unwarned_longest, 3)
        log.warning(
            "event loop stalled for %.3f s (Lease renewals and step-down wait meanwhile)",
            stall,
            extra=extra,
        )
        self._last_warning = now
        self._unwarned = 0
        self._unwarned_longest = 0.0

    async def run(self) -> None:
        """Look every ``interval`` seconds until cancelled."""
        while True:
            due = self.due()
            await asyncio.sleep(self.interval)
            self.tick(due)
