"""A director's connection sync state (sync.py): what it reports, the leader's verdict on
each backup ("receiving"), the clocks behind it, and the record the leader writes on the
Lease (api/contract.py SYNC_ANNOTATION)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lvs_operator.api.contract import DirectorSync, SyncRecord, format_sync, parse_sync
from lvs_operator.director.kernel.ipvs_netlink import SYNC_BACKUP, SYNC_MASTER, SyncDaemon
from lvs_operator.director.peer import SyncReport
from lvs_operator.director.sync import (
    RECEIVE_WINDOW,
    SyncClocks,
    judge_receiving,
    report_of,
    sync_record,
)

BACKUP = SyncDaemon(SYNC_BACKUP, "eth0", 12, "239.255.1.2", 8848, 1)
MASTER = SyncDaemon(SYNC_MASTER, "eth0", 12, "239.255.1.2", 8848, 1)


def test_the_report_names_the_daemon_that_matters() -> None:
    assert report_of([BACKUP], 5, 0) == SyncReport("backup", 12, "eth0", 5, 0)
    # the leader runs both: it reports its master
    assert report_of([BACKUP, MASTER], 0, None).role == "master"
    assert report_of([], 0, None) == SyncReport("off")


@pytest.mark.parametrize(
    ("report", "serving_for", "verdict"),
    [
        (SyncReport("backup", 12, "eth0", 3, 0), None, "True"),  # holds received connections
        (SyncReport("backup", 12, "eth0", 3, 0), 600.0, "True"),
        (SyncReport("backup", 12, "eth0", 0, None), None, "Unknown"),  # nothing to sync
        (SyncReport("backup", 12, "eth0", 0, None), RECEIVE_WINDOW - 1, "Unknown"),  # too soon
        (SyncReport("backup", 12, "eth0", 0, None), RECEIVE_WINDOW, "False"),  # never got any
        (SyncReport("backup", 12, "eth0", 0, 30), RECEIVE_WINDOW, "Unknown"),  # got some lately
        (SyncReport("backup", 12, "eth0", 0, int(RECEIVE_WINDOW)), RECEIVE_WINDOW, "False"),
        (SyncReport("master", 12, "eth0", 0, None), 600.0, ""),  # not a backup: no verdict
        (SyncReport("off"), 600.0, ""),
    ],
)
def test_a_backup_is_judged_by_its_received_connections_and_the_leaders(
    report: SyncReport, serving_for: float | None, verdict: str
) -> None:
    assert judge_receiving(report, serving_for) == verdict


def test_the_clocks() -> None:
    clocks = SyncClocks()
    clocks.serving(0, 1.0)
    assert clocks.serving_for(2.0) is None
    clocks.serving(4, 10.0)
    clocks.serving(7, 20.0)  # still serving: since the first look that saw connections
    assert clocks.serving_for(70.0) == 60.0
    clocks.serving(None, 80.0)  # unknown: no change
    assert clocks.serving_for(80.0) == 70.0
    clocks.serving(0, 90.0)
    assert clocks.serving_for(95.0) is None
    assert clocks.received_ago(5.0) is None
    clocks.synced(3, 5.0)
    clocks.synced(0, 50.0)  # none now: the last time it held some stays
    assert clocks.received_ago(65.5) == 60


@dataclass(frozen=True)
class Seen:
    at: float
    sync: SyncReport | None = None


def test_the_leaders_record_judges_fresh_standbys_and_leaves_out_the_rest() -> None:
    own = SyncReport("master", 12, "eth0")
    standbys = {
        "node-b": Seen(100.0, SyncReport("backup", 12, "eth0", 0, None)),  # never received
        "node-c": Seen(100.0, SyncReport("backup", 12, "eth0", 9, 0)),
        "node-d": Seen(50.0, SyncReport("backup", 12, "eth0", 9, 0)),  # gone: too old
        "node-e": Seen(100.0),  # an older agent: no sync state in its probes
    }
    record = sync_record("node-a", own, standbys, 120.0, 105.0, 20.0)
    assert record == SyncRecord(
        "node-a",
        {
            "node-a": DirectorSync("master", 12, "eth0"),
            "node-b": DirectorSync("backup", 12, "eth0", "False"),
            "node-c": DirectorSync("backup", 12, "eth0", "True"),
        },
    )
    text = format_sync(record)
    assert parse_sync(text) == record
    assert len(text) < 300  # small: one line per director on the Lease
