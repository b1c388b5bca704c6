"""The real director agents (``lvs-operator director``) in the VM, with real traffic.

Two agents (lvs-dir-a, lvs-dir-b) elect a leader on a Lease of the fake API server on the host
(tests/dataplane/fakeapi.py: rejects stale resourceVersions with 409 like the real one); both
program IPVS, the leader holds the VIPs. The tests run in order on one VM boot and share the
agents; each leaves them running (restarting what it killed).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytest
from tests.dataplane.agents import APP_NS, LEASE, NODES, Lab, handover_steps, pool, virtual_server
from tests.dataplane.held_connections import survival
from tests.dataplane.scenarios_agent import agent_log_delay, analyse
from tests.dataplane.topology import CLIENT, CLIENT6_SECOND, default_topology
from tests.dataplane.vm import Vm, agent_startup

from lvs_operator.api.contract import SYNC_ANNOTATION, DirectorSync, parse_sync
from lvs_operator.director.config import DEFAULT_VIP_LIFETIME, LIFETIME_RENEWALS
from lvs_operator.director.vip import VIP_PROTO

VIP = "10.10.0.100"
VIP_DR = "10.10.0.101"
VIP_TUN = "10.10.0.102"
VIP_STICKY = "10.10.0.103"
# IPv6 VIPs of the same director group (dual stack), their real servers' IPv6 addresses
VIP6 = "fd10::100"
VIP6_DR = "fd10::101"
VIP6_TUN = "fd10::102"
VIP6_STICKY = "fd10::103"
CLIENT6 = default_topology().front6[CLIENT]
SERVERS = {"rs1", "rs2", "rs3"}
OTHER = {"lvs-dir-a": "lvs-dir-b", "lvs-dir-b": "lvs-dir-a"}
# A dead agent's VIP lapses DEFAULT_VIP_LIFETIME (8 s) after its last renewal, plus the
# kernel's address-lifetime check (IPv4: up to ~1 s late) and TCG's slowness: within the
# Lease duration (10 s), the bound the design states.
LAPSE_BOUND = 10.0
# ... and not before its lifetime minus one renewal interval: the last renewal may have been
# that long before the kill (0.5 s for the sampler and TCG)
LAPSE_EARLIEST = DEFAULT_VIP_LIFETIME * (1 - 1 / LIFETIME_RENEWALS) - 0.5


def vip_changes(rows: list[dict[str, object]], after: float) -> list[dict[str, object]]:
    """The sampler's rows from ``after`` on, with the state at ``after`` first."""
    changes = [r for r in rows if "t" in r]
    at = [r for r in changes if float(r["t"]) <= after][-1:]  # type: ignore[arg-type]
    return at + [r for r in changes if float(r["t"]) > after]  # type: ignore[arg-type]


def first_sample(
    rows: list[dict[str, object]], after: float, pred: Callable[[list[str], list[str]], bool]
) -> float | None:
    """The guest time of the first sample from ``after`` on whose (holders, ARP answerers)
    match ``pred``."""
    for r in vip_changes(rows, after):
        if pred(r["addr"], r["arp"]):  # type: ignore[arg-type]
            return max(after, float(r["t"]))  # type: ignore[arg-type]
    return None


@pytest.fixture(scope="module")
def lab(vm: Vm, topology: dict[str, object]) -> Iterator[Lab]:
    lab = Lab(vm)
    lab.call("setup")
    lab.apply(pool("web"))
    lab.apply(virtual_server("web-nat", VIP, 80, "http", scheduler="rr"))
    lab.start_agent("lvs-dir-a")
    lab.start_agent("lvs-dir-b")
    print(f"\n[dataplane] agent start-up: {lab.wait_started(list(NODES))}")
    try:
        yield lab
    finally:
        print(lab.logs()[-4000:])
        lab.close()
        lab.call("cleanup", vips={"direct": [VIP_DR, VIP6_DR], "tunnel": [VIP_TUN, VIP6_TUN]})


