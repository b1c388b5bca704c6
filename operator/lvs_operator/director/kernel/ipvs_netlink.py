"""A lean generic-netlink client for the few IPVS messages the agent needs.

Why not only pyroute2: measured in the TCG VM, pyroute2 costs ~40 ms of Python per request
and ~130 ms per destination dump, so a cold start at 1,000 services x 10 destinations took
minutes and a full read ~2 minutes there. Here a request is a few ``struct.pack`` calls,
many requests go to the kernel in one ``send`` (the kernel runs every message in the buffer
in order and acknowledges each), and the acknowledgements are read back in bulk.

Only the standard library; message layouts from include/uapi/linux/ip_vs.h, framing from
netlink.py (shared with rtnetlink).
"""

from __future__ import annotations

import errno as errno_mod
import operator
import os
import socket
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .netlink import (
    HEADER,
    NLA_F_NESTED,
    NLA_TYPE_MASK,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    TIMEOUT,
    NetlinkError,
    NetlinkSocket,
    frames,
    header,
    nested,
    nla,
    parse_attrs,
)

NETLINK_GENERIC = 16
SOL_NETLINK = 270
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
NETLINK_CAP_ACK = 10  # error acks without the request echoed back: smaller, more fit
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 1, 2

IPVS_GENL_NAME = b"IPVS"
IPVS_GENL_VERSION = 1
# commands
CMD_NEW_SERVICE, CMD_SET_SERVICE, CMD_DEL_SERVICE, CMD_GET_SERVICE = 1, 2, 3, 4
CMD_NEW_DEST, CMD_SET_DEST, CMD_DEL_DEST, CMD_GET_DEST = 5, 6, 7, 8
CMD_NEW_DAEMON, CMD_DEL_DAEMON, CMD_GET_DAEMON = 9, 10, 11
# IPVS_CMD_ATTR_*
ATTR_SERVICE, ATTR_DEST, ATTR_DAEMON = 1, 2, 3
# IPVS_DAEMON_ATTR_*: the connection synchronisation daemons (ip_vs_sync.c)
DAEMON_STATE, DAEMON_MCAST_IFN, DAEMON_SYNC_ID, DAEMON_SYNC_MAXLEN = 1, 2, 3, 4
DAEMON_MCAST_GROUP, DAEMON_MCAST_GROUP6, DAEMON_MCAST_PORT, DAEMON_MCAST_TTL = 5, 6, 7, 8
SYNC_MASTER, SYNC_BACKUP = 1, 2  # IP_VS_STATE_*
IFNAME_MAX = 15  # IP_VS_IFNAME_MAXLEN (16) with its NUL
# IPVS_SVC_ATTR_*
SVC_AF, SVC_PROTOCOL, SVC_ADDR, SVC_PORT, SVC_FWMARK = 1, 2, 3, 4, 5
SVC_SCHED_NAME, SVC_FLAGS, SVC_TIMEOUT, SVC_NETMASK = 6, 7, 8, 9
# IPVS_DEST_ATTR_*
DEST_ADDR, DEST_PORT, DEST_FWD_METHOD, DEST_WEIGHT, DEST_U_THRESH, DEST_L_THRESH = 1, 2, 3, 4, 5, 6
DEST_ACTIVE_CONNS, DEST_INACT_CONNS, DEST_PERSIST_CONNS = 7, 8, 9
DEST_ADDR_FAMILY = 11
# the traffic counters, nested in a service or a destination: IPVS_SVC_ATTR_STATS(64) and
# IPVS_DEST_ATTR_STATS(64) have the same numbers; IPVS_STATS_ATTR_* inside
STATS, STATS64 = 10, 12
STATS_CONNS, STATS_INPKTS, STATS_OUTPKTS, STATS_INBYTES, STATS_OUTBYTES = 1, 2, 3, 4, 5

_GENL = struct.Struct("=BBH")  # genlmsghdr: cmd, version, reserved
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_BE16 = struct.Struct("!H")
_FLAGS = struct.Struct("=II")

