"""Flags defaulting to environment variables: a bad value in either place exits 2 naming both."""

from __future__ import annotations

import argparse

import pytest

from lvs_operator.options import env_text, integer, number, one_of


def parser(env: dict[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t", exit_on_error=True)
    p.add_argument("--port", type=integer("T_PORT"), default=env_text("T_PORT", env) or 80)
    p.add_argument("--wait", type=number("T_WAIT"), default=env_text("T_WAIT", env))
    p.add_argument("--level", type=one_of("T_LEVEL", ("info", "debug")),
                   default=env_text("T_LEVEL", env) or "info")  # fmt: skip
    return p


def test_environment_values_are_parsed_like_flags() -> None:
    args = parser({"T_PORT": " 8080 ", "T_WAIT": "0.5", "T_LEVEL": "debug"}).parse_args([])
    assert (args.port, args.wait, args.level) == (8080, 0.5, "debug")
    args = parser({"T_PORT": "", "T_WAIT": ""}).parse_args([])  # empty: unset
    assert (args.port, args.wait, args.level) == (80, None, "info")
    assert parser({"T_PORT": "bad"}).parse_args(["--port=81"]).port == 81  # the flag wins


@pytest.mark.parametrize(
    ("env", "argv", "message"),
    [
        (
            {"T_PORT": "eighty"},
            [],
            "argument --port: 'eighty' is not an integer (flag or env T_PORT)",
        ),
        ({}, ["--port=8o"], "argument --port: '8o' is not an integer (flag or env T_PORT)"),
        ({"T_WAIT": "soon"}, [], "argument --wait: 'soon' is not a number (flag or env T_WAIT)"),
        (
            {"T_LEVEL": "loud"},
            [],
            "argument --level: 'loud' is not one of info, debug (flag or env T_LEVEL)",
        ),
        ({}, ["--level=loud"], "'loud' is not one of info, debug"),
    ],
)
def test_bad_values_exit_2_naming_flag_and_variable(
    env: dict[str, str], argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parser(env).parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