@pytest.fixture(autouse=True)
def both_agents(lab: Lab, request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts with both agents running and ready, whatever the test before it left
    (a failed test must not turn the next one into a KeyError). A failed test prints every
    agent's log (an assertion's message is cut short)."""
    missing = [ns for ns in NODES if ns not in lab.agents or not lab.agents[ns].running()]
    for ns in missing:
        lab.agents.pop(ns, None)
        lab.call("link_up", ns=ns)  # a failed crash case may have left its node cut off
        lab.start_agent(ns)
    if missing:
        lab.wait_started(missing)
    yield
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print(f"\n[dataplane] {request.node.name} failed; the agents' logs:\n{lab.logs(40000)}")


def wait_answers(lab: Lab, vip: str, port: int) -> None:
    res = lab.call("wait_answers", vip=vip, port=port, within=90)
    assert res["ok"], f"{res}\n{lab.logs()}"


def test_one_leader_holds_the_vip_and_both_program_ipvs(lab: Lab) -> None:
    res = lab.call("wait_vip", vip=VIP, within=60)
    assert res["holder"] is not None, f"{res}\n{lab.logs()}"
    assert res["holder"] == lab.leader_ns()
    for ns in NODES:
        assert lab.call("wait_ipvs", ns=ns, needle=f"{VIP}:80 rr", within=60), lab.call(
            "ipvs", ns=ns
        )
    lease = lab.lease()
    assert lease is not None
    programmed = json.loads(lease["metadata"]["annotations"]["lvs.io/programmed"])
    assert programmed == {f"{APP_NS}/web-nat": 1}
    # added as the agent's own (IFA_PROTO, the VM's 6.1 kernel keeps it) with a lifetime
    # the leader renews: the dead-man switch (vip.py)
    entries = lab.call("vip_entries", ns=res["holder"], vip=VIP)
    assert len(entries) == 1 and entries[0]["proto"] == VIP_PROTO, entries
    assert entries[0]["valid_lft"] is not None, entries
    assert 0 < entries[0]["valid_lft"] <= DEFAULT_VIP_LIFETIME, entries
    # the agents run as the shipped DaemonSet runs them (deployed.py): NET_ADMIN + NET_RAW
    # only, no_new_privs, /proc/sys and the root file system read-only
    net_admin_and_raw = f"{(1 << 12) | (1 << 13):016x}"  # CAP_NET_ADMIN 12, CAP_NET_RAW 13
    for ns, proc in lab.agents.items():
        terms = lab.call("process_terms", pid=proc.pid)
        assert terms == {"cap_bnd": net_admin_and_raw, "cap_eff": net_admin_and_raw,
                         "no_new_privs": True, "proc_sys_read_only": True,
                         "root_read_only": True}, (ns, terms)  # fmt: skip
    rss = {ns: lab.call("rss_mib", pid=proc.pid) for ns, proc in lab.agents.items()}
    print(f"\n[dataplane] agent RSS (MiB): {rss}")
    assert all(v is not None and v <= 60 for v in rss.values()), rss
    metrics = lab.call("metrics", ns=res["holder"])
    assert 'lvs_director_leader{group="gtest"} 1.0' in metrics
    # the leader lists the standby that hears it (outage tolerance; election.py)
    deadline = time.monotonic() + 30
    members: dict[str, str] = {}
    while time.monotonic() < deadline:
        annotations = (lab.lease() or {}).get("metadata", {}).get("annotations") or {}
        members = json.loads(annotations.get("lvs.io/directors", "{}"))
        if NODES[OTHER[res["holder"]]] in members:
            break
        time.sleep(0.5)
    assert list(members) == [NODES[OTHER[res["holder"]]]], (members, lab.logs())


def test_round_robin_masquerade(lab: Lab) -> None:
    wait_answers(lab, VIP, 80)
    counts = lab.call("count", vip=VIP, port=80, n=30)
    assert counts == {"rs1": 10, "rs2": 10, "rs3": 10}, lab.call("ipvs", ns=lab.leader_ns())
    # the leader's /metrics shows that traffic from the kernel's counters (traffic.py: read
    # every 10 s on its own thread), per service and per real server
    leader = lab.leader_ns()
    svc = f'group="gtest",port="80",protocol="TCP",vip="{VIP}"'
    deadline, scheduled, text = time.monotonic() + 30, 0.0, ""
    while time.monotonic() < deadline:
        text = lab.call("metrics", ns=leader)
        scheduled = next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                          if line.startswith(f"lvs_director_service_connections_total{{{svc}}}")),
                         0.0)  # fmt: skip
        if scheduled >= 30:
            break
        time.sleep(1)
    assert scheduled >= 30, [line for line in text.splitlines() if "service_" in line]
    for rs in ("10.20.0.21", "10.20.0.22", "10.20.0.23"):
        assert f'lvs_director_destination_bytes_total{{destination="{rs}:8080",direction="out"' \
            in text, text  # fmt: skip


def test_weighted_round_robin(lab: Lab) -> None:
    lab.apply(pool("web", weights={"rs1": 3}))
    lab.apply(virtual_server("web-nat", VIP, 80, "http", scheduler="wrr"))
    leader = lab.leader_ns()
    assert lab.call("wait_ipvs", ns=leader, needle=f"{VIP}:80 wrr", within=60)
    assert lab.call("wait_weight", ns=leader, service=f"TCP {VIP}:80", dest="10.20.0.21:8080",
                    weight=3, within=60), lab.call("ipvs", ns=leader)  # fmt: skip
    counts = lab.call("count", vip=VIP, port=80, n=50)
    assert counts == {"rs1": 30, "rs2": 10, "rs3": 10}, lab.call("ipvs", ns=leader)
    lab.apply(pool("web"))
    lab.apply(virtual_server("web-nat", VIP, 80, "http", scheduler="rr"))
    assert lab.call("wait_ipvs", ns=leader, needle=f"{VIP}:80 rr", within=60)


def test_persistence_keeps_a_client_on_one_server(lab: Lab) -> None:
    lab.apply(virtual_server("web-sticky", VIP_STICKY, 80, "http", scheduler="rr",
                             persistence={"timeoutSeconds": 60}))  # fmt: skip
    wait_answers(lab, VIP_STICKY, 80)
    counts = lab.call("count", vip=VIP_STICKY, port=80, n=12)
    assert len(counts) == 1 and set(counts) <= SERVERS, counts
    assert "persistent 60" in lab.call("ipvs", ns=lab.leader_ns())


def test_quiesced_server_gets_no_new_connections_established_one_continues(lab: Lab) -> None:
    lab.apply(pool("web"))
    res = lab.call("quiesce", vip=VIP, port=80, api_url=lab.api_url, pool=pool("web"),
                   leader=lab.leader_ns())  # fmt: skip
    assert res["weight0"], res
    assert res["server"] not in res["counts"], res
    assert sum(res["counts"].values()) == 20 and "error" not in res["counts"], res
    assert res["held"] == [res["server"]] * 3, res
    assert res["removed_after_close"], res
    assert res["restored"], res


def test_health_check_quiesces_a_failing_server(lab: Lab) -> None:
    check = {"type": "http", "path": "/", "intervalSeconds": 1, "timeoutSeconds": 1,
             "fallThreshold": 2, "riseThreshold": 1}  # fmt: skip
    lab.apply(pool("web", health=check))
    leader = lab.leader_ns()
    service, rs3 = f"TCP {VIP}:80", "10.20.0.23:8080"
    try:
        lab.call("http_server", rs="lvs-rs3", up=False)
        assert lab.call("wait_weight", ns=leader, service=service, dest=rs3, weight=0,
                        within=60), lab.call("ipvs", ns=leader)  # fmt: skip
        counts = lab.call("count", vip=VIP, port=80, n=20)
        assert counts == {"rs1": 10, "rs2": 10}, counts
        # the standby checks too: it would take over with the same view
        assert lab.call("wait_weight", ns=OTHER[leader], service=service, dest=rs3, weight=0,
                        within=60)  # fmt: skip
    finally:
        lab.call("http_server", rs="lvs-rs3", up=True)
    assert lab.call("wait_weight", ns=leader, service=service, dest=rs3, weight=1, within=60)
    lab.apply(pool("web"))


def test_direct_routing(lab: Lab) -> None:
    out = lab.call("realserver", vips=[VIP_DR], mode="direct")
    assert all(r["rc"] == 0 for r in out.values()), out
    lab.apply(virtual_server("web-dr", VIP_DR, 8080, None, scheduler="rr", forwarding="direct"))
    wait_answers(lab, VIP_DR, 8080)
    counts = lab.call("count", vip=VIP_DR, port=8080, n=30)
    assert counts == {"rs1": 10, "rs2": 10, "rs3": 10}, lab.call("ipvs", ns=lab.leader_ns())
    assert "Route" in lab.call("ipvs", ns=lab.leader_ns())


def test_tunnel(lab: Lab) -> None:
    out = lab.call("realserver", vips=[VIP_TUN], mode="tunnel")
    assert all(r["rc"] == 0 for r in out.values()), out
    # idempotent: a second run changes nothing and succeeds
    again = lab.call("realserver", vips=[VIP_TUN], mode="tunnel")
    assert all(r["rc"] == 0 for r in again.values()), again
    lab.apply(virtual_server("web-tun", VIP_TUN, 8080, None, scheduler="rr", forwarding="tunnel"))
    wait_answers(lab, VIP_TUN, 8080)
    counts = lab.call("count", vip=VIP_TUN, port=8080, n=30)
    assert counts == {"rs1": 10, "rs2": 10, "rs3": 10}, lab.call("ipvs", ns=lab.leader_ns())
    assert "Tunnel" in lab.call("ipvs", ns=lab.leader_ns())


# -- IPv6: VirtualServers with IPv6 VIPs in the same director group as the IPv4 ones ---------


def apply_ipv6_masquerade(lab: Lab) -> None:
    """The IPv6 pool and the IPv6 masquerade VirtualServer (idempotent: the failover tests
    below need them whichever test ran first)."""
    lab.apply(pool("web6", family=6))
    lab.apply(virtual_server("web6-nat", VIP6, 80, "http", pool_name="web6", scheduler="rr"))


def test_ipv6_masquerade(lab: Lab) -> None:
    apply_ipv6_masquerade(lab)
    wait_answers(lab, VIP6, 80)
    counts = lab.call("count", vip=VIP6, port=80, n=30)
    assert counts == {"rs1": 10, "rs2": 10, "rs3": 10}, lab.call("ipvs", ns=lab.leader_ns())
    # both families at once from the one group
    assert lab.call("count", vip=VIP, port=80, n=3) == {"rs1": 1, "rs2": 1, "rs3": 1}
    assert f"[{VIP6}]:80 rr" in lab.call("ipvs", ns=lab.leader_ns())


@pytest.mark.parametrize("forwarding", ["direct", "tunnel"])
def test_ipv6_direct_and_tunnel(lab: Lab, forwarding: str) -> None:
    """Direct routing and ip6ip6 tunnelling of an IPv6 VIP, the real servers prepared by
    ``lvs-operator realserver`` (the VIP on lo / on ip6tnl0)."""
    vip = VIP6_DR if forwarding == "direct" else VIP6_TUN
    out = lab.call("realserver", vips=[vip], mode=forwarding)
    assert all(r["rc"] == 0 for r in out.values()), out
    lab.apply(virtual_server(f"web6-{forwarding}", vip, 8080, None, pool_name="web6",
                             scheduler="rr", forwarding=forwarding))  # fmt: skip
    wait_answers(lab, vip, 8080)
    counts = lab.call("count", vip=vip, port=8080, n=30)
    table = lab.call("ipvs", ns=lab.leader_ns())
    assert counts == {"rs1": 10, "rs2": 10, "rs3": 10}, table
    assert ("Route" if forwarding == "direct" else "Tunnel") in table


def test_ipv6_persistence_by_prefix(lab: Lab) -> None:
    """``persistence.prefixLength: 64``: two clients of one /64 stay on one real server (round
    robin would send the second one elsewhere were persistence per address)."""
    lab.apply(pool("web6", family=6))
    lab.apply(virtual_server("web6-sticky", VIP6_STICKY, 80, "http", pool_name="web6",
                             scheduler="rr",
                             persistence={"timeoutSeconds": 60, "prefixLength": 64}))  # fmt: skip
    wait_answers(lab, VIP6_STICKY, 80)
    first = lab.call("count", vip=VIP6_STICKY, port=80, n=6, source=CLIENT6)
    second = lab.call("count", vip=VIP6_STICKY, port=80, n=6, source=CLIENT6_SECOND)
    assert len(first) == 1 and "error" not in first, first
    assert second == first, (first, second, lab.call("ipvs_connections", ns=lab.leader_ns()))
    assert "persistent 60 mask 64" in lab.call("ipvs", ns=lab.leader_ns())


def test_failover_when_the_active_director_dies(lab: Lab) -> None:
    """The leader's node dies (link down, agent killed): the standby takes over within the
    heartbeat timeout. When the node comes back, the VIP its kernel held is gone: lapsed
    (the dead-man switch) or dropped by its restarted agent, whichever comes first."""
    apply_ipv6_masquerade(lab)
    wait_answers(lab, VIP6, 80)
    old = lab.leader_ns()
    new = OTHER[old]
    loop, out = lab.start_loop("failover", VIP, 80)
    loop6, out6 = lab.start_loop("failover6", VIP6, 80)
    neighbour_before = lab.call("neighbour", ns=CLIENT, address=VIP6)
    new_mac = lab.call("link_mac", ns=new)
    neighbours = lab.start_neighbour_monitor("failover")
    sampler, samples_out = lab.start_sampler("failover", VIP)
    proc = lab.agents.pop(old)
    moved = lab.call("takeover", pid=proc.pid, sig=int(signal.SIGKILL), vip=VIP, new=new,
                     link_down=old)  # fmt: skip
    advertised = lab.call("wait_neighbour", ns=CLIENT, address=VIP6, mac=new_mac, within=15)
    res = lab.call("wait_vip", vip=VIP, within=60, exclude=old)
    res6 = lab.call("wait_vip", vip=VIP6, within=60, exclude=old)
    time.sleep(2)
    results = lab.stop_loop(loop, out)
    results6 = lab.stop_loop(loop6, out6)
    stats = {**analyse(results, moved["at"]), "vip_moved_after": moved["vip_moved_after"]}
    stats6 = analyse(results6, moved["at"])
    changed = Lab.neighbour_changed_at(neighbours, VIP6, new_mac)
    na_after = None if changed is None else round(changed - moved["wall_at"], 3)
    print(f"\n[dataplane] crash failover: IPv4 {stats}\n[dataplane] crash failover: IPv6 "
          f"{stats6}; the client's neighbour entry for {VIP6} named the new leader "
          f"{na_after} s after the crash ({neighbour_before} -> "
          f"{advertised['entry']})")  # fmt: skip
    assert res["holder"] == new, res
    # dual stack: both VIPs of the group fail over together, both families serve again
    assert res6["holder"] == new, res6
    assert neighbour_before and neighbour_before["lladdr"] == lab.call("link_mac", ns=old), (
        neighbour_before
    )
    # the new leader's unsolicited NA (Override) rewrote the client's entry: without it the
    # client would keep the dead MAC through NUD (5 s DELAY, then 3 unicast probes of 1 s)
    assert advertised["at"] is not None, advertised
    assert na_after is not None and na_after < 2.0, (na_after, neighbours.output()[-2000:])
    assert stats6["recovered_after"] is not None and stats6["recovered_after"] < 2.0, stats6
    assert lab.holder() == NODES[new]
    assert stats["first_success_after"] is not None, stats
    # silence 0.3 s (--peer-timeout; the ARP check runs in its last 0.15 s) + the VIP add
    # ahead of the Lease write: ~0.4 s here on an idle host; a loaded host slows the VM's
    # Python several times
    assert stats["vip_moved_after"] is not None and stats["vip_moved_after"] < 2.0, stats
    assert stats["recovered_after"] is not None and stats["recovered_after"] < 2.0, stats
    # the dead director comes back: its stale VIP is gone by the lifetime's end, or earlier
    # if its restarted agent drops it first
    lab.call("link_up", ns=old)
    restarted = lab.start_agent(old)
    startup = agent_startup(restarted)
    assert startup["ok"], f"the restarted agent never read the kernel: {startup}"
    dropped = lab.call("wait_vip_dropped", ns=old, vip=VIP, within=30)
    assert dropped is not None, lab.logs()
    rows = lab.stop_sampler(sampler, samples_out)
    gone = first_sample(rows, moved["at"], lambda addr, arp: old not in addr)
    since_start = agent_log_delay(lab.agents[old].output(), "director agent starting",
                                  "VIP dropped")  # fmt: skip
    lapsed = since_start is None
    print(f"[dataplane] the dead node's stale VIP gone "
          f"{None if gone is None else round(gone - moved['at'], 2)}s after the crash, "
          f"{'lapsed' if lapsed else f'dropped by its agent {since_start}s after it started'}; "
          f"its start-up under TCG: {startup | {'log_tail': ''}}")  # fmt: skip
    assert gone is not None and gone - moved["at"] <= LAPSE_BOUND, (gone, moved, rows[-5:])
    if not lapsed:
        # dropped by the agent: bounded by the start-up grace (first election step, 5 s in
        # the VM; 1 s by default) from the agent's start
        assert since_start is not None and since_start < 10, lab.logs()
    lab.wait_started([old])
    assert lab.call("vip_holders", vip=VIP) == [new]


VIP_NAT_HELD = "10.10.0.105"  # masquerade with masqueradeSource: VIP
# forwarding -> (VirtualServer, VIP, port), as the tests above made them (masquerade's here)
FORWARDED = {
    "direct": ("web-dr", VIP_DR, 8080),
    "tunnel": ("web-tun", VIP_TUN, 8080),
    "masquerade": ("web-nat-vip", VIP_NAT_HELD, 80),
}
HELD = 50  # long-lived connections, each asking every 100 ms
# masquerade: the real servers' packets leave this late, so at the crash many answers are in
# flight through the old director and are lost with it
ANSWER_DELAY_MS = 150


@pytest.mark.parametrize("forwarding", ["direct", "tunnel", "masquerade"])
def test_established_connections_survive_a_crash_failover(lab: Lab, forwarding: str) -> None:
    """Connection synchronisation (sync.py): the leader's sync daemon copies its connections
    to the standby's, so after a crash (links cut, agent killed) the new leader forwards the
    established ones to the same real servers: at least 49 of 50 keep working. Sticky
    clients keep their real server (the persistence templates are synced too). Masquerade
    with ``masqueradeSource: VIP``: the real servers see the VIP as the source from either
    director (kernel/nft.py), so the new one's conntrack picks the connections up with the
    client's next packet. A connection whose answer was lost with the old director sends
    nothing more: the real servers' answers are delayed here so that many are, and the new
    leader must have written their conntrack entries (conn_restore.py) for the real
    server's retransmission to reach the client."""
    name, vip, port = FORWARDED[forwarding]
    if forwarding == "masquerade":
        # VIP:80 -> the real servers' 8080, answered through the router to the VIP
        lab.apply(virtual_server(name, vip, port, 8080, scheduler="rr", masqueradeSource="VIP"))
    else:
        out = lab.call("realserver", vips=[vip], mode=forwarding)
        assert all(r["rc"] == 0 for r in out.values()), out
        lab.apply(virtual_server(name, vip, port, None, scheduler="rr", forwarding=forwarding))
    lab.apply(virtual_server("web-sticky", VIP_STICKY, 80, "http", scheduler="rr",
                             persistence={"timeoutSeconds": 60}))  # fmt: skip
    wait_answers(lab, vip, port)
    wait_answers(lab, VIP_STICKY, 80)
    old = lab.leader_ns()
    new = OTHER[old]
    sticky = lab.call("count", vip=VIP_STICKY, port=80, n=6)
    held, held_out = lab.start_held(f"crash-{forwarding}", vip, port, HELD)
    # what was synced survives: wait until the standby's copy is complete (the lag printed)
    synced = lab.call("wait_synced", ns=new, vip=vip, port=port, count=HELD, within=30)
    assert synced is not None, (lab.call("ipvs", ns=new), lab.logs())
    # ... and its /metrics says what its backup received (the sticky VIP's entries too)
    scrape_at = time.monotonic()
    received = metric_value(lab.call("metrics", ns=new), "lvs_director_synced_connections")
    print(f"\n[dataplane] the standby's /metrics answered in {time.monotonic() - scrape_at:.2f} s")
    assert received is not None and received >= HELD, received
    # the sticky client's persistence template is on the standby too
    template = lab.call("wait_template", ns=new, vip=VIP_STICKY, port=80, within=30)
    assert template is not None, {  # the sticky VIP's entries on both directors
        ns: [line for line in lab.call("ipvs_connections", ns=ns).splitlines()
             if f" {VIP_STICKY}:" in line]
        for ns in (new, old)
    }  # fmt: skip
    # the leader's Lease shows the standby's backup receiving (sync.py, "Connection sync
    # state": the standby's probe carries it, the leader writes it; asserted at the end, so
    # a miss here does not hide the survival figures)
    sync_states = wait_sync_states(lab, NODES[new], within=45)
    masquerade = forwarding == "masquerade"
    if masquerade:
        lab.call("delay_answers", ms=ANSWER_DELAY_MS)
    try:
        time.sleep(1)
        proc = lab.agents.pop(old)
        moved = lab.call("takeover", pid=proc.pid, sig=int(signal.SIGKILL), vip=vip, new=new,
                         link_down=old)  # fmt: skip
        time.sleep(5)
        rows = lab.stop_held(held, held_out)
    finally:
        if masquerade:
            lab.call("delay_answers", ms=0)
    restored = (metric_value(lab.call("metrics", ns=new), "lvs_director_conntrack_restored_total")
                if masquerade else None)  # fmt: skip
    sticky_after = lab.call("count", vip=VIP_STICKY, port=80, n=6)
    stats = survival(rows.get("connections", []), moved["at"], rows.get("end", 0.0))
    print(f"\n[dataplane] crash failover, {forwarding}: {stats['survived']}/{HELD} established "
          f"connections kept working; the standby's copy complete {synced} s after they "
          f"opened; VIP moved {moved['vip_moved_after']} s after the crash; longest wait "
          f"for an answer across it {stats['max_stall']} s; sticky client {sticky} -> "
          f"{sticky_after} (the standby's template: {template}); conntrack entries "
          f"restored: {restored}; {stats}")  # fmt: skip
    if stats["survived"] < HELD - 1:
        ports = [b["port"] for b in stats["broken"]]
        diag = lab.call("connection_diagnostics", new=new, vip=vip, ports=ports)
        for key, text in diag.items():
            print(f"\n[dataplane] diagnostics {key}:\n{text}")
    lab.call("link_up", ns=old)
    assert lab.call("wait_vip_dropped", ns=old, vip=vip, within=30) is not None, lab.logs()
    lab.start_agent(old)
    lab.wait_started([old])
    assert moved["vip_moved_after"] is not None, moved
    assert stats["connections"] == HELD, stats
    assert stats["survived"] >= HELD - 1, stats
    if masquerade:  # the answers lost with the old director needed their entries
        assert restored is not None and restored >= 1, (restored, lab.logs())
    assert stats["switched_server"] == 0, stats
    assert len(sticky) == 1 and sticky_after == sticky, (sticky, sticky_after)
    standby_sync = sync_states.get(NODES[new])
    assert standby_sync is not None, sync_states
    assert (standby_sync.role, standby_sync.receiving) == ("backup", "True"), sync_states
    assert sync_states.get(NODES[old], DirectorSync("off")).role == "master", sync_states


