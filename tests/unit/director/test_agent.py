"""The agent's wiring with fakes for the kernel, the VIPs and the Lease (no API server)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from lvs_operator.director.agent import (
    COALESCE,
    PRECHECK_LEAD,
    PRECHECK_MAX_AGE,
    STEP_ASIDE_LIMIT,
    Agent,
    Wake,
    coalesce_delay,
    late_round,
)
from lvs_operator.director.config import AgentConfig
from lvs_operator.director.election import (
    MEMBERS_ANNOTATION,
    PROGRAMMED_ANNOTATION,
    format_members,
)
from lvs_operator.director.handover import HANDOVER_ANNOTATION, Handover, Relay
from lvs_operator.director.table import (
    Change,
    DestKey,
    IpvsDestination,
    IpvsService,
    IpvsTable,
    Op,
    Protocol,
    ServiceKey,
)
from lvs_operator.director.vip import PROBE_ROUNDS
from lvs_operator.director.vip_owner import PROBE_TIMEOUT, LaneWait
from tests.unit.director.fake_lease import FakeLeaseApi, FakeLeaseStore
from tests.unit.director.fakes import (
    FakeConntrack,
    FakeDaemonKernel,
    FakeEventPoster,
    FakeHandoverKernel,
    FakeKernel,
    FakeStatsReader,
    FakeVips,
)

VIP = "10.10.0.100"
K80 = ServiceKey(Protocol.TCP, VIP, 80)


def vs_obj(name: str = "web", generation: int = 3, **spec: Any) -> dict[str, Any]:
    """A VirtualServer as the controller leaves it: accepted for group g1 (status)."""
    body = {"vip": VIP, "ports": [{"port": 80, "targetPort": 8080}], "poolRef": {"name": "pool"},
            "scheduler": "rr"}  # fmt: skip
    body.update(spec)
    status = {"observedGeneration": generation, "directorGroup": "g1", "acceptedVIP": body["vip"]}
    return {"metadata": {"name": name, "namespace": "demo", "generation": generation},
            "spec": body, "status": status}  # fmt: skip


def pool_obj(*members: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "pool", "namespace": "demo"}, "spec": {"servers": []},
            "status": {"members": list(members)}}  # fmt: skip


def m(address: str, **kw: Any) -> dict[str, Any]:
    return {"address": address, "weight": 1, "ready": True, **kw}


def make(
    identity: str = "node-a",
    store: FakeLeaseStore | None = None,
    kernel: FakeKernel | None = None,
    vips: FakeVips | None = None,
    handover: FakeHandoverKernel | None = None,
    daemons: FakeDaemonKernel | None = None,
    traffic: FakeStatsReader | None = None,
    events: FakeEventPoster | None = None,
    conntrack: FakeConntrack | None = None,
    **cfg_kw: Any,
) -> Agent:
    # The agent runs on the real clock here: generous Lease timings, so a loaded machine (a
    # test run beside a build) cannot make a renewal miss the product's 1.5 s deadline; the
    # deadline itself is tested on a fake clock (test_election.py). Seen flaky before: a
    # renewal past the deadline stepped down and wrote no annotation.
    cfg_kw.setdefault("lease_duration", 60)
    cfg_kw.setdefault("renew_deadline", 45.0)
    cfg = AgentConfig(node_name=identity, namespace="lvs-system", group="g1", lease_name="lease",
                      **cfg_kw)  # fmt: skip
    agent = Agent(cfg, client=None, kernel=kernel or FakeKernel(), vips=vips or FakeVips(),
                  lease_api=FakeLeaseApi(store or FakeLeaseStore()),
                  handover_node=handover or FakeHandoverKernel(), daemons=daemons,
                  traffic=None if traffic is None else lambda: traffic,
                  events=events, conntrack=conntrack)  # fmt: skip
    agent.watches.reset_next_vs([])  # the list of VirtualServers moving in: none
    return agent


async def test_leader_programs_ipvs_holds_vip_and_reports_generations() -> None:
    store = FakeLeaseStore()
    agent = make(store=store)
    await agent.startup()
    assert agent.elector.is_leader
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"), m("10.20.0.22"))])
    await agent.converge()
    await agent.reconcile_vips()
    table = agent.kernel.table  # type: ignore[attr-defined]
    assert [d.address for d in table[K80].destinations] == ["10.20.0.21", "10.20.0.22"]
    assert agent.vips.node.addresses == {VIP: "front"}
    assert agent.ready
    await agent.elector.tick()  # the renewal carries the annotation
    assert json.loads(store.record.annotations[PROGRAMMED_ANNOTATION]) == {"demo/web": 3}


async def test_standby_programs_ipvs_but_drops_a_stale_vip_at_startup() -> None:
    store = FakeLeaseStore()
    leader = make("node-a", store)
    await leader.startup()
    svc = IpvsService(VIP, 80, Protocol.TCP, "rr")
    kernel = FakeKernel(IpvsTable.of([(svc, [IpvsDestination("10.20.0.21", 8080)])]))
    vips = FakeVips({VIP: "front", "10.10.0.11": "front"})  # a stale VIP and the node's own
    standby = make("node-b", store, kernel, vips)
    standby.watches.reset_vs([vs_obj()])  # the informer's first list
    reads: list[dict[str, str]] = []  # the node's addresses when the kernel was read
    read = kernel.read_services
    kernel.read_services = lambda: (reads.append(dict(vips.addresses)), read())[1]  # type: ignore[method-assign]
    await standby.startup()
    assert not standby.elector.is_leader
    assert vips.addresses == {"10.10.0.11": "front"}
    # before the kernel's IPVS table is read
    assert reads and reads[0] == {"10.10.0.11": "front"}
    assert kernel.reads == 0  # the start-up reads the services only: the converge reads all


async def test_other_ipvs_services_and_addresses_are_never_touched() -> None:
    # kube-proxy in IPVS mode: a ClusterIP service, its address on kube-ipvs0
    cluster_ip = IpvsService("10.96.0.10", 53, Protocol.UDP, "rr")
    kernel = FakeKernel(IpvsTable.of([(cluster_ip, [IpvsDestination("10.244.1.5", 53)])]))
    vips = FakeVips({"10.96.0.10": "kube-ipvs0"})
    agent = make(kernel=kernel, vips=vips, store=FakeLeaseStore())
    agent.watches.reset_vs([vs_obj()])
    await agent.startup()
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    await agent.converge()
    await agent.reconcile_vips()
    assert cluster_ip.key in kernel.table and K80 in kernel.table
    assert vips.addresses == {"10.96.0.10": "kube-ipvs0", VIP: "front"}


async def test_adopts_kernel_state_without_changes_on_restart() -> None:
    agent = make()
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    await agent.converge()
    restarted = make(kernel=agent.kernel)  # type: ignore[arg-type]
    await restarted.startup()
    restarted.watches.reset_vs([vs_obj()])
    restarted.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    before = len(agent.kernel.applied)  # type: ignore[attr-defined]
    await restarted.converge()
    assert len(restarted.kernel.applied) == before  # type: ignore[attr-defined]


async def test_removed_virtual_server_is_removed_from_the_kernel() -> None:
    agent = make()
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    await agent.converge()
    agent.watches.apply_vs("DELETED", vs_obj())
    await agent.converge()
    assert len(agent.kernel.table) == 0  # type: ignore[attr-defined]


async def test_a_retired_vip_is_cleaned_then_no_longer_owned() -> None:
    agent = make()
    await agent.startup()
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    await agent.converge()
    await agent.reconcile_vips()
    agent.watches.apply_vs("DELETED", vs_obj())
    await agent.converge()
    await agent.reconcile_vips()
    agent.forget_unused_vips()
    assert len(agent.kernel.table) == 0  # type: ignore[attr-defined]
    assert agent.vips.node.addresses == {}
    assert agent.vips.owned == set()
    # the VIP now belongs to another group on this node: left alone
    agent.vips.node.addresses[VIP] = "front"
    await agent.reconcile_vips()
    assert agent.vips.node.addresses == {VIP: "front"}


async def test_quiesced_member_drains_then_leaves() -> None:
    agent = make()
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"), m("10.20.0.22"))])
    await agent.converge()
    kernel: FakeKernel = agent.kernel  # type: ignore[assignment]
    dest_key = kernel.table[K80].destinations[1].key
    kernel.connections[(K80, dest_key)] = 1
    terminating = pool_obj(m("10.20.0.21"), m("10.20.0.22", terminating=True))
    agent.watches.apply_pool("MODIFIED", terminating)
    await agent.converge()
    assert {d.address: d.weight for d in kernel.table[K80].destinations} == {
        "10.20.0.21": 1, "10.20.0.22": 0}  # fmt: skip
    kernel.connections[(K80, dest_key)] = 0
    await agent.converge()
    assert [d.address for d in kernel.table[K80].destinations] == ["10.20.0.21"]


async def test_release_drops_vips_then_frees_the_lease() -> None:
    store = FakeLeaseStore()
    agent = make(store=store)
    await agent.startup()
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj()])
    await agent.converge()
    await agent.reconcile_vips()
    assert agent.vips.node.addresses == {VIP: "front"}
    assert await agent.elector.release()
    assert agent.vips.node.addresses == {}  # dropped before the Lease was released
    assert store.record.holder == ""


async def test_takeover_adds_the_vips_before_any_dump() -> None:
    store = FakeLeaseStore()
    leader = make("node-a", store)
    await leader.startup()
    vips = FakeVips()
    standby = make("node-b", store, vips=vips)
    await standby.startup()
    standby.watches.reset_vs([vs_obj()])
    standby.watches.reset_pools([pool_obj()])
    await standby.converge()
    await standby.reconcile_vips()
    assert vips.addresses == {} and standby.vips.placements == {VIP: "front"}
    await leader.elector.release()
    await standby.elector.tick()
    assert standby.elector.is_leader
    assert vips.addresses == {VIP: "front"}
    await asyncio.sleep(0.05)  # the announcement runs on its own thread
    assert vips.announced == [(VIP, "front", None)]


async def test_a_standby_probes_the_holders_heartbeat_only_once_settled() -> None:
    """Each probe is a confirmation the holder may list the standby by, and a listed standby
    that goes quiet makes the holder step down: a standby still starting (imports, first
    kernel read: its threads starved) must not probe until its first placement is done."""
    store = FakeLeaseStore()
    leader = make("node-a", store)
    await leader.startup()
    standby = make("node-b", store)
    await standby.startup()
    monitor = standby.heartbeat.monitor
    assert monitor is not None and leader.heartbeat.monitor is not None
    assert not monitor.probing and not leader.heartbeat.monitor.probing
    standby.watches.reset_vs([vs_obj()])
    standby.watches.reset_pools([pool_obj()])
    await standby.converge()
    assert not monitor.probing  # programmed, but no placement yet
    await standby.reconcile_vips()
    assert monitor.probing


async def _standby_that_lost_its_holder(
    store: FakeLeaseStore, vips: FakeVips
) -> tuple[Agent, Agent]:
    """node-a leads; node-b, placed and listed as its only standby, has lost its heartbeat."""
    leader = make("node-a", store)
    await leader.startup()
    standby = make("node-b", store, vips=vips)
    await standby.startup()
    standby.watches.reset_vs([vs_obj()])
    standby.watches.reset_pools([pool_obj()])
    await standby.converge()
    await standby.reconcile_vips()
    assert store.record is not None
    members = {MEMBERS_ANNOTATION: format_members({"node-b": "10.10.0.12"})}
    annotations = {**store.record.annotations, **members}
    store._store(dataclasses.replace(store.record, annotations=annotations))
    standby.elector.holder_unreachable = lambda holder: holder == "node-a"
    return leader, standby


async def test_a_heartbeat_takeover_adds_the_vip_once_ahead_of_the_lease_write() -> None:
    store = FakeLeaseStore()
    vips = FakeVips()
    _, standby = await _standby_that_lost_its_holder(store, vips)
    await standby.elector.tick()
    assert standby.elector.is_leader and store.record is not None
    assert store.record.holder == "node-b"
    assert vips.addresses == {VIP: "front"}
    assert [e for e in vips.events if e[0] == "add"] == [("add", VIP)]  # not again as leader
    await asyncio.sleep(0.05)  # the announcement runs on its own thread
    assert vips.announced == [(VIP, "front", None)]


async def test_an_early_take_whose_lease_write_fails_drops_the_vip() -> None:
    store = FakeLeaseStore()
    vips = FakeVips()
    _, standby = await _standby_that_lost_its_holder(store, vips)
    api = standby.elector.api
    assert isinstance(api, FakeLeaseApi)
    real_update = api.update

    async def update_then_fail(record):  # type: ignore[no-untyped-def]
        assert vips.addresses == {VIP: "front"}  # up while the write is in flight
        api.down = True
        return await real_update(record)

    api.update = update_then_fail  # type: ignore[method-assign]
    await standby.elector.tick()
    assert not standby.elector.is_leader and not standby.elector.taking_early
    assert vips.addresses == {}
    assert store.record is not None and store.record.holder == "node-a"


async def test_the_sync_daemons_follow_placement_and_leadership() -> None:
    """Connection sync (sync.py): a standby runs the backup once placed, on the VIP's link;
    taking over starts the master; releasing the Lease stops it (the kernel's daemon would
    outlive the process)."""
    from lvs_operator.director.kernel.ipvs_netlink import SYNC_BACKUP, SYNC_MASTER

    store = FakeLeaseStore()
    leader = make("node-a", store)
    await leader.startup()
    daemons = FakeDaemonKernel()
    standby = make("node-b", store, daemons=daemons)
    await standby.startup()
    standby.watches.reset_vs([vs_obj()])
    standby.watches.reset_pools([pool_obj()])
    await standby.converge()
    await standby.reconcile_vips()
    assert standby._sync_task is not None
    await standby._sync_task
    assert {(d.state, d.ifname) for d in daemons.slots.values()} == {(SYNC_BACKUP, "front")}
    metrics = standby.metrics.render().decode()
    assert 'lvs_director_sync_daemon{group="g1",state="backup"} 1.0' in metrics
    assert 'lvs_director_sync_daemon{group="g1",state="master"} 0.0' in metrics
    assert 'lvs_director_sync_problem{group="g1"} 0.0' in metrics
    await leader.elector.release()
    await standby.elector.tick()
    assert standby.elector.is_leader
    await standby._sync_task
    assert set(daemons.slots) == {SYNC_BACKUP, SYNC_MASTER}
    assert 'state="master"} 1.0' in standby.metrics.render().decode()
    await standby.elector.release()
    await standby._sync_task
    assert set(daemons.slots) == {SYNC_BACKUP}


async def test_the_traffic_poller_starts_after_the_first_converge() -> None:
    """Its first read is a whole read of the counters (seconds at 1,000 x 10 under TCG): it
    waits for the first converge rather than compete with a restart's start-up."""
    agent = make("node-a", traffic=FakeStatsReader([]), traffic_interval=10.0)
    assert agent.traffic is not None
    await agent.startup()
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    assert not agent.traffic.started
    loop = asyncio.create_task(agent._converge_loop())
    try:
        agent.dirty.set()
        for _ in range(200):
            if agent.traffic.started:
                break
            await asyncio.sleep(0.01)
    finally:
        loop.cancel()
        agent.traffic.stop()
    assert agent.ready and agent.traffic.started


