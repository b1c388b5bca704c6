"""Which IPVS sync daemons a director runs (director/sync.py): pure."""

from __future__ import annotations

import errno
import logging
from dataclasses import replace

import pytest

from lvs_operator.director.kernel.ipvs_netlink import SYNC_BACKUP, SYNC_MASTER, SyncDaemon
from lvs_operator.director.sync import (
    ConnectionSync,
    DaemonPlan,
    SyncSettings,
    count_synced,
    desired_daemons,
    multicast_group,
    plan_daemons,
    sync_id,
)
from tests.unit.director.fakes import FakeDaemonKernel


def test_every_director_backs_up_and_the_leader_also_sends() -> None:
    standby = desired_daemons("g1", False, "eth0", SyncSettings())
    leader = desired_daemons("g1", True, "eth0", SyncSettings())
    assert {d.state for d in standby} == {SYNC_BACKUP}
    assert {d.state for d in leader} == {SYNC_BACKUP, SYNC_MASTER}
    assert standby <= leader  # a takeover adds the master, the backup stays as it is
    (backup,) = standby
    assert (backup.ifname, backup.port, backup.ttl) == ("eth0", 8848, 1)
    assert desired_daemons("g1", True, None, SyncSettings()) == set()  # no link yet
    assert desired_daemons("g1", True, "eth0", SyncSettings(enabled=False)) == set()
    (own,) = desired_daemons("g1", False, "eth0", SyncSettings(ifname="sync0"))
    assert own.ifname == "sync0"


def test_groups_get_their_own_sync_id_and_multicast_group() -> None:
    ids = {sync_id(f"g{i:010x}") for i in range(200)}
    assert all(1 <= i <= 255 for i in ids) and len(ids) > 100
    assert multicast_group("g1").startswith("239.255.")
    assert multicast_group("g1") != multicast_group("g2")
    assert sync_id("g1") == sync_id("g1")


def test_a_takeover_starts_the_master_and_touches_no_running_backup() -> None:
    standby = desired_daemons("g1", False, "eth0", SyncSettings())
    leader = desired_daemons("g1", True, "eth0", SyncSettings())
    (backup,) = standby
    running = [replace(backup, maxlen=1472)]  # as the kernel reports it (from the MTU)
    plan = plan_daemons(leader, running)
    assert plan.stop == () and [d.state for d in plan.start] == [SYNC_MASTER]
    assert plan_daemons(standby, running) == DaemonPlan()
    # a step-down stops the master only
    master = next(d for d in leader if d.state == SYNC_MASTER)
    assert plan_daemons(standby, [*running, master]) == DaemonPlan(stop=(SYNC_MASTER,))
    # a daemon on the wrong link is restarted
    moved = desired_daemons("g1", False, "eth1", SyncSettings())
    plan = plan_daemons(moved, running)
    assert plan.stop == (SYNC_BACKUP,) and [d.ifname for d in plan.start] == ["eth1"]
    # another group's leftover master goes
    other = SyncDaemon(SYNC_MASTER, "eth0", sync_id("g2"))
    assert plan_daemons(standby, [*running, other]).stop == (SYNC_MASTER,)


# -- ConnectionSync against a fake kernel ------------------------------------------------------


async def run_inline(fn, *args):  # type: ignore[no-untyped-def]
    return fn(*args)


async def test_leadership_changes_start_and_stop_only_the_master() -> None:
    kernel = FakeDaemonKernel()
    sync = ConnectionSync("g1", SyncSettings(), kernel, run_inline)
    await sync.apply(False, "eth0")
    assert kernel.calls == [("start", SYNC_BACKUP)]
    await sync.apply(True, "eth0")
    assert kernel.calls[1:] == [("start", SYNC_MASTER)]  # the backup kept: no update missed
    await sync.apply(True, "eth0")
    assert kernel.calls[2:] == []  # nothing to do
    await sync.apply(False, "eth0")
    assert kernel.calls[2:] == [("stop", SYNC_MASTER)]
    assert {d.state for d in sync.running} == {SYNC_BACKUP} and sync.problem == ""


