"""A lean rtnetlink client for what vip.py needs: routes, host addresses, add/remove one.

Standard library only: importing pyroute2 costs the agent ~11 MiB of its 60 MiB budget, and
with IPVS on ipvs_netlink.py the VIPs were its last user. Message layouts from
include/uapi/linux/rtnetlink.h, if_addr.h. Not thread-safe: one instance per thread.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import socket
import struct
from dataclasses import dataclass

NETLINK_ROUTE = 0
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR, RTM_GETROUTE = 20, 21, 22, 26
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
RTA_DST, RTA_OIF, RTA_PRIORITY, RTA_TABLE = 1, 4, 6, 15
RT_TABLE_MAIN, RTN_UNICAST = 254, 1
SIOCGIFHWADDR = 0x8927

_HDR = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct(
    "=BBBBBBBBI"
)  # family, dst_len, src_len, tos, table, proto, scope, type, flags
_ERR = struct.Struct("=i")
_U32 = struct.Struct("=I")


class RtnlError(OSError):
    pass


@dataclass(frozen=True)
class RouteEntry:
    family: int
    dst: str | None
    dst_len: int
    oif: int | None
    priority: int
    table: int
    type: int


@dataclass(frozen=True)
class AddrEntry:
    family: int
    prefixlen: int
    index: int
    address: str


def _attrs(data: bytes, offset: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while offset + 4 <= len(data):
        length, kind = _NLA.unpack_from(data, offset)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return out


def _nla(kind: int, payload: bytes) -> bytes:
    raw = _NLA.pack(4 + len(payload), kind) + payload
    return raw + b"\0" * ((4 - len(raw) % 4) % 4)


class Rtnl:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self._seq = itertools.count(int.from_bytes(os.urandom(2), "little") + 1)

    def close(self) -> None:
        self.sock.close()

    def _request(self, msg_type: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        """Send one request; return the (type, payload) replies up to DONE or the ACK."""
        seq = next(self._seq)
        self.sock.send(_HDR.pack(_HDR.size + len(body), msg_type, flags, seq, 0) + body)
        replies: list[tuple[int, bytes]] = []
        while True:
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset + _HDR.size <= len(data):
                length, kind, _flags, rseq, _pid = _HDR.unpack_from(data, offset)
                payload = data[offset + _HDR.size : offset + length]
                offset += (length + 3) & ~3
                if rseq != seq:
                    continue
                if kind == NLMSG_DONE:
                    return replies
                if kind == NLMSG_ERROR:
                    (code,) = _ERR.unpack_from(payload)
                    if code:
                        raise RtnlError(-code, os.strerror(-code))
                    return replies
                replies.append((kind, payload))
            if not flags & NLM_F_DUMP and not flags & NLM_F_ACK:
                return replies

    def routes(self) -> list[RouteEntry]:
        out = []
        for family in (socket.AF_INET, socket.AF_INET6):
            body = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
            for _, payload in self._request(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, body):
                fam, dst_len, _s, _t, table, _p, _sc, rtype, _f = _RTMSG.unpack_from(payload)
                attrs = _attrs(payload, _RTMSG.size)
                if RTA_TABLE in attrs:
                    table = _U32.unpack(attrs[RTA_TABLE][:4])[0]
                dst = socket.inet_ntop(fam, attrs[RTA_DST]) if RTA_DST in attrs else None
                oif = _U32.unpack(attrs[RTA_OIF][:4])[0] if RTA_OIF in attrs else None
                prio = _U32.unpack(attrs[RTA_PRIORITY][:4])[0] if RTA_PRIORITY in attrs else 0
                out.append(RouteEntry(fam, dst, dst_len, oif, prio, table, rtype))
        return out

    def addresses(self) -> list[AddrEntry]:
        out = []
        body = _IFADDR.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        for _, payload in self._request(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, body):
            family, prefixlen, _flags, _scope, index = _IFADDR.unpack_from(payload)
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            attrs = _attrs(payload, _IFADDR.size)
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if raw:
                out.append(AddrEntry(family, prefixlen, index, socket.inet_ntop(family, raw)))
        return out

    def _addr(self, msg_type: int, flags: int, index: int, address: str, prefixlen: int,
              ifa_flags: int = 0) -> None:  # fmt: skip
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        raw = socket.inet_pton(family, address)
        body = _IFADDR.pack(family, prefixlen, ifa_flags & 0xFF, 0, index)
        body += _nla(IFA_LOCAL, raw) + _nla(IFA_ADDRESS, raw)
        if ifa_flags:
            body += _nla(IFA_FLAGS, _U32.pack(ifa_flags))
        self._request(msg_type, NLM_F_REQUEST | NLM_F_ACK | flags, body)

    def add_address(self, index: int, address: str, prefixlen: int, ifa_flags: int = 0) -> None:
        """Raises RtnlError(EEXIST) if it is there already."""
        self._addr(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, index, address, prefixlen, ifa_flags)

    def del_address(self, index: int, address: str, prefixlen: int) -> None:
        """Raises RtnlError(EADDRNOTAVAIL) if it is not there."""
        self._addr(RTM_DELADDR, 0, index, address, prefixlen)


def index_of(ifname: str) -> int | None:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return None


def name_of(index: int) -> str:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return ""


def mac_of(ifname: str) -> str:
    """The interface's hardware address ("" if none or unknown)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            info = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("256s", ifname.encode()))
        except OSError:
            return ""
    return ":".join(f"{b:02x}" for b in info[18:24])
