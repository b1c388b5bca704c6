"""Handover and crash failover of the whole system, against keepalived on the same topology.

Run by hand (not in CI) on a machine prepared by ``make setup`` (control plane + VM) with
Debian's ``keepalived`` installed (``apt-get install keepalived``; the host's service is not
used: keepalived runs inside the VM's director namespaces):

    python bench/e2e_failover.py [--runs 5] [--lease 10,7,2] [--peer 0.05,0.3]
                                 [--skip-keepalived]

Same set-up as the e2e tier (e2e/system.py): the real control plane, the controller, two
director agents in the VM, three web pods, VIP 192.0.2.10:80 (rr, masquerade). A client loop
makes new connections through the VIP. Each case is repeated ``--runs`` times:

- **handover**: SIGTERM to the active director's daemon (our agent releases its Lease;
  keepalived sends a priority-0 advertisement). One request at a time, every 50 ms (2 s
  timeout). Figure: SIGTERM -> first answer through the new director; failed requests.
- **crash**: the active director node is powered off: its daemon SIGKILLed and its network
  namespace deleted. A request starts every 20 ms whether or not earlier ones still hang
  (0.5 s timeout), so the first answer through the new director is seen within 20 ms of the
  takeover, not after a hung request's timeout. Figures: last answer through the old director
  -> first answer through the new one, and the crash itself -> that first answer. Failed
  requests are not comparable with the handover's: every request started in the gap fails.
  The node then returns (namespace, IPVS, daemon) as a standby.

Then the same with keepalived as the director pair (our agents stopped, the IPVS tables
flushed): VRRPv3, ``nopreempt``, equal priorities, keepalived's own ``virtual_server`` (rr,
NAT) for the IPVS table and the same nftables SNAT the agent installs; once with
``advert_int 0.1`` (tuned) and once with its defaults (``advert_int 1``). Medians are printed
side by side, with our ratio to tuned keepalived. Under TCG emulation on a loaded machine
every figure is an upper bound of what real hardware does.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from e2e.guest import BACK, FRONT, VIP, analyse  # noqa: E402
from e2e.system import DIRECTORS, OTHER, System, Timings  # noqa: E402
from tests.dataplane.vm import GuestProcess  # noqa: E402

MANIFEST = """
apiVersion: lvs.io/v1alpha1
kind: RealServerPool
metadata: {name: web, namespace: web}
spec:
  selector: {matchLabels: {app: web}}
---
apiVersion: lvs.io/v1alpha1
kind: VirtualServer
metadata: {name: web, namespace: web}
spec:
  vip: 192.0.2.10
  ports: [{name: http, port: 80, targetPort: http}]
  poolRef: {name: web}
  scheduler: rr
  forwarding: masquerade
"""


def out(msg: str) -> None:
    print(msg, flush=True)


def start_loop(s: System, name: str, kind: str) -> tuple[GuestProcess, str]:
    if kind == "handover":
        return s.start_loop(name, interval=0.05, timeout=2.0)
    return s.start_loop(name, interval=0.02, timeout=0.5, concurrent=True)


# -- our agents --------------------------------------------------------------------------------


TIMELINE = False  # --timeline: print the new leader's log lines around each crash


def timeline(s: System, ns: str, at: float, span: float = 1.5) -> None:
    """The agent's log lines in ``ns`` from 0.1 s before guest time ``at`` to ``span`` after,
    each with its time since ``at``: where a failover's time goes."""
    offset = float(s.call("wall_minus_monotonic"))
    for line in s.agents[ns].output().splitlines():
        try:
            rec = json.loads(line)
            t = float(rec["ts"]) - offset - at
        except (ValueError, KeyError, TypeError):
            continue
        if -0.1 <= t <= span:
            extra = {k: v for k, v in rec.items() if k not in ("ts", "msg", "level", "logger")}
            out(f"    {t:+.3f} s  {rec.get('msg', '')}  {extra if extra else ''}")


