"""Handing freed heap back to the OS: glibc's malloc_trim, or nothing (said once)."""

from __future__ import annotations

import logging
import platform

import pytest

from lvs_operator.heap import (
    M_ARENA_MAX,
    M_MMAP_THRESHOLD,
    HeapTrimmer,
    fix_mmap_threshold,
    limit_arenas,
    load_malloc_trim,
)


def test_trims_with_the_loaded_function_and_counts() -> None:
    calls: list[int] = []

    def fake_trim(pad: int) -> int:
        calls.append(pad)
        return 1

    trimmer = HeapTrimmer(load=lambda: fake_trim)
    assert trimmer.available
    assert trimmer.trim() is True
    assert trimmer.trim() is True
    assert calls == [0, 0]  # malloc_trim(0): keep no padding
    assert trimmer.trims == 2


def test_the_arenas_are_capped_unless_the_user_set_malloc_arena_max() -> None:
    calls: list[tuple[int, int]] = []

    def fake_mallopt(param: int, value: int) -> int:
        calls.append((param, value))
        return 1

    assert limit_arenas(2, load=lambda: fake_mallopt, environ={}) is True
    assert calls == [(M_ARENA_MAX, 2)]
    assert limit_arenas(2, load=lambda: fake_mallopt, environ={"MALLOC_ARENA_MAX": "4"}) is False
    assert calls == [(M_ARENA_MAX, 2)]  # the user's setting stands
    assert limit_arenas(2, load=lambda: None, environ={}) is False  # not glibc
    assert limit_arenas(2, load=lambda: lambda p, v: 0, environ={}) is False  # refused


def test_the_mmap_threshold_is_fixed_unless_the_user_set_glibcs() -> None:
    calls: list[tuple[int, int]] = []

    def fake_mallopt(param: int, value: int) -> int:
        calls.append((param, value))
        return 1

    assert fix_mmap_threshold(1 << 17, load=lambda: fake_mallopt, environ={}) is True
    assert calls == [(M_MMAP_THRESHOLD, 1 << 17)]
    user = {"MALLOC_MMAP_THRESHOLD_": "65536"}
    assert fix_mmap_threshold(1 << 17, load=lambda: fake_mallopt, environ=user) is False
    assert calls == [(M_MMAP_THRESHOLD, 1 << 17)]  # the user's setting stands
    assert fix_mmap_threshold(1 << 17, load=lambda: None, environ={}) is False  # not glibc


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_accepts_the_arena_cap() -> None:
    from lvs_operator.heap import load_mallopt

    mallopt = load_mallopt()
    assert mallopt is not None and mallopt(M_ARENA_MAX, 8) == 1  # 8: glibc's own ceiling here
    assert mallopt(M_MMAP_THRESHOLD, 128 * 1024) == 1  # glibc's starting value


def test_nothing_released_is_false() -> None:
    assert HeapTrimmer(load=lambda: lambda pad: 0).trim() is False


def test_without_glibc_it_does_nothing_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    loads: list[int] = []

    def load() -> None:
        loads.append(1)
        return None

    trimmer = HeapTrimmer(load=load)
    with caplog.at_level(logging.INFO, logger="lvs_operator.heap"):
        assert trimmer.trim() is False
        assert trimmer.trim() is False
    assert not trimmer.available
    assert loads == [1]
    assert trimmer.trims == 0
    said = [r for r in caplog.records if "malloc_trim" in r.getMessage()]
    assert len(said) == 1


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_malloc_trim_is_found_and_runs() -> None:
    fn = load_malloc_trim()
    assert fn is not None
    assert HeapTrimmer().trim() in (True, False)  # it ran; whether pages were freed varies