async def test_traffic_metrics_cover_the_groups_services_once_converged() -> None:
    """/metrics shows each of the group's services and real servers with the kernel's
    counters (traffic.py), read on the poller's own thread, not at the scrape."""
    from lvs_operator.director.kernel.ipvs import DestinationStats, ServiceStats
    from lvs_operator.director.kernel.ipvs_netlink import Counters

    dest = DestinationStats(DestKey("10.20.0.21", 8080), Counters(4, 40, 30, 400, 3000), 1, 0)
    reader = FakeStatsReader([ServiceStats(K80, Counters(4, 40, 30, 400, 3000), (dest,))])
    agent = make("node-a", traffic=reader, traffic_interval=10.0)
    assert agent.traffic is not None
    agent.traffic.read_once(reader)
    assert 'vip="10.10.0.100"' not in agent.metrics.render().decode()  # desired not known
    await agent.startup()
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    await agent.converge()
    text = agent.metrics.render().decode()
    assert ('lvs_director_service_connections_total{group="g1",port="80",protocol="TCP",'
            'vip="10.10.0.100"} 4.0') in text  # fmt: skip
    assert 'destination="10.20.0.21:8080"' in text
    assert make("node-b", traffic=reader, traffic_interval=0).traffic is None  # off


async def test_a_takeover_and_a_release_post_events_on_the_virtual_server() -> None:
    store = FakeLeaseStore()
    poster = FakeEventPoster()
    agent = make("node-a", store, events=poster)
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    await agent.startup()
    await agent.converge()
    await agent.reconcile_vips()
    if not agent.elector.is_leader:
        await agent.elector.tick()
    assert agent.elector.is_leader
    await agent.elector.release()
    await agent.events.close()
    reasons = [(e["involvedObject"]["name"], e["reason"]) for e in poster.posted]
    assert reasons == [("web", "VIPTakenOver"), ("web", "VIPReleased")], poster.posted
    assert "director node-a (group g1) now holds VIP 10.10.0.100" in poster.posted[0]["message"]


