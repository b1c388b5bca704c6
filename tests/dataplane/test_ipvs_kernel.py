"""director/kernel/ipvs.py on a real IPVS kernel (in the VM): converge, minimal edits, foreign
services untouched, and real HTTP traffic through masquerade + nftables SNAT."""

from __future__ import annotations

import os
from typing import Any

import pytest
from tests.dataplane.vm import Vm

RS = {"rs1", "rs2", "rs3"}


@pytest.mark.parametrize("backend", ["netlink", "pyroute2"])
def test_converge_reads_back_and_edits_minimally(
    vm: Vm, topology: dict[str, Any], backend: str
) -> None:
    out = vm.call("tests.dataplane.scenarios_ipvs:table_roundtrip", backend=backend)
    assert out["sysctls_first"]["net.ipv4.vs.conntrack"] == ["0", "1"]
    assert out["sysctls_again"] == {}
    steps = out["steps"]
    for name, step in steps.items():
        assert step["equal"], f"{name}: read back differs:\n{step['actual']}"
        assert step["foreign_kept"], f"{name}: the foreign service was touched"
        assert step["again"] == [], f"{name}: not idempotent: {step['again']}"
        assert step["backends_agree"], f"{name}: netlink and pyroute2 read differently"
    initial = steps["initial"]["ops"]
    assert len(initial) == 5 + 3 + 3 + 3 + 2 + 1  # services + destinations
    assert steps["weight"]["ops"] == [
        "edit-dest TCP/10.10.0.100:80 -> 10.20.0.22:8080 masquerade w5"
    ]
    assert steps["scheduler"]["ops"] == ["edit-service TCP/10.10.0.100:80 wrr"]
    assert steps["persistence"]["ops"] == ["edit-service TCP/10.10.0.100:80 wrr persistent 120s/32"]
    assert steps["netmask"]["ops"] == ["edit-service TCP/10.10.0.100:80 wrr persistent 120s/16"]
    # (that step also puts the web service back as it started: rr, weights 1)
    assert [o for o in steps["forwarding"]["ops"] if "UDP" in o] == [
        f"edit-dest UDP/10.10.0.100:53 -> 10.20.0.{20 + i}:53 direct w{i}" for i in (1, 2, 3)
    ]
    assert [o.split()[0] for o in steps["remove-dest"]["ops"]] == ["del-dest"]
    assert steps["empty"]["ops"][-1].startswith("del-service")
    assert "192.0.2.1:80" in out["ipvsadm_final"]


def test_round_robin_and_weighted_through_masquerade(vm: Vm, topology: dict[str, Any]) -> None:
    out = vm.call("tests.dataplane.scenarios_ipvs:traffic_masquerade")
    if out["failures"]:  # printed whole: an assertion's message is cut short
        print(f"\n[dataplane] failed requests: {out['failures']}\n{out.get('connections')}")
    # the agent's nftables path is the in-process library (the guest has Debian's nftables);
    # the table it wrote is read back by the nft command in the director's namespace
    assert out["nft_backend"] == "libnftables"
    assert out["snat_again_changed"] is False
    assert out["rr"] == {"rs1": 10, "rs2": 10, "rs3": 10}, (out["failures"], out["nft"])
    assert out["seen_client"] == "10.20.0.11"  # the director's back address: SNAT at work
    assert out["wrr_ops"] == [
        "edit-service TCP/10.10.0.100:80 wrr",
        "edit-dest TCP/10.10.0.100:80 -> 10.20.0.22:8080 masquerade w2",
        "edit-dest TCP/10.10.0.100:80 -> 10.20.0.23:8080 masquerade w3",
    ]
    assert out["wrr"] == {"rs1": 10, "rs2": 20, "rs3": 30}, (
        out["failures"],
        out.get("connections"),
    )
    # masqueradeSource: VIP: the real servers see the VIP as the client, and answer it
    assert out["vip_sourced"] == [["10.10.0.100", "tcp", 80]], out["vip_sourced"]
    assert (out["vip_source_changed"], out["vip_source_again_changed"]) == (True, False)
    assert sum(out["vip_source_rr"].values()) == 6 and "error" not in out["vip_source_rr"], (
        out["vip_source_rr"], out["failures"]
    )  # fmt: skip
    assert out["vip_source_seen_client"] == "10.10.0.100"
    assert out["snat_removed"] is True
    # real servers route via the router, not the director: without SNAT nothing comes back
    assert out["without_snat"] == {"error": 3}


