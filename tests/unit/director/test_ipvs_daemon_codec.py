"""The IPVS sync daemon requests (connection synchronisation, issue 15): what the agent sends
in IPVS_CMD_NEW_DAEMON / DEL_DAEMON and how it reads GET_DAEMON, byte for byte against the
kernel's attribute layout (include/uapi/linux/ip_vs.h)."""

from __future__ import annotations

import struct

import pytest

from lvs_operator.director.kernel.ipvs_netlink import (
    ATTR_DAEMON,
    DAEMON_MCAST_GROUP,
    DAEMON_MCAST_GROUP6,
    DAEMON_MCAST_IFN,
    DAEMON_MCAST_PORT,
    DAEMON_MCAST_TTL,
    DAEMON_STATE,
    DAEMON_SYNC_ID,
    DAEMON_SYNC_MAXLEN,
    SYNC_BACKUP,
    SYNC_MASTER,
    SyncDaemon,
    daemon_attrs,
    daemon_state_attrs,
    parse_daemon,
)
from lvs_operator.director.kernel.netlink import NLA_F_NESTED, parse_attrs


def inner(body: bytes) -> dict[int, bytes]:
    (length, kind) = struct.unpack_from("=HH", body)
    assert kind == ATTR_DAEMON | NLA_F_NESTED
    return parse_attrs(body, 4, length)


def test_a_master_with_the_kernels_defaults_sends_only_what_it_must() -> None:
    attrs = inner(daemon_attrs(SyncDaemon(SYNC_MASTER, "eth0", 42)))
    assert set(attrs) == {DAEMON_STATE, DAEMON_MCAST_IFN, DAEMON_SYNC_ID}
    assert struct.unpack("=I", attrs[DAEMON_STATE])[0] == SYNC_MASTER
    assert attrs[DAEMON_MCAST_IFN] == b"eth0\0"
    assert struct.unpack("=I", attrs[DAEMON_SYNC_ID])[0] == 42


def test_a_backup_with_its_own_group_port_ttl_and_length_round_trips() -> None:
    daemon = SyncDaemon(SYNC_BACKUP, "sync0", 7, "239.1.2.3", 8849, 2, 1400)
    attrs = inner(daemon_attrs(daemon))
    assert attrs[DAEMON_MCAST_GROUP] == bytes([239, 1, 2, 3])  # network order
    assert struct.unpack("=H", attrs[DAEMON_MCAST_PORT])[0] == 8849  # host order
    assert attrs[DAEMON_MCAST_TTL] == b"\x02"
    assert struct.unpack("=H", attrs[DAEMON_SYNC_MAXLEN])[0] == 1400
    assert parse_daemon(attrs) == daemon
    six = SyncDaemon(SYNC_MASTER, "eth0", 7, "ff02::1:81")
    assert DAEMON_MCAST_GROUP6 in inner(daemon_attrs(six))
    assert parse_daemon(inner(daemon_attrs(six))) == six


def test_a_stop_names_only_the_state() -> None:
    attrs = inner(daemon_state_attrs(SYNC_BACKUP))
    assert attrs == {DAEMON_STATE: struct.pack("=I", SYNC_BACKUP)}


@pytest.mark.parametrize("ifname", ["", "a-very-long-interface-name"])
def test_an_interface_name_the_kernel_cannot_take_is_refused_here(ifname: str) -> None:
    with pytest.raises(ValueError, match="interface name"):
        daemon_attrs(SyncDaemon(SYNC_MASTER, ifname, 1))
