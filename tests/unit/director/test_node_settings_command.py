"""``lvs-operator node-settings`` on a directory standing for /proc/sys: it sets exactly the
node settings, prints what it changed, is idempotent, and fails (exit 1) naming what it could
not set."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from lvs_operator import cli
from lvs_operator.director.kernel import sysctl
from lvs_operator.director.node_settings import NODE_SETTINGS


def proc_sys(root: Path, values: dict[str, str]) -> Path:
    for key, value in values.items():
        path = root / key.replace(".", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{value}\n")
    return root


def files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)).replace("/", "."): p.read_text().strip()
        for p in root.rglob("*")
        if p.is_file()
    }


STOCK_NODE = {  # a kubeadm / kind node: forwarding on, IPVS's defaults
    "net.ipv4.ip_forward": "1",
    "net.ipv4.vs.conntrack": "0",
    "net.ipv4.vs.expire_nodest_conn": "0",
    "net.ipv4.vs.expire_quiescent_template": "0",
    "net.ipv4.conf.all.arp_ignore": "0",  # not ours: left alone
    "net.ipv6.conf.all.forwarding": "0",
}


def test_sets_exactly_the_node_settings_and_prints_what_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = proc_sys(tmp_path, STOCK_NODE)
    assert cli.main(["node-settings", "--proc-sys", str(root)]) == 0
    assert files(root) == {
        **STOCK_NODE,
        "net.ipv4.vs.conntrack": "1",
        "net.ipv4.vs.expire_nodest_conn": "1",
        "net.ipv4.vs.expire_quiescent_template": "1",
    }
    out = capsys.readouterr().out
    assert "set net.ipv4.vs.conntrack = 1 (was 0)" in out
    assert "already net.ipv4.ip_forward = 1" in out
    assert "3 changed, 1 already set" in out
    # again: nothing to change
    assert cli.main(["node-settings", "--proc-sys", str(root)]) == 0
    assert "0 changed, 4 already set" in capsys.readouterr().out


def test_ipv6_forwarding_only_when_asked(tmp_path: Path) -> None:
    root = proc_sys(tmp_path, STOCK_NODE)
    assert cli.main(["node-settings", "--ipv6", "--proc-sys", str(root)]) == 0
    assert files(root)["net.ipv6.conf.all.forwarding"] == "1"
    assert {s.key for s in NODE_SETTINGS} <= set(files(root))


def test_check_writes_nothing_and_fails_on_a_wrong_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = proc_sys(tmp_path, STOCK_NODE)
    assert cli.main(["node-settings", "--check", "--proc-sys", str(root)]) == 1
    assert files(root) == STOCK_NODE
    assert "net.ipv4.vs.conntrack is 0, needs 1" in capsys.readouterr().err
    proc_sys(root, {s.key: s.value for s in NODE_SETTINGS if not s.ipv6})
    assert cli.main(["node-settings", "--check", "--proc-sys", str(root)]) == 0


def test_a_read_only_proc_sys_fails_naming_each_setting_and_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = proc_sys(tmp_path, STOCK_NODE)

    def read_only(self: sysctl.ProcSys, key: str, value: str) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(sysctl.ProcSys, "write", read_only)
    assert cli.main(["node-settings", "--proc-sys", str(root)]) == 1
    err = capsys.readouterr().err
    assert "net.ipv4.vs.conntrack is 0, needs 1 (Read-only file system)" in err
    assert "privileged" in err
    assert (
        "sysctl -w net.ipv4.vs.conntrack=1 net.ipv4.vs.expire_nodest_conn=1 "
        "net.ipv4.vs.expire_quiescent_template=1"
    ) in err


def test_a_node_without_ip_vs_is_told_to_load_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = proc_sys(tmp_path, {"net.ipv4.ip_forward": "1"})
    assert cli.main(["node-settings", "--proc-sys", str(root)]) == 1
    err = capsys.readouterr().err
    assert "net.ipv4.vs.conntrack is missing" in err and "modprobe ip_vs" in err
