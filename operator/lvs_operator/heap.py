"""Handing freed heap back to the operating system (glibc's ``malloc_trim``).

A full planning pass over thousands of objects, or the events of thousands of pods, leave
much of the C heap free but held by the process (glibc returns only the top of its heap by
itself). ``malloc_trim(0)`` releases the free pages; it changes no live object. On C
libraries without it (musl, macOS) trimming does nothing, said once in the log.

``limit_arenas`` caps glibc's malloc arenas. By default each thread that allocates can get
an arena of its own (up to 8 per CPU), and each keeps the memory freed in it; the agent's
threads (its lanes, the announcements, the lifetime renewals) each parse netlink answers,
so the freed heap was spread over a dozen arenas.

``fix_mmap_threshold`` keeps glibc's threshold for allocations that get pages of their own
(``mmap``, unmapped when freed) where it starts. glibc raises it to the size of the largest
such block freed so far (up to 32 MiB): after the agent's first big scrape (a /metrics
family of MBs) every later one, and each 1 MiB netlink receive buffer, came from the heap
instead, and the heap stayed fragmented (RSS grew through steady state).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
from collections.abc import Callable

log = logging.getLogger(__name__)

TrimFn = Callable[[int], int]


def load_malloc_trim() -> TrimFn | None:
    """glibc's ``malloc_trim``, or None when the C library is not glibc."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn: TrimFn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return fn


M_ARENA_MAX = -8  # <malloc.h>'s mallopt parameter
ARENA_ENV = "MALLOC_ARENA_MAX"  # glibc's own setting: when set, it wins


def load_mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, or None when the C library is not glibc."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn: Callable[[int, int], int] = libc.mallopt
    except (OSError, AttributeError):
        return None
    return fn


def limit_arenas(
    count: int,
    load: Callable[[], Callable[[int, int], int] | None] = load_mallopt,
    environ: dict[str, str] | None = None,
) -> bool:
    """Cap glibc's malloc arenas at ``count`` (call it before starting threads); False
    where it was not done: not glibc, or ``MALLOC_ARENA_MAX`` set (the user's choice)."""
    if ARENA_ENV in (os.environ if environ is None else environ):
        return False
    mallopt = load()
    return mallopt is not None and bool(mallopt(M_ARENA_MAX, count))


M_MMAP_THRESHOLD = -3  # <malloc.h>'s mallopt parameter
MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"  # glibc's own setting (trailing underscore)


def fix_mmap_threshold(
    size: int,
    load: Callable[[], Callable[[int, int], int] | None] = load_mallopt,
    environ: dict[str, str] | None = None,
) -> bool:
    """Blocks of ``size`` bytes or more always get pages of their own (setting it turns
    glibc's raising of the threshold off); False where it was not done: not glibc, or
    ``MALLOC_MMAP_THRESHOLD_`` set (the user's choice)."""
    if MMAP_THRESHOLD_ENV in (os.environ if environ is None else environ):
        return False
    mallopt = load()
    return mallopt is not None and bool(mallopt(M_MMAP_THRESHOLD, size))


class HeapTrimmer:
    """``trim()`` releases the free heap to the OS; False when nothing was (or could be)."""

    def __init__(self, load: Callable[[], TrimFn | None] = load_malloc_trim) -> None:
        self._load = load
        self._fn: TrimFn | None = None
        self._loaded = False
        self.trims = 0

    @property
    def available(self) -> bool:
        self._ensure()
        return self._fn is not None

    def _ensure(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        self._fn = self._load()
        if self._fn is None:
            log.info(
                "no malloc_trim (the C library is not glibc): heap freed after big passes "
                "stays with the process until reused"
            )

    def trim(self) -> bool:
        self._ensure()
        if self._fn is None:
            return False
        self.trims += 1
        return bool(self._fn(0))
