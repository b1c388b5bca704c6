"""Failover and planned-handover time of the director agents, measured with real traffic.

Run by hand on a machine prepared by ``hack/vm/setup.sh`` (qemu, virtme-ng, Debian kernel):

    python bench/failover.py [--runs 5]

It boots the data-plane VM (tests/dataplane/vm.py), builds the namespace topology (client,
two directors, three HTTP real servers), starts the fake API server on the host and two real
``lvs-operator director`` agents in the director namespaces (Lease election, default timings:
duration 2 s, renew deadline 1.5 s, retry 0.4 s; peer heartbeat every 0.1 s, 0.35 s
timeout), and a client request loop (a new TCP
connection every 50 ms, 0.5 s timeout) through the VIP. Then, ``--runs`` times each:

- **crash failover**: take the active director's front link down and SIGKILL its agent
  (the node is gone, not only the agent: a killed agent alone leaves its kernel forwarding).
  Time = link down -> first successful request (necessarily through the new director), and
  -> the VIP on the standby.
- **planned handover**: SIGTERM the active agent (it moves the VIP to lo and releases the
  Lease; the standby relays its connections in flight back to it). Time = signal -> the VIP
  on the standby, and the longest gap between successful requests the client saw.

Prints each run and the medians. Under TCG emulation on a loaded machine every figure is an
upper bound of what real hardware does.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.dataplane.agents import NODES, Lab, pool, virtual_server  # noqa: E402
from tests.dataplane.scenarios_agent import analyse  # noqa: E402
from tests.dataplane.vm import Vm  # noqa: E402

VIP = "10.10.0.100"
OTHER = {"lvs-dir-a": "lvs-dir-b", "lvs-dir-b": "lvs-dir-a"}


def one(lab: Lab, kind: str, n: int) -> dict[str, Any]:
    old = lab.leader_ns()
    new = OTHER[old]
    loop, out = lab.start_loop(f"{kind}-{n}", VIP, 80)
    proc = lab.agents.pop(old)
    sig = signal.SIGKILL if kind == "crash" else signal.SIGTERM
    moved = lab.call("takeover", pid=proc.pid, sig=int(sig), vip=VIP, new=new,
                     link_down=old if kind == "crash" else None)  # fmt: skip
    lab.call("wait_vip", vip=VIP, within=60, exclude=old)
    time.sleep(1.5)
    stats = analyse(lab.stop_loop(loop, out), moved["at"])
    stats["vip_moved_after"] = moved["vip_moved_after"]
    stats["from"], stats["to"] = NODES[old], lab.holder()
    if kind == "crash":
        lab.call("link_up", ns=old)
    lab.start_agent(old)
    lab.call("wait_ready", namespaces=[old], within=180)
    lab.call("wait_vip_dropped", ns=old, vip=VIP, within=60)
    return stats


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument(
        "--lease",
        default="2,1.5,0.4",
        help="election timings: duration,renew-deadline,retry (the defaults)",
    )
    p.add_argument(
        "--peer",
        default="0.1,0.35",
        help="peer heartbeat interval,timeout (the defaults)",
    )
    a = p.parse_args(argv)
    t0 = time.monotonic()
    with Vm() as vm:
        print(f"VM booted in {vm.boot_seconds:.1f}s (kernel {vm.guest_info.get('kernel')})")
        vm.call("tests.dataplane.topology:build", timeout=180)
        vm.call("tests.dataplane.topology:start_http_servers", timeout=60)
        lab = Lab(vm, lease=a.lease, peer=a.peer)
        try:
            lab.call("setup")
            lab.apply(pool("web"))
            lab.apply(virtual_server("web-nat", VIP, 80, "http", scheduler="rr"))
            for ns in NODES:
                lab.start_agent(ns)
            ready = lab.call("wait_ready", namespaces=list(NODES), within=240)
            print(f"agents ready after {ready}")
            lab.call("wait_answers", vip=VIP, port=80, within=90)
            results: dict[str, list[dict[str, Any]]] = {"crash": [], "handover": []}
            for n in range(a.runs):
                for kind in ("crash", "handover"):
                    stats = one(lab, kind, n)
                    results[kind].append(stats)
                    print(f"{kind:8} run {n + 1}: {stats}", flush=True)
            # crash: the dead director serves nothing, so the first success after the event
            # is the new director's; a planned handover keeps serving until the VIP moves,
            # so its figure is the VIP move and the client-visible gap.
            for kind, label, key in (
                ("crash", "crash failover (kill -> first success)", "first_success_after"),
                ("crash", "crash failover (kill -> VIP on the standby)", "vip_moved_after"),
                ("handover", "planned handover (SIGTERM -> VIP moved)", "vip_moved_after"),
                ("handover", "planned handover (longest gap between successes)", "max_gap"),
            ):
                values = [s[key] for s in results[kind] if s.get(key) is not None]
                fails = [s["failures_after"] for s in results[kind]]
                if values:
                    med, lo, hi = statistics.median(values), min(values), max(values)
                    print(
                        f"{label}: median {med:.3f}s (min {lo:.3f}, max {hi:.3f}; failed "
                        f"requests median {statistics.median(fails)}) over {len(values)} runs"
                    )
        finally:
            lab.close()
    print(f"total {time.monotonic() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
