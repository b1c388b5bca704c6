"""Guest side of test_ipvs_kernel.py: director/kernel/ipvs.py against the VM's real IPVS.

Each function runs in the guest's root namespace and drives a director namespace through the
``netns`` arguments of lvs_operator.director.kernel, so the netns support is exercised too.
Functions return plain data; the host-side tests assert on it.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

from tests.dataplane import pyroute2_ipvs as oracle
from tests.dataplane import topology as t

from lvs_operator.director.kernel import ipvs, nft, sysctl
from lvs_operator.director.table import (
    Change,
    Forwarding,
    IpvsDestination,
    IpvsService,
    IpvsTable,
    Protocol,
    owned_by_addresses,
)

V6_VIP = "2001:db8::100"


def _ops(changes: list[Change]) -> list[str]:
    return [str(c) for c in changes]


Entry = tuple[IpvsService, list[IpvsDestination]]


def _web(scheduler: str = "rr", weights: tuple[int, ...] = (1, 1, 1),
         persistence: int = 0, netmask: int | None = None) -> Entry:  # fmt: skip
    topo = t.default_topology()
    svc = IpvsService(topo.vip, 80, Protocol.TCP, scheduler, persistence_timeout=persistence,
                      netmask=netmask)  # fmt: skip
    dests = [
        IpvsDestination(topo.back[rs], t.HTTP_PORT, weight=w)
        for rs, w in zip(topo.real_servers, weights, strict=True)
    ]
    return svc, dests


def table_roundtrip(backend: str = "netlink") -> dict[str, Any]:
    """converge a varied table, read it back, then single edits, each checked for minimal ops.
    A foreign service (added with ipvsadm on another address) must survive everything."""
    topo = t.default_topology()
    t.reset(topo)
    d = topo.directors[0]
    out: dict[str, Any] = {"steps": {}}
    t.sysctl(d, "net.ipv4.vs.conntrack", 0)  # as on a fresh node (other tests set it)
    out["sysctls_first"] = sysctl.ensure_sysctls(netns=d, ipv6=True)
    out["sysctls_again"] = sysctl.ensure_sysctls(netns=d, ipv6=True)

    t.ipvsadm(d, "-A", "-t", "192.0.2.1:80", "-s", "wlc")
    t.ipvsadm(d, "-a", "-t", "192.0.2.1:80", "-r", "192.0.2.9:80", "-m", "-w", "7")

    web, web_dests = _web()
    dns = IpvsService(topo.vip, 53, Protocol.UDP, "wrr")
    sticky = IpvsService(topo.vip, 443, Protocol.TCP, "wlc", persistence_timeout=600, netmask=24)
    v6 = IpvsService(V6_VIP, 80, Protocol.TCP, "sh", flags=frozenset({"sh-fallback", "sh-port"}),
                     persistence_timeout=300, netmask=64)  # fmt: skip
    sctp = IpvsService(topo.vip, 9999, Protocol.SCTP, "mh", flags=frozenset({"mh-port"}))
    desired = IpvsTable.of([
        (web, web_dests),
        (dns, [IpvsDestination(topo.back[rs], 53, weight=i + 1)
               for i, rs in enumerate(topo.real_servers)]),
        (sticky, [
            IpvsDestination("10.20.0.21", 443, forwarding=Forwarding.DIRECT),
            IpvsDestination("10.20.0.22", 443, forwarding=Forwarding.TUNNEL, weight=3),
            IpvsDestination("10.20.0.23", 443, upper_threshold=100, lower_threshold=10),
        ]),
        (v6, [IpvsDestination("2001:db8::21", 8080), IpvsDestination("2001:db8::22", 8080, 2)]),
        (sctp, [IpvsDestination("10.20.0.21", 9999)]),
    ])  # fmt: skip
    owned = owned_by_addresses([topo.vip, V6_VIP])

    def step(name: str, want: IpvsTable) -> None:
        t0 = time.monotonic()
        changes = oracle.converge(want, owned, d, backend)
        seconds = time.monotonic() - t0
        actual = oracle.read_table(d, backend)
        out["steps"][name] = {
            "ops": _ops(changes),
            "seconds": round(seconds, 3),
            "equal": actual.only(owned) == want,
            "foreign_kept": any(k.address == "192.0.2.1" for k in actual),
            "actual": actual.only(owned).describe(),
            "again": _ops(oracle.converge(want, owned, d, backend)),
            # the two backends read the same table
            "backends_agree": oracle.read_table(d, "pyroute2") == oracle.read_table(d, "netlink"),
        }

    step("initial", desired)
    out["ipvsadm_initial"] = t.ipvs_list(d)
    # single edits
    w2 = IpvsTable.of(
        [*((e.service, e.destinations) for k, e in desired.items() if k != web.key),
         _web(weights=(1, 5, 1))]
    )  # fmt: skip
    step("weight", w2)
    step("scheduler", _replace(w2, web.key, _web("wrr", (1, 5, 1))))
    step("persistence", _replace(w2, web.key, _web("wrr", (1, 5, 1), persistence=120)))
    step("netmask", _replace(w2, web.key, _web("wrr", (1, 5, 1), persistence=120, netmask=16)))
    fwd = IpvsTable.of(
        [(e.service, e.destinations) for k, e in desired.items() if k != dns.key]
        + [(dns, [IpvsDestination(topo.back[rs], 53, i + 1, Forwarding.DIRECT)
                  for i, rs in enumerate(topo.real_servers)])]
    )  # fmt: skip
    step("forwarding", fwd)
    fewer = _replace(fwd, web.key, (web, web_dests[:2]))
    step("remove-dest", fewer)
    step("remove-services", IpvsTable.of([(web, web_dests[:2])]))
    step("empty", IpvsTable())
    out["ipvsadm_final"] = t.ipvs_list(d)
    t.reset(topo)
    return out


def _replace(table: IpvsTable, key: Any, item: tuple[IpvsService, list[IpvsDestination]]
             ) -> IpvsTable:  # fmt: skip
    return IpvsTable.of([*((e.service, e.destinations) for k, e in table.items() if k != key),
                         item])  # fmt: skip


def _setup_masquerade(weights: tuple[int, int, int] = (1, 1, 1), scheduler: str = "rr",
                      persistence: int = 0, netmask: int | None = None) -> str:  # fmt: skip
    """dir-a serves the VIP with masquerade + SNAT; real servers route via the router."""
    topo = t.default_topology()
    d = topo.directors[0]
    sysctl.ensure_sysctls(netns=d)
    t.add_vip(d, topo.vip)
    desired = IpvsTable.of([_web(scheduler, weights, persistence, netmask)])
    ipvs.converge(desired, owned_by_addresses([topo.vip]), netns=d)
    vips, dests = nft.masquerade_targets(desired)
    nft.ensure_masquerade_snat(vips, dests, netns=d)
    return d


def traffic_masquerade() -> dict[str, Any]:
    """rr then wrr through masquerade with the nftables SNAT; without SNAT it must fail."""
    topo = t.default_topology()
    t.reset(topo)
    d = _setup_masquerade()
    out: dict[str, Any] = {"nft_backend": "libnftables" if nft._libnftables() else "nft command"}
    out["snat_again_changed"] = nft.ensure_masquerade_snat(
        *nft.masquerade_targets(ipvs.read_table(netns=d)), netns=d
    )
    failures: list[str] = []
    out["failures"] = failures
    out["rr"] = t.count_answers(topo.client, topo.vip, 80, n=30, failures=failures)
    conn = t.NsHTTPConnection(topo.client, topo.vip, 80)
    out["seen_client"] = conn.get()[1].get("X-Client")
    conn.close()
    changes = ipvs.converge(IpvsTable.of([_web("wrr", (1, 2, 3))]),
                            owned_by_addresses([topo.vip]), netns=d)  # fmt: skip
    out["wrr_ops"] = _ops(changes)
    out["wrr"] = t.count_answers(topo.client, topo.vip, 80, n=60, failures=failures)
    out["nft"] = t.nsexec(d, "nft", "list", "table", "inet", nft.NFT_TABLE)
    if failures:  # what the director's IPVS held for the client (a reused port's old entry?)
        out["connections"] = t.nsexec(d, "ipvsadm", "-Lnc")[-4000:]
    # masqueradeSource: VIP: the real servers see the VIP (they answer it through the router)
    table = ipvs.read_table(netns=d)
    sourced = nft.vip_sourced_services(table, frozenset(table))
    out["vip_sourced"] = sourced
    out["vip_source_changed"] = nft.ensure_masquerade_snat(
        *nft.masquerade_targets(table), netns=d, vip_sourced=sourced
    )
    out["vip_source_again_changed"] = nft.ensure_masquerade_snat(
        *nft.masquerade_targets(table), netns=d, vip_sourced=sourced
    )
    out["vip_source_rr"] = t.count_answers(topo.client, topo.vip, 80, n=6, failures=failures)
    conn = t.NsHTTPConnection(topo.client, topo.vip, 80)
    out["vip_source_seen_client"] = conn.get()[1].get("X-Client")
    conn.close()
    out["snat_removed"] = nft.remove_masquerade_snat(netns=d)
    out["without_snat"] = t.count_answers(topo.client, topo.vip, 80, n=3, timeout=1.0)
    t.reset(topo)
    return out


def traffic_persistence() -> dict[str, Any]:
    """Persistence keeps a client on one server; a second client address gets its own
    template; with netmask /24 both addresses share one."""
    topo = t.default_topology()
    t.reset(topo)
    second = "10.10.0.3"
    t.sh("ip", "-n", topo.client, "addr", "replace", f"{second}/24", "dev", "front")
    d = _setup_masquerade(persistence=300)
    out: dict[str, Any] = {}
    out["first"] = t.count_answers(topo.client, topo.vip, 80, n=12, source=topo.front[topo.client])
    out["second"] = t.count_answers(topo.client, topo.vip, 80, n=12, source=second)
    t.nsexec(d, "ipvsadm", "-C")  # drop templates: start over with a /24 netmask
    ipvs.converge(IpvsTable.of([_web(persistence=300, netmask=24)]),
                  owned_by_addresses([topo.vip]), netns=d)  # fmt: skip
    out["masked_first"] = t.count_answers(topo.client, topo.vip, 80, n=6,
                                          source=topo.front[topo.client])  # fmt: skip
    out["masked_second"] = t.count_answers(topo.client, topo.vip, 80, n=6, source=second)
    t.sh("ip", "-n", topo.client, "addr", "del", f"{second}/24", "dev", "front", check=False)
    t.reset(topo)
    return out


def traffic_quiesce() -> dict[str, Any]:
    """Weight 0: no new connections to the server, an established one continues; removing the
    destination (expire_nodest_conn=1) then ends that connection."""
    topo = t.default_topology()
    t.reset(topo)
    d = _setup_masquerade()
    owned = owned_by_addresses([topo.vip])
    out: dict[str, Any] = {}
    kept = t.NsHTTPConnection(topo.client, topo.vip, 80, timeout=2.0)
    victim = kept.get_name()
    out["victim"] = victim
    idx = [topo.rs_name(rs) for rs in topo.real_servers].index(victim)
    weights = [1, 1, 1]
    weights[idx] = 0
    out["quiesce_ops"] = _ops(
        ipvs.converge(IpvsTable.of([_web(weights=tuple(weights))]), owned, netns=d)
    )
    out["new_connections"] = t.count_answers(topo.client, topo.vip, 80, n=20)
    out["established"] = [kept.get_name() for _ in range(3)]
    with ipvs.IpvsKernel(d) as k:
        _, counts = k.read()
    out["active_conns"] = {
        f"{dk.address}:{dk.port}": c.active for (sk, dk), c in counts.items() if sk.port == 80
    }
    svc, dests = _web()
    remaining = [x for i, x in enumerate(dests) if i != idx]
    out["remove_ops"] = _ops(ipvs.converge(IpvsTable.of([(svc, remaining)]), owned, netns=d))
    try:
        out["after_removal"] = kept.get_name()
    except Exception as e:
        out["after_removal"] = f"error: {type(e).__name__}"
    kept.close()
    out["after_removal_new"] = t.count_answers(topo.client, topo.vip, 80, n=10)
    t.reset(topo)
    return out


def bench_converge(services: int = 100, dests: int = 10, backend: str = "netlink"
                   ) -> dict[str, Any]:  # fmt: skip
    """Timing of cold converge, idle converge (read + diff, no change), full read, and one
    weight change, at ``services`` x ``dests`` in director-b's namespace."""
    topo = t.default_topology()
    d = topo.directors[1]
    t.nsexec(d, "ipvsadm", "-C")
    desired = IpvsTable.of(
        (IpvsService(f"10.30.{i // 200}.{i % 200 + 1}", 80, scheduler="wrr"),
         [IpvsDestination(f"10.40.{j}.{i % 200 + 1}", 8080) for j in range(dests)])
        for i in range(services)
    )  # fmt: skip
    owned = owned_by_addresses(k.address for k in desired)
    res: dict[str, Any] = {"backend": backend, "services": services, "dests": dests}
    # the baseline, in the same run: ipvsadm-restore of the same table (what a script would do)
    rules = "".join(
        f"-A -t {e.service.address}:80 -s wrr\n"
        + "".join(f"-a -t {e.service.address}:80 -r {x.address}:8080 -m -w 1\n"
                  for x in e.destinations)
        for e in desired.values()
    )  # fmt: skip
    t0 = time.monotonic()
    subprocess.run(["ip", "netns", "exec", d, "ipvsadm-restore"], input=rules, text=True,
                   check=True, timeout=600)  # fmt: skip
    res["restore_seconds"] = round(time.monotonic() - t0, 2)
    t.nsexec(d, "ipvsadm", "-C")
    with oracle.open_ipvs(d, backend) as k:
        t0 = time.monotonic()
        res["cold_changes"] = len(k.converge(desired, owned))
        res["cold_seconds"] = round(time.monotonic() - t0, 2)
        t0 = time.monotonic()
        actual = k.read_table()
        res["read_seconds"] = round(time.monotonic() - t0, 2)
        res["equal"] = actual == desired
        t0 = time.monotonic()
        res["idle_changes"] = len(k.converge(desired, owned))
        res["idle_seconds"] = round(time.monotonic() - t0, 2)
        first = next(iter(desired.values()))
        one = [first.destinations[0].__class__(first.destinations[0].address, 8080, weight=9),
               *first.destinations[1:]]  # fmt: skip
        rest = list(desired.values())[1:]
        changed = IpvsTable.of([(first.service, one), *((e.service, e.destinations) for e in rest)])
        # one weight change, back and forth: the median of 5 (a collection of the big read's
        # garbage can land in any one of them)
        tables, times, ops = (changed, actual), [], []
        for i in range(5):
            t0 = time.monotonic()
            ops.append(len(k.apply(ipvs.diff(tables[i % 2], tables[(i + 1) % 2], owned))))
            times.append(round(time.monotonic() - t0, 3))
        res["one_change_ops"] = max(ops)
        res["one_change_apply_seconds"] = sorted(times)[2]
        res["one_change_runs"] = times
    t.nsexec(d, "ipvsadm", "-C")
    return res


