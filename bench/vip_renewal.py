"""What one lifetime round of 1,000 VIPs costs, in the data-plane VM: the agent's renewal
(``VipManager.renew``: an address dump parsed in Python, then one batch of replaces), its
dump alone, its batch alone, and ``ip -o addr show`` (the same dump in C), with a profile.

    python bench/vip_renewal.py [--vips 1000] [--rounds 5]

Figures, not asserts (TCG is slow and noisy: compare within a run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from tests.dataplane.vm import Vm

GUEST = "bench.vip_renewal_guest"
NS = "lvs-dir-a"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vips", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    with Vm() as vm:
        print(f"VM booted in {vm.boot_seconds:.1f}s")
        vm.call("tests.dataplane.topology:build", timeout=180)
        added = vm.call(f"{GUEST}:setup", netns=NS, count=a.vips, timeout=600)
        print(f"added {a.vips} VIPs in one batch: {added:.2f} s")
        got = vm.call(f"{GUEST}:measure", netns=NS, count=a.vips, rounds=a.rounds, timeout=1500)
        for key, what in (("round", "a renewal round (renew)"),
                          ("present", "its address dump and parse (_present)"),
                          ("batch", "its batch of replaces alone"),
                          ("ip", "ip -o addr show")):  # fmt: skip
            print(f"{what}: {got[key]} s (median {statistics.median(got[key]):.3f})")
        print(got["profile"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
