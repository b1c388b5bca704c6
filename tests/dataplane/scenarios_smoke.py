"""Guest side of test_vm_smoke.py: IPVS programmed by hand with ipvsadm, real HTTP traffic."""

from __future__ import annotations

from tests.dataplane import topology as t


def nat_round_robin(requests: int = 30) -> dict[str, object]:
    """LVS-NAT round robin VIP:80 -> rs1..3:8080 through director-a; replies routed back
    through the director (classic NAT, no SNAT)."""
    topo = t.default_topology()
    t.reset(topo)
    d = topo.directors[0]
    t.sysctl(d, "net.ipv4.ip_forward", 1)
    t.add_vip(d, topo.vip)
    t.route_back_via(d, topo)
    t.ipvsadm(d, "-A", "-t", f"{topo.vip}:80", "-s", "rr")
    for rs in topo.real_servers:
        t.ipvsadm(d, "-a", "-t", f"{topo.vip}:80", "-r", f"{topo.back[rs]}:{t.HTTP_PORT}", "-m")
    direct = {topo.rs_name(rs): t.http_get(topo.router, topo.back[rs], t.HTTP_PORT)
              for rs in topo.real_servers}  # fmt: skip
    counts = t.count_answers(topo.client, topo.vip, 80, n=requests)
    table = t.ipvs_list(d)
    t.reset(topo)
    return {"direct": direct, "counts": counts, "table": table}


def uplink(director: str, index: int, port: int) -> dict[str, object]:
    """Give ``director`` a route to the host (10.0.2.2) and fetch from a host HTTP server."""
    addr = t.connect_uplink(director, index)
    return {"addr": addr, "answer": t.http_get(director, "10.0.2.2", port, timeout=5.0)}


def get_from_here(host: str, port: int) -> str:
    """Runs with the call already in a namespace (Vm.call(netns=...))."""
    return t.http_get(None, host, port, timeout=5.0)
