"""director/kernel/nft.py: commands go to libnftables in-process, else to the nft command.
(The kernel side is proven in the data-plane tier: masquerade SNAT and the handover relay.)"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from lvs_operator.director.kernel import nft

OUTPUT_JSON = 1 << 4


class FakeLibnftables:
    """The few libnftables calls nft.py makes, recording what it was asked."""

    def __init__(self, rc: int = 0, output: bytes = b"", error: bytes = b"") -> None:
        self.rc, self.output, self.error = rc, output, error
        self.flags = 0
        self.dry_run = False
        self.commands: list[tuple[bytes, int]] = []
        self.checked: list[bytes] = []  # the commands run with dry_run set
        self.contexts = 0
        for name in dir(self):
            if name.startswith("nft_"):
                # ctypes sets argtypes/restype on the library's functions
                setattr(self, name, _Function(getattr(self, name)))

    def nft_ctx_new(self, flags: int) -> int:
        self.contexts += 1
        return 1000 + self.contexts

    def nft_ctx_buffer_output(self, ctx: int) -> int:
        return 0

    def nft_ctx_buffer_error(self, ctx: int) -> int:
        return 0

    def nft_ctx_output_get_flags(self, ctx: int) -> int:
        return self.flags

    def nft_ctx_output_set_flags(self, ctx: int, flags: int) -> None:
        self.flags = flags

    def nft_ctx_set_dry_run(self, ctx: int, dry: bool) -> None:
        self.dry_run = dry

    def nft_run_cmd_from_buffer(self, ctx: int, commands: bytes) -> int:
        (self.checked if self.dry_run else self.commands).append(
            commands if self.dry_run else (commands, self.flags)  # type: ignore[arg-type]
        )
        return self.rc

    def nft_ctx_get_output_buffer(self, ctx: int) -> bytes:
        return self.output

    def nft_ctx_get_error_buffer(self, ctx: int) -> bytes:
        return self.error


class _Function:
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


def test_the_library_runs_the_commands_with_json_only_when_asked() -> None:
    lib = FakeLibnftables(output=b'{"nftables": []}')
    runner = nft._Libnftables(lib)  # type: ignore[arg-type]
    assert runner.run("list table inet x", None, json_output=True) == '{"nftables": []}'
    runner.run("delete table inet x", None, json_output=False)
    assert lib.commands == [
        (b"list table inet x", OUTPUT_JSON),
        (b"delete table inet x", 0),
    ]
    assert lib.contexts == 1  # one context per thread and namespace, kept


def test_a_library_failure_carries_nft_s_message() -> None:
    lib = FakeLibnftables(rc=1, error=b"Error: No such file or directory\n")
    runner = nft._Libnftables(lib)  # type: ignore[arg-type]
    with pytest.raises(nft.NftError, match="No such file or directory"):
        runner.run("list table netdev lvs_relay", None, json_output=False)


def test_without_the_library_the_nft_command_reads_the_commands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(nft, "_libnftables", lambda: None)
    calls: list[tuple[list[str], str]] = []

    def run(argv: list[str], input: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        calls.append((argv, input))
        return subprocess.CompletedProcess(argv, 0, stdout="out", stderr="")

    monkeypatch.setattr(nft.subprocess, "run", run)
    assert nft.nft("list table inet x", "ns1", json_output=True) == "out"
    assert calls == [(["ip", "netns", "exec", "ns1", "nft", "-j", "-f", "-"], "list table inet x")]


def test_a_missing_library_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nft, "LIBNFTABLES", "libnftables-that-is-not-here.so.0")
    monkeypatch.setattr(nft, "_library_loaded", False)
    monkeypatch.setattr(nft, "_library", None)
    assert nft._libnftables() is None


def test_a_check_applies_nothing_and_leaves_the_context_applying() -> None:
    lib = FakeLibnftables()
    runner = nft._Libnftables(lib)  # type: ignore[arg-type]
    runner.run("table netdev t {}", None, json_output=False, check=True)
    runner.run("delete table netdev t", None, json_output=False)
    assert lib.checked == [b"table netdev t {}"]
    assert lib.commands == [(b"delete table netdev t", 0)]  # the same context applies again
    assert lib.contexts == 1


def test_a_refused_check_raises_and_still_leaves_the_context_applying() -> None:
    lib = FakeLibnftables(rc=1, error=b"Error: Interface does not exist\n")
    runner = nft._Libnftables(lib)  # type: ignore[arg-type]
    with pytest.raises(nft.NftError, match="Interface does not exist"):
        runner.run("table netdev t {}", None, json_output=False, check=True)
    assert lib.dry_run is False


def test_warm_checks_each_script_through_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = FakeLibnftables()
    monkeypatch.setattr(nft, "_libnftables", lambda: nft._Libnftables(lib))  # type: ignore[arg-type]
    assert nft.warm(["table netdev a {}", "table arp b {}"]) is True
    assert lib.checked == [b"table netdev a {}", b"table arp b {}"] and lib.commands == []


def test_warm_without_the_library_has_nothing_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nft, "_libnftables", lambda: None)
    monkeypatch.setattr(nft.subprocess, "run", None)  # the nft command is not run either
    assert nft.warm(["table netdev a {}"]) is False
