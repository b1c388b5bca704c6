"""The agent's wiring with fakes for the kernel, the VIPs and the Lease (no API server)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from typing import Any

import pytest

from lvs_operator.director.agent import Agent, AgentConfig, JsonFormatter, parse_args
from lvs_operator.director.election import PROGRAMMED_ANNOTATION
from lvs_operator.director.table import (
    Change,
    IpvsDestination,
    IpvsService,
    IpvsTable,
    Protocol,
    ServiceKey,
    apply_to_table,
)
from lvs_operator.director.vip import Route
from tests.unit.director.fake_lease import FakeLeaseApi, FakeLeaseStore

VIP = "10.10.0.100"
K80 = ServiceKey(Protocol.TCP, VIP, 80)


class FakeKernel:
    def __init__(self, table: IpvsTable | None = None) -> None:
        self.table = table or IpvsTable.of([])
        self.connections: dict[Any, int] = {}
        self.applied: list[Change] = []
        self.prepared: list[bool] = []

    def read(self) -> tuple[IpvsTable, dict[Any, int]]:
        return self.table, dict(self.connections)

    def apply(self, changes: list[Change]) -> None:
        self.table = apply_to_table(self.table, changes)
        self.applied += changes

    def prepare(self, table: IpvsTable, masquerade_snat: bool) -> None:
        self.prepared.append(masquerade_snat)


class FakeVips:
    def __init__(self, present: dict[str, str] | None = None) -> None:
        self.addresses = dict(present or {})
        self.announced: list[tuple[str, str, int | None]] = []

    def interface_for(self, vip: str, override: str | None = None) -> str:
        return override or "front"

    def routes(self) -> list[Route]:
        return [Route(ipaddress.ip_network("10.10.0.0/24"), "front")]

    def present(self) -> dict[str, str]:
        return dict(self.addresses)

    def add(self, vip: str, ifname: str) -> bool:
        self.addresses[vip] = ifname
        return True

    def remove(self, vip: str, ifname: str) -> bool:
        return self.addresses.pop(vip, None) is not None

    def link_info(self, ifname: str) -> tuple[int, str]:
        return (2, "02:00:00:00:00:0b")

    def send_many(self, items: list[tuple[str, str, Any]], count: int | None) -> None:
        self.announced += [(vip, ifname, count) for vip, ifname, _ in items]


def vs_obj(name: str = "web", generation: int = 3, **spec: Any) -> dict[str, Any]:
    body = {"vip": VIP, "ports": [{"port": 80, "targetPort": 8080}], "poolRef": {"name": "pool"},
            "scheduler": "rr"}  # fmt: skip
    body.update(spec)
    return {"metadata": {"name": name, "namespace": "demo", "generation": generation},
            "spec": body}  # fmt: skip


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
) -> Agent:
    cfg = AgentConfig(node_name=identity, namespace="lvs-system", group="g1", lease_name="lease")
    return Agent(cfg, client=None, kernel=kernel or FakeKernel(), vips=vips or FakeVips(),
                 lease_api=FakeLeaseApi(store or FakeLeaseStore()))  # fmt: skip


async def test_leader_programs_ipvs_holds_vip_and_reports_generations() -> None:
    store = FakeLeaseStore()
    agent = make(store=store)
    await agent.startup()
    assert agent.elector.is_leader
    agent._reset_vs([vs_obj()])
    agent._reset_pools([pool_obj(m("10.20.0.21"), m("10.20.0.22"))])
    await agent.converge()
    await agent.reconcile_vips()
    table = agent.kernel.table  # type: ignore[attr-defined]
    assert [d.address for d in table[K80].destinations] == ["10.20.0.21", "10.20.0.22"]
    assert agent.vipman.addresses == {VIP: "front"}
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
    standby._reset_vs([vs_obj()])  # the informer's first list
    await standby.startup()
    assert not standby.elector.is_leader
    assert vips.addresses == {"10.10.0.11": "front"}


async def test_other_ipvs_services_and_addresses_are_never_touched() -> None:
    # kube-proxy in IPVS mode: a ClusterIP service, its address on kube-ipvs0
    cluster_ip = IpvsService("10.96.0.10", 53, Protocol.UDP, "rr")
    kernel = FakeKernel(IpvsTable.of([(cluster_ip, [IpvsDestination("10.244.1.5", 53)])]))
    vips = FakeVips({"10.96.0.10": "kube-ipvs0"})
    agent = make(kernel=kernel, vips=vips, store=FakeLeaseStore())
    agent._reset_vs([vs_obj()])
    await agent.startup()
    agent._reset_pools([pool_obj(m("10.20.0.21"))])
    await agent.converge()
    await agent.reconcile_vips()
    assert cluster_ip.key in kernel.table and K80 in kernel.table
    assert vips.addresses == {"10.96.0.10": "kube-ipvs0", VIP: "front"}


async def test_adopts_kernel_state_without_changes_on_restart() -> None:
    agent = make()
    agent._reset_vs([vs_obj()])
    agent._reset_pools([pool_obj(m("10.20.0.21"))])
    await agent.converge()
    restarted = make(kernel=agent.kernel)  # type: ignore[arg-type]
    await restarted.startup()
    restarted._reset_vs([vs_obj()])
    restarted._reset_pools([pool_obj(m("10.20.0.21"))])
    before = len(agent.kernel.applied)  # type: ignore[attr-defined]
    await restarted.converge()
    assert len(restarted.kernel.applied) == before  # type: ignore[attr-defined]


async def test_removed_virtual_server_is_removed_from_the_kernel() -> None:
    agent = make()
    agent._reset_vs([vs_obj()])
    agent._reset_pools([pool_obj(m("10.20.0.21"))])
    await agent.converge()
    agent._apply_vs("DELETED", vs_obj())
    await agent.converge()
    assert len(agent.kernel.table) == 0  # type: ignore[attr-defined]


async def test_a_retired_vip_is_cleaned_then_no_longer_owned() -> None:
    agent = make()
    await agent.startup()
    agent._reset_vs([vs_obj()])
    agent._reset_pools([pool_obj(m("10.20.0.21"))])
    await agent.converge()
    await agent.reconcile_vips()
    agent._apply_vs("DELETED", vs_obj())
    await agent.converge()
    await agent.reconcile_vips()
    agent._forget_retired_vips()
    assert len(agent.kernel.table) == 0  # type: ignore[attr-defined]
    assert agent.vipman.addresses == {}
    assert agent.known_vips == set()
    # the VIP now belongs to another group on this node: left alone
    agent.vipman.addresses[VIP] = "front"
    await agent.reconcile_vips()
    assert agent.vipman.addresses == {VIP: "front"}


async def test_quiesced_member_drains_then_leaves() -> None:
    agent = make()
    agent._reset_vs([vs_obj()])
    agent._reset_pools([pool_obj(m("10.20.0.21"), m("10.20.0.22"))])
    await agent.converge()
    kernel: FakeKernel = agent.kernel  # type: ignore[assignment]
    dest_key = kernel.table[K80].destinations[1].key
    kernel.connections[(K80, dest_key)] = 1
    agent._apply_pool("MODIFIED", pool_obj(m("10.20.0.21"), m("10.20.0.22", terminating=True)))
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
    agent._reset_vs([vs_obj()])
    agent._reset_pools([pool_obj()])
    await agent.converge()
    await agent.reconcile_vips()
    assert agent.vipman.addresses == {VIP: "front"}
    assert await agent.elector.release()
    assert agent.vipman.addresses == {}  # dropped before the Lease was released
    assert store.record.holder == ""


async def test_takeover_adds_the_vips_before_any_dump() -> None:
    store = FakeLeaseStore()
    leader = make("node-a", store)
    await leader.startup()
    vips = FakeVips()
    standby = make("node-b", store, vips=vips)
    await standby.startup()
    standby._reset_vs([vs_obj()])
    standby._reset_pools([pool_obj()])
    await standby.converge()
    await standby.reconcile_vips()
    assert vips.addresses == {} and standby.placements == {VIP: "front"}
    await leader.elector.release()
    await standby.elector.tick()
    assert standby.elector.is_leader
    assert vips.addresses == {VIP: "front"}
    await asyncio.sleep(0.05)  # the announcement runs on its own thread
    assert vips.announced == [(VIP, "front", None)]


def test_flags_mirror_the_environment() -> None:
    env = {"NODE_NAME": "n1", "POD_NAMESPACE": "lvs-system", "LVS_DIRECTOR_GROUP": "gabc",
           "LVS_LEASE_DURATION_SECONDS": "3", "LVS_HEALTH_PORT": "19641"}  # fmt: skip
    cfg = parse_args([], env)
    assert (cfg.node_name, cfg.namespace, cfg.group) == ("n1", "lvs-system", "gabc")
    assert cfg.lease_name == "lvs-director-gabc"
    assert cfg.lease_duration == 3 and cfg.health_port == 19641 and cfg.metrics_port == 9642
    cfg = parse_args(["--node-name", "n2", "--lease-name", "x"], env)
    assert cfg.node_name == "n2" and cfg.lease_name == "x"


def test_missing_identity_says_the_fix(capsys) -> None:
    with pytest.raises(SystemExit):
        parse_args([], {})
    err = capsys.readouterr().err
    assert "NODE_NAME" in err and "downward API" in err


def test_json_logs_carry_the_objects() -> None:
    import logging

    record = logging.LogRecord("lvs_operator.director.agent", logging.INFO, "", 0, "VIP added",
                               (), None)  # fmt: skip
    record.vip = VIP
    out = json.loads(JsonFormatter().format(record))
    assert out["msg"] == "VIP added" and out["vip"] == VIP and out["level"] == "info"