# A destination as a whole read needs it: (address family (0: not sent, the service's),
# address (16 bytes, nf_inet_addr), port, forwarding method, weight, upper threshold, lower
# threshold, active, inactive and persistent connections)
DestRow = tuple[int, bytes, int, int, int, int, int, int, int, int]
ROW_TYPES = (DEST_ADDR_FAMILY, DEST_ADDR, DEST_PORT, DEST_FWD_METHOD, DEST_WEIGHT, DEST_U_THRESH,
             DEST_L_THRESH, DEST_ACTIVE_CONNS, DEST_INACT_CONNS, DEST_PERSIST_CONNS)  # fmt: skip
_ATTRS_AT = HEADER.size + 4  # a message's first attribute (after the generic netlink header)
_NLA_HEADER = struct.Struct("=HH")  # nlattr: len, type
_ERRNO = struct.Struct("=i")  # an NLMSG_ERROR's error field


def dest_row(attrs: dict[int, bytes]) -> DestRow:
    """A destination's row from its attributes (``parse_attrs``)."""
    return (u16(attrs.get(DEST_ADDR_FAMILY)), attrs.get(DEST_ADDR) or b"",
            be16(attrs.get(DEST_PORT)), u32(attrs.get(DEST_FWD_METHOD)),
            u32(attrs.get(DEST_WEIGHT)), u32(attrs.get(DEST_U_THRESH)),
            u32(attrs.get(DEST_L_THRESH)), u32(attrs.get(DEST_ACTIVE_CONNS)),
            u32(attrs.get(DEST_INACT_CONNS)), u32(attrs.get(DEST_PERSIST_CONNS)))  # fmt: skip


_SCALAR_FORMATS = {1: "B", 2: "H", 4: "I"}  # an attribute's value by its length


class DestLayout:
    """Where the kernel puts a destination message's values, learned from the first one.

    The kernel writes every destination the same way (``ip_vs_genl_fill_dest``: the same
    scalar attributes, in the same order, then the nested counters), so one ``Struct`` over
    a message's start (netlink header, generic netlink header, the destination's nest header,
    each scalar attribute's header and value) reads all of a message's values in one call. A
    message whose headers are not the learned ones (another kernel's layout) returns None
    and goes through ``parse_attrs``. A whole read parses 10,000s of these: through
    ``parse_attrs`` and per-value calls it was ~5.7 s of a 6.9 s read at 1,000 x 10 in the
    test VM (bench/ipvs_read.py), against 1.0 s for ``ipvsadm -Ln``."""

    def __init__(self, family_id: int, nest_type: int, attrs: Sequence[tuple[int, int]]) -> None:
        # attrs: (type as sent, value length) of the leading scalar attributes, in order
        fmt = ["=IHHIIBBHHH"]  # nlmsghdr (5 values), genlmsghdr (3), the nest's header (2)
        checks: list[tuple[int, int]] = [(1, family_id), (9, nest_type)]
        at: dict[int, int] = {}
        index = 10
        for kind, length in attrs:
            fmt.append("HH" + _SCALAR_FORMATS.get(length, f"{length}s") + "x" * (-length % 4))
            checks += [(index, 4 + length), (index + 1, kind)]
            at[kind & NLA_TYPE_MASK] = index + 2
            index += 3
        self.struct = struct.Struct("".join(fmt))
        self._checks = operator.itemgetter(*(i for i, _ in checks))
        self._expected = tuple(v for _, v in checks)
        self._values = operator.itemgetter(*(at[kind] for kind in ROW_TYPES))

    @classmethod
    def learn(cls, family_id: int, data: bytes, offset: int, length: int) -> DestLayout | None:
        """The layout of the message at ``data[offset:offset + length]``; None when its
        leading scalar attributes do not hold every value of a row."""
        end = offset + length
        if length < _ATTRS_AT + 4:
            return None
        nest_len, nest_type = _NLA_HEADER.unpack_from(data, offset + _ATTRS_AT)
        if nest_type & NLA_TYPE_MASK != ATTR_DEST:
            return None
        pos, stop = offset + _ATTRS_AT + 4, min(end, offset + _ATTRS_AT + nest_len)
        attrs: list[tuple[int, int]] = []
        while pos + 4 <= stop:
            attr_len, kind = _NLA_HEADER.unpack_from(data, pos)
            if attr_len < 4 or kind & NLA_F_NESTED or attr_len - 4 not in (1, 2, 4, 16):
                break
            attrs.append((kind, attr_len - 4))
            pos += (attr_len + 3) & ~3
        kinds = [kind & NLA_TYPE_MASK for kind, _ in attrs]
        if len(set(kinds)) != len(kinds) or not set(ROW_TYPES) <= set(kinds):
            return None
        return cls(family_id, nest_type, attrs)

    def row(self, data: bytes, offset: int) -> DestRow | None:
        """The row of the message at ``offset`` (None: not this layout)."""
        if offset + self.struct.size > len(data):
            return None
        values = self.struct.unpack_from(data, offset)
        if self._checks(values) != self._expected:
            return None
        af, addr, port, *rest = self._values(values)
        # the port is big-endian on the wire, read here in host order (little-endian hosts)
        return (af, addr, _swap16(port), *rest)