def ack_overflow() -> dict[str, Any]:
    """Lost answers (receive buffer overrun: here 600 failing requests in one batch into a
    tiny buffer) surface as IpvsError, the socket stays usable, and converge then finds the
    kernel's actual state."""
    import socket as socket_mod

    from lvs_operator.director.kernel import ipvs_netlink as nl

    topo = t.default_topology()
    d = topo.directors[1]
    t.nsexec(d, "ipvsadm", "-C")
    desired = IpvsTable.of(
        (IpvsService(f"10.31.{i // 200}.{i % 200 + 1}", 80), []) for i in range(600)
    )
    owned = owned_by_addresses(k.address for k in desired)
    adds = ipvs.diff(desired, IpvsTable(), owned)
    out: dict[str, Any] = {}
    saved = nl.BATCH
    with ipvs.IpvsKernel(d) as k:
        assert k._nl is not None
        out["first"] = len(k.apply(adds))
        k._nl.sock.setsockopt(socket_mod.SOL_SOCKET, socket_mod.SO_RCVBUF, 4096)
        nl.BATCH = 10_000
        try:
            k.apply(adds)  # every one fails (EEXIST): 600 error answers
            out["error"] = None
        except ipvs.IpvsError as e:
            out["error"] = str(e)
        finally:
            nl.BATCH = saved
        out["present_after_error"] = len(k.read_table())
        out["repair_ops"] = len(k.converge(desired, owned))
        out["final"] = len(k.read_table())
    t.nsexec(d, "ipvsadm", "-C")
    return out