async def test_metrics_show_the_process_the_last_converge_and_the_lease() -> None:
    agent = make("node-a")
    text = agent.metrics.render().decode()
    assert 'lvs_director_last_converge_timestamp_seconds{group="g1"} 0.0' in text
    assert 'lvs_director_lease_age_seconds{group="g1"} NaN' in text
    assert "lvs_director_lease_holder_info{" not in text
    assert "process_resident_memory_bytes " in text  # RSS: a design goal
    await agent.startup()
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    await agent.converge()
    assert agent.elector.is_leader
    text = agent.metrics.render().decode()
    assert 'lvs_director_lease_holder_info{group="g1",holder="node-a"} 1.0' in text
    age = next(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("lvs_director_lease_age_seconds{"))  # fmt: skip
    assert 0 <= age < 5
    last = next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("lvs_director_last_converge_timestamp_seconds{"))  # fmt: skip
    assert abs(last - time.time()) < 5


async def test_planned_handover_keeps_connections_in_flight_on_the_old_leader() -> None:
    """SIGTERM on the leader: the ARP filter in, then the VIP to lo before it leaves the
    interface, the note on the released Lease; the new leader installs the relay before it
    adds the VIP; the old one drops the VIP from lo once its connections are done, then
    its ARP filter."""
    store = FakeLeaseStore()
    old_kernel, old_vips = FakeKernel(), FakeVips()
    old_hk = FakeHandoverKernel("10.10.0.11", vips=old_vips)
    old = make("node-a", store, kernel=old_kernel, vips=old_vips, handover=old_hk,
               handover_drain=2.0)  # fmt: skip
    new_vips, new_hk = FakeVips(), FakeHandoverKernel("10.10.0.12")
    new = make("node-b", store, vips=new_vips, handover=new_hk)
    for agent in (old, new):
        await agent.startup()
        agent.watches.reset_vs([vs_obj()])
        agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
        await agent.converge()
        await agent.reconcile_vips()
    assert old.elector.is_leader and old_vips.addresses == {VIP: "front"}
    dest = old_kernel.table[K80].destinations[0].key
    old_kernel.connections[(K80, dest)] = 1  # one connection in flight

    await old.handover.retire()
    assert old_vips.addresses == {VIP: "lo"} and old.vips.retired == {VIP: "front"}
    # filtered before the VIP moved (on lo, the kernel would answer for it on any link),
    # with this node's address on the VIP's link for the requests it sends from the VIP
    assert old_hk.arp_filter == ([VIP], {"front": "10.10.0.11"})
    assert old_hk.addresses_at_filter == {VIP: "front"}
    assert await old.elector.release()
    note = Handover.from_annotation(store.record.annotations[HANDOVER_ANNOTATION])
    assert note is not None and note.source == "node-a" and note.relays == {VIP: "10.10.0.11"}
    await old.reconcile_vips()  # a reconcile after the step-down leaves the retired VIP alone
    assert old_vips.addresses == {VIP: "lo"}

    await new.elector.tick()
    assert new.elector.is_leader
    assert new_hk.relays == [Relay("front", "10.10.0.11", (VIP,))]
    assert new_hk.events == ["relay on"] and new_vips.addresses == {VIP: "front"}
    assert store.record.annotations[HANDOVER_ANNOTATION] == "" or new.elector._annotations[
        HANDOVER_ANNOTATION] == ""  # fmt: skip

    drain = asyncio.create_task(old.handover.drain())
    await asyncio.sleep(0.3)
    assert not drain.done() and old_vips.addresses == {VIP: "lo"}  # still serving it
    old_kernel.connections[(K80, dest)] = 0
    await asyncio.sleep(1.0)  # idle for longer than the quiet moment (0.5 s here)...
    # ...but until the VIP is answered for elsewhere, clients still come here
    assert not drain.done() and old_vips.addresses == {VIP: "lo"}
    old_vips.answering = {VIP}  # the new leader's announcement, seen by the ARP probe
    await asyncio.wait_for(drain, 3)
    assert old_vips.addresses == {} and old.vips.retired == {}
    assert old_hk.arp_filter is None and old_hk.events == ["arp filter on", "arp filter off"]
    assert old_hk.addresses_at_unfilter == {}  # removed only once the VIP left lo


async def test_a_handover_nobody_takes_keeps_serving_until_the_drain_time() -> None:
    """The old leader's connections are done but no director announces the VIP: it keeps
    serving it from lo for the whole drain time, then drops it."""
    store = FakeLeaseStore()
    old_vips = FakeVips()
    old = make("node-a", store, vips=old_vips, handover=FakeHandoverKernel("10.10.0.11"),
               handover_drain=1.2)  # fmt: skip
    await old.startup()
    old.watches.reset_vs([vs_obj()])
    old.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    await old.converge()
    await old.reconcile_vips()
    await old.handover.retire()
    assert await old.elector.release()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    drain = asyncio.create_task(old.handover.drain())
    await asyncio.sleep(0.8)  # past the quiet moment (0.3 s): nobody answers, still here
    assert not drain.done() and old_vips.addresses == {VIP: "lo"}
    await asyncio.wait_for(drain, 3)
    assert loop.time() - t0 >= 1.2
    assert old_vips.addresses == {}


async def test_a_stale_or_own_handover_note_starts_no_relay() -> None:
    store = FakeLeaseStore()
    hk = FakeHandoverKernel()
    agent = make("node-b", store, handover=hk)
    await agent.startup()
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj()])
    await agent.converge()
    await agent.reconcile_vips()
    await agent.elector.release()
    for note in (
        Handover("node-a", 0.0, 10.0, {VIP: "10.10.0.11"}),  # written long ago
        Handover("node-b", 9e9, 10.0, {VIP: "10.10.0.11"}),  # its own
    ):
        store.record = dataclasses.replace(
            store.record, holder="", annotations={HANDOVER_ANNOTATION: note.to_annotation()}
        )
        agent.elector._stopped = False
        await agent.elector.tick()
        assert agent.elector.is_leader and hk.relays is None
        await agent.elector.release()


async def test_heartbeat_address_is_this_nodes_on_the_vips_link() -> None:
    """Published on the Lease (written when leading): where the standby probes."""
    from types import SimpleNamespace

    from lvs_operator.director.peer import HEARTBEAT_ANNOTATION

    store = FakeLeaseStore()
    agent = make("node-a", store, handover=FakeHandoverKernel("10.10.0.11"))
    agent.heartbeat.responder = SimpleNamespace(address=("0.0.0.0", 9643))  # type: ignore[assignment]
    await agent.startup()
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj()])
    await agent.converge()
    await agent.reconcile_vips()
    await agent.elector.tick()
    assert store.record is not None
    assert store.record.annotations[HEARTBEAT_ANNOTATION] == "10.10.0.11:9643"
    text = agent.metrics.render().decode()
    assert 'lvs_director_peer_reply_age_seconds{group="g1"} NaN' in text  # leader: no probing
    assert 'lvs_director_peer_armed{group="g1"} 0.0' in text


