"""One director agent at scale in the data-plane VM: cold sync against ``ipvsadm-restore``,
pod Ready -> kernel latency with the table loaded, memory, event-loop stalls, and a restart
that adopts the table (issue 19's agent figures).

    python bench/agent_scale.py [--services 1000] [--dests 10] [--samples 40] [--steady 60]

Boots the VM (tests/dataplane/vm.py) and the fake API server on the host with ``--services``
RealServerPools of ``--dests`` ready members each and one VirtualServer per pool (VIP
10.30.x.y:80, masquerade, rr), all labelled for one director group, then:

1. **baseline**: ``ipvsadm-restore`` of the same table (services x (1 + dests) rules) in
   lvs-dir-b, timed, then cleared;
2. **cold sync**: one ``lvs-operator director`` in lvs-dir-a under the DaemonSet's terms
   (tests/dataplane/deployed.py); its first converge (``lvs_director_converge_seconds``:
   build, read, diff, apply) against the restore, and spawn -> /readyz;
3. **steady state**: RSS every 15 s for ``--steady`` s (Lease renewals, resyncs);
4. **pod Ready -> kernel**: ``--samples`` times, a member of a random pool is marked not
   ready (its destination leaves the kernel), then ready again: the seconds from the API
   write until a netlink dump of that one service shows the destination with its weight
   (polled every 20 ms in the director's namespace by a Python loop in the guest, which
   shares the emulated CPUs with the agent; 5 ms before 2026-12-07). Each write after 0.5 s
   of quiet, all over one kept-alive connection (a controller's client keeps one; before
   2026-12-07 each was a new connection and a guest call of its own). Median, p99, max, and
   each sample split by the agent's log (``ready_path``);
5. **restart**: the agent is killed (SIGKILL) and started again: spawn -> ready, its first
   converge, the IPVS writes it made (``lvs_director_ipvs_changes``: 0 when it adopts the
   table as it is), and the VIPs it had to add again within ``--restart-watch`` s of ready
   (each one lapsed during the restart);
6. each agent's longest event-loop stall, its kernel reads by reason, and the VIPs that
   lapsed and were added again;
7. from each agent's log (kept in ``--logs``): its converges' steps (the ``phases`` of each
   ``IPVS converged`` line: median and max seconds per step) and its late lifetime renewals.

Figures, not asserts: a 2-core host running TCG is slow and noisy; compare within a run.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "operator"))

from tests.dataplane.agents import APP_NS, Lab, virtual_server  # noqa: E402
from tests.dataplane.deployed import shipped_pod_terms  # noqa: E402
from tests.dataplane.vm import GuestCallError, Vm  # noqa: E402

GUEST = "bench.agent_scale_guest"
DIRECTOR, BASELINE = "lvs-dir-a", "lvs-dir-b"
PORT = 80


def vip(i: int) -> str:
    return f"10.30.{i // 250}.{1 + i % 250}"


def member(j: int) -> str:
    return f"10.20.{1 + j // 250}.{1 + j % 250}"


def pool(i: int, dests: int) -> dict[str, Any]:
    members = [
        {"address": member(j), "weight": 1, "ready": True, "serving": True,
         "terminating": False, "source": "pod", "ports": [{"name": "http", "port": 8080}]}
        for j in range(dests)
    ]  # fmt: skip
    return {
        "apiVersion": "lvs.io/v1alpha1",
        "kind": "RealServerPool",
        "metadata": {"name": f"pool{i}", "namespace": APP_NS},
        "spec": {"selector": {"matchLabels": {"app": f"app{i}"}}},
        "status": {"members": members},
    }


def restore_rules(services: int, dests: int) -> str:
    return "".join(
        f"-A -t {vip(i)}:{PORT} -s rr\n"
        + "".join(f"-a -t {vip(i)}:{PORT} -r {member(j)}:8080 -m -w 1\n" for j in range(dests))
        for i in range(services)
    )


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` (with these labels) in a /metrics text."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric_name = head.split("{", 1)[0]
        if metric_name != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def samples_by_label(text: str, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            head, _, value = line.rpartition(" ")
            for part in head.split("{", 1)[1].rstrip("}").split(","):
                k, _, v = part.partition("=")
                if k == label:
                    out[v.strip('"')] = float(value)
    return out


def profile(lab: Lab, pid: int, seconds: float, name: str) -> Any:
    """py-spy (pip) on the shared root filesystem samples the agent for ``seconds`` from now
    (5 a second, without stopping it: under TCG a stopped process's stacks were often
    unreadable, and at 20 a second it fell 20 s behind); its raw profile goes to
    ``<shared>/<name>.prof`` when the returned process ends."""
    out = lab.vm.shared / f"{name}.prof"
    spy = Path(sys.prefix) / "bin" / "py-spy"
    return lab.vm.spawn([str(spy), "record", "--nonblocking", "--threads", "--rate", "5",
                         "--duration", str(int(seconds)), "--format", "raw",
                         "--output", str(out), "--pid", str(pid)], name="py-spy")  # fmt: skip


def start(
    lab: Lab, resync: float, profile_seconds: float = 0
) -> tuple[Any, float, dict[str, float], Any]:
    """The agent started and ready: its process, spawn -> ready, /readyz's answer, and the
    py-spy process sampling it from its spawn (``profile_seconds`` > 0; else None)."""
    t0 = time.monotonic()
    proc = lab.start_agent(DIRECTOR, "--resync-interval", str(resync))
    spy = profile(lab, proc.pid, profile_seconds, "restart") if profile_seconds > 0 else None
    ready = lab.call("wait_ready", namespaces=[DIRECTOR], within=1800)
    if DIRECTOR not in ready:
        raise SystemExit(f"agent not ready within 1800 s:\n{proc.output()[-3000:]}")
    return proc, time.monotonic() - t0, ready, spy


def report_agent(lab: Lab, label: str) -> dict[str, float]:
    # a scrape of 1,000 x 10 (~75,000 series) took over 60 s under TCG once the agent was
    # loaded: a long wait, and a failed one is reported, not fatal (the restart still runs)
    try:
        text = lab.vm.call(f"{GUEST}:metrics", ns=DIRECTOR, timeout=360,
                           arguments={"timeout": 300})  # fmt: skip
    except GuestCallError as exc:
        print(f"{label}: /metrics not read ({str(exc).splitlines()[-1]})")
        return {"converges": 0.0, "converge_seconds": 0.0, "changes": -1.0, "stall": -1.0}
    count = metric(text, "lvs_director_converge_seconds_count")
    first = metric(text, "lvs_director_converge_seconds_sum")
    changes = metric(text, "lvs_director_ipvs_changes_total")
    stall = metric(text, "lvs_director_event_loop_longest_stall_seconds")
    gc_pause = metric(text, "lvs_director_gc_longest_pause_seconds")
    gcs = {g: metric(text, "lvs_director_gc_pause_seconds_count", generation=g) for g in "012"}
    reads = samples_by_label(text, "lvs_director_kernel_reads_total", "reason")
    buckets = samples_by_label(text, "lvs_director_event_loop_stall_seconds_bucket", "le")
    print(f"{label}: converges so far {count:.0f} taking {first:.2f} s in all; IPVS "
          f"writes {changes:.0f}; longest event-loop stall {stall:.3f} s; longest garbage "
          f"collection {gc_pause:.3f} s (collections by generation {gcs}); full kernel "
          f"reads {reads}")  # fmt: skip
    return {"converges": count, "converge_seconds": first, "changes": changes, "stall": stall,
            **{f"le={le}": n for le, n in buckets.items()}}  # fmt: skip


def phase_stalls(before: dict[str, float], after: dict[str, float]) -> str:
    """The stalls between two reports, from the stall histogram's cumulative buckets: how
    many exceeded 100 ms and 250 ms, and the bucket the phase's longest one falls in (the
    longest-stall gauge counts from the start, the cold start's imports included)."""
    bounds = sorted((float(k[3:]), k) for k in after if k.startswith("le=") and k != "le=+Inf")
    total = after.get("le=+Inf", 0.0) - before.get("le=+Inf", 0.0)
    if not bounds or total <= 0:
        return "no looks recorded"
    delta = {k: after[k] - before.get(k, 0.0) for _, k in bounds}
    over = {b: total - delta[k] for b, k in bounds if b in (0.1, 0.25)}
    lower = 0.0
    for bound, key in bounds:
        if delta[key] >= total:
            longest = f"{lower:g}-{bound:g} s"
            break
        lower = bound
    else:
        longest = f"over {lower:g} s"
    return (
        f"{total:.0f} looks, {over.get(0.1, 0):.0f} late by over 100 ms, "
        f"{over.get(0.25, 0):.0f} over 250 ms, the longest {longest}"
    )


