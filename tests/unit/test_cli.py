"""The ``lvs-operator`` command as a user runs it: ``python -m lvs_operator``, and bad input
to each subcommand ends with exit code 2 and a message, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lvs_operator import __version__


def lvs_operator(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    # no kubeconfig of this machine's: a test that gets past the checks must not reach a cluster
    full_env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "lvs_operator", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
    )


def test_python_dash_m_runs_the_command() -> None:
    r = lvs_operator("--version")
    assert (r.returncode, r.stdout.strip()) == (0, __version__)
    r = lvs_operator("--help")
    assert r.returncode == 0 and "controller" in r.stdout and "director" in r.stdout
    r = lvs_operator("nonsense")
    assert r.returncode == 2 and "unknown command 'nonsense'" in r.stderr


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["controller"], {"LVS_HEALTH_PORT": "abc"}, "(flag or env LVS_HEALTH_PORT)"),
        (["controller"], {"LVS_LOG_LEVEL": "verbose"}, "(flag or env LVS_LOG_LEVEL)"),
        (["controller", "--log-level=loud"], {}, "argument --log-level: 'loud'"),
        (["controller"], {"KUBECONFIG": "/no/such/kubeconfig"}, "env KUBECONFIG: no such file"),
        (["controller", "--kubeconfig=/no/such/file"], {}, "--kubeconfig: no such file"),
        (["realserver", "--vip=nonsense", "--mode=direct"], {}, "--vip 'nonsense' is not"),
        (["realserver", "--vip=192.0.2.1", "--mode=nat"], {}, "argument --mode"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    r = lvs_operator(*argv, **env)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("env", [{"LVS_HEALTH_PORT": "abc"}, {"LVS_LOG_LEVEL": "verbose"}])
def test_director_bad_environment_exits_2_with_a_message(env: dict[str, str]) -> None:
    r = lvs_operator("director", "--node-name=n", "--namespace=ns", "--group=g",
                     "--lease-name=l", **env)  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert next(iter(env)) in r.stderr  # the message names the variable
