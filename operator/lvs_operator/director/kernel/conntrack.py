"""Writes conntrack entries over ctnetlink (NETLINK_NETFILTER, subsystem CTNETLINK), for the
restore after a crash takeover (director/conn_restore.py says what and why).

Each entry is created as the kernel would have built it while forwarding: the original and
the reply tuple (the reply after IPVS's translation to the real server), and the source NAT
as a range of one address and one port, so the kernel's own NAT setup turns the reply tuple
into the translated one and marks the entry source-NATed (flags cannot be set directly).
The TCP state is ESTABLISHED and both directions are "be liberal" (the window seen by the
crashed director is unknown here, so no window check may drop a packet).

Standard library only (netlink.py): the agent does not import pyroute2 (memory).
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import os
import socket
import struct
import time
from collections.abc import Sequence, Set

from ..conn_restore import ConntrackEntry, RestoreOutcome, conntrack_entries, parse_conn_table
from ..sync import CONN_SYNC_TABLE
from ..table import ServiceKey
from .netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkSocket, nested, nla
from .netlink import header as nl_header

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
CT_NEW = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
NFGENMSG = struct.Struct("=BBH")  # family, version (NFNETLINK_V0), res_id (big endian)
# include/uapi/linux/netfilter/nfnetlink_conntrack.h
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO = 1, 2, 3, 4
CTA_NAT_SRC, CTA_TIMEOUT = 6, 7
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTOINFO_TCP = 1
CTA_PROTOINFO_TCP_STATE, CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, CTA_PROTOINFO_TCP_FLAGS_REPLY = 1, 4, 5
CTA_NAT_V4_MINIP, CTA_NAT_V4_MAXIP, CTA_NAT_PROTO = 1, 2, 3
CTA_NAT_V6_MINIP, CTA_NAT_V6_MAXIP = 4, 5
CTA_PROTONAT_PORT_MIN, CTA_PROTONAT_PORT_MAX = 1, 2
IPS_SEEN_REPLY, IPS_ASSURED, IPS_CONFIRMED = 1 << 1, 1 << 2, 1 << 3
TCP_CONNTRACK_ESTABLISHED = 3
IP_CT_TCP_FLAG_BE_LIBERAL = 0x08
BATCH = 256  # messages per send: their acknowledgements fit the receive buffer


def _ip(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def _be16(value: int) -> bytes:
    return struct.pack("!H", value)


def _tuple(kind: int, proto: int, src: str, sport: int, dst: str, dport: int) -> bytes:
    v6 = ipaddress.ip_address(src).version == 6
    ip_src, ip_dst = (CTA_IP_V6_SRC, CTA_IP_V6_DST) if v6 else (CTA_IP_V4_SRC, CTA_IP_V4_DST)
    return nested(
        kind,
        nested(CTA_TUPLE_IP, nla(ip_src, _ip(src)), nla(ip_dst, _ip(dst))),
        nested(
            CTA_TUPLE_PROTO,
            nla(CTA_PROTO_NUM, bytes([proto])),
            nla(CTA_PROTO_SRC_PORT, _be16(sport)),
            nla(CTA_PROTO_DST_PORT, _be16(dport)),
        ),
    )


def new_entry_body(entry: ConntrackEntry) -> bytes:
    """The IPCTNL_MSG_CT_NEW payload (after nfgenmsg) creating ``entry``."""
    v6 = entry.family == 6
    nat_min, nat_max = (CTA_NAT_V6_MINIP, CTA_NAT_V6_MAXIP) if v6 else (
        CTA_NAT_V4_MINIP, CTA_NAT_V4_MAXIP)  # fmt: skip
    liberal = bytes([IP_CT_TCP_FLAG_BE_LIBERAL, IP_CT_TCP_FLAG_BE_LIBERAL])  # flags, mask
    return b"".join(
        [
            _tuple(CTA_TUPLE_ORIG, entry.protocol, entry.client, entry.client_port, entry.vip,
                   entry.vip_port),
            # before the source NAT: what IPVS's translation makes of the reply
            _tuple(CTA_TUPLE_REPLY, entry.protocol, entry.dest, entry.dest_port, entry.client,
                   entry.client_port),
            nested(
                CTA_NAT_SRC,
                nla(nat_min, _ip(entry.vip)),
                nla(nat_max, _ip(entry.vip)),
                nested(CTA_NAT_PROTO, nla(CTA_PROTONAT_PORT_MIN, _be16(entry.client_port)),
                       nla(CTA_PROTONAT_PORT_MAX, _be16(entry.client_port))),
            ),
            # CONFIRMED too: the kernel marks a created entry confirmed before applying the
            # status, and a status that would clear the bit is refused with EBUSY
            nla(CTA_STATUS, struct.pack("!I", IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED)),
            nla(CTA_TIMEOUT, struct.pack("!I", entry.timeout)),
            nested(
                CTA_PROTOINFO,
                nested(
                    CTA_PROTOINFO_TCP,
                    nla(CTA_PROTOINFO_TCP_STATE, bytes([TCP_CONNTRACK_ESTABLISHED])),
                    nla(CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, liberal),
                    nla(CTA_PROTOINFO_TCP_FLAGS_REPLY, liberal),
                ),
            ),
        ]
    )  # fmt: skip


def new_entry_message(entry: ConntrackEntry, seq: int) -> bytes:
    family = socket.AF_INET6 if entry.family == 6 else socket.AF_INET
    body = NFGENMSG.pack(family, 0, 0) + new_entry_body(entry)
    return nl_header(CT_NEW, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq, body)


class KernelConntrack:
    """The agent's namespace's IPVS connection table in, conntrack entries out."""

    def __init__(self, table_path: str = CONN_SYNC_TABLE) -> None:
        self.table_path = table_path

    def restore(self, vip_sourced: Set[ServiceKey]) -> RestoreOutcome:
        """Create the entries the established synced connections of ``vip_sourced`` need
        (blocking: run it off the event loop)."""
        if not vip_sourced:
            return RestoreOutcome()
        t0 = time.monotonic()
        with open(self.table_path, encoding="ascii", errors="replace") as table:
            entries = conntrack_entries(parse_conn_table(table, vip_sourced), vip_sourced)
        outcome = self.write(entries) if entries else RestoreOutcome()
        return dataclasses.replace(outcome, seconds=round(time.monotonic() - t0, 3))

    def write(self, entries: Sequence[ConntrackEntry]) -> RestoreOutcome:
        created = existing = failed = 0
        error = ""
        sock = NetlinkSocket(NETLINK_NETFILTER)
        try:
            sock.sock.settimeout(10.0)
            for start in range(0, len(entries), BATCH):
                chunk = entries[start : start + BATCH]
                seqs = [sock.next_seq() for _ in chunk]
                messages = [new_entry_message(e, s) for e, s in zip(chunk, seqs, strict=True)]
                got, err = sock.batch(messages, seqs, seqs)
                for code in got:
                    if code == 0:
                        created += 1
                    elif code == errno.EEXIST:
                        existing += 1
                    else:
                        failed += 1
                        if not error:
                            error = os.strerror(code) if code else f"no answer ({err})"
        finally:
            sock.close()
        return RestoreOutcome(created, existing, failed, error)