def profile_summary(path: Path, top: int = 12) -> str:
    """py-spy's raw profile (a line per distinct stack: ``frame;frame;... count``, the
    first frame its thread): samples per thread, and the functions of this repository or
    the standard library seen in the most samples (anywhere on the stack)."""
    if not path.exists():
        return "no profile (py-spy failed or is not installed: pip install py-spy)"
    threads: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = next((f for f in frames if f.startswith("thread ")), frames[0])
        threads[thread] = threads.get(thread, 0) + n
        total += n
        # a function once per stack (its name and file), however many of its lines are on it
        names = {f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].split(":")[0]
                 for f in frames if "lvs_operator" in f}  # fmt: skip
        for name in names:
            inclusive[name] = inclusive.get(name, 0) + n
    busiest = sorted(threads.items(), key=lambda kv: -kv[1])[:8]
    functions = sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]
    return (
        f"{total} samples; by thread {busiest}; the agent's functions in the most "
        f"samples: " + "; ".join(f"{name} {n}" for name, n in functions)
    )


def log_records(output: str) -> list[dict[str, Any]]:
    """The agent's JSON log lines."""
    records = []
    for line in output.splitlines():
        try:
            record = json.loads(line[line.index("{") :])
        except ValueError:  # not a JSON line (or no "{" at all)
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def first_converge(output: str) -> tuple[float, dict[str, float]] | None:
    """The first converge's seconds from the desired table's build on, and its steps, from
    its log line (``lvs_director_converge_seconds`` starts after the build)."""
    for record in log_records(output):
        msg = str(record.get("msg", ""))
        if msg.startswith(("IPVS converged", "IPVS converge without changes")):
            return float(record.get("seconds", 0.0)), dict(record.get("phases") or {})
    return None