def test_planned_handover_on_sigterm(lab: Lab) -> None:
    """SIGTERM to the leader: the standby takes the VIP and relays the old leader's
    connections in flight back to it (handover.py): no request fails."""
    old = lab.leader_ns()
    new = OTHER[old]
    # 2 s per request: a slow answer under TCG is not a failure; a reset or a lost
    # connection is.
    apply_ipv6_masquerade(lab)
    wait_answers(lab, VIP6, 80)
    # masqueradeSource: VIP too: the real servers answer the VIP, so the new leader relays
    # their answers for the old leader's connections as well (handover.py)
    name, vip_src, port_src = FORWARDED["masquerade"]
    lab.apply(virtual_server(name, vip_src, port_src, 8080, scheduler="rr",
                             masqueradeSource="VIP"))  # fmt: skip
    wait_answers(lab, vip_src, port_src)
    loop, out = lab.start_loop("handover", VIP, 80, timeout=2.0)
    loop6, out6 = lab.start_loop("handover6", VIP6, 80, timeout=2.0)
    loop_src, out_src = lab.start_loop("handover-vip-source", vip_src, port_src, timeout=2.0)
    new_mac = lab.call("link_mac", ns=new)
    neighbours = lab.start_neighbour_monitor("handover")
    # ARP answers for the VIP from any director, whichever interface holds it (lo included:
    # the old leader keeps the VIP there while it drains, its ARP for it filtered)
    sampler, samples_out = lab.start_sampler("handover", VIP)
    proc = lab.agents.pop(old)
    moved = lab.call("takeover", pid=proc.pid, sig=int(signal.SIGTERM), vip=VIP, new=new)
    assert proc.wait(30) == 0, proc.output()[-3000:]
    res = lab.call("wait_vip", vip=VIP, within=30, exclude=old)
    time.sleep(2)
    results = lab.stop_loop(loop, out)
    results6 = lab.stop_loop(loop6, out6)
    results_src = lab.stop_loop(loop_src, out_src)
    rows = lab.stop_sampler(sampler, samples_out)
    stats = {**analyse(results, moved["at"]), "vip_moved_after": moved["vip_moved_after"]}
    stats6 = analyse(results6, moved["at"])
    stats_src = analyse(results_src, moved["at"])
    changed = Lab.neighbour_changed_at(neighbours, VIP6, new_mac)
    na_after = None if changed is None else round(changed - moved["wall_at"], 3)
    steps = handover_steps(proc, lab.agents[new])
    overlaps = lab.call("two_holders", rows=rows)
    print(f"\n[dataplane] planned handover: IPv4 {stats}; steps after SIGTERM (s): {steps}"
          f"\n[dataplane] planned handover: IPv6 {stats6}; the client's neighbour entry "
          f"named the new leader {na_after} s after SIGTERM; two ARP answerers or holders: "
          f"{overlaps or 'never'}\n[dataplane] planned handover: masquerade, masqueradeSource "
          f"VIP {stats_src}")  # fmt: skip
    failed6 = lab.call("read_loop_failures", path=out6, at=moved["at"])
    failed_src = lab.call("read_loop_failures", path=out_src, at=moved["at"])
    assert stats_src["failures"] == 0, (stats_src, steps, failed_src)
    assert stats6["failures"] == 0, (stats6, steps, failed6)
    # where the handover spent its time: the old leader's log from its SIGTERM to the
    # release, or everything from SIGTERM on when slow (printed: pytest shortens a long
    # assertion message)
    old_log = [line for line in proc.output().splitlines()[-400:] if '"ts"' in line]
    start = next((i for i, line in enumerate(old_log) if "stopping: releasing" in line), 0)
    released = next((i for i, line in enumerate(old_log) if '"lease released"' in line), None)
    slow = na_after is None or na_after >= 5
    shown = old_log[start:] if slow or released is None else old_log[start : released + 1]
    print("\n[dataplane] handover, the old leader's log:\n" + "\n".join(shown)[-12000:])
    assert na_after is not None and na_after < 5, (neighbours.output()[-2000:], steps)
    assert res["holder"] == new
    assert lab.holder() == NODES[new]
    assert not overlaps, (overlaps, rows)
    # well inside the relaxed Lease (6 s): the new leader took a released Lease, not an
    # expired one; the steps say which one was slow
    assert stats["vip_moved_after"] is not None and stats["vip_moved_after"] < 5, (stats, steps)
    assert stats["max_gap"] is not None and stats["max_gap"] < 5, stats
    failed = lab.call("read_loop_failures", path=out, at=moved["at"])
    assert stats["failures"] == 0, (stats, steps, failed)
    assert lab.call("wait_vip_dropped", ns=old, vip=VIP, within=5) is not None  # lo too
    lab.start_agent(old)
    lab.wait_started([old])


