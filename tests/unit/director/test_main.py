"""The agent's command line: flags mirror the environment the DaemonSet sets."""

from __future__ import annotations

import pytest

from lvs_operator.director.main import parse_args


def test_flags_mirror_the_environment() -> None:
    env = {"NODE_NAME": "n1", "POD_NAMESPACE": "lvs-system", "LVS_DIRECTOR_GROUP": "gabc",
           "LVS_LEASE_DURATION_SECONDS": "30", "LVS_HEALTH_PORT": "19641"}  # fmt: skip
    cfg = parse_args([], env)
    assert (cfg.node_name, cfg.namespace, cfg.group) == ("n1", "lvs-system", "gabc")
    assert cfg.lease_name == "lvs-director-gabc"
    assert cfg.lease_duration == 30 and cfg.health_port == 19641 and cfg.metrics_port == 9642
    cfg = parse_args(["--node-name", "n2", "--lease-name", "x"], env)
    assert cfg.node_name == "n2" and cfg.lease_name == "x"


def test_missing_identity_says_the_fix(capsys) -> None:
    with pytest.raises(SystemExit):
        parse_args([], {})
    err = capsys.readouterr().err
    assert "NODE_NAME" in err and "downward API" in err


def test_process_age_is_this_process_s() -> None:
    """The first log line's seconds_since_exec: how long start-up took before logging."""
    from lvs_operator.director.main import process_age

    age = process_age()
    assert age is not None and 0 <= age < 24 * 3600


def test_vip_lifetime(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"NODE_NAME": "n1", "POD_NAMESPACE": "lvs-system", "LVS_DIRECTOR_GROUP": "gabc"}
    assert parse_args([], env).vip_lifetime == 8  # below the Lease duration (10)
    assert parse_args([], {**env, "LVS_VIP_LIFETIME_SECONDS": "0"}).vip_lifetime == 0
    assert parse_args(["--vip-lifetime", "30"], env).vip_lifetime == 30
    with pytest.raises(SystemExit):
        parse_args(["--vip-lifetime", "1"], env)
    assert "at least 2 seconds" in capsys.readouterr().err


def test_a_restart_keeps_the_vips_still_here_before_anything_slow(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """First thing at start: the agent's VIPs still on the node get one more lifetime (a
    restarted leader's must not lapse while it starts); nothing without a lifetime; a
    failure is a warning, never fatal."""
    import logging
    import time

    from lvs_operator.director import main, vip

    calls: list[tuple[str, object]] = []

    class Manager:
        def __init__(self, lifetime: int | None = None, **_: object) -> None:
            calls.append(("lifetime", lifetime))
            self.rt = self

        def present(self) -> dict[str, str]:
            return {"192.0.2.10": "front", "192.0.2.11": "front"}

        def renew_unclaimed(self, items: object) -> tuple[list[str], list[str]]:
            calls.append(("renew", sorted(items)))  # type: ignore[call-overload]
            return ["192.0.2.10"], ["192.0.2.11"]  # another node answers for .11

        def close(self) -> None:
            calls.append(("close", None))

    monkeypatch.setattr(vip, "VipManager", Manager)
    env = {"NODE_NAME": "n1", "POD_NAMESPACE": "lvs-system", "LVS_DIRECTOR_GROUP": "g"}
    caplog.set_level(logging.INFO, logger="lvs_operator.director.main")
    early = main.keep_vips_through_restart(parse_args(["--vip-lifetime", "2"], env))
    assert early is not None
    renewal = ("renew", [("192.0.2.10", "front"), ("192.0.2.11", "front")])
    assert calls == [("lifetime", 2), renewal]  # the first, at once
    time.sleep(1.2)  # then every quarter lifetime, on its thread, until the agent's takes over
    early.stop()
    assert not early.thread.is_alive()
    assert calls[-1] == ("close", None) and calls.count(renewal) >= 3, calls
    done = len(calls)
    time.sleep(0.7)
    assert len(calls) == done  # stopped
    (line,) = [r for r in caplog.records if "kept until the Lease is read" in r.getMessage()]
    assert line.__dict__["vips"] == ["192.0.2.10"]
    (left,) = [r for r in caplog.records if "left to lapse" in r.getMessage()]
    assert left.__dict__["vips"] == ["192.0.2.11"]
    calls.clear()
    assert main.keep_vips_through_restart(parse_args(["--vip-lifetime", "0"], env)) is None
    assert calls == []

    def broken(**_: object) -> None:
        raise OSError("no netlink")

    monkeypatch.setattr(vip, "VipManager", broken)
    assert main.keep_vips_through_restart(parse_args([], env)) is None  # no exception
    assert any("could not renew" in r.getMessage() for r in caplog.records)


def test_the_agent_hands_the_gil_over_every_millisecond() -> None:
    """The event loop waits less for the agent's threads running Python (bench/gil_convoy.py)."""
    import sys

    from lvs_operator.director.main import SWITCH_INTERVAL, prefer_the_loop

    before = sys.getswitchinterval()
    try:
        prefer_the_loop()
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL) == 0.001
    finally:
        sys.setswitchinterval(before)