def ready_path(output: str, flips: list[tuple[dict[str, Any], str, str]]) -> dict[str, list[float]]:
    """Each pod-Ready sample split by the agent's log (guest and agent share the VM's clock):
    ``write``: the write through the VM's user network to the fake API on the host, until it
    answered; ``event``: from that answer to the agent's wake-up (the watch event back the same
    way, the agent's handling of it); ``queued``:
    wake-up to the desired table's build (the converge loop); ``converge``: the converge's own
    seconds; ``seen``: from its log line to the sample's poll seeing the change."""
    converges = [r for r in log_records(output)
                 if str(r.get("msg", "")).startswith("IPVS converged")]  # fmt: skip
    path: dict[str, list[float]] = {"write": [], "event": [], "queued": [], "converge": [],
                                    "seen": []}  # fmt: skip
    for back, vip_, address in flips:
        change = f"add-dest TCP/{vip_}:{PORT} -> {address}:"
        for r in converges:
            if r["ts"] >= back["at"] and any(c.startswith(change) for c in r["changes"]):
                queued = r["phases"].get("queued", 0.0)
                path["write"].append(back["put"])
                path["event"].append(r["ts"] - r["seconds"] - queued - back["at"] - back["put"])
                path["queued"].append(queued)
                path["converge"].append(r["seconds"])
                path["seen"].append(back["at"] + back["seconds"] - r["ts"])
                break
    return path