@pytest.mark.parametrize("role", ["leader", "standby"])
def test_agent_restart(lab: Lab, role: str) -> None:
    """SIGKILL and restart an agent under traffic (kubelet restarts a crashed container at
    once). It adopts the kernel (no flush). A killed leader's kernel keeps the VIP and keeps
    forwarding, and the standby, whose heartbeat stops, does not take a VIP that still
    answers ARP, until the VIP's lifetime (8 s) runs out:

    - restarted within the lifetime: the agent renews and adopts the VIP; no request fails
      and the Lease stays;
    - not (Python's start-up under TCG on a loaded host takes 15-50 s): the VIP lapses, the
      standby takes it within a moment, and the restarted agent joins as the standby. Requests
      fail only around the takeover.

    Never two holders, over the whole case."""
    leader = lab.leader_ns()
    ns = leader if role == "leader" else OTHER[leader]
    holder = lab.holder()
    # 0.9 s per request: under TCG the restarting agent's start-up starves the VM's two
    # vCPUs and an answer was seen to take 0.64 s; that is slow, not failed. Still below
    # TCP's 1 s SYN retransmission, so a dropped connection attempt fails.
    loop, out = lab.start_loop(f"restart-{role}", VIP, 80, timeout=0.9)
    sampler, samples_out = lab.start_sampler(f"restart-{role}", VIP)
    proc = lab.agents.pop(ns)
    at = lab.call("signal_process", pid=proc.pid, sig=int(signal.SIGKILL))
    t0 = time.monotonic()
    lab.start_agent(ns)
    startup = lab.wait_started([ns])[ns]
    restart = time.monotonic() - t0
    time.sleep(3)
    results = lab.stop_loop(loop, out)
    rows = lab.stop_sampler(sampler, samples_out)
    stats = analyse(results, at)
    lost = first_sample(rows, at, lambda addr, arp: leader not in addr)
    print(f"\n[dataplane] {role} agent restart ({restart:.1f}s to ready, start-up {startup}): "
          f"{stats}; VIP {'kept' if lost is None else f'lapsed {lost - at:.2f}s after the kill'}"
          f"; holders {[r.get('addr') for r in rows if 't' in r]}")  # fmt: skip
    assert not lab.call("two_holders", rows=rows), rows
    if lost is None:  # the VIP never left the node: adopted
        assert lab.holder() == holder, "the Lease moved although the VIP never left"
        assert stats["failures"] == 0, stats
        return
    assert role == "leader", f"a standby's restart moved the VIP: {rows}"
    # it lapsed: not before its lifetime (the kernel served until then), not after the bound
    assert LAPSE_EARLIEST <= lost - at <= LAPSE_BOUND, (lost - at, rows)
    back = first_sample(rows, lost, lambda addr, arp: len(addr) == 1)
    assert back is not None, rows
    holder_after = next(r["addr"][0] for r in vip_changes(rows, back) if len(r["addr"]) == 1)
    if holder_after == OTHER[ns]:  # the standby took it, at once
        assert back - lost < 2.0, (back, lost, rows)
        assert lab.holder() == NODES[OTHER[ns]]
    else:  # the agent came back in the moment between the lapse and the standby's write
        assert holder_after == ns and lab.holder() == holder, (rows, lab.holder())
    late = [r for r in results if r[1] is None and not lost - 1.0 <= r[0] <= back + 1.0]
    # failures only while nobody held it (the restarted agent's log says what it did)
    assert not late, (late, lost, back, stats, rows, lab.logs())


