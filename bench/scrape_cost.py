"""What one scrape of a director agent's /metrics costs at scale: time to render and bytes.

    python bench/scrape_cost.py [--services 1000] [--dests 10] [--runs 20]

No VM, no kernel: the agent's registry (director/metrics.py) with the traffic collector
(director/traffic.py) holding one reading of ``--services`` services x ``--dests``
destinations, as the poller would have left it, all of them the group's. Renders the page
``--runs`` times the way the agent's /metrics endpoint does (``Metrics.render``) and prints
the median and spread of the render time, the page's size (plain and gzip-compressed, as a
Prometheus scrape asks for it) and the number of series. The first render is left out of
the median (imports and first allocations).
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

from lvs_operator.director.kernel.ipvs import DestinationStats, ServiceStats  # noqa: E402
from lvs_operator.director.kernel.ipvs_netlink import Counters  # noqa: E402
from lvs_operator.director.metrics import Metrics  # noqa: E402
from lvs_operator.director.table import DestKey, Protocol, ServiceKey  # noqa: E402
from lvs_operator.director.traffic import Reading, TrafficCollector  # noqa: E402


def reading(services: int, dests: int) -> tuple[Reading, set[ServiceKey]]:
    stats = []
    for s in range(services):
        key = ServiceKey(Protocol.TCP, f"10.30.{s // 250}.{1 + s % 250}", 80)
        destinations = tuple(
            DestinationStats(DestKey(f"10.20.{d // 250}.{1 + d % 250}", 8080),
                             Counters(1000 + d, 10**6, 9 * 10**5, 10**9, 9 * 10**8), 12, 40)
            for d in range(dests)
        )  # fmt: skip
        stats.append(ServiceStats(key, Counters(10**4, 10**7, 9 * 10**6, 10**10, 9 * 10**9),
                                  destinations))  # fmt: skip
    return Reading(time.time(), 0.5, tuple(stats)), {s.key for s in stats}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--dests", type=int, default=10)
    p.add_argument("--runs", type=int, default=20)
    a = p.parse_args(argv)
    metrics = Metrics("bench")
    read, wanted = reading(a.services, a.dests)
    collector = TrafficCollector("bench", lambda: wanted)
    collector.reading = read
    metrics.registry.register(collector)
    times, page = [], b""
    for _ in range(a.runs + 1):
        t0 = time.perf_counter()
        page = b"".join(metrics.render_chunks())  # as /metrics writes it
        times.append(time.perf_counter() - t0)
    times = times[1:]
    series = sum(1 for line in page.splitlines() if line and not line.startswith(b"#"))
    print(f"{a.services} services x {a.dests} destinations, {a.runs} renders:")
    print(f"  render time: median {statistics.median(times) * 1000:.0f} ms "
          f"({min(times) * 1000:.0f}-{max(times) * 1000:.0f})")  # fmt: skip
    print(f"  page: {len(page) / 1e6:.2f} MB, gzip {len(gzip.compress(page)) / 1e6:.2f} MB; "
          f"{series} series")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
