"""What the guest kernel costs to add and renew many VIP lifetimes (RTM_NEWADDR with a
lifetime; renewal = NLM_F_REPLACE), as the agent's lifetime thread does every
``--vip-lifetime`` / 4 seconds for every VIP it holds (vip.py), without the agent.

    python bench/vip_renewal.py [--counts 250 500 1000] [--rounds 3]

Boots the VM (tests/dataplane/vm.py); in a network namespace of its own, for each count:
that many /32 addresses added in one batch to a dummy interface with an 8 s lifetime, then
``--rounds`` renewals of all of them, back to back; and the same count added without a
lifetime (permanent), then renewed. Prints the seconds of each step. Figures for this VM
under TCG: compare the rows, not machines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "operator"))

from tests.dataplane.vm import Vm  # noqa: E402

NETNS = "vip-renewal"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--counts", type=int, nargs="+", default=[250, 500, 1000])
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    with Vm() as vm:
        vm.run(["ip", "netns", "add", NETNS], timeout=30, check=True)
        for count in a.counts:
            for lifetime in (8, None):
                r = vm.call("bench.vip_renewal_guest:addresses", netns=NETNS, timeout=900,
                            count=count, lifetime=lifetime, rounds=a.rounds)  # fmt: skip
                print(f"{count} addresses, lifetime {lifetime or 'none'}: added in {r['add']} s "
                      f"({r['add_failed']} failed); renewals of all {r['renewals']} s "
                      f"({r['renew_failed']} failed)", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
