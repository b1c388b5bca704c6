"""Host side: real director agents in the VM against the fake API server on the host.

``Lab`` puts the pieces together for test_agent.py and bench/failover.py: the fake API
(tests/dataplane/fakeapi.py, reached from the VM as 10.0.2.2), uplinks from the director
namespaces, the VirtualServer/RealServerPool objects the controller would have written
(labelled with the director group, pool status with members), and ``lvs-operator director``
processes in lvs-dir-a / lvs-dir-b.
"""

from __future__ import annotations

import contextlib
import copy
import json
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.dataplane import topology as topo_mod
from tests.dataplane.deployed import agent_argv, init_argvs, shipped_pod_terms
from tests.dataplane.fakeapi import FakeApi
from tests.dataplane.vm import AGENT_STARTUP_LIMIT, GuestProcess, Vm, agent_startup

GROUP = "gtest"
NAMESPACE = "lvs-system"
LEASE = f"lvs-director-{GROUP}"
APP_NS = "demo"
SCEN = "tests.dataplane.scenarios_agent"
NODES = {"lvs-dir-a": "dir-a", "lvs-dir-b": "dir-b"}
# the controller's --vip-ranges for the DaemonSet the agents run under (tests/dataplane/
# deployed.py): the topology's VIPs of both families
VIP_RANGES = ("10.10.0.0/24", "fd10::/64")
# Election timings for the agents in the VM: the product's defaults unless LVS_DP_LEASE
# ("duration,deadline,retry") or LVS_DP_PEER ("interval,timeout") say otherwise (benches).


def pool(name: str = "web", weights: dict[str, int] | None = None,
         not_ready: tuple[str, ...] = (),
         health: dict[str, Any] | None = None, family: int = 4) -> dict[str, Any]:  # fmt: skip
    """The real servers' pool as the controller writes it: their IPv4 (``family=4``) or IPv6
    (``family=6``) addresses on the back segment."""
    topo = topo_mod.default_topology()
    addresses = topo.back if family == 4 else topo.back6
    members = []
    for rs in topo.real_servers:
        short = topo.rs_name(rs)
        members.append({
            "address": addresses[rs],
            "weight": (weights or {}).get(short, 1),
            "ready": short not in not_ready,
            "serving": short not in not_ready,
            "terminating": False,
            "source": "pod",
            "pod": f"{short}-pod",
            "node": "worker",
            "ports": [{"name": "http", "port": topo_mod.HTTP_PORT},
                      {"name": str(topo_mod.HTTP_PORT), "port": topo_mod.HTTP_PORT}],
        })  # fmt: skip
    return {
        "apiVersion": "lvs.io/v1alpha1",
        "kind": "RealServerPool",
        "metadata": {"name": name, "namespace": APP_NS},
        "spec": {"selector": {"matchLabels": {"app": name}},
                 **({"healthCheck": health} if health else {})},
        "status": {"members": members, "readyMembers": len(members) - len(not_ready),
                   "totalMembers": len(members)},
    }  # fmt: skip


def virtual_server(name: str, vip: str, port: int, target: int | str | None = "http",
                   pool_name: str = "web", **spec: Any) -> dict[str, Any]:  # fmt: skip
    p: dict[str, Any] = {"port": port, "protocol": "TCP"}
    if target is not None:
        p["targetPort"] = target
    body: dict[str, Any] = {"vip": vip, "ports": [p], "poolRef": {"name": pool_name},
                            "directors": {"nodeSelector": {"lvs.io/director": "true"}}}  # fmt: skip
    body.update(spec)
    # as the controller leaves it: labelled for the group, and accepted in the status (what
    # the agents trust; the label only selects what they watch)
    return {
        "apiVersion": "lvs.io/v1alpha1",
        "kind": "VirtualServer",
        "metadata": {"name": name, "namespace": APP_NS,
                     "labels": {"lvs.io/director-group": GROUP}},
        "spec": body,
        "status": {"directorGroup": GROUP, "acceptedVIP": vip},
    }  # fmt: skip