def sync_daemons() -> dict[str, Any]:
    """Connection synchronisation between the two directors over the front link: dir-a runs
    the master (it serves the VIP), dir-b the backup, both programmed with the same service;
    an established connection through dir-a must appear in dir-b's connection table, and the
    daemons read back as started (issue 15's first step: the kernel side)."""
    from lvs_operator.director import sync as sync_mod
    from lvs_operator.director.kernel.ipvs_netlink import SYNC_BACKUP, SYNC_MASTER

    topo = t.default_topology()
    t.reset(topo)
    a, b = topo.directors
    group = "gsync"
    settings = sync_mod.SyncSettings(ifname="front")
    out: dict[str, Any] = {}
    d = _setup_masquerade()
    assert d == a
    sysctl.ensure_sysctls(netns=b)
    ipvs.converge(IpvsTable.of([_web()]), owned_by_addresses([topo.vip]), netns=b)
    started: dict[str, list[int]] = {}
    for ns, leader in ((b, False), (a, True)):
        with ipvs.IpvsKernel(ns) as k:
            want = sync_mod.desired_daemons(group, leader, "front", settings)
            started[ns] = sorted(k.start_daemon(x) for x in want)
    out["started"] = started
    with ipvs.IpvsKernel(a) as k:
        out["master_read"] = sorted(x.state for x in k.daemons())
    with ipvs.IpvsKernel(b) as k:
        out["backup_read"] = sorted(x.state for x in k.daemons())
    out["states"] = {"master": SYNC_MASTER, "backup": SYNC_BACKUP}
    conn = t.NsHTTPConnection(topo.client, topo.vip, 80, timeout=5.0)
    out["served_by"] = conn.get_name()
    port = conn.sock.getsockname()[1] if conn.sock is not None else None
    out["client_port"] = port
    # the master sends on a timer (sync_period / every 50 packets): wait for the entry
    seen = ""
    end = time.monotonic() + 15
    while time.monotonic() < end:
        seen = t.nsexec(b, "ipvsadm", "-Lnc")
        if f":{port} " in seen:
            break
        time.sleep(0.5)
    out["backup_has_connection"] = f":{port} " in seen
    out["backup_connections"] = seen[-2000:]
    conn.close()
    for ns in (a, b):
        with ipvs.IpvsKernel(ns) as k:
            for state in (SYNC_MASTER, SYNC_BACKUP):
                k.stop_daemon(state)
    t.nsexec(b, "ipvsadm", "-C", check=False)
    t.reset(topo)
    return out


