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


def test_warm_up_imports_what_the_first_request_would_import_on_the_loop() -> None:
    """The HTTP client's async backend and anyio's asyncio one: imported lazily at the first
    request, on the event loop, they stalled it 0.4-0.5 s under TCG (the stall sampler)."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("anyio") is None:
        pytest.skip("anyio is not installed here: the HTTP client does not use it")
    code = (
        "import sys; from lvs_operator.director import main; main.warm_up();"
        "print('anyio._backends._asyncio' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": ":".join(sys.path)})  # fmt: skip
    assert out.stdout.strip() == "True", out