# -- the fault tier: API outages, partitions, a stopped or lonely leader ---------------------
#
# Each case runs a client loop through the VIP (a new connection every 50 ms) and a sampler of
# which directors hold the VIP and answer ARP for it (every 10 ms), and asserts that two
# directors never did, over the whole case.


class FaultCase(NamedTuple):
    stats: dict[str, Any]  # analyse() of the request loop
    rows: list[dict[str, Any]]  # the sampler's
    lease: dict[str, Any]  # (before, after) of the holder and the transitions
    at: float  # guest time of the fault
    results: list[tuple[float, str | None]]  # the request loop's (start, server or None)


def _fault_case(
    lab: Lab, name: str, fault: Callable[[], float], heal: Callable[[], None], hold: float
) -> FaultCase:
    before = lab.lease()
    loop, out = lab.start_loop(name, VIP, 80, timeout=0.9)
    sampler, samples_out = lab.start_sampler(name, VIP)
    at = fault()
    time.sleep(hold)
    heal()
    time.sleep(3)
    results = lab.stop_loop(loop, out)
    rows = lab.stop_sampler(sampler, samples_out)
    stats = analyse(results, at)
    overlaps = lab.call("two_holders", rows=rows)
    after = lab.lease()
    spec = lambda lease: (lease or {}).get("spec") or {}  # noqa: E731
    lease = {
        "holder": (spec(before).get("holderIdentity"), spec(after).get("holderIdentity")),
        "transitions": (spec(before).get("leaseTransitions"), spec(after).get("leaseTransitions")),
    }
    end = next((r for r in rows if "end" in r), {})
    print(f"\n[dataplane] fault {name}: {stats}; Lease {lease}; sampler {end}; two holders "
          f"{overlaps or 'never'}")  # fmt: skip
    assert not overlaps, (overlaps, lab.logs())
    return FaultCase(stats, rows, lease, at, results)