def _swap16(value: int) -> int:
    return ((value & 0xFF) << 8) | (value >> 8) if sys.byteorder == "little" else value


# Requests per send. The kernel runs a whole send's messages inside that syscall. Only the
# last request of a batch asks for an acknowledgement; failed ones are answered anyway (an
# error message naming the request's sequence number) and queued before that last ack. So a
# batch costs one send and one recv plus one per failure, and the receive buffer (4 MiB,
# forced: programming IPVS needs CAP_NET_ADMIN anyway) must hold only the failures' answers.
# Overflowing it loses answers (ENOBUFS): see execute().
BATCH = 1024


@dataclass(frozen=True)
class Message:
    type: int
    flags: int
    seq: int
    cmd: int = 0
    attrs: dict[int, bytes] | None = None
    error: int = 0  # NLMSG_ERROR: the errno (0: an acknowledgement)


# -- service / destination attributes (what ipvs.py encodes with) ---------------------------


def addr_bytes(family: int, address: str) -> bytes:
    return socket.inet_pton(family, address)


def service_key_attrs(family: int, protocol: int, address: str, port: int) -> bytes:
    return b"".join((
        nla(SVC_AF, _U16.pack(family)),
        nla(SVC_PROTOCOL, _U16.pack(protocol)),
        nla(SVC_ADDR, addr_bytes(family, address)),
        nla(SVC_PORT, _BE16.pack(port)),
    ))  # fmt: skip


def service_full_attrs(key: bytes, scheduler: str, flags: int, timeout: int,
                       netmask: bytes) -> bytes:  # fmt: skip
    return b"".join((
        key,
        nla(SVC_SCHED_NAME, scheduler.encode() + b"\0"),
        # mask: which flag bits the request sets; all of them, so an edit clears too
        nla(SVC_FLAGS, _FLAGS.pack(flags, 0xFFFFFFFF)),
        nla(SVC_TIMEOUT, _U32.pack(timeout)),
        nla(SVC_NETMASK, netmask),
    ))  # fmt: skip


def dest_attrs(family: int, address: str, port: int, fwd: int = 0, weight: int = 0,
               u_thresh: int = 0, l_thresh: int = 0, full: bool = True) -> bytes:  # fmt: skip
    parts = [
        nla(DEST_ADDR, addr_bytes(family, address)),
        nla(DEST_PORT, _BE16.pack(port)),
        nla(DEST_ADDR_FAMILY, _U16.pack(family)),
    ]
    if full:
        parts += [
            nla(DEST_FWD_METHOD, _U32.pack(fwd)),
            nla(DEST_WEIGHT, _U32.pack(weight)),
            nla(DEST_U_THRESH, _U32.pack(u_thresh)),
            nla(DEST_L_THRESH, _U32.pack(l_thresh)),
        ]
    return b"".join(parts)


@dataclass(frozen=True)
class SyncDaemon:
    """One of the kernel's two IPVS sync daemons (master: sends the connection table;
    backup: receives it). ``group`` "" and ``port``/``ttl``/``maxlen`` 0: the kernel's
    defaults (224.0.0.81, 8848, 1, the interface's MTU)."""

    state: int  # SYNC_MASTER | SYNC_BACKUP
    ifname: str
    sync_id: int
    group: str = ""
    port: int = 0
    ttl: int = 0
    maxlen: int = 0