def ours_once(s: System, kind: str, n: int) -> dict[str, Any]:
    old = s.leader_ns()
    new = OTHER[old]
    loop, path = start_loop(s, f"ours-{kind}-{n}", kind)
    proc = s.agents.pop(old)
    if kind == "handover":
        at = s.call("kill_agent", pid=proc.pid, sig=int(signal.SIGTERM))
        if proc.wait(30) is None:
            out(f"  agent in {old} still running 30 s after SIGTERM: SIGKILL")
            proc.kill()
            proc.wait(10)
    else:
        at = s.call("crash_node", ns=old, pid=proc.pid)
    s.call("wait_holder", exclude=old, timeout=90)
    time.sleep(1.5)
    stats = analyse(s.stop_loop(loop, path), at, old)
    if TIMELINE:
        timeline(s, new, at)
    if kind == "crash":
        s.call("add_director", ns=old)
    s.start_agent(old)
    s.wait_agents_ready([old], timeout=180)
    time.sleep(1.0)
    stats["from"], stats["to"] = old, new
    return stats


# -- keepalived ------------------------------------------------------------------------------------


def keepalived_conf(ns: str, advert_int: float | None, pods: list[str]) -> str:
    advert = f"    advert_int {advert_int}\n" if advert_int is not None else ""
    reals = "".join(f"    real_server {ip} 8080 {{\n        weight 1\n    }}\n" for ip in pods)
    return (
        "global_defs {\n"
        f"    router_id {ns}\n"
        "    vrrp_version 3\n"
        "}\n"
        "vrrp_instance VI_1 {\n"
        "    state BACKUP\n"
        "    nopreempt\n"
        "    interface front\n"
        "    virtual_router_id 51\n"
        "    priority 100\n"
        f"{advert}"
        "    virtual_ipaddress {\n"
        f"        {VIP}/32 dev front\n"
        "    }\n"
        "}\n"
        f"virtual_server {VIP} 80 {{\n"
        "    lb_algo rr\n"
        "    lb_kind NAT\n"
        "    protocol TCP\n"
        f"{reals}"
        "}\n"
    )


class Keepalived:
    """keepalived in each director namespace of the VM."""

    def __init__(self, s: System, advert_int: float | None) -> None:
        self.s, self.advert_int = s, advert_int
        self.procs: dict[str, GuestProcess] = {}
        self.pods = sorted(s.pod_ip(p) for p in s.pod_ns)

    def prepare(self, ns: str) -> None:
        """What the node needs besides keepalived: the data plane's sysctls and SNAT."""
        s = self.s
        s.vm.run(["ipvsadm", "-C"], netns=ns, check=True)  # type: ignore[union-attr]
        s.call("prepare_keepalived_node", ns=ns, vip=VIP, pods=self.pods)

    def start(self, ns: str) -> None:
        vm = self.s.vm
        assert vm is not None
        conf = vm.shared / f"keepalived-{ns}.conf"
        conf.write_text(keepalived_conf(ns, self.advert_int, self.pods))
        run = f"/run/keepalived-{ns}"
        argv = [
            "sh",
            "-c",
            f"rm -rf {run} && mkdir -p {run} && exec keepalived --dont-fork --log-console "
            f"--log-detail --no-syslog -f {conf} -p {run}/k.pid -r {run}/v.pid "
            f"-c {run}/c.pid",
        ]
        self.procs[ns] = vm.spawn(argv, netns=ns, name=f"keepalived-{ns}")

    def holder(self, timeout: float = 60, exclude: str | None = None) -> str:
        res = self.s.call("wait_holder", exclude=exclude, timeout=timeout)
        if res["holder"] is None:
            raise RuntimeError(f"keepalived: no single VIP holder: {res}\n{self.logs()}")
        return str(res["holder"])

    def logs(self) -> str:
        return "\n".join(f"--- {ns}\n{p.output()[-2000:]}" for ns, p in self.procs.items())

    def once(self, kind: str, n: int) -> dict[str, Any]:
        s = self.s
        old = self.holder()
        new = OTHER[old]
        label = f"ka{self.advert_int}-{kind}-{n}"
        loop, path = start_loop(s, label, kind)
        proc = self.procs.pop(old)
        if kind == "handover":
            at = s.call("kill_agent", pid=proc.pid, sig=int(signal.SIGTERM))
            proc.wait(30)
        else:
            at = s.call("crash_node", ns=old, pid=proc.pid)
        self.holder(timeout=90, exclude=old)
        time.sleep(1.5)
        stats = analyse(s.stop_loop(loop, path), at, old)
        if kind == "crash":
            s.call("add_director", ns=old)
        self.prepare(old)
        self.start(old)
        time.sleep(3.0)  # joins as backup (nopreempt)
        stats["from"], stats["to"] = old, new
        return stats

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.signal(signal.SIGTERM)
            proc.wait(30)
        self.procs.clear()