def test_fault_api_unreachable_for_every_director(lab: Lab) -> None:
    """60 s without the API server for both directors: the leader keeps the VIP (its
    standby hears it lead), no request fails, no Lease transition when the API returns."""
    holder = lab.leader_ns()

    def cut() -> float:
        for ns in NODES:
            lab.call("cut_api", ns=ns)
        return float(lab.call("now"))

    def heal() -> None:
        for ns in NODES:
            lab.call("cut_api", ns=ns, cut=False)

    stats, _rows, lease, _, _ = _fault_case(lab, "api-outage", cut, heal, hold=60)
    assert stats["failures"] == 0, stats
    assert lease["holder"] == (NODES[holder], NODES[holder]), lease
    assert lease["transitions"][0] == lease["transitions"][1], lease  # type: ignore[index]
    assert lab.leader_ns() == holder


def test_fault_leader_cut_from_the_api_only(lab: Lab) -> None:
    holder = lab.leader_ns()

    def cut() -> float:
        lab.call("cut_api", ns=holder)
        return float(lab.call("now"))

    stats, _rows, lease, _, _ = _fault_case(
        lab, "leader-api", cut, lambda: lab.call("cut_api", ns=holder, cut=False), hold=20
    )
    assert stats["failures"] == 0, stats
    assert lease["holder"] == (NODES[holder], NODES[holder]), lease


def test_fault_directors_cut_from_each_other(lab: Lab) -> None:
    """The UDP heartbeat blocked between the directors (ARP and the API fine): the standby
    judges the leader lost but it still answers ARP for the VIP; no takeover, no ping-pong."""
    holder = lab.leader_ns()

    def cut() -> float:
        for ns in NODES:
            lab.call("cut_heartbeat", ns=ns)
        return float(lab.call("now"))

    def heal() -> None:
        for ns in NODES:
            lab.call("cut_heartbeat", ns=ns, cut=False)

    stats, _rows, lease, _, _ = _fault_case(lab, "heartbeat-cut", cut, heal, hold=15)
    assert stats["failures"] == 0, stats
    assert lease["holder"] == (NODES[holder], NODES[holder]), lease
    assert lease["transitions"][0] == lease["transitions"][1], lease  # type: ignore[index]