# The schedulers' flag sets that round-trip (ops, one-packet scheduling, is for UDP only).
SCHEDULER_FLAG_SETS: dict[str, list[frozenset[str]]] = {
    "sh": [frozenset(), frozenset({"sh-fallback"}), frozenset({"sh-port"}),
           frozenset({"sh-fallback", "sh-port"})],
    "mh": [frozenset(), frozenset({"mh-fallback"}), frozenset({"mh-port"}),
           frozenset({"mh-fallback", "mh-port"})],
}  # fmt: skip
# The client's extra source addresses (the hashing schedulers' inputs): 10.10.0.3-10.
EXTRA_SOURCES = tuple(f"10.10.0.{i}" for i in range(3, 11))


def _scheduled(scheduler: str, weights: tuple[int, ...] = (5, 5, 5),
               flags: frozenset[str] = frozenset()) -> IpvsTable:  # fmt: skip
    """The web service with ``scheduler``; weight 5 each by default (lblc/lblcr call a
    server overloaded past its weight in active connections)."""
    svc, dests = _web(scheduler, weights)
    return IpvsTable.of([(IpvsService(svc.address, svc.port, svc.protocol, scheduler,
                                      flags=flags), dests)])  # fmt: skip


def _per_source(topo: t.Topology, n: int, timeout: float = 2.0) -> dict[str, dict[str, int]]:
    """``n`` requests (new connections) from each client source address: answers per server."""
    return {
        src: t.count_answers(topo.client, topo.vip, 80, n=n, timeout=timeout, source=src)
        for src in (topo.front[topo.client], *EXTRA_SOURCES)
    }