def log_summary(output: str, label: str, logs: Path) -> None:
    """Keep the agent's log; print where its converges' time went and its late renewals."""
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"agent-{label}.log").write_text(output)
    phases: dict[str, list[float]] = {}
    totals: list[float] = []
    late = 0
    rounds: list[dict[str, object]] = []  # "VIP lifetime round late": where the time went
    for record in log_records(output):
        msg = str(record.get("msg", ""))
        if msg == "VIP lifetimes renewed late":
            late += 1
        if msg == "VIP lifetime round late":
            rounds.append(record)
        if not msg.startswith("IPVS converged") or not isinstance(record.get("phases"), dict):
            continue
        totals.append(float(record.get("seconds", 0.0)))
        for step, seconds in record["phases"].items():
            phases.setdefault(step, []).append(float(seconds))
    steps = ", ".join(f"{step} {statistics.median(v):.3f}/{max(v):.3f}"
                      for step, v in phases.items())  # fmt: skip
    if totals:
        print(f"{label}: {len(totals)} converges with changes, seconds median "
              f"{statistics.median(totals):.3f} max {max(totals):.3f}; per step (median/max "
              f"s): {steps}")  # fmt: skip
    print(f"{label}: late lifetime renewals logged: {late}; log: {logs}/agent-{label}.log")
    fields = ("since_last_round_seconds", "woke_late_seconds", "lane_wait_seconds",
              "renewal_seconds", "behind")  # fmt: skip
    print(
        f"{label}: late lifetime rounds: {len(rounds)}"
        + "".join(f"\n  {', '.join(f'{f} {r.get(f)}' for f in fields)}" for r in rounds[:10])
    )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--dests", type=int, default=10)
    p.add_argument("--samples", type=int, default=40)
    p.add_argument("--steady", type=float, default=60)
    p.add_argument("--resync", type=float, default=30, help="the agent's --resync-interval")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--restart-watch", type=float, default=30,
                   help="seconds the restarted agent is watched for lapsed VIPs")  # fmt: skip
    p.add_argument(
        "--profile",
        choices=("restart", "samples"),
        help="py-spy on the agent: the restart from its spawn, or the samples",
    )
    p.add_argument("--profile-seconds", type=float, default=40)
    p.add_argument("--logs", type=Path, default=Path("/tmp/agent_scale-logs"),
                   help="where the agents' logs are kept")  # fmt: skip
    a = p.parse_args(argv)
    rng = random.Random(a.seed)
    n, m = a.services, a.dests
    print(f"agent at scale: {n} VirtualServers x {m} real servers ({n} pools), "
          f"{n * (1 + m)} IPVS entries")  # fmt: skip
    with Vm() as vm:
        print(f"VM booted in {vm.boot_seconds:.1f}s")
        vm.call("tests.dataplane.topology:build", timeout=180)
        lab = Lab(vm, lease="10,7,2")
        lab.pod_terms = shipped_pod_terms(("10.30.0.0/16",))
        try:
            lab.call("setup")
            restore_s = vm.call(f"{GUEST}:restore", ns=BASELINE, rules=restore_rules(n, m),
                                timeout=1500)  # fmt: skip
            print(f"baseline: ipvsadm-restore of the table in {restore_s:.2f} s")
            pools = [pool(i, m) for i in range(n)]
            t0 = time.monotonic()
            for i in range(n):
                lab.apply(pools[i])
                lab.apply(virtual_server(f"vs{i}", vip(i), PORT, "http", pool_name=f"pool{i}",
                                         scheduler="rr"))  # fmt: skip
            print(f"fake API: {2 * n} objects in {time.monotonic() - t0:.1f} s")

            proc, spawn_ready, _, _ = start(lab, a.resync)
            cold = report_agent(lab, "cold start")
            table = lab.call("weights", ns=DIRECTOR)
            print(f"cold sync: spawn -> ready {spawn_ready:.1f} s (Python start-up under TCG "
                  f"included); kernel {len(table)} services, "
                  f"{sum(len(d) for d in table.values())} destinations; converging "
                  f"({cold['converges']:.0f} converges) {cold['converge_seconds']:.2f} s = "
                  f"{cold['converge_seconds'] / restore_s:.2f}x ipvsadm-restore")  # fmt: skip

            rss, parts = [], []
            for _ in range(max(1, int(a.steady // 15))):
                time.sleep(15)
                rss.append(lab.call("rss_mib", pid=proc.pid))
                parts.append(vm.call(f"{GUEST}:rss_parts", pid=proc.pid))
            built = first_converge(proc.output())
            if built is not None:
                seconds, steps = built
                print(f"cold sync with the desired table's build (its log line): {seconds:.2f} s "
                      f"= {seconds / restore_s:.2f}x ipvsadm-restore; steps {steps}")  # fmt: skip
            print(f"RSS every 15 s of steady state: {rss} MiB")
            print(f"RSS by kind (MiB), first and last: {parts[0]}; {parts[-1]}")

            latencies, removals, misses = [], [], 0
            flips: list[tuple[dict[str, Any], str, str]] = []
            chosen = [(rng.randrange(n), member(rng.randrange(m))) for _ in range(a.samples)]
            samples = [{"pool": pools[i], "address": address, "vip": vip(i), "port": PORT}
                       for i, address in chosen]  # fmt: skip
            if a.profile == "samples":
                spy = profile(lab, proc.pid, a.profile_seconds, "samples")
            answers = vm.call(f"{GUEST}:flips", netns=DIRECTOR, api_url=lab.api_url,
                              samples=samples, within=60,
                              timeout=60 + 2 * a.samples * 62)  # fmt: skip
            for (i, address), answer in zip(chosen, answers, strict=True):
                gone, back = answer["gone"], answer["back"]
                if back["seconds"] is None or gone["seconds"] is None:
                    misses += 1
                    continue
                removals.append(gone["seconds"])
                latencies.append(back["seconds"])
                flips.append((back, vip(i), address))
            if latencies:
                ordered = sorted(latencies)
                p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
                print(f"pod Ready -> its destination in the kernel ({len(latencies)} samples, "
                      f"{misses} missed): median {statistics.median(latencies) * 1000:.0f} ms, "
                      f"p99 {p99 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms; "
                      f"not ready -> gone (a drain: reads the kernel): median "
                      f"{statistics.median(removals) * 1000:.0f} ms")  # fmt: skip
                print(f"pod Ready -> kernel, each sample (ms, sorted): "
                      f"{[round(v * 1000) for v in ordered]}")  # fmt: skip
                path = ready_path(proc.output(), flips)
                if path["write"]:
                    found = len(path["write"])
                    slowest = max(range(found), key=lambda k: sum(v[k] for v in path.values()))
                    medians = ", ".join(f"{step} {statistics.median(v) * 1000:.0f}"
                                        for step, v in path.items())  # fmt: skip
                    worst = ", ".join(f"{step} {v[slowest] * 1000:.0f}" for step, v in path.items())
                    print(f"pod Ready -> kernel by step ({found} samples found in the log), "
                          f"median ms: {medians}; the slowest sample's: {worst}")  # fmt: skip
            if a.profile == "samples":
                spy.wait(300)  # (py-spy writes its file when it is done)
                print(f"samples profile (py-spy, {a.profile_seconds:.0f} s): "
                      f"{profile_summary(vm.shared / 'samples.prof')}")  # fmt: skip
            steady = report_agent(lab, "after the samples")
            print(f"RSS after the samples: {lab.call('rss_mib', pid=proc.pid)} MiB "
                  f"{vm.call(f'{GUEST}:rss_parts', pid=proc.pid)}")  # fmt: skip
            # every add past the cold start's is a VIP that lapsed (its lifetime ran out
            # before a renewal) and was added again
            log_summary(proc.output(), "first", a.logs)
            adds = proc.output().count('"msg": "VIP added"')
            print(f"VIPs added since the start: {adds} (the cold start's: {n}); lapsed and "
                  f"added again: {max(0, adds - n)}")  # fmt: skip

            lab.agents.pop(DIRECTOR)
            proc.signal(signal.SIGKILL)
            proc.wait(30)
            spied = a.profile_seconds if a.profile == "restart" else 0
            proc, spawn_ready, _, restart_spy = start(lab, a.resync, spied)
            restart = report_agent(lab, "restart")
            print(f"restart: spawn -> ready {spawn_ready:.1f} s; converging "
                  f"({restart['converges']:.0f} converges) {restart['converge_seconds']:.2f} s = "
                  f"{restart['converge_seconds'] / restore_s:.2f}x ipvsadm-restore; "
                  f"IPVS writes {restart['changes']:.0f}; RSS "
                  f"{lab.call('rss_mib', pid=proc.pid)} MiB")  # fmt: skip
            built = first_converge(proc.output())
            if built is not None:
                seconds, steps = built
                print(f"restart with the desired table's build (its log line): {seconds:.2f} s "
                      f"= {seconds / restore_s:.2f}x ipvsadm-restore; steps {steps}")  # fmt: skip
            # every VIP was on the node at the kill: any add by the restarted agent is one
            # that lapsed during the restart (watched a few lifetimes past ready)
            time.sleep(max(a.restart_watch, spied - spawn_ready + 5))
            if restart_spy is not None:
                restart_spy.wait(300)  # (py-spy writes its file when it is done)
                print(f"restart profile (py-spy, {spied:.0f} s from the spawn): "
                      f"{profile_summary(lab.vm.shared / 'restart.prof')}")  # fmt: skip
            log_summary(proc.output(), "restart", a.logs)
            for record in log_records(proc.output()):
                if str(record.get("msg", "")).startswith("kernel table verified"):
                    since = record.get("seconds_since_adoption")
                    print(f"restart: {record['msg']}, {since} s after the adoption")
            readded = proc.output().count('"msg": "VIP added"')
            print(f"VIPs added by the restarted agent within {a.restart_watch:.0f} s of ready "
                  f"(each lapsed during the restart): {readded}")  # fmt: skip
            print(f"longest event-loop stall: cold {cold['stall']:.3f} s, through the samples "
                  f"{steady['stall']:.3f} s, restart {restart['stall']:.3f} s")  # fmt: skip
            print(f"event-loop stalls after the cold start (steady state and samples): "
                  f"{phase_stalls(cold, steady)}")  # fmt: skip
        finally:
            lab.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
