"""Sysctls: set where they differ; a read-only /proc/sys is reported, with the fix, not fatal."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from lvs_operator.director import ipvs


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
    monkeypatch.setattr(ipvs, "_sysctl_path", lambda key: tmp_path / key.replace(".", "/"))
    return tmp_path


def test_sets_only_what_differs(proc: Path) -> None:
    fake_proc(proc, {"net.ipv4.vs.conntrack": "0", "net.ipv4.ip_forward": "1"})
    changed = ipvs.ensure_sysctls({"net.ipv4.vs.conntrack": "1", "net.ipv4.ip_forward": "1"})
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
        ipvs, "_sysctl_path", lambda key: ReadOnlyPath(proc / key.replace(".", "/"))
    )
    with pytest.raises(ipvs.SysctlError) as info:
        ipvs.ensure_sysctls(
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
