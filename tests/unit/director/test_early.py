"""The agent's first step (director/early.py): the VIPs a restarted agent left on the node get
one more lifetime before anything slow is imported."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time

import pytest

from lvs_operator.api import contract
from lvs_operator.director import early, vip


class Manager:
    """vip.VipManager as early.py uses it; records its calls."""

    calls: list[tuple[str, object]] = []

    def __init__(self, lifetime: int | None = None, **_: object) -> None:
        Manager.calls.append(("lifetime", lifetime))
        self.rt = self

    def present(self) -> dict[str, str]:
        return {"192.0.2.10": "front", "192.0.2.11": "front"}

    def renew_unclaimed(self, items: object) -> tuple[list[str], list[str]]:
        Manager.calls.append(("renew", sorted(items)))  # type: ignore[call-overload]
        return ["192.0.2.10"], ["192.0.2.11"]  # another node answers for .11

    def close(self) -> None:
        Manager.calls.append(("close", None))


RENEWAL = ("renew", [("192.0.2.10", "front"), ("192.0.2.11", "front")])


@pytest.fixture
def manager(monkeypatch: pytest.MonkeyPatch) -> type[Manager]:
    Manager.calls = []
    monkeypatch.setattr(vip, "VipManager", Manager)
    monkeypatch.setattr(early, "_started", None)
    return Manager


def test_a_restart_keeps_the_vips_still_here_before_anything_slow(
    manager: type[Manager], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The agent's VIPs still on the node get one more lifetime at once, then every quarter
    lifetime until the agent's renewal takes over; nothing without a lifetime; a failure is
    a warning, never fatal."""
    caplog.set_level(logging.INFO, logger="lvs_operator.director.main")
    renewal = early.keep_vips_through_restart(2)
    assert renewal is not None
    assert manager.calls == [("lifetime", 2), RENEWAL]  # the first, at once
    assert (renewal.kept, renewal.left) == (["192.0.2.10"], ["192.0.2.11"])
    time.sleep(1.2)  # then every quarter lifetime, on its thread
    renewal.stop()
    assert not renewal.thread.is_alive()
    assert manager.calls[-1] == ("close", None) and manager.calls.count(RENEWAL) >= 3
    done = len(manager.calls)
    time.sleep(0.7)
    assert len(manager.calls) == done  # stopped
    (line,) = [r for r in caplog.records if "kept until the Lease is read" in r.getMessage()]
    assert line.__dict__["vips"] == ["192.0.2.10"]
    (left,) = [r for r in caplog.records if "left to lapse" in r.getMessage()]
    assert left.__dict__["vips"] == ["192.0.2.11"]
    manager.calls.clear()
    assert early.keep_vips_through_restart(0) is None
    assert manager.calls == []

    def broken(**_: object) -> None:
        raise OSError("no netlink")

    monkeypatch.setattr(vip, "VipManager", broken)
    assert early.keep_vips_through_restart(8) is None  # no exception
    assert any("could not renew" in r.getMessage() for r in caplog.records)


def test_begin_starts_the_renewal_with_the_lifetime_the_agent_will_use(
    manager: type[Manager],
) -> None:
    early.begin(["--vip-lifetime", "4", "--node-name", "n1"], {})
    assert manager.calls[:2] == [("lifetime", 4), RENEWAL]
    renewal = early.take(4)  # main.run's: the one already running, not a second
    assert renewal is not None and renewal.thread.is_alive()
    assert manager.calls.count(("lifetime", 4)) == 1
    renewal.stop()


def test_take_starts_one_when_begin_did_not_or_used_another_lifetime(
    manager: type[Manager],
) -> None:
    first = early.take(4)  # main.run called directly: started now
    assert first is not None and manager.calls[:2] == [("lifetime", 4), RENEWAL]
    first.stop()
    early.begin([], {early.ENV_VIP_LIFETIME_SECONDS: "6"})
    second = early.take(8)  # the flags said otherwise after all: that one stops
    assert second is not None and second.lifetime == 8
    assert [c for c in manager.calls if c[0] == "lifetime"] == [
        ("lifetime", 4), ("lifetime", 6), ("lifetime", 8)
    ]  # fmt: skip
    second.stop()