async def test_a_restarted_leader_keeps_its_vip_until_it_knows_the_desired_set() -> None:
    """The agent restarts while its Lease is still valid: it takes the Lease back at once,
    before its first converge. The VIP its kernel holds is never removed (nor re-added):
    its lifetime is restarted at once (it must not lapse during the start-up), and it is
    announced once the desired set is known."""
    store = FakeLeaseStore()
    first = make("node-a", store)
    await first.startup()
    vips = FakeVips({VIP: "front"})
    restarted = make("node-a", store, vips=vips)
    restarted.watches.reset_vs([vs_obj()])  # listed (the VIP is owned), not converged yet
    await restarted.startup()
    assert restarted.elector.is_leader and restarted.ipvs.desired is None
    await asyncio.gather(*restarted.vips.tasks)  # the take-over's background reconcile
    await restarted.reconcile_vips()
    assert vips.addresses == {VIP: "front"} and vips.events == [("renew", VIP)]
    restarted.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    await restarted.converge()
    await restarted.reconcile_vips()
    await asyncio.gather(*restarted.vips.tasks)
    assert vips.addresses == {VIP: "front"}
    assert [e for e in vips.events if e[0] != "frame"] == [("renew", VIP)]  # no remove, no add
    assert vips.announced == [(VIP, "front", None)]
    await restarted.vips.renew_lifetimes()
    assert vips.events[-1] == ("renew", VIP)


async def test_a_restarted_leader_whose_api_is_down_keeps_its_vip() -> None:
    """The restarted agent cannot read the Lease (API down): it does not know it is no
    longer the holder, so nothing in its kernel is stale yet; it converges and keeps the VIP
    (no standby takes a VIP that still answers ARP), and takes its Lease back when the API
    returns."""
    store = FakeLeaseStore()
    first = make("node-a", store)
    await first.startup()
    vips = FakeVips({VIP: "front"})
    restarted = make("node-a", store, vips=vips, startup_grace=0.05)
    restarted.elector.api.down = True  # type: ignore[attr-defined]
    restarted.watches.reset_vs([vs_obj()])
    restarted.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    await restarted.startup()
    assert not restarted.elector.is_leader
    await restarted.converge()
    await restarted.reconcile_vips()
    assert vips.addresses == {VIP: "front"}
    assert [e for e in vips.events if e[0] != "frame"] == []
    restarted.elector.api.down = False  # type: ignore[attr-defined]
    await restarted.elector.tick()
    assert restarted.elector.is_leader
    await asyncio.gather(*restarted.vips.tasks)
    assert vips.addresses == {VIP: "front"}


async def test_a_vip_on_a_missing_interface_does_not_stop_the_others() -> None:
    """One VirtualServer names an interface this node lacks: the other VIP is held and
    announced, the bad one is reported on the Lease (the controller's condition) with the
    interface named, and nothing raises into the election."""
    from lvs_operator.api.contract import VIP_PROBLEMS_ANNOTATION, parse_vip_problems
    from lvs_operator.director.vip import NoSuchInterface

    store = FakeLeaseStore()
    vips = FakeVips()
    vips.failures["eth9"] = NoSuchInterface(
        "interface eth9 does not exist on this node: fix spec.directors.interface"
    )
    agent = make(store=store, vips=vips)
    await agent.startup()
    good = vs_obj("good")
    bad = vs_obj("bad", vip="10.10.0.101", directors={"interface": "eth9"})
    agent.watches.reset_vs([bad, good])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    await agent.converge()
    await agent.reconcile_vips()
    assert vips.addresses == {VIP: "front"}
    await agent.elector.tick()
    problems = parse_vip_problems(store.record.annotations[VIP_PROBLEMS_ANNOTATION])
    assert list(problems) == ["10.10.0.101"] and "eth9" in problems["10.10.0.101"]
    assert agent.elector.is_leader


async def test_a_vip_that_cannot_be_placed_gets_a_warning_event_once() -> None:
    from lvs_operator.director.vip import NoSuchInterface

    poster = FakeEventPoster()
    vips = FakeVips()
    vips.failures["eth9"] = NoSuchInterface("interface eth9 does not exist on this node")
    agent = make(vips=vips, events=poster)
    await agent.startup()
    agent.watches.reset_vs([vs_obj("good"), vs_obj("bad", vip="10.10.0.101",
                                                   directors={"interface": "eth9"})])  # fmt: skip
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    await agent.converge()
    await agent.reconcile_vips()
    await agent.reconcile_vips()  # the retry fails the same way: no second Event
    await agent.events.close()
    warnings = [e for e in poster.posted if e["reason"] == "VIPNotPlaced"]
    assert [(e["involvedObject"]["name"], e["type"]) for e in warnings] == [("bad", "Warning")]
    assert "eth9" in warnings[0]["message"] and "node-a" in warnings[0]["message"]


async def test_a_health_flip_posts_an_event_on_the_virtual_servers_it_serves() -> None:
    """The leader tells of a real server quiesced, then restored, on each VirtualServer
    whose services send to it; a standby (which probes too) stays quiet."""
    from lvs_operator.api.realserverpool import HealthCheck
    from lvs_operator.director.health import Probe

    poster = FakeEventPoster()
    store = FakeLeaseStore()
    agent = make("node-a", store, events=poster)
    agent.watches.reset_vs([vs_obj("web"), vs_obj("other", vip="10.10.0.101")])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"), m("10.20.0.22"))])
    await agent.startup()
    await agent.converge()
    if not agent.elector.is_leader:
        await agent.elector.tick()
    assert agent.elector.is_leader
    target = Probe.of("10.20.0.21", 8080, HealthCheck())
    agent._health_flipped(target, False)
    agent._health_flipped(target, True)
    agent._health_flipped(Probe.of("10.20.0.99", 8080, HealthCheck()), False)
    await agent.events.close()
    got = [(e["involvedObject"]["name"], e["reason"], e["type"]) for e in poster.posted
           if e["reason"].startswith("RealServer")]  # fmt: skip
    assert got == [("other", "RealServerQuiesced", "Warning"), ("web", "RealServerQuiesced",
                   "Warning"), ("other", "RealServerRestored", "Normal"),
                   ("web", "RealServerRestored", "Normal")], poster.posted  # fmt: skip
    assert "10.20.0.21:8080" in poster.posted[-1]["message"]
    standby = make("node-b", store, events=FakeEventPoster())
    standby.watches.reset_vs([vs_obj("web")])
    standby.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    await standby.converge()
    standby._health_flipped(target, False)
    await standby.events.close()
    assert standby.events.poster.posted == []  # type: ignore[union-attr]


async def test_a_fresh_vip_probe_from_the_heartbeats_suspicion_is_not_repeated() -> None:
    """The heartbeat suspects the holder just before judging it lost: the probe for the VIPs
    starts then, and the takeover uses its answer instead of waiting for a probe of its own;
    an old answer is never used."""
    vips = FakeVips()
    agent = make(vips=vips)
    agent.vips.placements = {VIP: "front"}
    agent._precheck_soon()
    assert agent._precheck is not None
    await agent._precheck
    probes = len(vips.probed)
    assert await agent._vip_in_use() is False
    assert len(vips.probed) == probes  # the suspicion's probe stood for it
    stale: asyncio.Future[tuple[float, set[str]]] = asyncio.get_running_loop().create_future()
    stale.set_result((time.monotonic() - 10, set()))
    agent._precheck = stale  # type: ignore[assignment]
    vips.answering = {VIP}
    assert await agent._vip_in_use() is True  # probed again, and someone answers
    assert len(vips.probed) == probes + 1


async def test_an_nft_failure_never_holds_back_the_ipvs_changes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The masquerade rule cannot be written (nft missing, a netlink error): the IPVS
    changes still go in (a real server leaving must leave the table), the failure is logged
    once and counted, and the next converge tries again."""
    kernel = FakeKernel()
    kernel.prepare_error = RuntimeError("nft: No such file or directory")
    agent = make(kernel=kernel, store=FakeLeaseStore())
    await agent.startup()
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"), m("10.20.0.22"))])
    with caplog.at_level(logging.ERROR, logger="lvs_operator.director.ipvs_sync"):
        await agent.converge()
        assert [d.address for d in kernel.table[K80].destinations] == ["10.20.0.21", "10.20.0.22"]
        agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
        await agent.converge()
    assert [d.address for d in kernel.table[K80].destinations] == ["10.20.0.21"]
    assert len(kernel.prepared) == 2  # tried again
    lines = [r.getMessage() for r in caplog.records if "masquerade" in r.getMessage()]
    assert len(lines) == 1 and "No such file" in lines[0]
    assert 'lvs_director_prepare_errors_total{group="g1"} 2.0' in agent.metrics.render().decode()


async def test_the_agent_asks_the_vip_as_source_for_masquerade_source_vip() -> None:
    """masqueradeSource: VIP reaches the kernel's source NAT (kernel/nft.py) for exactly that
    VirtualServer's services, and leaves it when the spec goes back to the default."""
    kernel = FakeKernel()
    agent = make(kernel=kernel, store=FakeLeaseStore())
    await agent.startup()
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    agent.watches.reset_vs([vs_obj(masqueradeSource="VIP")])
    await agent.converge()
    assert kernel.vip_sourced == {K80}
    agent.watches.reset_vs([vs_obj(generation=4)])
    await agent.converge()
    assert kernel.vip_sourced == frozenset()


