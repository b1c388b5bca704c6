"""The VM boots with an IPVS kernel, the topology works, and hand-made IPVS NAT balances."""

from __future__ import annotations

from tests.dataplane.vm import Vm


def test_guest_has_ipvs(vm: Vm) -> None:
    assert vm.run(["sh", "-c", "lsmod | grep -q '^ip_vs '"]).returncode == 0
    assert "IP Virtual Server" in vm.run(["cat", "/proc/net/ip_vs"], check=True).stdout


def test_nat_round_robin_by_hand(vm: Vm, topology: dict[str, object]) -> None:
    out = vm.call("tests.dataplane.scenarios_smoke:nat_round_robin", requests=30)
    assert out["direct"] == {"rs1": "rs1", "rs2": "rs2", "rs3": "rs3"}
    # rr over 3 servers with one client and fresh connections: exactly 10 each.
    assert out["counts"] == {"rs1": 10, "rs2": 10, "rs3": 10}, out["table"]


def test_namespace_reaches_host(vm: Vm, topology: dict[str, object]) -> None:
    """Agents in director namespaces reach an API server on the host as 10.0.2.2:PORT."""
    import http.server
    import threading

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"host\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        out = vm.call("tests.dataplane.scenarios_smoke:uplink", director="lvs-dir-b", index=2,
                      port=port)  # fmt: skip
        assert out == {"addr": "10.99.2.2", "answer": "host"}
        answer = vm.call("tests.dataplane.scenarios_smoke:get_from_here", netns="lvs-dir-b",
                         host="10.0.2.2", port=port)  # fmt: skip
        assert answer == "host"
    finally:
        server.shutdown()