async def test_a_refused_start_is_reported_with_the_fix_once_and_never_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kernel = FakeDaemonKernel()
    kernel.refuse["sync0"] = errno.ENODEV
    sync = ConnectionSync("g1", SyncSettings(ifname="sync0"), kernel, run_inline)
    with caplog.at_level(logging.ERROR, logger="lvs_operator.director.sync"):
        await sync.apply(True, "eth0")
        await sync.apply(True, "eth0")
    assert "no such interface on this node" in sync.problem
    assert len([r for r in caplog.records if "connection sync" in r.getMessage()]) == 1
    kernel.refuse.clear()
    await sync.apply(True, "eth0")
    assert sync.problem == "" and len(sync.running) == 2


async def test_a_daemon_on_the_wrong_link_is_replaced() -> None:
    kernel = FakeDaemonKernel()
    sync = ConnectionSync("g1", SyncSettings(), kernel, run_inline)
    await sync.apply(False, "eth0")
    await sync.apply(False, "eth1")  # the VIP's link changed
    assert kernel.calls == [("start", SYNC_BACKUP), ("stop", SYNC_BACKUP), ("start", SYNC_BACKUP)]
    assert [d.ifname for d in sync.running] == ["eth1"]


# the kernel's /proc/net/ip_vs_conn_sync (ip_vs_conn.c): one entry forwarded here (LOCAL),
# two received from the master (SYNC), one of them IPv6
CONN_SYNC_TABLE = """\
Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Origin Expires
TCP C0000202 9C40 C000020A 0050 0AF40001 1F90 ESTABLISHED LOCAL      899
TCP C0000203 9C41 C000020A 0050 0AF40002 1F90 ESTABLISHED SYNC       898
TCP 2001:0db8:0000:0000:0000:0000:0000:0002 9C42 2001:0db8:0000:0000:0000:0000:0000:000a 0050 \
2001:0db8:0000:0000:0000:0000:0001:0001 1F90 ESTABLISHED SYNC       897
"""


def test_count_synced_counts_the_entries_the_backup_received() -> None:
    assert count_synced(CONN_SYNC_TABLE.splitlines()) == 2
    assert count_synced(CONN_SYNC_TABLE.splitlines()[:1]) == 0  # an empty table
    assert count_synced([]) == 0
    assert count_synced(["Pro FromIP FPrt", "TCP C0000202 9C40"]) == 0  # no Origin column


async def test_synced_connections_are_counted_only_while_a_backup_runs() -> None:
    kernel = FakeDaemonKernel()
    table: list[int | None] = [2]
    sync = ConnectionSync("g1", SyncSettings(), kernel, run_inline, synced=lambda: table[0])
    assert sync.synced_connections() == 0  # no daemon yet: nothing could have arrived
    await sync.apply(False, "eth0")
    assert sync.synced_connections() == 2
    table[0] = None  # the table cannot be read
    assert sync.synced_connections() == 0


def test_the_programmed_annotation_is_bounded_and_formatted_once_per_change() -> None:
    from lvs_operator.api import contract
    from lvs_operator.director import desired as desired_mod
    from lvs_operator.director.ipvs_sync import programmed
    from lvs_operator.director.table import IpvsTable

    def want(generations: dict[str, int]) -> desired_mod.Desired:
        return desired_mod.Desired(table=IpvsTable.of([]), generations=generations)

    small = {"web/a": 2}
    assert programmed(want(small)) == '{"web/a": 2}'  # the plain map every controller reads
    many = {f"team-{i % 50}/{'web-' + str(i).zfill(6):x<60}": 1 for i in range(10_000)}
    text = programmed(want(many))
    assert len(text) <= contract.PROGRAMMED_MAX_BYTES
    assert contract.parse_programmed_report(text).confirmed(many) == many
    assert programmed(want(dict(many))) is text  # unchanged generations: not formatted again