async def _masquerade_vip_pair(
    store: FakeLeaseStore, conntrack: FakeConntrack
) -> tuple[Agent, Agent]:
    """A leader and a standby (with ``conntrack``) of a masqueradeSource: VIP service."""
    leader = make("node-a", store)
    standby = make("node-b", store, conntrack=conntrack)
    for agent in (leader, standby):
        await agent.startup()
        agent.watches.reset_vs([vs_obj(masqueradeSource="VIP")])
        agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
        await agent.converge()
        await agent.reconcile_vips()
    assert leader.elector.is_leader and not standby.elector.is_leader
    return leader, standby


async def test_a_crash_takeover_restores_the_synced_connections_conntrack_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A takeover without a handover note (the old leader is gone) writes the conntrack
    entries of the masqueradeSource: VIP services' synced connections, once, and says so."""
    caplog.set_level(logging.INFO, logger="lvs_operator.director.agent")
    store, conntrack = FakeLeaseStore(), FakeConntrack()
    leader, standby = await _masquerade_vip_pair(store, conntrack)
    await leader.elector.release()  # no note: as if it had died
    await standby.elector.tick()
    assert standby.elector.is_leader
    for _ in range(50):
        if conntrack.calls:
            break
        await asyncio.sleep(0.01)
    assert conntrack.calls == [frozenset({K80})]
    await standby.reconcile_vips()
    await asyncio.sleep(0.05)
    assert len(conntrack.calls) == 1  # once per leadership
    assert standby.metrics.conntrack_restored._value.get() == 2
    said = [r for r in caplog.records if r.getMessage().startswith("conntrack entries restored")]
    assert len(said) == 1 and getattr(said[0], "entries_created", None) == 2, caplog.text


async def test_a_planned_takeover_restores_no_conntrack_it_relays() -> None:
    """With a handover note the old leader's connections are relayed back to it: no entries
    are written for them here."""
    store, conntrack = FakeLeaseStore(), FakeConntrack()
    leader, standby = await _masquerade_vip_pair(store, conntrack)
    await leader.handover.retire()
    assert await leader.elector.release()
    await standby.elector.tick()
    assert standby.elector.is_leader
    await asyncio.sleep(0.1)
    assert conntrack.calls == []


async def test_no_conntrack_restore_without_a_vip_sourced_service() -> None:
    store, conntrack = FakeLeaseStore(), FakeConntrack()
    leader = make("node-a", store)
    standby = make("node-b", store, conntrack=conntrack)
    for agent in (leader, standby):
        await agent.startup()
        agent.watches.reset_vs([vs_obj()])
        agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
        await agent.converge()
    await leader.elector.release()
    await standby.elector.tick()
    await asyncio.sleep(0.1)
    assert standby.elector.is_leader and conntrack.calls == []


async def test_the_agent_brakes_a_mass_withdrawal_and_keeps_the_vips() -> None:
    """Every VirtualServer of the group disappears from the agent's view at once (say the
    controller's --vip-ranges was emptied): the services and the VIP stay for the hold,
    counted in lvs_director_withdrawals_held; then they go."""
    from lvs_operator.director.brake import BrakeConfig

    kernel, vips = FakeKernel(), FakeVips()
    agent = make(kernel=kernel, vips=vips, store=FakeLeaseStore(), brake=BrakeConfig(hold=0.3))
    await agent.startup()
    agent.watches.reset_vs([vs_obj("web"), vs_obj("api", ports=[{"port": 81, "targetPort": 8080}])])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    await agent.converge()
    await agent.reconcile_vips()
    assert len(kernel.table) == 2 and vips.addresses == {VIP: "front"}
    agent.watches.reset_vs([])
    await agent.converge()
    await agent.reconcile_vips()
    assert len(kernel.table) == 2 and vips.addresses == {VIP: "front"}  # braked
    assert 'lvs_director_withdrawals_held{group="g1"} 2.0' in agent.metrics.render().decode()
    await asyncio.sleep(0.35)
    await agent.converge()
    await agent.reconcile_vips()
    assert len(kernel.table) == 0 and vips.addresses == {}  # confirmed by time


async def test_a_restarted_leader_that_adopted_its_vips_renews_those_alone() -> None:
    """Its VirtualServers listed in time, a restarted leader adopts the group's VIPs still on
    the node (start-up) and, until its first converge, renews those: one dump per round (in
    the renewal itself), not a look at every present VIP first; another agent-added VIP on
    the node that none of its VirtualServers has is left to lapse."""
    store = FakeLeaseStore()
    first = make("node-a", store)
    await first.startup()
    vips = FakeVips({VIP: "front", "10.10.0.77": "front"})
    restarted = make("node-a", store, vips=vips)
    restarted.watches.reset_vs([vs_obj()])  # listed before the start-up's deadline
    await restarted.startup()
    assert restarted.elector.is_leader and restarted.ipvs.desired is None
    assert dict(restarted.vips.held) == {VIP: "front"}
    dumps = vips.presents
    vips.events.clear()
    await restarted.renew_vips()
    assert vips.events == [("renew", VIP)] and vips.presents == dumps
    assert vips.probed == []


async def test_which_vips_a_renewal_keeps() -> None:
    """A restarted leader renews every agent-added VIP still on its node until it knows its
    VIPs (first converge), without probing for other holders, then only those it holds; a
    restart that cannot read the Lease
    renews them too (they must not lapse under a leader that is coming back); a standby that
    has read a Lease naming another renews nothing (its stale VIPs lapse)."""
    store = FakeLeaseStore()
    first = make("node-a", store)
    await first.startup()
    vips = FakeVips({VIP: "front", "10.10.0.77": "front"})
    restarted = make("node-a", store, vips=vips)
    await restarted.startup()  # leader again; the VirtualServers not listed yet
    assert restarted.elector.is_leader and restarted.ipvs.desired is None
    vips.events.clear()
    await restarted.renew_vips()
    await restarted.renew_vips()
    assert sorted(vips.events) == [("renew", VIP), ("renew", VIP), ("renew", "10.10.0.77"),
                                   ("renew", "10.10.0.77")]  # fmt: skip
    assert vips.probed == []  # a leader does not probe: nobody else holds its VIPs
    restarted.watches.reset_vs([vs_obj()])
    restarted.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    await restarted.converge()
    await restarted.reconcile_vips()
    await asyncio.gather(*restarted.vips.tasks)  # its announcements
    vips.events.clear()
    await restarted.renew_vips()
    assert vips.events == [("renew", VIP)]  # known now: only what it holds

    blind = FakeLeaseStore()
    blind_api_down = make("node-a", blind, vips=FakeVips({VIP: "front"}))
    blind_api_down.elector.api.down = True  # type: ignore[attr-defined]
    await blind_api_down.startup()
    assert not blind_api_down.elector.is_leader and not blind_api_down.elector.not_holder
    await blind_api_down.renew_vips()
    assert blind_api_down.vips.node.events == [("renew", VIP)]  # type: ignore[attr-defined]
    assert len(blind_api_down.vips.node.probed) == 1  # type: ignore[attr-defined]

    standby_vips = FakeVips({VIP: "front"})
    standby = make("node-b", store, vips=standby_vips)
    await standby.elector.tick()  # reads the Lease: node-a holds it
    assert standby.elector.not_holder
    standby_vips.events.clear()
    await standby.renew_vips()
    assert standby_vips.events == []


# -- a VIP moving between director groups (make-before-break) ------------------------------------


def moving_in(name: str = "web", generation: int = 3) -> dict[str, Any]:
    """Served by group g0, moving to this agent's group g1 (status and labels as the
    controller writes them while g1 is not yet confirmed)."""
    obj = vs_obj(name, generation)
    obj["status"] = {**obj["status"], "directorGroup": "g0", "nextDirectorGroup": "g1"}
    return obj


