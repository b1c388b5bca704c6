"""The netlink framing core shared by the IPVS generic-netlink family (ipvs_netlink.py) and
rtnetlink (addresses.py): message headers, attributes, a socket with sequence numbers.

Standard library only. Layouts from include/uapi/linux/netlink.h.
"""

from __future__ import annotations

import errno
import itertools
import socket
import struct
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x2, 0x4, 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_NLA = struct.Struct("=HH")  # nlattr: len, type
_ERR = struct.Struct("=i")
TIMEOUT = 30.0  # the kernel always answers; this only keeps a wedged call from hanging forever


class NetlinkError(OSError):
    """A netlink request failed (errno from the kernel, or no answer)."""


def nla(kind: int, payload: bytes) -> bytes:
    length = _NLA.size + len(payload)
    return _NLA.pack(length, kind) + payload + b"\0" * (-length % 4)


def nested(kind: int, *parts: bytes) -> bytes:
    return nla(kind | NLA_F_NESTED, b"".join(parts))


def parse_attrs(data: bytes, offset: int = 0, end: int | None = None) -> dict[int, bytes]:
    """Attributes at ``data[offset:end]`` by type (the last one wins, as in the kernel).
    The hottest loop of a table read: kept to slicing and one unpack per attribute."""
    end = len(data) if end is None else end
    unpack = _NLA.unpack_from
    attrs: dict[int, bytes] = {}
    while offset + 4 <= end:
        length, kind = unpack(data, offset)
        if length < 4:
            break
        attrs[kind & NLA_TYPE_MASK] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return attrs


def header(msg_type: int, flags: int, seq: int, body: bytes) -> bytes:
    return HEADER.pack(HEADER.size + len(body), msg_type, flags, seq, 0) + body


@dataclass(frozen=True)
class Frame:
    """One message of a datagram; its payload is ``data[start:end]`` (not copied)."""

    type: int
    flags: int
    seq: int
    data: bytes
    start: int
    end: int
    error: int = 0  # NLMSG_ERROR: the errno (0: an acknowledgement)

    @property
    def payload(self) -> bytes:
        return self.data[self.start : self.end]


def frames(data: bytes) -> Iterator[Frame]:
    offset = 0
    while offset + HEADER.size <= len(data):
        length, msg_type, flags, seq, _ = HEADER.unpack_from(data, offset)
        if length < HEADER.size:
            break
        start = offset + HEADER.size
        error = -_ERR.unpack_from(data, start)[0] if msg_type == NLMSG_ERROR else 0
        yield Frame(msg_type, flags, seq, data, start, offset + length, error)
        offset += (length + 3) & ~3


class NetlinkSocket:
    """A bound netlink socket of ``protocol`` with its own sequence numbers. Created in the
    namespace it serves (it stays there). Not thread-safe: one per thread."""

    def __init__(self, protocol: int, first_seq: int = 1) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        try:
            self.sock.bind((0, 0))
        except BaseException:
            self.sock.close()
            raise
        self._seq = itertools.count(first_seq)

    def next_seq(self) -> int:
        return next(self._seq)

    def close(self) -> None:
        self.sock.close()

    def recv_answers(self) -> bytes:
        try:
            return self.sock.recv(1 << 20)
        except TimeoutError as e:
            raise NetlinkError(errno.ETIMEDOUT, "no answer from the kernel") from e

    def drain(self) -> None:
        """Discard whatever is queued (after lost answers)."""
        timeout = self.sock.gettimeout()
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(1 << 20)
        except OSError:
            pass
        finally:
            self.sock.settimeout(timeout)

    def batch(
        self, messages: Sequence[bytes], seqs: Sequence[int], wait: Collection[int]
    ) -> tuple[list[int | None], OSError | None]:
        """Send ``messages`` (sequence numbers ``seqs``, in order) in one send and read the
        answers until each of ``wait`` has one: per message, the errno of its NLMSG_ERROR
        answer (0: acknowledged) or None (no answer). The kernel runs a whole send inside
        that syscall, so every answer is queued when it returns. The error that ended the
        reading early (None: none), e.g. ENOBUFS (answers dropped: the receive buffer
        overran; drained); callers decide what an unanswered message means."""
        self.sock.send(b"".join(messages))
        pending = {s: i for i, s in enumerate(seqs)}
        waiting = set(wait)
        got: list[int | None] = [None] * len(seqs)
        while waiting:
            try:
                data = self.recv_answers()
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.drain()
                return got, e
            for f in frames(data):
                if f.type == NLMSG_ERROR and f.seq in pending:
                    got[pending.pop(f.seq)] = f.error
                    waiting.discard(f.seq)
        return got, None
