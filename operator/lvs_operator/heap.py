"""Handing freed heap back to the operating system (glibc's ``malloc_trim``).

A full planning pass over thousands of objects, or the events of thousands of pods, leave
much of the C heap free but held by the process (glibc returns only the top of its heap by
itself). ``malloc_trim(0)`` releases the free pages; it changes no live object. On C
libraries without it (musl, macOS) trimming does nothing, said once in the log.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
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