async def test_a_vip_moving_in_is_programmed_without_its_address_then_handed_in() -> None:
    """The new group programs the services and reports the generation (what the controller
    waits for) but never adds the VIP while another group announces it; once the status
    names it, its leader adds the VIP only when no other node answers ARP for it."""
    store, kernel, vips = FakeLeaseStore(), FakeKernel(), FakeVips()
    agent = make(store=store, kernel=kernel, vips=vips)
    await agent.startup()
    assert agent.elector.is_leader
    agent.watches.reset_vs([])
    agent.watches.reset_next_vs([moving_in()])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    await agent.converge()
    await agent.reconcile_vips()
    assert [d.address for d in kernel.table[K80].destinations] == ["10.20.0.21"]
    assert vips.addresses == {} and VIP not in agent.vips.owned
    await agent.elector.tick()
    assert json.loads(store.record.annotations[PROGRAMMED_ANNOTATION]) == {"demo/web": 3}

    # the hand-over: the status names g1; the old group's leader still answers for the VIP
    vips.answering = {VIP}
    accepted = vs_obj()
    agent.watches.apply_next_vs("MODIFIED", accepted)
    agent.watches.apply_next_vs("DELETED", accepted)  # its label moves it to the other watch
    assert ("demo", "web") in agent.watches.virtual_servers  # before the other watch says so
    await agent.converge()
    await agent.reconcile_vips()
    assert vips.addresses == {} and VIP in agent.vips.arriving
    agent.watches.apply_vs("ADDED", accepted)
    vips.answering = set()  # the old leader dropped it
    for _ in range(100):  # the agent looks again by itself, every HAND_IN_RECHECK
        if vips.addresses:
            break
        await asyncio.sleep(0.02)
    assert vips.addresses == {VIP: "front"} and agent.vips.arriving == {}
    assert len(kernel.table) == 1


async def test_a_vip_another_node_keeps_is_reported_not_taken() -> None:
    from lvs_operator.director import vip_owner

    vips = FakeVips()
    agent = make(vips=vips, store=FakeLeaseStore())
    await agent.startup()
    vips.answering = {VIP}  # a host on the link uses the address
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    await agent.converge()
    await agent.reconcile_vips()
    assert vips.addresses == {} and agent.vips.problems == {}
    agent.vips.arriving[VIP] -= vip_owner.HAND_IN_PATIENCE  # as if it had waited that long
    await agent.reconcile_vips()
    assert vips.addresses == {}
    assert "another node still answers ARP/NDP" in agent.vips.problems[VIP]
    store = agent.elector.api.store  # type: ignore[attr-defined]
    await agent.elector.tick()
    assert VIP in store.record.annotations["lvs.io/vip-problems"]


async def test_a_vip_handed_to_another_group_goes_at_once_despite_the_brake() -> None:
    """The old group: every VirtualServer of it moves away (the controller's hand-over, after
    the new group programmed them). That is an intent: no brake, services and VIP go."""
    from lvs_operator.director.brake import BrakeConfig

    kernel, vips = FakeKernel(), FakeVips()
    agent = make(kernel=kernel, vips=vips, store=FakeLeaseStore(), brake=BrakeConfig(hold=60))
    await agent.startup()
    web, api = vs_obj("web"), vs_obj("api", ports=[{"port": 81, "targetPort": 8080}])
    agent.watches.reset_vs([web, api])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    await agent.converge()
    await agent.reconcile_vips()
    assert len(kernel.table) == 2 and vips.addresses == {VIP: "front"}
    for obj in (web, api):
        obj["status"] = {**obj["status"], "directorGroup": "g2"}
        agent.watches.apply_vs("MODIFIED", obj)
    await agent.converge()
    await agent.reconcile_vips()
    assert len(kernel.table) == 0 and vips.addresses == {}
    assert 'lvs_director_withdrawals_held{group="g1"} 0.0' in agent.metrics.render().decode()


async def test_a_stalled_event_loop_does_not_let_the_held_vip_lapse() -> None:
    """The lifetime renewal runs on a thread of its own: a loop blocked for longer than the
    renewal interval (a first import, a big decode under load) still renews the held VIP."""
    import threading

    vips = FakeVips()
    agent = make(vips=vips, store=FakeLeaseStore(), vip_lifetime=0.4)  # a renewal every 0.1 s
    await agent.startup()
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    await agent.converge()
    await agent.reconcile_vips()
    assert vips.addresses == {VIP: "front"}
    stop = threading.Event()
    thread = threading.Thread(target=agent._vip_lifetime_thread, args=(stop,), daemon=True)
    thread.start()
    time.sleep(0.55)  # the event loop stalls (on purpose: no await)
    stop.set()
    thread.join(2)
    assert vips.events.count(("renew", VIP)) >= 3, vips.events


def test_a_lifetime_round_is_late_when_half_a_lifetime_went_since_the_last_or_in_it() -> None:
    """The ``VIP lifetime round late`` line: none for a round in time; else where the time
    went (the thread woke late, the wait on the VIP lane and behind what, the renewal)."""
    in_line = LaneWait(0.5, ("VipManager.present", 1.25))
    assert late_round(None, 2.0, 2.0, 3.0, 8, None) is None  # the first round, 1 s
    assert late_round(100.0, 102.0, 102.0, 103.0, 8, in_line) is None
    assert late_round(100.0, 102.0, 103.9, 104.0, 8, None) is None  # 3.9 s apart
    late = late_round(100.0, 102.0, 106.5, 107.0, 8, in_line)  # the thread woke 4.5 s late
    assert late == {
        "since_last_round_seconds": 6.5, "woke_late_seconds": 4.5, "round_seconds": 0.5,
        "lane_wait_seconds": 0.5, "renewal_seconds": 0.0, "behind": "VipManager.present",
        "behind_seconds": 1.25, "lifetime_seconds": 8,
    }  # fmt: skip
    slow = late_round(100.0, 102.0, 102.0, 106.0, 8, None)  # the renewal itself took 4 s
    assert slow is not None and slow["round_seconds"] == 4.0 == slow["renewal_seconds"]
    assert slow["behind"] is None and slow["woke_late_seconds"] == 0.0


async def test_the_vip_probe_starts_early_enough_to_be_done_by_the_judgement() -> None:
    """The heartbeat's suspicion comes PRECHECK_LEAD before the judgement, longer than a
    silent probe listens (all its rounds): the takeover finds the answer ready."""
    agent = make()
    monitor = agent.heartbeat.monitor
    assert monitor is not None
    assert monitor.on_suspect == agent._precheck_soon
    assert monitor.suspect_lead == PRECHECK_LEAD
    assert PROBE_ROUNDS * PROBE_TIMEOUT < PRECHECK_LEAD <= agent.cfg.peer_timeout / 2
    assert PRECHECK_LEAD < PRECHECK_MAX_AGE  # the early answer is still fresh at the judgement


