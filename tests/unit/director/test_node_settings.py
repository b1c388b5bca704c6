"""The one list of node settings, and bringing a node to it: only what differs is written,
what cannot be written (or is missing) is reported with the setting named."""

from __future__ import annotations

from lvs_operator.director import node_settings
from lvs_operator.director.node_settings import NODE_SETTINGS, Changed, Wrong, enforce, wanted
from tests.unit.director.fakes import DictSysctls

RIGHT = {s.key: s.value for s in NODE_SETTINGS}
CONNTRACK = next(s for s in NODE_SETTINGS if s.key == "net.ipv4.vs.conntrack")


def test_the_list_is_what_the_data_plane_needs_and_nothing_else() -> None:
    assert [s.assignment() for s in wanted(ipv6=False)] == [
        "net.ipv4.ip_forward=1",
        "net.ipv4.vs.conntrack=1",
        "net.ipv4.vs.expire_nodest_conn=1",
        "net.ipv4.vs.expire_quiescent_template=1",
    ]
    assert [s.key for s in wanted(ipv6=True)][-1] == "net.ipv6.conf.all.forwarding"
    # the handover's ARP suppression is nftables (handover.py), not sysctls
    assert not any("arp_" in s.key for s in NODE_SETTINGS)


def test_only_what_differs_is_written_and_a_second_run_writes_nothing() -> None:
    files = DictSysctls({**RIGHT, "net.ipv4.vs.conntrack": "0"})
    first = enforce(wanted(ipv6=False), files, write=True)
    assert first.changed == (Changed(CONNTRACK, "0"),) and first.wrong == ()
    assert files.writes == [("net.ipv4.vs.conntrack", "1")]
    second = enforce(wanted(ipv6=False), files, write=True)
    assert second.changed == () and second.wrong == () and len(second.right) == 4
    assert len(files.writes) == 1


def test_a_read_only_proc_sys_reports_each_wrong_setting_with_the_error() -> None:
    files = DictSysctls({**RIGHT, "net.ipv4.vs.conntrack": "0"}, read_only=True)
    outcome = enforce(wanted(ipv6=False), files, write=True)
    assert outcome.changed == ()
    assert outcome.wrong == (Wrong(CONNTRACK, "0", "Read-only file system"),)
    assert outcome.wrong[0].describe() == (
        "net.ipv4.vs.conntrack is 0, needs 1 (Read-only file system)"
    )


def test_reading_only_writes_nothing_and_a_missing_key_is_never_created() -> None:
    values = {k: v for k, v in RIGHT.items() if k != "net.ipv4.vs.conntrack"}
    values["net.ipv4.ip_forward"] = "0"
    files = DictSysctls(values)
    outcome = enforce(wanted(ipv6=False), files, write=False)
    assert {w.setting.key: w.actual for w in outcome.wrong} == {
        "net.ipv4.ip_forward": "0",
        "net.ipv4.vs.conntrack": None,
    }
    assert files.writes == []
    written = enforce(wanted(ipv6=False), files, write=True)
    assert [w.setting.key for w in written.wrong] == ["net.ipv4.vs.conntrack"]  # not created
    assert "missing" in written.wrong[0].describe()


def test_the_fix_command_sets_exactly_the_settings_named() -> None:
    assert node_settings.fix_command([CONNTRACK]) == "sysctl -w net.ipv4.vs.conntrack=1"