class Lab:
    def __init__(self, vm: Vm, lease: str | None = None, peer: str | None = None) -> None:
        import os

        self.vm = vm
        lease = lease or os.environ.get("LVS_DP_LEASE")
        peer = peer or os.environ.get("LVS_DP_PEER")
        # the first Lease read at start-up takes seconds under TCG: a longer grace
        grace = os.environ.get("LVS_DP_STARTUP_GRACE", "5")
        self.lease_flags = ["--startup-grace", grace]
        if lease:
            duration, deadline, retry = lease.split(",")
            self.lease_flags += ["--lease-duration", duration, "--renew-deadline", deadline,
                                 "--retry-period", retry]  # fmt: skip
        if peer:
            interval, timeout = peer.split(",")
            self.lease_flags += ["--peer-interval", interval, "--peer-timeout", timeout]
        # the group's heartbeat key, as the DaemonSet mounts it from the controller's Secret
        self.peer_key = vm.shared / "peer.key"
        self.peer_key.write_bytes(os.urandom(32))
        self.api = FakeApi().start()
        self.kubeconfig = self.api.kubeconfig(vm.shared / "kubeconfig.json")
        self.api_url = f"http://10.0.2.2:{self.api.port}"
        self.agents: dict[str, GuestProcess] = {}
        self.starts: dict[str, float] = {}
        # the shipped DaemonSet's terms: capabilities, init containers (deployed.py)
        self.pod_terms = shipped_pod_terms(VIP_RANGES)
        self.initialised: set[str] = set()  # director namespaces whose init step ran

    def close(self) -> None:
        for proc in list(self.agents.values()):
            proc.kill()
        self.api.stop()

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.api.apply(copy.deepcopy(obj))

    def lease(self) -> dict[str, Any] | None:
        return self.api.get("Lease", NAMESPACE, LEASE)

    def holder(self) -> str:
        lease = self.lease()
        return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")

    def init_node(self, ns: str) -> None:
        """The DaemonSet's init containers on node ``ns``, once (kubelet runs them once per
        pod; a restarted agent container does not rerun them)."""
        if ns in self.initialised:
            return
        for argv in init_argvs(self.pod_terms, self.vm.shared, self.vm_python()):
            res = self.vm.run(argv, netns=ns, timeout=240)
            assert res.returncode == 0, f"init step {argv} in {ns}: {res}"
            print(f"\n[dataplane] init step in {ns}: {res.stdout.strip()}")
        self.initialised.add(ns)

    def start_agent(self, ns: str, *extra: str, group: str = GROUP) -> GuestProcess:
        """``lvs-operator director`` in ``ns`` as the DaemonSet runs it (deployed.py)."""
        self.init_node(ns)
        args = [
            "--node-name", NODES[ns], "--namespace", NAMESPACE, "--group", group,
            "--kubeconfig", str(self.kubeconfig), "--peer-key-file", str(self.peer_key),
            *self.lease_flags, *extra,
        ]  # fmt: skip
        argv, env = agent_argv(self.pod_terms, args, {"POD_NAME": f"lvs-director-{NODES[ns]}"},
                               self.vm.shared, self.vm_python())  # fmt: skip
        proc = self.vm.spawn(argv, netns=ns, name=f"agent-{NODES[ns]}", env=env)
        self.agents[ns] = proc
        self.starts[ns] = time.monotonic()
        return proc

    def wait_started(self, namespaces: list[str]) -> dict[str, dict[str, Any]]:
        """Until each agent has started (read the kernel: observed in its log, however long
        Python's start-up takes under TCG) and then answers /readyz. Raises, saying which
        step was slow, when an agent does not get there."""
        startups = {}
        for ns in namespaces:
            startup = agent_startup(self.agents[ns])
            assert startup["ok"], (
                f"agent {ns} did not read the kernel within {AGENT_STARTUP_LIMIT:.0f} s of its "
                f"spawn: {startup}"
            )
            startups[ns] = {k: v for k, v in startup.items() if k != "log_tail"}
        # from the kernel read on: lists, the first converge and the HTTP server, ~1-3 s here
        ready = self.call("wait_ready", namespaces=namespaces, within=60)
        assert len(ready) == len(namespaces), (
            f"agents started but not ready within 60 s of their kernel read: ready {ready}, "
            f"start-up {startups}\n{self.logs()}"
        )
        return startups

    def stop_agent(self, ns: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        proc = self.agents.pop(ns)
        proc.signal(sig)
        return proc.wait(timeout)

    def vm_python(self) -> str:
        from tests.dataplane.vm import guest_python

        return guest_python()

    def call(self, fn: str, **kwargs: Any) -> Any:
        """A guest function of scenarios_agent; its own bound is ``within`` (seconds), the
        call's is that plus a margin."""
        bound = float(kwargs.get("within", 120)) + 180
        return self.vm.call(f"{SCEN}:{fn}", timeout=bound, **kwargs)

    def leader_ns(self) -> str:
        holder = self.holder()
        return next(ns for ns, node in NODES.items() if node == holder)

    def logs(self, tail: int = 6000) -> str:
        out = []
        for ns, proc in self.agents.items():
            out.append(f"--- {ns} ---\n{proc.output()[-tail:]}")
        return "\n".join(out)

    def start_loop(
        self, name: str, vip: str, port: int, timeout: float | None = None
    ) -> tuple[GuestProcess, str]:
        out = str(self.vm.shared / f"loop-{name}.json")
        for stale in ("", ".started", ".failures"):  # a loop of the same name before
            with contextlib.suppress(FileNotFoundError):
                (self.vm.shared / f"loop-{name}.json{stale}").unlink()
        extra = [] if timeout is None else ["--timeout", str(timeout)]
        proc = self.vm.spawn(
            [self.vm_python(), "-m", SCEN, "loop", "--out", out, "--vip", vip,
             "--port", str(port), *extra],
            netns=topo_mod.CLIENT, name=f"loop-{name}",
        )  # fmt: skip
        deadline = time.monotonic() + 120
        started = self.vm.shared / f"loop-{name}.json.started"
        while not started.exists():
            if time.monotonic() > deadline:
                raise AssertionError(f"request loop {name} got no answer:\n{proc.output()}")
            time.sleep(0.1)
        time.sleep(1.0)  # a second of steady traffic before the event
        return proc, out

    def start_sampler(self, name: str, vip: str) -> tuple[GuestProcess, str]:
        """Which directors hold ``vip`` and answer ARP for it, every 10 ms (its own process in
        the VM; scenarios_agent.sampler_main)."""
        out = str(self.vm.shared / f"sampler-{name}.jsonl")
        with contextlib.suppress(FileNotFoundError):
            (self.vm.shared / f"sampler-{name}.jsonl").unlink()
        proc = self.vm.spawn(
            [self.vm_python(), "-m", SCEN, "sampler", "--out", out, "--vip", vip],
            name=f"sampler-{name}",
        )
        deadline = time.monotonic() + 60
        while not (self.vm.shared / f"sampler-{name}.jsonl").exists():
            if time.monotonic() > deadline or not proc.running():
                raise AssertionError(f"the VIP sampler did not start:\n{proc.output()}")
            time.sleep(0.1)
        return proc, out

    def stop_sampler(self, proc: GuestProcess, out: str) -> list[dict[str, Any]]:
        proc.signal(signal.SIGTERM)
        proc.wait(30)
        return self.call("read_samples", path=out)  # type: ignore[no-any-return]

    def start_held(self, name: str, vip: str, port: int, count: int) -> tuple[GuestProcess, str]:
        """``count`` long-lived connections through vip:port, each asking every 100 ms
        (held_connections.py), once every one of them has answered."""
        out = str(self.vm.shared / f"held-{name}.json")
        for stale in ("", ".started"):
            with contextlib.suppress(FileNotFoundError):
                Path(out + stale).unlink()
        proc = self.vm.spawn(
            [self.vm_python(), "-m", "tests.dataplane.held_connections", "--out", out,
             "--vip", vip, "--port", str(port), "--count", str(count)],
            netns=topo_mod.CLIENT, name=f"held-{name}",
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while not Path(out + ".started").exists():
            if time.monotonic() > deadline or not proc.running():
                raise AssertionError(f"held connections {name} never all answered:\n"
                                     f"{proc.output()}")  # fmt: skip
            time.sleep(0.1)
        return proc, out

    def stop_held(self, proc: GuestProcess, out: str) -> dict[str, Any]:
        proc.signal(signal.SIGTERM)
        proc.wait(30)
        p = Path(out)
        return json.loads(p.read_text()) if p.exists() else {}  # type: ignore[no-any-return]

    def start_neighbour_monitor(self, name: str) -> GuestProcess:
        """``ip -ts monitor neigh`` in the client's namespace: every change of its neighbour
        cache, time-stamped by the kernel's event (see ``neighbour_changed_at``)."""
        proc = self.vm.spawn(["stdbuf", "-oL", "ip", "-ts", "monitor", "neigh"],
                             netns=topo_mod.CLIENT, name=f"neigh-{name}")  # fmt: skip
        time.sleep(0.5)  # subscribed before the event
        return proc

    @staticmethod
    def neighbour_changed_at(proc: GuestProcess, address: str, mac: str) -> float | None:
        """Stop the monitor; the guest wall time of the first event naming ``address`` at
        ``mac`` (e.g. the client's cache taking a new leader's neighbour advertisement)."""
        proc.signal(signal.SIGTERM)
        proc.wait(10)
        for line in proc.output().splitlines():
            # [2026-12-06T09:49:12.123456] fd10::100 dev front lladdr 0e:35:... STALE
            stamp, _, rest = line.partition("] ")
            words = rest.split()
            if words[:1] == [address] and "lladdr" in words and mac in words:
                with contextlib.suppress(ValueError):
                    return datetime.fromisoformat(stamp.lstrip("[")).timestamp()
        return None

    def stop_loop(self, proc: GuestProcess, out: str) -> list[tuple[float, str | None]]:
        proc.signal(signal.SIGTERM)
        proc.wait(30)
        return self.call("read_loop", path=out)  # type: ignore[no-any-return]


def handover_steps(old: GuestProcess, new: GuestProcess) -> dict[str, float | None]:
    """A planned handover step by step, from the two agents' logs (guest wall clock, seconds
    from the old leader's SIGTERM): the old one retires its VIPs and releases the Lease, the
    new one sees it free, installs the relay, adds the VIPs."""

    def first_ts(proc: GuestProcess, msg: str, after: float = 0.0) -> float | None:
        return next((float(r["ts"]) for r in proc.records()
                     if str(r.get("msg", "")).startswith(msg) and float(r["ts"]) >= after),
                    None)  # fmt: skip

    t0 = first_ts(old, "stopping: releasing the Lease")
    if t0 is None:
        return {}
    marks = {
        "lease_released": first_ts(old, "lease released", t0),
        "new_leader": first_ts(new, "became leader", t0),
        "relay_installed": first_ts(new, "relaying the old leader's connections", t0),
        "vip_added": first_ts(new, "VIP added", t0),
    }
    return {k: None if v is None else round(v - t0, 3) for k, v in marks.items()}
