"""The lvs-operator demo: the whole system on this machine, for a newcomer.

    make demo                 # or: lvs-operator demo; python e2e/demo.py
    make demo-down            # or Ctrl-C: stop and remove everything it started

It installs what it needs (the local control plane is built from Go modules once, the VM's
kernel fetched once: hack/test-cluster/cluster.sh build, hack/vm/setup.sh), starts the control
plane on 127.0.0.1 and a VM with an IPVS kernel, installs the operator from the repository's
manifests (crds/ and deploy/lvs-operator.yaml), applies examples/web.yaml (a RealServerPool and
a VirtualServer on VIP 192.0.2.10) with three web pods, and then shows the system at work:
``kubectl get lvs,rsp`` as it converges, a live count of answers per web pod through the VIP,
then examples/three-tier/ for real (Apache+PHP on an NFS share and MariaDB, behind VIP
192.0.2.20: the page, which web server answered, the visit counter in MySQL rising, the PHP
session), a planned handover and a crash failover of the active director with their times,
and the three-tier page once more (the same session counts on). While it runs it prints how to
reach the cluster (``KUBECONFIG=...``).

Where the pieces run: the API server, controller manager, scheduler and etcd on this host;
kwok plays the kubelet of every Node (pods only *look* Running); the controller
(``lvs-operator controller``) on this host as its ServiceAccount; in the VM, each director
Node is a network namespace running the real ``lvs-operator director`` agent, and each web pod
a namespace with the pod's IP and a small HTTP server answering with the pod's name (the
three-tier example's pods: Apache, MariaDB; e2e/three_tier/).

Non-interactive (``--once``, or CI=true, or no terminal): run the show, then clean up and exit;
``--stay`` keeps it running without a terminal (stop it with ``make demo-down``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CACHE = Path(os.environ.get("LVS_CACHE_DIR", Path.home() / ".cache/lvs-operator"))
STATE_DIR = Path(os.environ.get("LVS_DEMO_DIR", CACHE / "demo"))  # state, logs; demo-down
STATE = STATE_DIR / "state.json"
EXAMPLE = REPO / "examples" / "web.yaml"
APP_NS = "default"  # examples/web.yaml's namespace
MAX_SECONDS = 4 * 3600  # an interactive demo left running stops by itself after this


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def banner(title: str) -> None:
    print(f"\n==== {title} " + "=" * max(0, 70 - len(title)), flush=True)


# -- installing what is missing ------------------------------------------------------------------


def ensure_python_deps() -> None:
    try:
        import lightkube  # noqa: F401
        import yaml  # noqa: F401

        import lvs_operator  # noqa: F401
    except ImportError as exc:
        say(f"Python packages missing ({exc.name}): pip install -e {REPO} ...")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", str(REPO)], check=True)
        os.execv(sys.executable, [sys.executable, *sys.argv])


def ensure_tools() -> None:
    from tests.dataplane.vm import missing_requirements

    from e2e.system import TestCluster

    if not TestCluster.is_built():
        banner("installing: the local control plane (Go build, once; ~10-20 min here)")
        run_streamed([str(REPO / "hack/test-cluster/cluster.sh"), "build"])
    missing = missing_requirements()
    if missing:
        banner("installing: the VM (qemu, virtme-ng, Debian's IPVS kernel; once)")
        say("missing: " + "; ".join(missing))
        run_streamed([str(REPO / "hack/vm/setup.sh")])


def run_streamed(argv: list[str]) -> None:
    t0 = time.monotonic()
    r = subprocess.run(argv, cwd=REPO, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({r.returncode})")
    say(f"{Path(argv[0]).name} {' '.join(argv[1:])}: done in {time.monotonic() - t0:.0f} s")


# -- state (for demo-down) -----------------------------------------------------------------------


def write_state(**info: Any) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    old = json.loads(STATE.read_text()) if STATE.exists() else {}
    old.update(info)
    STATE.write_text(json.dumps(old, indent=1) + "\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"
    return True


def down() -> int:
    """Stop a running demo (it cleans up after itself), then remove any leftover."""
    if not STATE.exists():
        say("no demo is running (no state in " + str(STATE) + ")")
        return 0
    info = json.loads(STATE.read_text())
    pid = int(info.get("pid", 0))
    if pid and _alive(pid):
        say(f"stopping the demo (pid {pid}) ...")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 90
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
    vm_pid = int(info.get("vm_pid", 0))
    if vm_pid and _alive(vm_pid):
        say(f"stopping the VM (process group {vm_pid})")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(vm_pid, signal.SIGKILL)
    ctl_pid = int(info.get("controller_pid", 0))
    if ctl_pid and _alive(ctl_pid):
        say(f"stopping the controller (pid {ctl_pid})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(ctl_pid, signal.SIGTERM)
    cluster_dir = info.get("cluster_dir")
    if cluster_dir and Path(cluster_dir, "cluster.json").exists():
        subprocess.run(
            [str(REPO / "hack/test-cluster/cluster.sh"), "down", cluster_dir], cwd=REPO, check=False
        )
    STATE.unlink(missing_ok=True)
    say("demo stopped; nothing of it is left running")
    return 0


# -- the show ------------------------------------------------------------------------------------


class Demo:
    def __init__(self, interactive: bool, live_seconds: float) -> None:
        from e2e.system import System, Timings

        self.interactive = interactive
        self.serving = False  # the show is over, the system runs until Ctrl-C
        self.live_seconds = live_seconds
        workdir = STATE_DIR / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
        timings = Timings.parse(os.environ.get("LVS_DEMO_LEASE"), os.environ.get("LVS_DEMO_PEER"))
        self.s = System(workdir, app_namespace=APP_NS, timings=timings, say=say)
        self.last_table = ""
        self.tt: Any = None  # the three-tier scenario, once deployed
        self.cookie = ""  # the demo browser's PHP session

    def kubeconfig_hint(self) -> str:
        assert self.s.cluster is not None
        env = REPO / "hack/test-cluster/cluster.sh"
        return (
            f"export KUBECONFIG={self.s.cluster.kubeconfig}\n"
            f'    (kubectl and helm: eval "$({env} env {self.s.cluster.dir})")\n'
            f"    kubectl get lvs,rsp -o wide; kubectl get pods -o wide; "
            f"kubectl -n lvs-system get daemonsets,leases"
        )

    def setup(self) -> None:
        from e2e.system import DIRECTORS

        s = self.s
        banner("1/7 the local control plane and the VM")
        write_state(pid=os.getpid(), workdir=str(s.workdir))
        s.boot_vm_async()
        say("booting the VM (qemu, TCG emulation: ~20-60 s) in the background ...")
        s.start_cluster()
        assert s.cluster is not None
        write_state(cluster_dir=str(s.cluster.dir))
        say("reach the cluster while the demo runs:\n    " + self.kubeconfig_hint())

        banner("2/7 the operator, from the repository's manifests")
        s.install_operator(bundle=True)
        ctl = s.start_controller()
        write_state(controller_pid=ctl.proc.pid if ctl.proc else 0)
        s.add_director_nodes()
        s.wait_vm(progress=True)
        assert s.vm is not None and s.vm._proc is not None
        write_state(vm_pid=s.vm._proc.pid)
        say(
            f"VM up in {s.vm.boot_seconds:.0f} s (kernel {s.vm.guest_info.get('kernel')}); "
            "building its network: client, two director nodes, one namespace per web pod"
        )
        s.build_network()

        banner("3/7 the example: web pods, RealServerPool and VirtualServer")
        pods = s.deploy_web(3)
        say("web Deployment: " + ", ".join(f"{p} ({s.pod_ip(p)})" for p in pods))
        say(
            f"kubectl apply -f {EXAMPLE.relative_to(REPO)}\n"
            + s.kubectl("apply", "--server-side", "-f", str(EXAMPLE)).rstrip()
        )
        self.table()
        group, _lease = s.wait_group()
        say(
            f"the controller created DaemonSet lvs-system/lvs-director-{group}; its pods run "
            "the director agents: starting them in the VM's director nodes ..."
        )
        for ns in sorted(self.director_namespaces()):
            s.start_agent(ns)
        t0 = time.monotonic()
        deadline = t0 + 300
        last_note = t0
        while time.monotonic() < deadline:
            if self.table() or time.monotonic() - last_note > 10:
                if time.monotonic() - last_note > 10:
                    say(
                        f"  ... {time.monotonic() - t0:.0f} s: agents starting in the VM "
                        "(Python under emulation: ~20-60 s), then electing an active director"
                    )
                last_note = time.monotonic()
            status = s.virtual_server().get("status") or {}
            ready = s.call("holders")
            if status.get("activeDirector") and ready and status.get("readyOfTotal") == "3/3":
                break
            time.sleep(1.0)
        self.table(force=True)
        res = s.call("wait_answers", timeout=120)
        if not res["ok"]:
            raise RuntimeError(f"no answer through the VIP: {res}\n{s.logs(40)}")
        say(
            f"converged {time.monotonic() - t0:.0f} s after the agents started; "
            f"the VIP answers (via {DIRECTORS[res['director']][0]})"
        )

    def director_namespaces(self) -> list[str]:
        from e2e.system import DIRECTORS

        return list(DIRECTORS)

    def table(self, force: bool = False) -> bool:
        """Print ``kubectl get lvs,rsp -o wide`` when it changed (AGE aside); True if printed."""
        text = self.s.status_table().rstrip()
        key = "\n".join(line.rsplit(None, 1)[0] for line in text.splitlines() if line.strip())
        if force or key != self.last_table:
            print(
                "  $ kubectl get lvs,rsp -o wide\n"
                + "\n".join(f"  {x}" for x in text.splitlines()),
                flush=True,
            )
            self.last_table = key
            return True
        return False

    def live(self, seconds: float, title: str) -> None:
        """Requests through the VIP for ``seconds``: answers per pod, printed every second."""
        from e2e.system import DIRECTORS

        s = self.s
        say(f"{title}: a request through 192.0.2.10:80 every 0.1 s from the client namespace")
        proc, out = s.start_loop(
            f"live-{time.monotonic():.0f}", interval=0.1, timeout=1.0, max_seconds=seconds + 30
        )
        seen = 0
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                time.sleep(1.0)
                rows = _rows(out)
                window, seen = rows[seen:], len(rows)
                counts = Counter(r[1] or "failed" for r in window)
                via = Counter(DIRECTORS[r[2]][0] for r in window if r[2])
                print(
                    "  answers/s: "
                    + "  ".join(f"{k}: {v:2d}" for k, v in sorted(counts.items()))
                    + "   via "
                    + ", ".join(sorted(via)),
                    flush=True,
                )
        finally:
            rows = s.stop_loop(proc, out)
        total = Counter(r[1] or "failed" for r in rows)
        say("total: " + ", ".join(f"{k} {v}" for k, v in sorted(total.items())))

    def three_tier(self) -> None:
        """examples/three-tier/ for real: Apache+PHP on the NFS share in the web pods'
        namespaces, MariaDB in mysql-0's, the NFS server at the PersistentVolume's address."""
        from e2e.three_tier.scenario import ThreeTier

        banner("5/7 the three-tier cluster: Apache on NFS and MySQL behind VIP 192.0.2.20")
        tt = ThreeTier(self.s)
        self.tt = tt
        timings = tt.deploy()
        ex = tt.example
        say(f"three tiers running {timings['total']} s after kubectl apply; waiting for the "
            f"directors to program {ex.vip}:{ex.port} -> :{ex.web_port} ...")  # fmt: skip
        res = self.s.call("wait_answers", vip=ex.vip, port=ex.port, timeout=120)
        if not res["ok"]:
            raise RuntimeError(f"no answer through {ex.vip}: {res}\n{tt.logs()}")
        table = self.s.kubectl("get", "lvs,rsp", "-n", ex.namespace, "-o", "wide", check=False)
        print(
            f"  $ kubectl -n {ex.namespace} get lvs,rsp -o wide\n"
            + "\n".join(f"  {x}" for x in table.rstrip().splitlines()),
            flush=True,
        )
        self.pages(5, "five visits from one browser (a PHP session cookie; the first request, "
                   "waiting for the VIP, was a visit too)")  # fmt: skip

    def pages(self, n: int, title: str) -> None:
        """``n`` visits of the three-tier page through its VIP: server, counters, message."""
        tt = self.tt
        if tt is None:
            return
        ex = tt.example
        say(f"{title}: curl -H 'Host: {ex.virtual_hosts[0].server_name}' "
            f"http://{ex.vip}:{ex.port}/")  # fmt: skip
        for _ in range(n):
            a = tt.page(cookie=self.cookie)
            h = a["headers"]
            set_cookie = h.get("set-cookie", "")
            self.cookie = set_cookie.split(";", 1)[0] if set_cookie else self.cookie
            message = next((x for x in a["body"].splitlines() if "NFS" in x or "nfs" in x), "")
            print(
                f"  {a['status']} from {h.get('x-server')} ({h.get('server', '?').split()[0]}):"
                f" visits in MySQL {h.get('x-visits')}, this session's {h.get('x-session-visits')}"
                + (f"; {_text(message)}" if message else ""),
                flush=True,
            )
        say(f"MySQL's visits table holds {tt.visits()} rows; the same web server answers every "
            f"visit (persistence {ex.persistence_timeout} s per client address)")  # fmt: skip

    def failovers(self) -> dict[str, Any]:
        from e2e.guest import analyse
        from e2e.system import DIRECTORS, OTHER

        s = self.s
        figures: dict[str, Any] = {}
        banner("6/7 planned handover: SIGTERM to the active director's agent")
        old = s.leader_ns()
        new = OTHER[old]
        say(f"active: {DIRECTORS[old][0]}; stopping its agent as a rolling update would ...")
        loop, out = s.start_loop("demo-handover", interval=0.05, timeout=2.0)
        proc = s.agents.pop(old)
        at = s.call("kill_agent", pid=proc.pid, sig=int(signal.SIGTERM))
        if proc.wait(30) is None:
            say("  the agent did not exit within 30 s: SIGKILL (as the kubelet would)")
            proc.kill()
            proc.wait(10)
        s.call("wait_holder", exclude=old, timeout=60)
        time.sleep(1.5)
        st = analyse(s.stop_loop(loop, out), at, old)
        figures["handover"] = st["to_new_director"]
        say(
            f"handover {DIRECTORS[old][0]} -> {DIRECTORS[new][0]}: first answer via the new "
            f"director {st['to_new_director']} s after SIGTERM; {st['failures']} of "
            f"{st['requests']} requests failed (one every 50 ms)"
        )
        self.table(force=True)
        say(f"restarting the agent on {DIRECTORS[old][0]} (as its DaemonSet would): standby")
        s.start_agent(old)
        s.wait_agents_ready([old], timeout=180)

        banner("7/7 crash: the active director node loses power")
        old = s.leader_ns()
        new = OTHER[old]
        say(f"active: {DIRECTORS[old][0]}; killing its agent and deleting its network ...")
        loop, out = s.start_loop("demo-crash", interval=0.05, timeout=0.5)
        proc = s.agents.pop(old)
        at = s.call("crash_node", ns=old, pid=proc.pid)
        s.call("wait_holder", exclude=old, timeout=90)
        time.sleep(2)
        st = analyse(s.stop_loop(loop, out), at, old)
        figures["crash"] = st["old_to_new"]
        say(
            f"crash failover {DIRECTORS[old][0]} -> {DIRECTORS[new][0]}: {st['old_to_new']} s "
            f"from the last answer via the dead director to the first via the new one "
            f"({st['failures']} requests failed meanwhile; the standby takes over once the "
            f"heartbeat is silent and no node answers ARP for the VIP: {s.timings})"
        )
        self.table(force=True)
        say(f"{DIRECTORS[old][0]} comes back: network restored, agent restarted -> standby")
        s.call("add_director", ns=old)
        s.start_agent(old)
        s.wait_agents_ready([old], timeout=180)
        self.table(force=True)
        return figures

    def serve_forever(self) -> None:
        """Interactive: keep a request loop running and print answers per pod every 5 s; new
        pods (kubectl scale) get their server in the VM."""
        from e2e.system import DIRECTORS

        s = self.s
        banner("running: Ctrl-C (or make demo-down) stops and removes everything")
        say(
            "reach the cluster:\n    "
            + self.kubeconfig_hint()
            + "\n    try: kubectl scale deployment web --replicas=5   (new pods get a server)"
        )
        proc, out = s.start_loop("demo-forever", interval=0.1, timeout=1.0, max_seconds=MAX_SECONDS)
        self.serving = True
        seen = 0
        try:
            while True:
                time.sleep(5.0)
                self.sync_new_pods()
                self.table()
                rows = _rows(out)
                window, seen = rows[seen:], len(rows)
                if not window:
                    say("the request loop ended")
                    return
                counts = Counter(r[1] or "failed" for r in window)
                via = Counter(DIRECTORS[r[2]][0] for r in window if r[2])
                print(
                    "  answers/5s: "
                    + "  ".join(f"{k}: {v:2d}" for k, v in sorted(counts.items()))
                    + "   via "
                    + ", ".join(sorted(via)),
                    flush=True,
                )
        finally:
            s.stop_loop(proc, out)

    def sync_new_pods(self) -> None:
        """New pods: not Ready until their server runs in the VM (a kubelet's readiness probe),
        then Ready; pods that are gone lose their namespace."""
        s = self.s
        known = set(s.pod_ns)
        for pod in s.web_pods():
            name = pod.metadata.name
            if name not in known and pod.status and pod.status.podIP:
                s.call("set_pod_ready", api=s.vm_api, namespace=APP_NS, pod=name, ready=False)
        for name in s.sync_pods():
            s.call("set_pod_ready", api=s.vm_api, namespace=APP_NS, pod=name, ready=True)
            say(f"new pod {name} ({s.pod_ip(name)}) serving")

    def run(self) -> int:
        t0 = time.monotonic()
        self.setup()
        banner("4/7 traffic through the VIP: answers per web pod (round robin)")
        self.live(self.live_seconds, "live count")
        self.three_tier()
        figures = self.failovers()
        self.live(min(self.live_seconds, 5), "after the failovers")
        self.pages(3, "the three-tier page after both failovers: the same session counts on")
        banner("summary")
        say(
            f"planned handover {figures['handover']} s, crash failover {figures['crash']} s "
            f"({self.s.timings}; TCG emulation: upper bounds); demo set-up and show took "
            f"{time.monotonic() - t0:.0f} s"
        )
        if self.interactive:
            self.serve_forever()
        return 0

    def close(self, keep_logs: bool = False) -> None:
        say("cleaning up: agents, VM, controller, control plane ...")
        self.s.close()
        STATE.unlink(missing_ok=True)
        if keep_logs:
            say(f"logs kept in {self.s.workdir}")
        else:
            shutil.rmtree(self.s.workdir, ignore_errors=True)
        say("done")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lvs-operator demo", description=__doc__.splitlines()[0])
    p.add_argument(
        "--once",
        action="store_true",
        help="run the show, then clean up and exit (default when CI=true or without a terminal)",
    )
    p.add_argument("--down", action="store_true", help="stop a running demo (make demo-down)")
    p.add_argument(
        "--stay",
        action="store_true",
        help="keep running after the show even without a terminal (e.g. in the background; "
        "stop it with make demo-down)",
    )
    p.add_argument("--live-seconds", type=float, default=8, help="length of the traffic show")
    a = p.parse_args(argv)
    if a.down:
        return down()
    ensure_python_deps()
    if STATE.exists():
        info = json.loads(STATE.read_text())
        if _alive(int(info.get("pid", 0))):
            say(f"a demo is already running (pid {info['pid']}): make demo-down stops it")
            return 1
        down()  # leftovers of a demo that was killed
    interactive = a.stay or (
        not a.once
        and os.environ.get("CI", "").lower() not in ("1", "true")
        and (sys.stdin.isatty() and sys.stdout.isatty())
    )
    ensure_tools()
    demo = Demo(interactive, a.live_seconds)

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    failed = False
    try:
        return demo.run()
    except KeyboardInterrupt:
        print(flush=True)
        if demo.serving:  # the documented way to stop a demo that has shown everything
            say("stopping")
            return 0
        say("interrupted")
        return 130
    except Exception as exc:
        failed = True
        say(f"the demo failed: {exc}\n{demo.s.logs(30)}")
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        demo.close(keep_logs=failed)


def _text(html: str) -> str:
    """A line of HTML as text (tags dropped)."""
    import re

    return re.sub(r"<[^>]+>", "", html).strip()


def _rows(path: str) -> list[Any]:
    from e2e.system import _read_jsonl

    return _read_jsonl(path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