def test_persistence_keeps_a_client_on_one_server(vm: Vm, topology: dict[str, Any]) -> None:
    out = vm.call("tests.dataplane.scenarios_ipvs:traffic_persistence")
    assert len(out["first"]) == 1 and set(out["first"]) <= RS, out
    assert len(out["second"]) == 1 and set(out["second"]) <= RS, out
    assert out["first"] != out["second"]  # rr hands the second client's template the next one
    assert out["masked_first"] == out["masked_second"], out  # one /24: one template


def test_quiesced_server_keeps_established_gets_no_new(vm: Vm, topology: dict[str, Any]) -> None:
    out = vm.call("tests.dataplane.scenarios_ipvs:traffic_quiesce")
    victim = out["victim"]
    assert out["quiesce_ops"] == [
        f"edit-dest TCP/10.10.0.100:80 -> 10.20.0.{20 + int(victim[-1])}:8080 masquerade w0"
    ]
    assert victim not in out["new_connections"] and "error" not in out["new_connections"]
    assert sum(out["new_connections"].values()) == 20
    assert out["established"] == [victim] * 3
    assert out["active_conns"][f"10.20.0.{20 + int(victim[-1])}:8080"] == 1  # the kept one
    assert out["remove_ops"][0].startswith("del-dest")
    assert out["after_removal"].startswith("error")  # expire_nodest_conn=1
    assert "error" not in out["after_removal_new"]


@pytest.mark.parametrize(("backend", "default_services"), [("netlink", "300"), ("pyroute2", "10")])
def test_converge_timing(
    vm: Vm, topology: dict[str, Any], backend: str, default_services: str
) -> None:
    # LVS_BENCH_SERVICES=1000 measures the agent's scale goal (1,000 x 10; ~100 s in the VM)
    n = int(os.environ.get("LVS_BENCH_SERVICES", default_services))
    out = vm.call(
        "tests.dataplane.scenarios_ipvs:bench_converge",
        services=n, dests=10, backend=backend, timeout=1800,
    )  # fmt: skip
    print(f"\n[dataplane] converge {n}x10: {out}")
    assert out["equal"] and out["cold_changes"] == n * 11
    assert out["idle_changes"] == 0 and out["one_change_ops"] == 1
    # bounds from the benchmark, generous for a shared 2-core host under TCG: the agent's
    # netlink path loads a table within 2x ipvsadm-restore of it in the same run (goal 1.5x;
    # measured 0.43x at 300 x 10, 2.73 s / 6.35 s and 1.17 s / 2.7 s), and one change (the
    # diff of the whole table and one message) costs well under half a cold load (0.28x)
    assert out["one_change_apply_seconds"] <= 0.5 * out["cold_seconds"] + 0.1, out
    if backend == "netlink":
        assert out["cold_seconds"] <= 2 * out["restore_seconds"] + 0.5, out


def test_lost_netlink_answers_are_reported(vm: Vm, topology: dict[str, Any]) -> None:
    out = vm.call("tests.dataplane.scenarios_ipvs:ack_overflow")
    assert out["first"] == 600
    assert out["error"] and "answers lost" in out["error"], out
    assert out["present_after_error"] == 600 and out["repair_ops"] == 0
    assert out["final"] == 600


def test_connection_sync_master_to_backup(vm: Vm, topology: dict[str, Any]) -> None:
    out = vm.call("tests.dataplane.scenarios_ipvs:sync_daemons")
    print(f"\n[dataplane] sync daemons: {out['started']}; connection on the backup: "
          f"{out['backup_has_connection']}")  # fmt: skip
    assert out["started"] == {"lvs-dir-b": [0], "lvs-dir-a": [0, 0]}, out
    states = out["states"]
    assert out["master_read"] == sorted([states["master"], states["backup"]]), out
    assert out["backup_read"] == [states["backup"]], out
    assert out["backup_has_connection"], out["backup_connections"]


