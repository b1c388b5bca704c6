"""/proc/sys (``ProcSys``) and the helper the data-plane tests and benches use
(``ensure_sysctls``): set where they differ; a read-only /proc/sys is reported with the fix."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from lvs_operator.director.kernel import sysctl
from lvs_operator.director.node_settings import NODE_SETTINGS


def fake_proc(tmp_path: Path, values: dict[str, str]) -> None:
    for key, value in values.items():
        path = tmp_path / key.replace(".", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{value}\n")


def test_proc_sys_reads_stripped_values_and_none_for_a_missing_key(tmp_path: Path) -> None:
    fake_proc(tmp_path, {"net.ipv4.vs.conntrack": "0"})
    files = sysctl.ProcSys(tmp_path)
    assert files.read("net.ipv4.vs.conntrack") == "0"
    assert files.read("net.ipv4.vs.nosuch") is None
    files.write("net.ipv4.vs.conntrack", "1")
    assert (tmp_path / "net/ipv4/vs/conntrack").read_text() == "1\n"


def test_ensure_sets_only_what_differs(tmp_path: Path) -> None:
    fake_proc(tmp_path, {s.key: s.value for s in NODE_SETTINGS})
    fake_proc(tmp_path, {"net.ipv4.vs.conntrack": "0"})
    outcome = sysctl.enforce_node_settings(root=tmp_path)
    assert [(c.setting.key, c.was) for c in outcome.changed] == [("net.ipv4.vs.conntrack", "0")]
    assert (tmp_path / "net/ipv4/vs/conntrack").read_text() == "1\n"
    assert sysctl.enforce_node_settings(root=tmp_path).changed == ()


def test_a_read_only_proc_sys_names_every_key_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_proc(tmp_path, {s.key: s.value for s in NODE_SETTINGS})
    fake_proc(tmp_path, {"net.ipv4.vs.conntrack": "0", "net.ipv4.ip_forward": "0"})

    def read_only(self: sysctl.ProcSys, key: str, value: str) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(sysctl.ProcSys, "write", read_only)
    outcome = sysctl.enforce_node_settings(root=tmp_path)
    error = sysctl.SysctlError(outcome.wrong, {})
    assert {w.setting.key for w in error.wrong} == {"net.ipv4.vs.conntrack", "net.ipv4.ip_forward"}
    message = str(error)
    assert "sysctl -w net.ipv4.ip_forward=1 net.ipv4.vs.conntrack=1" in message
    assert "Read-only file system" in message
    assert "director.nodeSettings.enabled=true" in message
