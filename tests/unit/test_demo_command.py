"""`lvs-operator demo`: runs the checkout's e2e/demo.py, or says that it needs a checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

from lvs_operator import demo
from lvs_operator.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_finds_the_checkout_it_was_installed_from() -> None:
    assert demo.find_checkout() == REPO
    assert (REPO / demo.DEMO).is_file()


def test_without_a_checkout_it_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(demo, "find_checkout", lambda start=None: None)
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "needs a checkout" in err and "make demo" in err


def test_runs_the_checkout_demo_with_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(demo.os, "chdir", lambda path: None)
    monkeypatch.setattr(demo.os, "execve", lambda exe, argv, env: calls.append((exe, argv, env)))
    demo.run(["--once"])
    ((_exe, argv, env),) = calls
    assert argv[1:] == [str(REPO / "e2e" / "demo.py"), "--once"]
    assert str(REPO) in env["PYTHONPATH"].split(":")
