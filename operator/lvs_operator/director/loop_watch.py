"""How late the event loop runs: the agent's stall monitor.

The loop runs the election (Lease renewals, the step-down deadline) beside everything else:
anything that holds it (a big table built on it, a long garbage collection, a blocking call)
delays a step-down, and a stall of about half a second can leave two VIP holders. A callback
is scheduled every ``interval`` seconds; how late it runs is the stall. Every stall goes to
the ``lvs_director_event_loop_stall_seconds`` histogram, the longest since start to the
``lvs_director_event_loop_longest_stall_seconds`` gauge, and one above ``threshold`` is
logged as a warning, at most once per ``warn_every`` seconds (the warning counts the others).

``LoopWatch.tick`` is the arithmetic, on an injected clock (unit-tested); ``run`` the task.

``StallSampler`` says where a stall came from: a thread of its own looks every ``interval``,
and while the loop's last look is overdue by ``threshold`` it takes, once per stall, each
thread's innermost frames (``sys._current_frames``). The stall's warning carries them:
``loop_in`` (where the loop was) and ``threads`` (the others). A stall of the whole process
(the guest descheduled) shows the loop where it always is, in its selector.

``GcWatch`` times the garbage collector (``gc.callbacks``): a collection holds the GIL, so it
stalls the loop whatever thread triggered it, and a full one walks every tracked object (at
1,000 services x 10 destinations, seconds under the test VM's emulation). Each pause goes to
``lvs_director_gc_pause_seconds{generation}``; a stall warning names the longest collection
since the previous look, so a stall can be told from a collection.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from .metrics import Metrics

log = logging.getLogger("lvs_operator.director.loop_watch")

INTERVAL = 0.05  # seconds between looks
THRESHOLD = 0.25  # a stall this long is logged (half of a step-down margin)
WARN_EVERY = 10.0  # seconds, at most one warning


class GcWatch:
    """The garbage collector's pauses, from ``gc.callbacks`` (``install``/``uninstall``).

    The callback runs inside the collection: it only records (no logging, no allocation
    beyond a float), and ``take`` hands the longest pause since the last take to the stall
    warning."""

    def __init__(
        self, metrics: Metrics | None = None, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.metrics = metrics
        self.clock = clock
        self.longest = 0.0  # seconds, since start
        self.collections = 0
        self._started: float | None = None
        self._pending: tuple[float, int] | None = None  # (longest pause, its generation)

    def callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self.clock()
            return
        started, self._started = self._started, None
        if started is None:
            return
        pause = self.clock() - started
        generation = int(info.get("generation", -1))
        self.collections += 1
        if self.metrics is not None:
            self.metrics.gc_pause.labels(self.metrics.group, str(generation)).observe(pause)
        if pause > self.longest:
            self.longest = pause
            if self.metrics is not None:
                self.metrics.gc_longest_pause.set(pause)
        if self._pending is None or pause > self._pending[0]:
            self._pending = (pause, generation)

    def take(self) -> tuple[float, int] | None:
        """The longest pause (seconds, generation) since the last take, if any."""
        pending, self._pending = self._pending, None
        return pending

    def install(self) -> None:
        if self.callback not in gc.callbacks:
            gc.callbacks.append(self.callback)

    def uninstall(self) -> None:
        if self.callback in gc.callbacks:
            gc.callbacks.remove(self.callback)


STACK_DEPTH = 8  # innermost frames kept per thread (a lazy import: its module and importer)


def stack_text(frame: FrameType | None, depth: int = STACK_DEPTH) -> str:
    """``file:line function`` of the innermost ``depth`` frames, innermost first; the import
    machinery's frames left out (an import shows as the module's own code and its importer)."""
    parts: list[str] = []
    while frame is not None and len(parts) < depth:
        code = frame.f_code
        if not code.co_filename.startswith("<frozen importlib"):
            name = code.co_filename.rsplit("/", 1)[-1]
            parts.append(f"{name}:{frame.f_lineno} {code.co_name}")
        frame = frame.f_back
    return " < ".join(parts)


class StallSampler:
    """Each thread's innermost frames, taken while the loop is overdue (see the module)."""

    def __init__(self, threshold: float = THRESHOLD, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.threshold, self.interval, self.clock = threshold, interval, clock
        self.last = clock()  # the loop's last look
        self.loop_thread: int | None = None
        self._sample: dict[str, object] | None = None
        self._stop = threading.Event()

    def beat(self) -> None:
        """The loop looked (LoopWatch.tick): a later stall is a new one."""
        self.last = self.clock()

    def look(self) -> None:
        """One look: the frames, if the loop is overdue and this stall has none yet."""
        if self._sample is None and self.clock() - self.last >= self.threshold:
            self._sample = self.frames()

    def frames(self) -> dict[str, object]:
        names = {t.ident: t.name for t in threading.enumerate()}
        me = threading.get_ident()
        loop_in, threads = "", {}
        for ident, frame in sys._current_frames().items():
            if ident == me:
                continue
            if ident == self.loop_thread:
                loop_in = stack_text(frame)
            else:
                threads[names.get(ident, str(ident))] = stack_text(frame)
        return {"loop_in": loop_in, "threads": threads}

    def take(self) -> dict[str, object] | None:
        """The last stall's frames (None: none taken), once."""
        sample, self._sample = self._sample, None
        return sample

    def start(self) -> None:
        """From the loop's thread: look every ``interval`` on a daemon thread until stop."""
        self.loop_thread = threading.get_ident()
        self.beat()
        threading.Thread(target=self._run, name="stall-sampler", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.look()


class LoopWatch:
    def __init__(
        self,
        metrics: Metrics | None = None,
        interval: float = INTERVAL,
        threshold: float = THRESHOLD,
        warn_every: float = WARN_EVERY,
        clock: Callable[[], float] = time.monotonic,
        gc_watch: GcWatch | None = None,
        sampler: StallSampler | None = None,
    ) -> None:
        self.metrics = metrics
        self.gc_watch = gc_watch
        self.sampler = sampler
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
        collection = self.gc_watch.take() if self.gc_watch is not None else None
        sample = None
        if self.sampler is not None:
            sample = self.sampler.take()
            self.sampler.beat()
        if self.metrics is not None:
            self.metrics.loop_stall.observe(stall)
        if stall > self.longest:
            self.longest = stall
            if self.metrics is not None:
                self.metrics.loop_longest_stall.set(stall)
        if stall >= self.threshold:
            self.over += 1
            if self._last_warning is None or now - self._last_warning >= self.warn_every:
                self._warn(stall, now, collection, sample)
            else:
                self._unwarned += 1
                self._unwarned_longest = max(self._unwarned_longest, stall)
        return stall

    def _warn(self, stall: float, now: float, collection: tuple[float, int] | None,
              sample: dict[str, object] | None = None) -> None:  # fmt: skip
        extra: dict[str, object] = {"stall_seconds": round(stall, 3)}
        if sample is not None:  # where the threads were during it (StallSampler)
            extra.update(sample)
        if collection is not None:  # the longest garbage collection during this stall
            extra["gc_seconds"] = round(collection[0], 3)
            extra["gc_generation"] = collection[1]
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
        """Look every ``interval`` seconds until cancelled (the sampler with it)."""
        if self.sampler is not None:
            self.sampler.start()
        try:
            while True:
                due = self.due()
                await asyncio.sleep(self.interval)
                self.tick(due)
        finally:
            if self.sampler is not None:
                self.sampler.stop()