# -- main ----------------------------------------------------------------------------------------


def run_cases(name: str, once: Any, runs: int) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {"handover": [], "crash": []}
    for n in range(runs):
        for kind in ("handover", "crash"):
            stats = once(kind, n)
            results[kind].append(stats)
            if kind == "handover":
                fig = f"{stats['to_new_director']} s"
            else:
                fig = f"{stats['old_to_new']} s ({stats['to_new_director']} s from the crash)"
            out(
                f"{name:22} {kind:8} run {n + 1}: {fig}, failed {stats['failures']} of "
                f"{stats['requests']} ({DIRECTORS[stats['from']][0]} -> "
                f"{DIRECTORS[stats['to']][0]})"
            )
    return results


def medians(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def med(values: list[Any]) -> float | None:
        vals = [v for v in values if v is not None]
        return round(statistics.median(vals), 3) if vals else None

    return {
        "handover": med([r["to_new_director"] for r in results["handover"]]),
        "handover_failed": med([r["failures"] for r in results["handover"]]),
        "crash": med([r["old_to_new"] for r in results["crash"]]),
        "crash_from_event": med([r["to_new_director"] for r in results["crash"]]),
        "crash_failed": med([r["failures"] for r in results["crash"]]),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument(
        "--lease",
        default=None,
        help="our agents' duration,renew-deadline,retry[,start-up grace] (default: the product's)",
    )
    p.add_argument(
        "--peer",
        default=None,
        help="our agents' peer heartbeat interval,timeout (default: the product's)",
    )
    p.add_argument("--skip-keepalived", action="store_true")
    p.add_argument("--timeline", action="store_true", help="print the new leader's log lines")
    p.add_argument("--skip-ours", action="store_true", help="only the keepalived pair")
    a = p.parse_args(argv)
    global TIMELINE
    TIMELINE = a.timeline
    t0 = time.monotonic()
    timings = Timings.parse(a.lease, a.peer)
    s = System(Path(tempfile.mkdtemp(prefix="lvs-bench-")), timings=timings, say=out)
    table: dict[str, dict[str, Any]] = {}
    try:
        s.bring_up(MANIFEST)
        res = s.call("wait_answers", timeout=120)
        if not res["ok"]:
            raise RuntimeError(f"no answer through the VIP: {res}\n{s.logs()}")
        ours = (
            f"ours ({timings.lease_duration}/{timings.renew_deadline}/{timings.retry_period}, "
            f"peer {timings.peer_interval}/{timings.peer_timeout})"
        )
        if not a.skip_ours:
            table[ours] = medians(run_cases(ours, lambda k, n: ours_once(s, k, n), a.runs))
        if not a.skip_keepalived:
            for ns in list(s.agents):
                proc = s.agents.pop(ns)
                proc.signal(signal.SIGTERM)
                proc.wait(30)
            for advert, name in ((0.1, "keepalived advert 0.1"), (None, "keepalived default")):
                ka = Keepalived(s, advert)
                for ns in DIRECTORS:
                    ka.prepare(ns)
                    ka.start(ns)
                ka.holder(timeout=60)
                s.call("wait_answers", timeout=60)
                try:
                    table[name] = medians(run_cases(name, ka.once, a.runs))
                finally:
                    ka.stop()
    finally:
        s.close()
    out(f"\nmedians over {a.runs} runs each (TCG VM; {timings}):")
    cols = list(table)
    out(f"{'':28}" + "".join(f"{c:>28}" for c in cols))
    for key, label in (
        ("handover", "handover (s)"),
        ("handover_failed", "  failed requests"),
        ("crash", "crash failover (s)"),
        ("crash_from_event", "  from the crash (s)"),
        ("crash_failed", "  failed requests"),
    ):
        out(f"{label:28}" + "".join(f"{table[c][key]!s:>28}" for c in cols))
    tuned = table.get("keepalived advert 0.1")
    if tuned and cols and cols[0].startswith("ours"):
        mine = table[cols[0]]
        for key in ("handover", "crash", "crash_from_event"):
            if mine[key] and tuned[key]:
                out(f"ours / tuned keepalived, {key}: {mine[key] / tuned[key]:.2f}x")
    out(f"total {time.monotonic() - t0:.0f} s; front {FRONT}, pod side {BACK}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