def daemon_attrs(daemon: SyncDaemon) -> bytes:
    """The nested IPVS_CMD_ATTR_DAEMON of a NEW_DAEMON request."""
    if not 0 < len(daemon.ifname.encode()) <= IFNAME_MAX:
        raise ValueError(f"interface name {daemon.ifname!r}: 1-{IFNAME_MAX} bytes")
    parts = [
        nla(DAEMON_STATE, _U32.pack(daemon.state)),
        nla(DAEMON_MCAST_IFN, daemon.ifname.encode() + b"\0"),
        nla(DAEMON_SYNC_ID, _U32.pack(daemon.sync_id)),
    ]
    if daemon.maxlen:
        parts.append(nla(DAEMON_SYNC_MAXLEN, _U16.pack(daemon.maxlen)))
    if daemon.group:
        family = socket.AF_INET6 if ":" in daemon.group else socket.AF_INET
        attr = DAEMON_MCAST_GROUP6 if family == socket.AF_INET6 else DAEMON_MCAST_GROUP
        parts.append(nla(attr, addr_bytes(family, daemon.group)))
    if daemon.port:
        parts.append(nla(DAEMON_MCAST_PORT, _U16.pack(daemon.port)))  # host order
    if daemon.ttl:
        parts.append(nla(DAEMON_MCAST_TTL, bytes([daemon.ttl])))
    return nested(ATTR_DAEMON, b"".join(parts))


def daemon_state_attrs(state: int) -> bytes:
    """The nested IPVS_CMD_ATTR_DAEMON of a DEL_DAEMON request (the state says which)."""
    return nested(ATTR_DAEMON, nla(DAEMON_STATE, _U32.pack(state)))


def parse_daemon(attrs: dict[int, bytes]) -> SyncDaemon:
    """A GET_DAEMON answer's nested attributes."""
    group = ""
    if attrs.get(DAEMON_MCAST_GROUP6):
        group = socket.inet_ntop(socket.AF_INET6, attrs[DAEMON_MCAST_GROUP6][:16])
    elif attrs.get(DAEMON_MCAST_GROUP):
        group = socket.inet_ntop(socket.AF_INET, attrs[DAEMON_MCAST_GROUP][:4])
    ttl = attrs.get(DAEMON_MCAST_TTL)
    return SyncDaemon(
        state=u32(attrs.get(DAEMON_STATE)),
        ifname=cstr(attrs.get(DAEMON_MCAST_IFN)),
        sync_id=u32(attrs.get(DAEMON_SYNC_ID)),
        group=group,
        port=u16(attrs.get(DAEMON_MCAST_PORT)),
        ttl=ttl[0] if ttl else 0,
        maxlen=u16(attrs.get(DAEMON_SYNC_MAXLEN)),
    )


@dataclass(frozen=True, slots=True)
class Counters:
    """A service's or destination's traffic since it was added (what ``ipvsadm -Ln
    --stats`` shows): connections scheduled, packets and bytes in (client -> real server)
    and out."""

    connections: int = 0
    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


def parse_counters(attrs: dict[int, bytes]) -> Counters:
    """The counters of a service's or destination's attributes: the 64-bit set where the
    kernel sends it (Linux >= 4.1), else the older one (32-bit counts, 64-bit bytes). Each
    value's width is its attribute's length."""
    blob = attrs.get(STATS64) or attrs.get(STATS)
    if not blob:
        return Counters()
    stats = parse_attrs(blob)

    def value(kind: int) -> int:
        b = stats.get(kind)
        return int.from_bytes(b[:8], sys.byteorder) if b else 0

    return Counters(
        value(STATS_CONNS), value(STATS_INPKTS), value(STATS_OUTPKTS),
        value(STATS_INBYTES), value(STATS_OUTBYTES),
    )  # fmt: skip


def u16(b: bytes | None, default: int = 0) -> int:
    return _U16.unpack_from(b)[0] if b else default


def u32(b: bytes | None, default: int = 0) -> int:
    return _U32.unpack_from(b)[0] if b else default