def test_fault_leader_stopped_for_3s(lab: Lab) -> None:
    """SIGSTOP of the leading agent for 3 s: its kernel keeps the VIP and forwards; the
    standby does not take a VIP that answers ARP; after SIGCONT the leader carries on."""
    holder = lab.leader_ns()
    pid = lab.agents[holder].pid

    def stop() -> float:
        return float(lab.call("signal_process", pid=pid, sig=int(signal.SIGSTOP)))

    stats, _rows, lease, _, _ = _fault_case(
        lab, "sigstop", stop,
        lambda: lab.call("signal_process", pid=pid, sig=int(signal.SIGCONT)), hold=3,
    )  # fmt: skip
    moved = lease["holder"][0] != lease["holder"][1]  # type: ignore[index]
    print(f"[dataplane] SIGSTOP 3 s: failover {'happened' if moved else 'none (kernel served)'}")
    assert stats["failures"] == 0, stats


def wait_sync_states(lab: Lab, node: str, within: float) -> dict[str, DirectorSync]:
    """The directors' sync states on the Lease (written by its holder) once ``node``'s says
    it receives, or the last seen after ``within`` seconds."""
    deadline = time.monotonic() + within
    states: dict[str, DirectorSync] = {}
    while True:
        lease = lab.lease() or {}
        holder = str((lease.get("spec") or {}).get("holderIdentity") or "")
        text = ((lease.get("metadata") or {}).get("annotations") or {}).get(SYNC_ANNOTATION)
        states = dict(parse_sync(text).current_for(holder))
        seen = states.get(node)
        if (seen is not None and seen.receiving == "True") or time.monotonic() >= deadline:
            return states
        time.sleep(0.5)


def metric_value(text: str, name: str) -> float | None:
    """The value of the first sample of metric ``name`` in a /metrics text (None: absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def rejected_forgeries(lab: Lab, ns: str) -> float:
    """The agent's count of heartbeat messages dropped for a bad MAC."""
    for line in lab.call("metrics", ns=ns).splitlines():
        if line.startswith("lvs_director_peer_rejected_total{") and 'reason="mac"' in line:
            return float(line.split()[-1])
    return 0.0


def test_fault_spoofed_probes_and_a_lossy_heartbeat(lab: Lab) -> None:
    """Probes spoofed from the standby's address and identity, 1,000 per second for 10 s
    (signed with a key that is not the group's), while 5 % of the standby's heartbeat is
    lost at random each way: no takeover, no failed request; the leader drops the forgeries
    before they cost the standby anything (counted). Then, the loss still on, a real crash
    of the leader's node still fails over within the crash bound."""
    from tests.dataplane import topology as topo_mod

    holder = lab.leader_ns()
    standby = OTHER[holder]
    front = topo_mod.default_topology().front
    forged_before = rejected_forgeries(lab, holder)
    spoofer: list[object] = []

    def fault() -> float:
        lab.call("lossy_heartbeat", ns=standby, percent=5)
        spoofer.append(lab.vm.spawn(
            [lab.vm_python(), "-m", "tests.dataplane.scenarios_agent", "spoof",
             "--target", front[holder], "--source", front[standby],
             "--identity", NODES[standby], "--rate", "1000", "--seconds", "10"],
            name="spoofer",
        ))  # fmt: skip
        return float(lab.call("now"))

    def heal() -> None:
        proc = spoofer[0]
        assert proc.wait(60) == 0, proc.output()  # type: ignore[attr-defined]

    try:
        stats, _rows, lease, _, _ = _fault_case(lab, "spoof-loss", fault, heal, hold=10)
        sent = json.loads(spoofer[0].output().strip().splitlines()[-1])  # type: ignore[attr-defined]
        forged = rejected_forgeries(lab, holder) - forged_before
        print(f"[dataplane] spoofed probes: {sent}, dropped by the leader as forged: {forged:.0f}")
        assert stats["failures"] == 0, stats
        assert lease["holder"] == (NODES[holder], NODES[holder]), lease
        assert lease["transitions"][0] == lease["transitions"][1], lease
        assert sent["sent"] >= 9000, sent
        # the flood reached the MAC check (its count); under TCG the responder's thread checks
        # ~750 a second on an idle host and the socket's buffer drops the rest, so not every
        # one is counted. With a nice-19 CPU loop on the host it checked 896 of 9,993 (was
        # asserted >= 1,000): the bound is 3 % of those sent, i.e. hundreds reached the check.
        # What the flood must not do (a takeover, a failed request) is asserted above.
        assert forged >= 0.03 * sent["sent"], (forged, sent)
        # a real crash, the loss still on
        loop, out = lab.start_loop("spoof-crash", VIP, 80)
        proc = lab.agents.pop(holder)
        moved = lab.call("takeover", pid=proc.pid, sig=int(signal.SIGKILL), vip=VIP, new=standby,
                         link_down=holder)  # fmt: skip
        time.sleep(2)
        crash = {**analyse(lab.stop_loop(loop, out), moved["at"]), **moved}
    finally:
        lab.call("lossy_heartbeat", ns=standby, on=False)
        # the dead node's kernel lets the VIP lapse before it is back on the link
        lab.call("wait_vip_dropped", ns=holder, vip=VIP, within=LAPSE_BOUND + 5)
        lab.call("link_up", ns=holder)
    print(f"[dataplane] crash with 5 % heartbeat loss: {crash}")
    # the same bound as the crash without loss (test_failover_when_the_active_director_dies)
    assert crash["vip_moved_after"] is not None and crash["vip_moved_after"] < 2.0, crash
    assert crash["recovered_after"] is not None and crash["recovered_after"] < 2.0, crash


KUBELET_BACKOFF = 10.0  # kubelet's first restart back-off for a crashing container


def test_fault_leader_agent_killed_restarted_after_backoff(lab: Lab) -> None:
    """SIGKILL of the leading agent, its node and kernel up, and no restart for kubelet's
    first back-off (10 s): the dead-man switch takes the VIP off the node within the Lease
    duration (it stops answering ARP), the standby takes it at once, and the agent, when it
    is back, joins as the standby without touching the VIP. Never two holders, sampled every
    10 ms over the whole case."""
    holder = lab.leader_ns()
    standby = OTHER[holder]

    def kill() -> float:
        proc = lab.agents.pop(holder)
        return float(lab.call("signal_process", pid=proc.pid, sig=int(signal.SIGKILL)))

    def restart() -> None:
        lab.start_agent(holder)
        lab.wait_started([holder])

    stats, rows, lease, at, results = _fault_case(
        lab, "killed-backoff", kill, restart, hold=KUBELET_BACKOFF
    )
    lost = first_sample(rows, at, lambda addr, arp: holder not in addr and holder not in arp)
    taken = None if lost is None else first_sample(rows, lost, lambda a, arp: a == [standby])
    left = None if lost is None else round(lost - at, 2)
    held = None if taken is None or lost is None else round(taken - lost, 2)
    print(f"[dataplane] leader agent killed: the VIP left its node {left}s after the kill "
          f"(lifetime {DEFAULT_VIP_LIFETIME}s), the standby held it {held}s later")  # fmt: skip
    assert lost is not None, rows
    # the kernel served until the lifetime ran out, and not past the Lease duration
    assert LAPSE_EARLIEST <= lost - at <= LAPSE_BOUND, (lost - at, rows)
    # the standby looks again every 0.25 s while held back (election.VIP_RECHECK), then
    # writes the Lease and adds the VIP
    assert taken is not None and taken - lost < 2.0, (taken, lost, rows)
    assert lease["holder"] == (NODES[holder], NODES[standby]), lease
    late = [r for r in results if r[1] is None and not lost - 1.0 <= r[0] <= taken + 1.0]
    assert not late, (late, lost, taken, stats, rows, lab.logs())  # only around the takeover


