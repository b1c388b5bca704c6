"""Where a whole read of the kernel's IPVS table goes, in the data-plane VM: the agent's read
(``IpvsKernel.read``: one service dump, one destination dump per service, parsed in Python)
against ``ipvsadm -Ln`` (the same dumps in C) and ``ipvsadm-restore`` of the table, with the
read's time inside recv and a profile, and the read split over two sockets and threads.

    python bench/ipvs_read.py [--services 1000] [--dests 10] [--runs 3]

Figures, not asserts (TCG is slow and noisy: compare within a run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from bench.agent_scale import restore_rules
from tests.dataplane.vm import Vm

GUEST = "bench.ipvs_read_guest"
NS = "lvs-dir-a"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--dests", type=int, default=10)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args(argv)
    with Vm() as vm:
        print(f"VM booted in {vm.boot_seconds:.1f}s")
        vm.call("tests.dataplane.topology:build", timeout=180)
        loaded = vm.call(f"{GUEST}:load", netns=NS, rules=restore_rules(a.services, a.dests),
                         timeout=1500)  # fmt: skip
        print(f"ipvsadm-restore of {a.services} x {a.dests}: {loaded:.2f} s")
        got = vm.call(f"{GUEST}:measure", netns=NS, runs=a.runs, timeout=1500)
        med = {k: statistics.median(got[k]) for k in ("ipvsadm", "read", "recv")}
        print(f"ipvsadm -Ln: {got['ipvsadm']} s (median {med['ipvsadm']:.2f})")
        print(f"agent's whole read ({got['services']} services): {got['read']} s (median "
              f"{med['read']:.2f} = {med['read'] / loaded:.2f}x the restore); inside recv "
              f"{got['recv']} s")  # fmt: skip
        print(got["profile"])
        par = vm.call(f"{GUEST}:parallel", netns=NS, runs=a.runs, timeout=1500)
        print(f"split over 2 sockets and threads: {par} s (median {statistics.median(par):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
