"""Sysctls: set where they differ; a read-only /proc/sys is reported, with the fix, not fatal."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from lvs_operator.director.handover import ARP_SYSCTLS
from lvs_operator.director.kernel import sysctl


class ReadOnlyPath(type(Path())):  # type: ignore[misc]
    def write_text(self, *args: object, **kwargs: object) -> int:
        raise OSError(errno.EROFS, "Read-only file system")


def fake_proc(tmp_path: Path, values: dict[str, str]) -> None:
    for key, value in values.items():
        path = tmp_path / key.replace(".", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{value}\n")


@pytest.fixture
def proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(sysctl, "_sysctl_path", lambda key: tmp_path / key.replace(".", "/"))
    return tmp_path


def test_sets_only_what_differs(proc: Path) -> None:
    fake_proc(proc, {"net.ipv4.vs.conntrack": "0", "net.ipv4.ip_forward": "1"})
    changed = sysctl.ensure_sysctls({"net.ipv4.vs.conntrack": "1", "net.ipv4.ip_forward": "1"})
    assert changed == {"net.ipv4.vs.conntrack": ("0", "1")}
    assert (proc / "net/ipv4/vs/conntrack").read_text() == "1\n"


def test_read_only_proc_sys_names_every_key_and_the_fix(
    proc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_proc(
        proc,
        {
            "net.ipv4.vs.conntrack": "0",
            "net.ipv4.ip_forward": "0",
            "net.ipv4.vs.expire_nodest_conn": "1",
        },
    )
    monkeypatch.setattr(
        sysctl, "_sysctl_path", lambda key: ReadOnlyPath(proc / key.replace(".", "/"))
    )
    with pytest.raises(sysctl.SysctlError) as info:
        sysctl.ensure_sysctls(
            {
                "net.ipv4.vs.conntrack": "1",
                "net.ipv4.ip_forward": "1",
                "net.ipv4.vs.expire_nodest_conn": "1",
            }
        )
    assert set(info.value.failed) == {"net.ipv4.vs.conntrack", "net.ipv4.ip_forward"}
    message = str(info.value)
    assert "sysctl -w net.ipv4.vs.conntrack=1 net.ipv4.ip_forward=1" in message
    assert "Read-only file system" in message


def test_arp_sysctls_are_set_and_restored(tmp_path: Path) -> None:
    conf = tmp_path / "net/ipv4/conf/front"
    conf.mkdir(parents=True)
    (conf / "arp_ignore").write_text("0\n")
    (conf / "arp_announce").write_text("0\n")
    previous = sysctl.set_interface_sysctls("front", ARP_SYSCTLS, root=tmp_path)
    assert previous == {"arp_ignore": "0", "arp_announce": "0"}
    assert (conf / "arp_ignore").read_text() == "1" and (conf / "arp_announce").read_text() == "2"
    sysctl.restore_interface_sysctls("front", previous, root=tmp_path)
    assert (conf / "arp_ignore").read_text() == "0"


def test_unwritable_arp_sysctls_are_reported_not_fatal(tmp_path: Path, caplog) -> None:
    assert sysctl.set_interface_sysctls("nosuch", ARP_SYSCTLS, root=tmp_path) == {}
    assert "may answer ARP" in caplog.text
