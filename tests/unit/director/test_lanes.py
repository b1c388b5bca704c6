"""A one-thread lane runs its calls in order and can say what it runs now (a lifetime renewal
that waited long in line names what it waited behind)."""

from __future__ import annotations

import functools
import threading

from lvs_operator.director.lanes import Lane, call_name


class Node:
    def present(self) -> dict[str, str]:
        return {}


def test_a_calls_name_is_its_qualified_name_through_partials() -> None:
    assert call_name(Node().present) == "Node.present"
    assert call_name(functools.partial(functools.partial(Node().present))) == "Node.present"


def test_a_one_thread_lane_says_what_it_runs_and_for_how_long() -> None:
    lane = Lane("test")
    assert lane.running() is None
    started, release = threading.Event(), threading.Event()

    def slow_dump() -> int:
        started.set()
        release.wait(5)
        return 7

    worker = threading.Thread(target=lambda: lane.call(slow_dump))
    worker.start()
    assert started.wait(5)
    running = lane.running()
    assert running is not None
    name, seconds = running
    assert name.endswith("slow_dump") and 0 <= seconds < 5
    release.set()
    worker.join(5)
    assert lane.running() is None  # idle again
    assert lane.call(lambda: 3) == 3


def test_a_lane_of_several_threads_does_not_track_its_calls() -> None:
    lane = Lane("test", threads=2)
    seen: list[object] = []
    lane.call(lambda: seen.append(lane.running()))
    assert seen == [None]
