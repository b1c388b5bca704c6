"""Memory (RSS) and start-up converge of one director agent at scale, in the data-plane VM.

    python bench/agent_memory.py [--services 1000] [--dests 10]

Boots the VM (tests/dataplane/vm.py), starts the fake API server on the host with one
RealServerPool of ``--dests`` ready members and ``--services`` VirtualServers (one TCP port
each, VIPs 10.30.x.y, masquerade, rr) labelled with the director group, starts one
``lvs-operator director`` in lvs-dir-a and reports: time from spawn to ready (lists,
desired table, cold converge of services x (1 + dests) IPVS changes), the kernel's table
size, and the agent's RSS once ready and after a minute of steady state (renewals, resyncs).
The DESIGN goal is <= 60 MiB at 1,000 services x 10 destinations.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.dataplane.agents import Lab, virtual_server  # noqa: E402
from tests.dataplane.vm import Vm  # noqa: E402


def pool(dests: int) -> dict[str, object]:
    members = [
        {"address": f"10.20.{1 + i // 250}.{1 + i % 250}", "weight": 1, "ready": True,
         "serving": True, "terminating": False, "source": "pod",
         "ports": [{"name": "http", "port": 8080}]}
        for i in range(dests)
    ]  # fmt: skip
    return {
        "apiVersion": "lvs.io/v1alpha1",
        "kind": "RealServerPool",
        "metadata": {"name": "big", "namespace": "demo"},
        "spec": {"selector": {"matchLabels": {"app": "big"}}},
        "status": {"members": members},
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--dests", type=int, default=10)
    p.add_argument("--steady", type=float, default=120)
    a = p.parse_args(argv)
    with Vm() as vm:
        print(f"VM booted in {vm.boot_seconds:.1f}s")
        vm.call("tests.dataplane.topology:build", timeout=180)
        lab = Lab(vm, lease="2,1.5,0.4")
        try:
            lab.call("setup")
            lab.apply(pool(a.dests))
            for i in range(a.services):
                vip = f"10.30.{i // 250}.{1 + i % 250}"
                lab.apply(virtual_server(f"vs{i}", vip, 80, "http", pool_name="big",
                                         scheduler="rr"))  # fmt: skip
            t0 = time.monotonic()
            proc = lab.start_agent("lvs-dir-a", "--resync-interval", "20")
            ready = lab.call("wait_ready", namespaces=["lvs-dir-a"], within=1800)
            print(f"ready after {time.monotonic() - t0:.1f}s from spawn: {ready}")
            table = lab.call("weights", ns="lvs-dir-a")
            dests = sum(len(d) for d in table.values())
            print(f"kernel: {len(table)} services, {dests} destinations")
            print(f"RSS when ready: {lab.call('rss_mib', pid=proc.pid)} MiB")
            samples = []
            for _ in range(max(1, int(a.steady // 30))):
                time.sleep(30)
                samples.append(lab.call("rss_mib", pid=proc.pid))
            print(f"RSS every 30s of steady state (renewals, resyncs, VIP refreshes): {samples}")
            print(proc.output()[-1500:])
        finally:
            lab.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