def test_every_scheduler_round_trips_and_distributes(vm: Vm, topology: dict[str, Any]) -> None:
    """All eleven schedulers and their flags through the kernel, and each one's distribution
    with traffic where it has a defined one (issue 19)."""
    from lvs_operator.api.ipvs_catalog import Scheduler

    out = vm.call("tests.dataplane.scenarios_ipvs:schedulers", timeout=600)
    print(f"\n[dataplane] schedulers: hashing {out['hashing']}\n  fallback {out['fallback']}"
          f"\n  held {out['held']}")  # fmt: skip
    trips = out["round_trip"]
    assert {k.split("+")[0] for k in trips} == {str(s) for s in Scheduler}
    assert len(trips) == 11 - 2 + 4 + 4  # sh and mh with each of their four flag sets
    for label, trip in trips.items():
        assert trip["equal"], f"{label}: read back differs"
        assert trip["again"] == [], f"{label}: not idempotent: {trip['again']}"
        assert trip["ipvsadm_names_it"], label
        # switching scheduler or flags is one edit of the service, never a re-create (the
        # first step also sets the destinations' weights)
        service_ops = [o for o in trip["ops"] if o.split()[0].endswith("-service")]
        assert len(service_ops) <= 1 and all(o.startswith("edit-service") for o in service_ops)
    servers = set(out["servers"])

    def one_server(answers: dict[str, int]) -> str:
        assert "error" not in answers and len(answers) == 1, answers
        name = next(iter(answers))
        assert name in servers, answers
        return name

    hashing = out["hashing"]
    for label in ("sh", "mh"):  # by source address: one server each, the sources spread
        chosen = {src: one_server(a) for src, a in hashing[label].items()}
        assert len(set(chosen.values())) >= 2, (label, chosen)
    for label in ("sh+sh-port", "mh+mh-port"):  # the source port too: one source spreads
        per_source = hashing[label]
        assert all("error" not in a for a in per_source.values()), per_source
        assert any(len(a) >= 2 for a in per_source.values()), (label, per_source)
    for label in ("dh", "lblc", "lblcr"):  # by destination: one VIP, one server for all
        chosen = {src: one_server(a) for src, a in hashing[label].items()}
        assert len(set(chosen.values())) == 1, (label, chosen)
    for sched, res in out["fallback"].items():
        without, with_fallback = res["without"], res["with_fallback"]
        refused = {src for src, a in without.items() if "error" in a}
        # without the flag: a source hashing to the quiesced rs2 is refused, never served
        # by it; sh's buckets are dealt without randomness, so here some source always is
        # (mh's hash is keyed at random per boot: some run may have none)
        assert all(res["victim"] not in a for a in without.values()), (sched, res)
        if sched == "sh":
            assert refused, (sched, res)
        # with it: every source answered, none by rs2
        for src, a in with_fallback.items():
            assert "error" not in a and res["victim"] not in a, (sched, src, res)
    a, b = out["held"]["A"], out["held"]["B"]
    assert a["holds"] == ["rs1", "rs1", "rs2"] and b["holds"] == ["rs1", "rs1", "rs2", "rs3"]
    # weights 4/1/1, held A 2/1/0: lc and wlc and nq take the idle rs3; sed, (active+1)/weight,
    # takes rs1 (3/4 < 1/1)
    assert a["lc"] == {"rs3": 6} and a["wlc"] == {"rs3": 6} and a["nq"] == {"rs3": 6}, a
    assert a["sed"] == {"rs1": 6}, a
    # held B 2/1/1, nothing idle: wlc (512/4 < 256/1), sed and nq take rs1; lc never rs1
    assert b["wlc"] == {"rs1": 6} and b["sed"] == {"rs1": 6} and b["nq"] == {"rs1": 6}, b
    assert "rs1" not in b["lc"] and "error" not in b["lc"], b
    # the held connections lived through every scheduler change
    assert a["still_held"] == a["holds"] and b["still_held"] == b["holds"]