def be16(b: bytes | None, default: int = 0) -> int:
    return _BE16.unpack_from(b)[0] if b else default


def flags_of(b: bytes | None) -> int:
    return _FLAGS.unpack_from(b)[0] if b else 0


def addr_str(family: int, b: bytes | None) -> str:
    if not b:
        return "0.0.0.0" if family == socket.AF_INET else "::"
    # the kernel sends a whole union nf_inet_addr (16 bytes) for IPv4 too
    return socket.inet_ntop(family, b[:4] if family == socket.AF_INET else b[:16])


def cstr(b: bytes | None) -> str:
    return b.split(b"\0", 1)[0].decode() if b else ""


# -- the socket ---------------------------------------------------------------------------------


class IpvsNetlink(NetlinkSocket):
    """A generic netlink socket bound to the IPVS family. Create it in the namespace to
    manage (the socket stays there): see ``netns.in_netns``."""

    def __init__(self) -> None:
        super().__init__(NETLINK_GENERIC)
        # a destination message's layout (``dest_rows``), learned from the first one read
        self.dest_layout: DestLayout | None = None
        self._layout_tried = False
        self.slow_rows = 0  # rows read through parse_attrs (not the learned layout)
        try:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self.sock.settimeout(TIMEOUT)
            for force, opt in (
                (SO_RCVBUFFORCE, socket.SO_RCVBUF),
                (SO_SNDBUFFORCE, socket.SO_SNDBUF),
            ):
                try:  # beyond net.core.[rw]mem_max: needs CAP_NET_ADMIN, which the agent has
                    self.sock.setsockopt(socket.SOL_SOCKET, force, 4 << 20)
                except PermissionError:
                    self.sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
            self.family = self._resolve_family()
        except BaseException:
            self.sock.close()
            raise

    def _header(self, msg_type: int, flags: int, cmd: int, version: int, body: bytes,
                seq: int) -> bytes:  # fmt: skip
        return header(msg_type, flags, seq, _GENL.pack(cmd, version, 0) + body)

    def _messages(self, data: bytes) -> Iterator[Message]:
        for f in frames(data):
            if f.type == NLMSG_ERROR or f.type == NLMSG_DONE:
                yield Message(f.type, f.flags, f.seq, error=f.error)
            else:
                attrs = parse_attrs(data, f.start + _GENL.size, f.end)
                yield Message(f.type, f.flags, f.seq, data[f.start], attrs)

    def _resolve_family(self) -> int:
        # Asking for the family by name also makes the kernel load ip_vs where it can.
        seq = self.next_seq()
        body = nla(CTRL_ATTR_FAMILY_NAME, IPVS_GENL_NAME + b"\0")
        self.sock.send(self._header(GENL_ID_CTRL, NLM_F_REQUEST, CTRL_CMD_GETFAMILY, 1, body, seq))
        while True:
            for m in self._messages(self.recv_answers()):
                if m.seq != seq:
                    continue
                if m.type == NLMSG_ERROR:
                    raise NetlinkError(m.error, f"IPVS netlink family: {os.strerror(m.error)}")
                return u16((m.attrs or {}).get(CTRL_ATTR_FAMILY_ID))

    def dump(self, cmd: int, body: bytes = b"") -> list[dict[int, bytes]]:
        """A dump request; the messages' top-level attributes."""
        seq = self.next_seq()
        self.sock.send(self._header(self.family, NLM_F_REQUEST | NLM_F_DUMP, cmd,
                                    IPVS_GENL_VERSION, body, seq))  # fmt: skip
        out: list[dict[int, bytes]] = []
        while True:
            for m in self._messages(self.recv_answers()):
                if m.seq != seq:
                    continue
                if m.type == NLMSG_DONE:
                    return out
                if m.type == NLMSG_ERROR:
                    if m.error == 0:
                        continue
                    raise NetlinkError(m.error, os.strerror(m.error))
                out.append(m.attrs or {})

    def dump_services(self) -> list[dict[int, bytes]]:
        return [parse_attrs(a[ATTR_SERVICE]) for a in self.dump(CMD_GET_SERVICE)
                if ATTR_SERVICE in a]  # fmt: skip

    def dest_rows(self, service_key: bytes) -> list[DestRow]:
        """A service's destinations as rows (``DestRow``), by one dump: a whole read's
        hottest path (``DestLayout``)."""
        seq = self.next_seq()
        self.sock.send(self._header(self.family, NLM_F_REQUEST | NLM_F_DUMP, CMD_GET_DEST,
                                    IPVS_GENL_VERSION, nested(ATTR_SERVICE, service_key),
                                    seq))  # fmt: skip
        rows: list[DestRow] = []
        unpack_header = HEADER.unpack_from
        while True:
            data = self.recv_answers()
            offset, size = 0, len(data)
            while offset + HEADER.size <= size:
                length, msg_type, _flags, msg_seq, _pid = unpack_header(data, offset)
                if length < HEADER.size:
                    break
                if msg_seq == seq:
                    if msg_type == NLMSG_DONE:
                        return rows
                    if msg_type == NLMSG_ERROR:
                        code = -_ERRNO.unpack_from(data, offset + HEADER.size)[0]
                        if code:
                            raise NetlinkError(code, os.strerror(code))
                    else:
                        rows.append(self._dest_row(data, offset, length))
                offset += (length + 3) & ~3

    def _dest_row(self, data: bytes, offset: int, length: int) -> DestRow:
        layout = self.dest_layout
        if layout is None and not self._layout_tried:
            self._layout_tried = True
            layout = self.dest_layout = DestLayout.learn(self.family, data, offset, length)
        if layout is not None and (row := layout.row(data, offset)) is not None:
            return row
        self.slow_rows += 1
        top = parse_attrs(data, offset + _ATTRS_AT, offset + length)
        return dest_row(parse_attrs(top.get(ATTR_DEST, b"")))

    def dump_dests(self, service_key: bytes) -> list[dict[int, bytes]]:
        body = nested(ATTR_SERVICE, service_key)
        return [parse_attrs(a[ATTR_DEST]) for a in self.dump(CMD_GET_DEST, body)
                if ATTR_DEST in a]  # fmt: skip

    def daemons(self) -> list[SyncDaemon]:
        """The sync daemons running in this namespace (at most a master and a backup)."""
        return [parse_daemon(parse_attrs(a[ATTR_DAEMON])) for a in self.dump(CMD_GET_DAEMON)
                if ATTR_DAEMON in a]  # fmt: skip

    def start_daemon(self, daemon: SyncDaemon) -> int:
        """Start a sync daemon; the errno (0: started; EEXIST: one of that state runs)."""
        return self.execute([(CMD_NEW_DAEMON, daemon_attrs(daemon))])[0]

    def stop_daemon(self, state: int) -> int:
        """Stop the master or the backup; the errno (0: stopped; ESRCH: none ran)."""
        return self.execute([(CMD_DEL_DAEMON, daemon_state_attrs(state))])[0]

    def execute(self, requests: Sequence[tuple[int, bytes]]) -> list[int]:
        """Send (cmd, attributes) requests in batches; return the errno of each (0 = done).
        The kernel runs a batch's messages in order and goes on after a failed one, so a
        caller with dependent requests checks each result."""
        results: list[int] = []
        for start in range(0, len(requests), BATCH):
            chunk = requests[start : start + BATCH]
            seqs = [self.next_seq() for _ in chunk]
            last = seqs[-1]
            msgs = [
                self._header(self.family, NLM_F_REQUEST | (NLM_F_ACK if seq == last else 0),
                             cmd, IPVS_GENL_VERSION, body, seq)
                for (cmd, body), seq in zip(chunk, seqs, strict=True)
            ]  # fmt: skip
            got, err = self.batch(msgs, seqs, (last,))
            if err is not None:
                if err.errno != errno_mod.ENOBUFS:
                    raise err
                # Answers were dropped: which requests failed is unknown. The caller must
                # read the table again (apply() raises; converge re-reads).
                raise NetlinkError(
                    errno_mod.ENOBUFS,
                    f"netlink answers lost in the batch from request {start}"
                    " (receive buffer overrun); read the table again",
                ) from err
            # no answer before the last one's acknowledgement: done without error
            results.extend(0 if e is None else e for e in got)
        return results
