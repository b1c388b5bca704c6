"""How late an asyncio loop wakes while other threads of the process run Python code (the
GIL's "convoy"), at two GIL switch intervals: CPython's default 5 ms and the director
agent's 1 ms (main.py: ``prefer_the_loop``).

    python bench/gil_convoy.py [--threads 2] [--seconds 3] [--runs 3]

A ticker task sleeps 10 ms at a time for ``--seconds`` while ``--threads`` threads build
dicts in a loop (as the agent's threads parse netlink dumps: the traffic poller, the
resync read, the lifetime renewals' address dump). Each wake-up waits for the GIL: the
thread holding it lets go only when the interval is up. Prints the median and worst
lateness of the ticker per setting, medians of ``--runs``. No VM, no kernel.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time


def burn(stop: threading.Event) -> None:
    while not stop.is_set():
        d = {}
        for i in range(20000):
            d[str(i)] = (i, str(i))


async def lateness(threads: int, seconds: float) -> tuple[float, float]:
    stop = threading.Event()
    workers = [threading.Thread(target=burn, args=(stop,)) for _ in range(threads)]
    for w in workers:
        w.start()
    late: list[float] = []
    end = time.perf_counter() + seconds
    try:
        while time.perf_counter() < end:
            due = time.perf_counter() + 0.01
            await asyncio.sleep(0.01)
            late.append(time.perf_counter() - due)
    finally:
        stop.set()
        for w in workers:
            w.join()
    return statistics.median(late), max(late)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args(argv)
    results: dict[float, list[tuple[float, float]]] = {0.005: [], 0.001: []}
    for _ in range(a.runs):
        for interval, runs in results.items():  # interleaved: the load hits both alike
            sys.setswitchinterval(interval)
            runs.append(asyncio.run(lateness(a.threads, a.seconds)))
    for interval, runs in results.items():
        median = statistics.median(r[0] for r in runs) * 1000
        worst = statistics.median(r[1] for r in runs) * 1000
        print(f"switch interval {interval * 1000:.0f} ms, {a.threads} busy threads: the "
              f"loop's wake-ups late by {median:.1f} ms (median), {worst:.1f} ms (worst); "
              f"medians of {a.runs} runs")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
