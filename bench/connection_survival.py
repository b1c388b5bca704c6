"""Established connections across a crash failover: ours (IPVS sync daemons run by the
agents) against keepalived with ``lvs_sync_daemon``, on the same topology in the same run.

Run by hand (not in CI) on a machine prepared by ``hack/vm/setup.sh``, with Debian's
``keepalived`` installed (``apt-get install keepalived``; it runs inside the VM's director
namespaces, the host's service is not used):

    python bench/connection_survival.py [--runs 5] [--count 50] [--skip-keepalived]
    python bench/connection_survival.py --forwarding masquerade [--answer-delay 150]  # ours

The data-plane topology (tests/dataplane/topology.py: client, two directors, three HTTP real
servers) with one VirtualServer, ``direct`` forwarding (rr), VIP 10.10.0.101:8080. Each run:
``--count`` long-lived keep-alive connections through the VIP, a request on each every
100 ms (tests/dataplane/held_connections.py); once the standby's IPVS lists all of them (the
sync lag is printed), the active director crashes: its front link goes down and its daemon
is SIGKILLed. Five seconds later the connections are counted: *survived* = never reset,
closed or left unanswered, and still answering at the end. Figures per run: survivors,
the sync lag, the crash -> the VIP on the standby, and the longest wait for an answer a
surviving connection saw across the crash. The dead node then comes back as a standby (for
keepalived: a rebooted node: VIP, IPVS table and sync daemons gone).

keepalived: VRRPv3, ``nopreempt``, equal priorities, ``advert_int 0.1`` (tuned),
``lvs_sync_daemon front VI_1`` and its own ``virtual_server`` (rr, DR). Medians are printed
side by side. Under TCG emulation on a loaded machine every time is an upper bound of what
real hardware does.
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

from tests.dataplane import topology as topo_mod  # noqa: E402
from tests.dataplane.agents import NODES, Lab, pool, virtual_server  # noqa: E402
from tests.dataplane.held_connections import survival  # noqa: E402
from tests.dataplane.vm import GuestProcess, Vm  # noqa: E402

VIP, PORT = "10.10.0.101", 8080
MASQUERADE_VIP = "10.10.0.105"  # as the data-plane case's (tests/dataplane/test_agent.py)
OTHER = {"lvs-dir-a": "lvs-dir-b", "lvs-dir-b": "lvs-dir-a"}
CONF = """global_defs {{
    router_id {ns}
    vrrp_version 3
    lvs_sync_daemon front VI_1
}}
vrrp_instance VI_1 {{
    state BACKUP
    nopreempt
    interface front
    virtual_router_id 52
    priority 100
    advert_int 0.1
    virtual_ipaddress {{
        {vip}/32 dev front
    }}
}}
virtual_server {vip} {port} {{
    lb_algo rr
    lb_kind DR
    protocol TCP
{reals}}}
"""


def out(msg: str) -> None:
    print(msg, flush=True)


ANSWER_DELAY_MS = 0  # --answer-delay: the real servers' packets leave this late


def crash_and_count(lab: Lab, old: str, pid: int, count: int, n: int, who: str) -> dict[str, Any]:
    """Held connections, the crash of ``old`` (link down, ``pid`` SIGKILLed), the count."""
    new = OTHER[old]
    held, path = lab.start_held(f"{who}-{n}", VIP, PORT, count)
    lag = lab.call("wait_synced", ns=new, vip=VIP, port=PORT, count=count, within=30)
    if ANSWER_DELAY_MS:  # many answers in flight at the crash, lost with the old director
        lab.call("delay_answers", ms=ANSWER_DELAY_MS)
    try:
        time.sleep(1.0)
        moved = lab.call("takeover", pid=pid, sig=int(signal.SIGKILL), vip=VIP, new=new,
                         link_down=old)  # fmt: skip
        time.sleep(5.0)
        rows = lab.stop_held(held, path)
    finally:
        if ANSWER_DELAY_MS:
            lab.call("delay_answers", ms=0)
    stats = survival(rows.get("connections", []), moved["at"], rows.get("end", 0.0))
    restored = None
    if who == "ours":  # the new leader's conntrack entries written at the takeover
        name = "lvs_director_conntrack_restored_total"
        lines = lab.call("metrics", ns=new).splitlines()
        restored = next((float(x.split()[-1]) for x in lines if x.startswith(name)), None)
    return {
        "survived": stats["survived"],
        "of": stats["connections"],
        "sync_lag": lag,
        "vip_moved_after": moved["vip_moved_after"],
        "max_stall": stats["max_stall"],
        "conntrack_restored": restored,
        "broken": stats["broken"][:3],
    }


def ours(lab: Lab, runs: int, count: int) -> list[dict[str, Any]]:
    for ns in NODES:
        lab.start_agent(ns)
    lab.call("wait_ready", namespaces=list(NODES), within=240)
    assert lab.call("wait_answers", vip=VIP, port=PORT, within=90)["ok"]
    results = []
    for n in range(runs):
        old = lab.leader_ns()
        proc = lab.agents.pop(old)
        stats = crash_and_count(lab, old, proc.pid, count, n, "ours")
        results.append(stats)
        out(f"ours       run {n + 1}: {stats}")
        lab.call("link_up", ns=old)
        lab.call("wait_vip_dropped", ns=old, vip=VIP, within=60)
        lab.start_agent(old)
        lab.call("wait_ready", namespaces=[old], within=240)
    for proc in list(lab.agents.values()):
        proc.kill()
    lab.agents.clear()
    return results


class Keepalived:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        topo = topo_mod.default_topology()
        self.reals = "".join(
            f"    real_server {topo.back[rs]} {PORT} {{\n        weight 1\n    }}\n"
            for rs in topo.real_servers
        )
        self.procs: dict[str, GuestProcess] = {}

    def reboot(self, ns: str) -> None:
        """A node that comes back: no keepalived, no VIP, no IPVS table, no sync daemon."""
        vm = self.lab.vm
        vm.run(["pkill", "-9", "-f", f"keepalived-{ns}.conf"], check=False)
        vm.run(["ip", "addr", "del", f"{VIP}/32", "dev", "front"], netns=ns, check=False)
        vm.run(["ipvsadm", "-C"], netns=ns, check=False)
        for state in ("master", "backup"):
            vm.run(["ipvsadm", "--stop-daemon", state], netns=ns, check=False)
        vm.run(["ip", "link", "set", "front", "up"], netns=ns, check=False)

    def start(self, ns: str) -> None:
        vm = self.lab.vm
        conf = vm.shared / f"keepalived-{ns}.conf"
        conf.write_text(CONF.format(ns=ns, vip=VIP, port=PORT, reals=self.reals))
        run = f"/run/keepalived-{ns}"
        argv = ["sh", "-c", f"rm -rf {run} && mkdir -p {run} && exec keepalived --dont-fork "
                f"--log-console --no-syslog -f {conf} -p {run}/k.pid -r {run}/v.pid "
                f"-c {run}/c.pid"]  # fmt: skip
        self.procs[ns] = vm.spawn(argv, netns=ns, name=f"keepalived-{ns}")

    def holder(self, exclude: str | None = None) -> str:
        res = self.lab.call("wait_vip", vip=VIP, within=60, exclude=exclude)
        if res["holder"] is None:
            logs = "\n".join(p.output()[-2000:] for p in self.procs.values())
            raise RuntimeError(f"keepalived: no VIP holder: {res}\n{logs}")
        return str(res["holder"])

    def runs(self, runs: int, count: int) -> list[dict[str, Any]]:
        for ns in NODES:
            self.reboot(ns)
            self.start(ns)
        self.holder()
        assert self.lab.call("wait_answers", vip=VIP, port=PORT, within=90)["ok"]
        results = []
        for n in range(runs):
            old = self.holder()
            proc = self.procs.pop(old)
            stats = crash_and_count(self.lab, old, proc.pid, count, n, "keepalived")
            results.append(stats)
            out(f"keepalived run {n + 1}: {stats}")
            self.reboot(old)
            self.start(old)
            time.sleep(3.0)  # joins as backup (nopreempt), its backup sync daemon started
        for ns in NODES:
            self.reboot(ns)
        return results


def summary(name: str, results: list[dict[str, Any]]) -> dict[str, float]:
    med: dict[str, float] = {}
    for key in ("survived", "sync_lag", "vip_moved_after", "max_stall"):
        values = [r[key] for r in results if r.get(key) is not None]
        if values:
            med[key] = statistics.median(values)
    survived = [r["survived"] for r in results]
    out(f"{name}: survivors {survived} of {results[0]['of'] if results else 0} "
        f"(median {med.get('survived')}); sync lag median {med.get('sync_lag')} s; crash -> "
        f"VIP on the standby median {med.get('vip_moved_after')} s; longest wait for an "
        f"answer median {med.get('max_stall')} s")  # fmt: skip
    return med


def main(argv: list[str]) -> int:
    global VIP, PORT
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--count", type=int, default=50)
    p.add_argument("--skip-keepalived", action="store_true")
    p.add_argument(
        "--forwarding",
        choices=("direct", "masquerade"),
        default="direct",
        help="masquerade: ours with masqueradeSource: VIP, VIP 10.10.0.105:80 -> 8080; "
        "keepalived is not run (its lvs_sync_daemon copies IPVS entries, not the conntrack "
        "state a source NAT needs)",
    )
    p.add_argument("--answer-delay", type=int, default=0, metavar="MS",
                   help="the real servers' packets leave MS late (netem), so at the crash many "
                   "answers are in flight and lost with the old director (the data-plane "
                   "masquerade case uses 150)")  # fmt: skip
    a = p.parse_args(argv)
    global ANSWER_DELAY_MS
    ANSWER_DELAY_MS = a.answer_delay
    if a.forwarding == "masquerade":
        VIP, PORT = MASQUERADE_VIP, 80
    t0 = time.monotonic()
    with Vm() as vm:
        out(f"VM booted in {vm.boot_seconds:.1f}s (kernel {vm.guest_info.get('kernel')})")
        vm.call("tests.dataplane.topology:build", timeout=180)
        vm.call("tests.dataplane.topology:start_http_servers", timeout=60)
        lab = Lab(vm)
        try:
            lab.call("setup")
            lab.apply(pool("web"))
            if a.forwarding == "direct":
                res = lab.call("realserver", vips=[VIP], mode="direct")
                assert all(r["rc"] == 0 for r in res.values()), res
                lab.apply(virtual_server("web-dr", VIP, PORT, None, scheduler="rr",
                                         forwarding="direct"))  # fmt: skip
            else:
                lab.apply(virtual_server("web-nat-vip", VIP, PORT, 8080, scheduler="rr",
                                         masqueradeSource="VIP"))  # fmt: skip
            mine = summary(f"ours ({a.forwarding})", ours(lab, a.runs, a.count))
            if not a.skip_keepalived and a.forwarding == "direct":
                theirs = summary("keepalived advert 0.1", Keepalived(lab).runs(a.runs, a.count))
                for key in ("vip_moved_after", "max_stall"):
                    if key in mine and key in theirs and theirs[key]:
                        out(f"ours / keepalived, {key}: {mine[key] / theirs[key]:.2f}x")
        finally:
            lab.close()
            lab.call("cleanup", vips={"direct": [VIP]} if a.forwarding == "direct" else {})
    out(f"total {time.monotonic() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