async def test_a_change_the_kernel_refuses_is_logged_once_and_an_event_names_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The kernel refuses a change (retried every second): one error line with the reason
    (not a traceback a second), a KernelRefused Event on the VirtualServer of its VIP, and
    a line when converging works again."""
    from lvs_operator.director.kernel.ipvs import IpvsError

    kernel = FakeKernel()
    poster = FakeEventPoster()
    agent = make(kernel=kernel, events=poster)
    await agent.startup()
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    change = Change(Op.ADD_SERVICE, IpvsService(VIP, 80, Protocol.TCP, "rr"))
    kernel.apply_error = IpvsError(f"{change}: Invalid argument (1 of 2 failed)", change, [])
    loop_task = asyncio.create_task(agent._reconcile_loop())
    try:
        with caplog.at_level(logging.INFO, logger="lvs_operator.director.agent"):
            agent.dirty.set()
            await asyncio.sleep(2.5)  # the first try and its retries
            assert agent.metrics.converge_errors._value.get() >= 2
            kernel.apply_error = None
            deadline = time.monotonic() + 5
            while agent._converge_error and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
    finally:
        loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop_task
    failed = [r for r in caplog.records if r.getMessage().startswith("converging IPVS failed")]
    assert len(failed) == 1 and "Invalid argument" in failed[0].getMessage()
    assert any(r.getMessage() == "converging IPVS works again" for r in caplog.records)
    await agent.events.close()
    refused = [e for e in poster.posted if e["reason"] == "KernelRefused"]
    assert [(e["involvedObject"]["name"], e["type"]) for e in refused] == [("web", "Warning")]
    assert "Invalid argument" in refused[0]["message"]


def test_a_wake_remembers_when_its_first_request_came() -> None:
    wake = Wake()
    assert wake.take() is None  # nothing asked
    wake.set()
    first = wake.since
    assert first is not None
    time.sleep(0.01)
    wake.set()  # a second request before the loop took it: the first one's time stands
    assert wake.since == first and wake.is_set()
    assert wake.take() == first
    assert not wake.is_set() and wake.since is None


def test_a_wake_is_idle_only_between_converges() -> None:
    """Background reads step aside (``step_aside``, in their threads) from a converge's
    request until it ended; at most STEP_ASIDE_LIMIT each time."""
    wake = Wake()
    assert not wake.idle.is_set()  # before the first converge
    wake.take()
    wake.settled()
    assert wake.idle.is_set()
    t0 = time.monotonic()
    wake.step_aside()  # idle: at once
    assert time.monotonic() - t0 < STEP_ASIDE_LIMIT / 2
    wake.set()  # a watch event
    assert not wake.idle.is_set()
    wake.take()  # the converge starts
    assert not wake.idle.is_set()
    wake.set()  # another request while it runs
    wake.settled()
    assert not wake.idle.is_set()  # the next converge is due
    t0 = time.monotonic()
    wake.step_aside()
    assert STEP_ASIDE_LIMIT * 0.9 <= time.monotonic() - t0 < 5  # bounded
    wake.take()
    wake.settled()
    assert wake.idle.is_set()


def test_only_a_converge_in_a_burst_waits_to_coalesce() -> None:
    """One pod's Ready after a quiet spell converges at once; a wake-up right on the heels
    of a converge (a burst of watch events) waits to gather the rest."""
    assert coalesce_delay(float("inf")) == 0.0  # the first converge
    assert coalesce_delay(0.5) == 0.0
    assert coalesce_delay(0.01) == COALESCE > 0


async def test_a_converge_logs_how_long_its_change_waited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The ``queued`` step (wake-up to build) is in the converge's log line, outside its
    total: with the converge's own steps, it is a pod's Ready -> kernel inside the agent."""
    agent = make()
    await agent.startup()
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    with caplog.at_level(logging.INFO, logger="lvs_operator.director.ipvs_sync"):
        await agent.converge(time.monotonic() - 0.5)
    [line] = [r for r in caplog.records if r.getMessage().startswith("IPVS converged")]
    phases = line.phases  # type: ignore[attr-defined]
    assert 0.5 <= phases["queued"] < 5
    assert line.seconds < 0.5  # its own time: the wait is not in it (a converge of one
    # service takes milliseconds here)


async def test_a_converge_that_changes_only_destinations_reconciles_no_vip() -> None:
    """After a converge the VIPs are reconciled (two netlink dumps on the VIP lane, where
    the lifetime renewals wait) only when the group's VIPs or this director's role changed,
    or the last reconcile is older than the resync period: a pod becoming Ready does not."""
    vips = FakeVips()
    agent = make(vips=vips, store=FakeLeaseStore())
    await agent.startup()
    assert agent.elector.is_leader
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    loop_task = asyncio.create_task(agent._reconcile_loop())

    def dests() -> set[str]:
        return {d.address for d in agent.kernel.table[K80].destinations}  # type: ignore[attr-defined]

    async def until(done: Callable[[], bool]) -> None:
        """Polled (a loaded machine is slow), bounded; then a moment for whatever the same
        loop pass does next (a VIP reconcile follows its converge at once)."""
        for _ in range(250):
            if done():
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)

    try:
        agent.dirty.set()
        await until(lambda: vips.addresses == {VIP: "front"})
        assert vips.addresses == {VIP: "front"}
        dumps = vips.presents
        agent.watches.apply_pool("MODIFIED", pool_obj(m("10.20.0.21"), m("10.20.0.22")))
        await until(lambda: dests() == {"10.20.0.21", "10.20.0.22"})
        assert dests() == {"10.20.0.21", "10.20.0.22"}
        assert vips.presents == dumps  # converged, no VIP reconcile
        agent.watches.reset_vs([vs_obj(), vs_obj("web2", vip="10.10.0.101")])
        agent.dirty.set()
        await until(lambda: set(vips.addresses) == {VIP, "10.10.0.101"})
        assert vips.presents > dumps and set(vips.addresses) == {VIP, "10.10.0.101"}
    finally:
        loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop_task


async def test_a_pod_change_converges_while_a_vip_reconcile_is_still_running() -> None:
    """The VIP reconcile a converge asks for runs beside the converge loop: at 1,000 VIPs it
    can wait for seconds on the VIP lane, and a pod becoming Ready must not wait behind it.
    Requests made meanwhile coalesce into one more reconcile."""
    agent = make(vips=FakeVips(), store=FakeLeaseStore())
    await agent.startup()
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    release = asyncio.Event()
    started: list[int] = []

    async def slow_reconcile(announce: bool = False) -> None:
        started.append(len(started))
        await release.wait()

    agent.reconcile_vips = slow_reconcile  # type: ignore[method-assign]

    def dests() -> set[str]:
        entry = agent.kernel.table.get(K80)  # type: ignore[attr-defined]
        return set() if entry is None else {d.address for d in entry.destinations}

    async def until(done: Callable[[], bool]) -> bool:
        for _ in range(250):
            if done():
                return True
            await asyncio.sleep(0.02)
        return done()

    loop_task = asyncio.create_task(agent._reconcile_loop())
    try:
        agent.dirty.set()
        assert await until(lambda: started == [0])  # the first converge's reconcile: held
        agent.watches.reset_vs([vs_obj(), vs_obj("web2", vip="10.10.0.101")])  # wants one
        agent.dirty.set()
        await asyncio.sleep(0.1)
        agent.watches.apply_pool("MODIFIED", pool_obj(m("10.20.0.21"), m("10.20.0.22")))
        assert await until(lambda: dests() == {"10.20.0.21", "10.20.0.22"})
        assert started == [0]  # still the first, not finished
        release.set()
        assert await until(lambda: len(started) == 2)  # the requests made meanwhile: one
        await asyncio.sleep(0.3)
        assert len(started) == 2
    finally:
        loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop_task


async def test_a_wrong_node_setting_is_reported_with_its_fix_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """In the shipped pod /proc/sys is read-only: the agent reads the node settings at its
    first converge, names each wrong one with its fix (once per value) and counts them in
    lvs_director_node_settings_wrong; the IPVS changes go in all the same. Read again after
    RECHECK_SECONDS, a node fixed meanwhile clears the gauge."""
    from lvs_operator.director.node_settings import NODE_SETTINGS, RECHECK_SECONDS

    kernel = FakeKernel()
    kernel.node_sysctls = {s.key: s.value for s in NODE_SETTINGS}
    kernel.node_sysctls["net.ipv4.vs.conntrack"] = "0"
    agent = make(kernel=kernel, store=FakeLeaseStore())
    await agent.startup()
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    with caplog.at_level(logging.INFO, logger="lvs_operator.director.ipvs_sync"):
        await agent.converge()
        await agent.converge()
    assert K80 in kernel.table
    assert kernel.settings_checks == [False]  # read once, not on every converge
    wrong = [r for r in caplog.records if r.getMessage().startswith("node setting wrong")]
    assert len(wrong) == 1
    assert wrong[0].__dict__["setting"] == "net.ipv4.vs.conntrack"
    assert wrong[0].__dict__["actual"] == "0" and wrong[0].__dict__["wanted"] == "1"
    assert "director.nodeSettings.enabled=true" in wrong[0].getMessage()
    assert "sysctl -w net.ipv4.vs.conntrack=1" in wrong[0].getMessage()
    gauge = 'lvs_director_node_settings_wrong{group="g1"}'
    assert f"{gauge} 1.0" in agent.metrics.render().decode()

    kernel.node_sysctls["net.ipv4.vs.conntrack"] = "1"  # fixed on the node
    agent.ipvs._settings_read_at = time.monotonic() - RECHECK_SECONDS
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lvs_operator.director.ipvs_sync"):
        await agent.converge()
    assert kernel.settings_checks == [False, False]
    assert any(r.getMessage() == "node setting right again" for r in caplog.records)
    assert f"{gauge} 0.0" in agent.metrics.render().decode()