def schedulers() -> dict[str, Any]:
    """Every IPVS scheduler (and its flags) round-trips through the kernel, and each one's
    distribution is observed with real traffic through masquerade (issue 19):

    - ``round_trip``: per scheduler and flag set, the converge's ops (one edit-service when
      switching) and whether the table read back equals the desired one;
    - ``hashing``: sh, mh (by source; with ``-port`` by source port too), dh, lblc, lblcr (by
      destination: one VIP, one server at light load): answers per source address;
    - ``fallback``: sh/mh with the server the first source hashes to at weight 0, without
      and with the ``-fallback`` flag;
    - ``held``: lc, wlc, sed, nq with keep-alive connections held open on chosen servers
      (weights 4/1/1): where new connections go.
    """
    from lvs_operator.api.ipvs_catalog import Scheduler

    topo = t.default_topology()
    t.reset(topo)
    for src in EXTRA_SOURCES:
        t.sh("ip", "-n", topo.client, "addr", "replace", f"{src}/24", "dev", "front")
    d = _setup_masquerade()
    owned = owned_by_addresses([topo.vip])
    out: dict[str, Any] = {"round_trip": {}, "hashing": {}, "fallback": {}, "held": {}}
    names = {topo.rs_name(rs): topo.back[rs] for rs in topo.real_servers}
    out["servers"] = names
    held: list[t.NsHTTPConnection] = []
    try:
        # -- round trip: every scheduler, every flag set it takes
        for sched in Scheduler:
            for flags in SCHEDULER_FLAG_SETS.get(str(sched), [frozenset()]):
                want = _scheduled(str(sched), flags=flags)
                ops = _ops(ipvs.converge(want, owned, netns=d))
                back = ipvs.read_table(netns=d)
                listed = t.nsexec(d, "ipvsadm", "-Ln")
                out["round_trip"][f"{sched}{''.join(sorted('+' + f for f in flags))}"] = {
                    "ops": ops,
                    "equal": back == want,
                    "again": _ops(ipvs.converge(want, owned, netns=d)),
                    "ipvsadm_names_it": f" {sched}" in listed,
                }
        # -- hashing and locality schedulers
        for sched, flags in (("sh", frozenset()), ("sh", frozenset({"sh-port"})),
                             ("mh", frozenset()), ("mh", frozenset({"mh-port"})),
                             ("dh", frozenset()), ("lblc", frozenset()),
                             ("lblcr", frozenset())):  # fmt: skip
            ipvs.converge(_scheduled(sched, flags=flags), owned, netns=d)
            label = f"{sched}{''.join(sorted('+' + f for f in flags))}"
            out["hashing"][label] = _per_source(topo, 4)
        # -- fallback: the first source's server quiesced
        # -- fallback: rs2 quiesced (weight 0). A weight change re-deals sh's and mh's hash
        # buckets, so which sources hash to rs2 is seen, not predicted: without the flag
        # they are refused, with it they go to another server.
        for sched in ("sh", "mh"):
            res: dict[str, Any] = {"victim": "rs2"}
            for flags in (frozenset(), frozenset({f"{sched}-fallback"})):
                ipvs.converge(_scheduled(sched, (1, 0, 1), flags), owned, netns=d)
                res["with_fallback" if flags else "without"] = _per_source(topo, 2, timeout=1.0)
            out["fallback"][sched] = res
        # -- least-connection family: connections held open on chosen servers
        for case, holds in (("A", (2, 1, 0)), ("B", (2, 1, 1))):
            for conn in held:
                conn.close()
            held.clear()
            # new destinations: connection counters from zero (lc and wlc count the inactive
            # connections the traffic above left, for two minutes)
            t.nsexec(d, "ipvsadm", "-C")
            t.next_client_ports(topo.client)  # no reuse of a port the director still tracks
            placed: list[str] = []
            for i, count in enumerate(holds):
                only = tuple(1 if j == i else 0 for j in range(3))
                ipvs.converge(_scheduled("lc", only), owned, netns=d)
                for _ in range(count):
                    conn = t.NsHTTPConnection(topo.client, topo.vip, 80, timeout=2.0)
                    placed.append(conn.get_name())
                    held.append(conn)
            res = {"holds": placed}
            for sched in ("lc", "wlc", "sed", "nq"):
                ipvs.converge(_scheduled(sched, (4, 1, 1)), owned, netns=d)
                res[sched] = t.count_answers(topo.client, topo.vip, 80, n=6)
            res["still_held"] = [conn.get_name() for conn in held]
            with ipvs.IpvsKernel(d) as k:
                _, counts = k.read()
            res["active"] = {
                f"{dk.address}": c.active for (sk, dk), c in counts.items() if sk.port == 80
            }
            out["held"][case] = res
    finally:
        for conn in held:
            conn.close()
        for src in EXTRA_SOURCES:
            t.sh("ip", "-n", topo.client, "addr", "del", f"{src}/24", "dev", "front",
                 check=False)  # fmt: skip
        t.reset(topo)
    return out