@pytest.mark.parametrize(
    "argv, env",
    [
        (["--help"], {}),
        (["--vip-lifetime", "0"], {}),
        (["--vip-lifetime", "1"], {}),  # parse_args refuses it
        (["--vip-lifetime", "soon"], {}),  # and this: its error, not ours
        ([], {early.ENV_VIP_LIFETIME_SECONDS: "0"}),
    ],
)
def test_begin_starts_nothing_for_help_no_lifetime_or_a_bad_one(
    manager: type[Manager], argv: list[str], env: dict[str, str]
) -> None:
    early.begin(argv, env)
    assert manager.calls == [] and early._started is None


def test_option_values_as_parse_args_reads_them() -> None:
    env = {"LVS_X": "3"}
    assert early.option_value(["--x", "1"], "--x", env, "LVS_X", "9") == "1"
    assert early.option_value(["--x=2", "--x", "5"], "--x", env, "LVS_X", "9") == "5"
    assert early.option_value(["--xy", "1"], "--x", env, "LVS_X", "9") == "3"
    assert early.option_value([], "--x", {"LVS_X": ""}, "LVS_X", "9") == "9"  # empty: unset


def test_the_names_are_the_contracts() -> None:
    assert early.ENV_VIP_LIFETIME_SECONDS == contract.ENV_VIP_LIFETIME_SECONDS
    assert early.ENV_LOG_LEVEL == contract.ENV_LOG_LEVEL


def test_the_first_step_imports_none_of_the_agent() -> None:
    """What makes it early: the agent's modules (its API client, asyncio, the models) load
    only after the renewal started (seconds under emulation)."""
    code = (
        "import sys; from lvs_operator.director import early, vip;"
        "from lvs_operator.director.kernel import addresses;"
        "import lvs_operator.heap, lvs_operator.logs;"
        "heavy = [m for m in ('asyncio', 'lvs_operator.api.contract', 'pydantic', 'httpx',"
        " 'lvs_operator.director.agent', 'lvs_operator.director.config') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": ":".join(sys.path)})  # fmt: skip
    assert out.stdout.strip() == "[]", out


def test_the_director_command_begins_before_it_imports_the_agent() -> None:
    code = textwrap.dedent("""
        import sys
        from lvs_operator.director import early

        def begin(argv):
            print("main" if "lvs_operator.director.main" in sys.modules else "first", argv)
            raise SystemExit(0)

        early.begin = begin
        from lvs_operator.cli import main
        main(["director", "--vip-lifetime", "4"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": ":".join(sys.path)})  # fmt: skip
    assert out.stdout.strip() == "first ['--vip-lifetime', '4']", out


def test_the_agent_never_imports_trio_or_h2() -> None:
    """The HTTP client's async layer imports trio, if installed, only to tell it from asyncio
    (4.7 MiB of the agent's RSS), and its connection layer h2 for HTTP/2, which the agent
    never offers (2.7 MiB). After the first step their imports fail, as if not installed,
    and the client still works (HTTP/1.1 on asyncio)."""
    code = textwrap.dedent("""
        import asyncio, http.server, sys, threading
        from lvs_operator.director import early
        early.begin(["--vip-lifetime", "0"], {})
        import httpx2 as httpx

        server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
        threading.Thread(target=server.handle_request, daemon=True).start()

        async def request():  # through the connection pool and its async backend
            async with httpx.AsyncClient(timeout=10) as client:
                return (await client.get(f"http://127.0.0.1:{server.server_port}/")).status_code

        print(asyncio.run(request()), sys.modules.get("trio"), sys.modules.get("h2"))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": ":".join(sys.path)})  # fmt: skip
    if "No module named 'httpx2'" in out.stderr:
        pytest.skip("the HTTP client here is not httpx2")
    assert out.returncode == 0, out.stderr
    # (the handler has no GET: a real answer)
    assert out.stdout.strip() == "501 None None", out