async def test_ipv6_services_have_ipv6_forwarding_checked_at_once() -> None:
    kernel = FakeKernel()
    agent = make(kernel=kernel, store=FakeLeaseStore())
    await agent.startup()
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    await agent.converge()
    assert kernel.settings_checks == [False]
    agent.watches.reset_vs([vs_obj(), vs_obj("web6", vip="2001:db8::10")])
    await agent.converge()
    assert kernel.settings_checks[-1] is True


async def test_an_arp_filter_left_by_a_dead_agent_goes_at_start() -> None:
    """An agent killed while draining leaves its ARP filter: the next agent on the node
    removes it at start (else the node would not answer ARP for a VIP it takes later)."""
    hk = FakeHandoverKernel()
    hk.arp_filter = (["192.0.2.10"], {"front": "10.10.0.11"})
    agent = make("node-a", FakeLeaseStore(), handover=hk)
    await agent.startup()
    assert hk.arp_filter is None and hk.events == ["arp filter off"]


async def test_a_handover_whose_arp_filter_fails_still_moves_the_vip(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeLeaseStore()
    vips = FakeVips()
    hk = FakeHandoverKernel("10.10.0.11", vips=vips)
    hk.filter_error = RuntimeError("nft: Operation not permitted")
    agent = make("node-a", store, vips=vips, handover=hk, handover_drain=1.0)
    await agent.startup()
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    await agent.converge()
    await agent.reconcile_vips()
    with caplog.at_level(logging.WARNING, logger="lvs_operator.director.handover"):
        await agent.handover.retire()
    assert vips.addresses == {VIP: "lo"}
    assert any("cannot filter ARP" in r.getMessage() for r in caplog.records)
    assert await agent.elector.release()
    await agent.handover.drain()
    assert vips.addresses == {} and "arp filter off" not in hk.events


async def test_only_ipv4_vips_are_arp_filtered_on_a_handover(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A dual-stack group: the IPv4 VIP gets the ARP filter, the IPv6 one none (the kernel
    does not answer neighbour solicitations for an address on lo); an IPv6-only group
    installs no filter at all."""
    vip6 = "2001:db8::10"
    vips = FakeVips()
    hk = FakeHandoverKernel("10.10.0.11", vips=vips)
    agent = make("node-a", FakeLeaseStore(), vips=vips, handover=hk)
    await agent.startup()
    agent.watches.reset_vs([vs_obj(), vs_obj("web6", vip=vip6, directors={"interface": "front"})])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"), m("2001:db8::21"))])
    await agent.converge()
    await agent.reconcile_vips()
    assert set(vips.addresses) == {VIP, vip6}
    with caplog.at_level(logging.INFO, logger="lvs_operator.director.handover"):
        await agent.handover.retire()
    assert hk.arp_filter == ([VIP], {"front": "10.10.0.11"})
    (line,) = [r for r in caplog.records if "ARP for the VIPs filtered" in r.getMessage()]
    assert line.__dict__["vips"] == [VIP]
    assert line.__dict__["table"] == "arp lvs_operator_handover_arp"

    vips6 = FakeVips()
    hk6 = FakeHandoverKernel("2001:db8::11", vips=vips6)
    agent6 = make("node-a", FakeLeaseStore(), vips=vips6, handover=hk6)
    await agent6.startup()
    agent6.watches.reset_vs([vs_obj("web6", vip=vip6, directors={"interface": "front"})])
    agent6.watches.reset_pools([pool_obj(m("10.20.0.21"), m("2001:db8::21"))])
    await agent6.converge()
    await agent6.reconcile_vips()
    await agent6.handover.retire()
    assert vips6.addresses == {vip6: "lo"} and hk6.arp_filter is None


async def test_node_settings_that_cannot_be_read_are_logged_once_not_every_converge(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kernel = FakeKernel()
    kernel.settings_error = OSError("Permission denied")
    agent = make(kernel=kernel, store=FakeLeaseStore())
    await agent.startup()
    agent.watches.reset_vs([vs_obj()])
    agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
    with caplog.at_level(logging.WARNING, logger="lvs_operator.director.ipvs_sync"):
        for _ in range(3):
            await agent.converge()
    assert K80 in kernel.table  # the IPVS changes went in
    assert kernel.settings_checks == [False]  # not retried at every converge
    lines = [r for r in caplog.records if "cannot read the node settings" in r.getMessage()]
    assert len(lines) == 1 and "Permission denied" in lines[0].getMessage()


async def test_the_sync_state_travels_from_a_standbys_probe_to_the_lease() -> None:
    """A standby's sync state rides its probes (once the holder's Lease shows it writes the
    sync record); the leader judges it against its own connections and writes every
    director's on the Lease (SYNC_ANNOTATION), where the controller reads it."""
    from lvs_operator.api.contract import SYNC_ANNOTATION, DirectorSync, parse_sync
    from lvs_operator.director.peer import HEARTBEAT_ANNOTATION, HeartbeatResponder
    from lvs_operator.director.sync import RECEIVE_WINDOW

    class FakeSocket:
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        def sendto(self, data: bytes, addr: Any) -> int:
            self.sent.append(data)
            return len(data)

    store = FakeLeaseStore()
    leader = make("node-a", store, daemons=FakeDaemonKernel())
    standby = make("node-b", store, daemons=FakeDaemonKernel())
    await leader.startup()
    await standby.startup()
    for agent in (leader, standby):
        agent.watches.reset_vs([vs_obj()])
        agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
        await agent.converge()
        await agent.reconcile_vips()
        assert agent._sync_task is not None
        await agent._sync_task
    responder = HeartbeatResponder("node-a", lambda: True)  # not bound: fed by hand below
    leader.heartbeat.responder = responder
    leader.elector.set_annotation(HEARTBEAT_ANNOTATION, "10.0.0.1:9643")
    await leader.report_sync()
    await leader.elector.tick()
    assert parse_sync(store.record.annotations[SYNC_ANNOTATION]).directors == {
        "node-a": DirectorSync("master", leader.sync.report(0, None).sync_id, "front")
    }
    await standby.elector.tick()  # sees the record: the holder understands sync=
    monitor = standby.heartbeat.monitor
    assert monitor is not None and monitor.health.extensions

    def round_trip() -> None:
        """One probe answered "leading", then the probe that acknowledges it."""
        sock, now = FakeSocket(), time.monotonic()
        responder._on_probe(sock, monitor.health.next_probe(now), ("10.0.0.2", 40000))  # type: ignore[arg-type]
        assert monitor.health.on_reply(sock.sent[-1], ("10.0.0.1", 9643), now)
        responder._on_probe(sock, monitor.health.next_probe(now), ("10.0.0.2", 40000))  # type: ignore[arg-type]

    async def verdict() -> str:
        await leader.report_sync()
        await leader.elector.tick()
        record = parse_sync(store.record.annotations[SYNC_ANNOTATION])
        return record.current_for(store.record.holder)["node-b"].receiving

    assert standby.sync is not None
    standby.sync._synced = lambda: 0  # its table holds no received connection
    await standby.report_sync()
    round_trip()
    assert await verdict() == "Unknown"  # the leader serves no connections
    leader.sync_clocks.serving(5, time.monotonic() - RECEIVE_WINDOW - 1)  # serving a while
    leader.ipvs.active_connections = 5
    assert await verdict() == "False"
    assert 'lvs_director_sync_backups_not_receiving{group="g1"} 1.0' in (
        leader.metrics.render().decode()
    )
    standby.sync._synced = lambda: 4
    await standby.report_sync()
    round_trip()
    assert await verdict() == "True"
    assert 'lvs_director_sync_backups_not_receiving{group="g1"} 0.0' in (
        leader.metrics.render().decode()
    )


async def test_a_converge_needs_no_thread_of_the_default_executor() -> None:
    """The converge's steps run on threads of their own (lanes.py): with asyncio's default
    executor full (at scale: the VIP announcements, sleeping between their rounds) a
    converge still goes through."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(1))
    release = threading.Event()
    held = loop.run_in_executor(None, release.wait, 30)  # its only thread, busy
    try:
        agent = make()
        agent.watches.reset_vs([vs_obj()])
        agent.watches.reset_next_vs([])
        agent.watches.reset_pools([pool_obj(m("10.20.0.21"))])
        await asyncio.wait_for(agent.converge(), 10)
        assert [d.address for d in agent.kernel.table[K80].destinations] == ["10.20.0.21"]
    finally:
        release.set()
        await held