def test_fault_lonely_leader_restart(lab: Lab) -> None:
    """The only director of its group killed and restarted at once: its kernel keeps the
    VIP and forwards through the restart, and the restarted agent adopts it (0 failed
    requests) if it is back within the VIP's lifetime. If not (start-up under TCG), the VIP
    lapses, as it must for a dead agent, and the restarted agent adds it back: requests fail
    only from the lapse to its return, and the Lease stays with the node."""
    holder = lab.leader_ns()
    standby = OTHER[holder]
    assert lab.stop_agent(standby) == 0  # the group is down to one director
    lab.agents.pop(standby, None)

    def kill_and_restart() -> float:
        proc = lab.agents.pop(holder)
        at = float(lab.call("signal_process", pid=proc.pid, sig=int(signal.SIGKILL)))
        lab.start_agent(holder)
        lab.wait_started([holder])
        return at

    stats, rows, lease, at, results = _fault_case(
        lab, "lonely-restart", kill_and_restart, lambda: None, 1
    )
    assert lease["holder"] == (NODES[holder], NODES[holder]), lease
    lost = first_sample(rows, at, lambda addr, arp: holder not in addr)
    if lost is None:
        assert stats["failures"] == 0, stats
        return
    back = first_sample(rows, lost, lambda addr, arp: addr == [holder])
    print(f"[dataplane] lonely restart: the VIP lapsed {lost - at:.2f}s after the kill, back "
          f"{None if back is None else round(back - lost, 2)}s later")  # fmt: skip
    assert LAPSE_EARLIEST <= lost - at <= LAPSE_BOUND, (lost - at, rows)
    assert back is not None, rows
    late = [r for r in results if r[1] is None and not lost - 1.0 <= r[0] <= back + 1.0]
    assert not late, (late, lost, back)


VIP_MOVE = "10.10.0.104"
MOVE_GROUP = "gmove"


def _wait(pred: Callable[[], Any], within: float, what: str) -> Any:
    end = time.monotonic() + within
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {within:.0f} s")


def test_a_vip_moves_to_another_director_group_make_before_break(lab: Lab) -> None:
    """A node-selector edit moves a VirtualServer from group gtest (lvs-dir-a alone) to group
    gmove (lvs-dir-b alone); the controller's writes are played in its order. Staged, the
    new group programs the services and reports them, without the VIP; handed over, the old
    leader drops the VIP and services at once (no brake) and the new leader adds the VIP once
    nobody answers ARP for it. Never two holders or ARP answerers (sampled every 10 ms over
    the whole case); the hand-over's gap and failed requests are printed."""
    old, new = "lvs-dir-a", "lvs-dir-b"
    assert lab.stop_agent(new) == 0  # a leader hands over to lvs-dir-a on SIGTERM
    lab.start_agent(new, group=MOVE_GROUP)
    lab.wait_started([new])
    vs = virtual_server("moving", VIP_MOVE, 80, "http", scheduler="rr")
    lab.apply(vs)
    wait_answers(lab, VIP_MOVE, 80)
    assert lab.call("wait_vip", vip=VIP_MOVE, within=30)["holder"] == old
    loop, out = lab.start_loop("move", VIP_MOVE, 80, timeout=0.9)
    sampler, samples_out = lab.start_sampler("move", VIP_MOVE)
    new_lease = f"lvs-director-{MOVE_GROUP}"

    def programmed(lease: str) -> dict[str, int]:
        obj = lab.api.get("Lease", "lvs-system", lease) or {}
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        return dict(json.loads(annotations.get("lvs.io/programmed") or "{}"))

    try:
        staged = json.loads(json.dumps(vs))
        staged["metadata"]["labels"]["lvs.io/next-director-group"] = MOVE_GROUP
        staged["status"]["nextDirectorGroup"] = MOVE_GROUP
        lab.apply(staged)
        staged_at = float(lab.call("now"))
        _wait(lambda: "demo/moving" in programmed(new_lease), 60, "the new group programs it")
        time.sleep(1)  # it keeps the VIP off meanwhile (the sampler says)
        at = float(lab.call("now"))
        handed = json.loads(json.dumps(staged))  # the status first, then the labels
        handed["status"] = {"directorGroup": MOVE_GROUP, "acceptedVIP": VIP_MOVE}
        lab.apply(handed)
        handed["metadata"]["labels"] = {"lvs.io/director-group": MOVE_GROUP}
        lab.apply(handed)
        res = lab.call("wait_vip", vip=VIP_MOVE, within=30, exclude=old)
        _wait(lambda: "demo/moving" not in programmed(LEASE), 30, "the old group let go")
        time.sleep(2)
    finally:
        results = lab.stop_loop(loop, out)
        rows = lab.stop_sampler(sampler, samples_out)
    stats = analyse(results, at)
    overlaps = lab.call("two_holders", rows=rows)
    early = [r for r in vip_changes(rows, staged_at) if float(r["t"]) < at and new in r["addr"]]  # type: ignore[arg-type,operator]
    lost = first_sample(rows, at, lambda addr, arp: old not in addr and old not in arp)
    taken = None if lost is None else first_sample(rows, lost, lambda a, arp: a == [new])
    gap = None if taken is None or lost is None else round(taken - lost, 3)
    print(f"\n[dataplane] group move: {stats}; the old leader let go "
          f"{None if lost is None else round(lost - at, 3)}s after the hand-over, the new one "
          f"held the VIP {gap}s later; two holders {overlaps or 'never'}")  # fmt: skip
    assert res["holder"] == new, (res, lab.logs())
    assert not early, early  # staged: never the VIP
    assert not overlaps, (overlaps, lab.logs())
    assert lost is not None and taken is not None, rows
    # the new leader probes again every 50 ms while the old one answers
    assert gap is not None and gap < 1.0, (gap, rows)
    assert lab.call("wait_vip_dropped", ns=old, vip=VIP_MOVE, within=5) is not None
    lab.api.delete("VirtualServer", "demo", "moving")
    assert lab.call("wait_vip_dropped", ns=new, vip=VIP_MOVE, within=30) is not None
    assert lab.stop_agent(new) == 0  # the next case's fixture starts it in group gtest
