"""This node's routes, addresses and links over rtnetlink (framing: netlink.py), for the VIPs
(vip.py) and the handover (this node's address on a VIP's link).

Standard library only: importing pyroute2 costs the agent ~11 MiB of its 60 MiB budget.
Message layouts from include/uapi/linux/rtnetlink.h, if_addr.h. Not thread-safe: one
``Rtnl`` per thread.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from .netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    TIMEOUT,
    NetlinkError,
    NetlinkSocket,
    frames,
    header,
    nla,
    parse_attrs,
)

NETLINK_ROUTE = 0
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR, RTM_GETROUTE = 20, 21, 22, 26
IFA_ADDRESS, IFA_LOCAL, IFA_CACHEINFO, IFA_FLAGS, IFA_PROTO = 1, 2, 6, 8, 11
INFINITY_LIFE_TIME = 0xFFFFFFFF
RTA_DST, RTA_OIF, RTA_PRIORITY, RTA_TABLE = 1, 4, 6, 15
RT_TABLE_MAIN, RTN_UNICAST = 254, 1
SIOCGIFHWADDR = 0x8927

_IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct(
    "=BBBBBBBBI"
)  # family, dst_len, src_len, tos, table, proto, scope, type, flags
_U32 = struct.Struct("=I")
_CACHEINFO = struct.Struct("=IIII")  # ifa_prefered, ifa_valid, cstamp, tstamp
# Receive-buffer bytes one answer of a batch may take (an acknowledgement's skb truesize is
# ~768; an error's echoes the request). The kernel runs a whole send before the agent reads,
# so a batch is only as long as the buffer holds all its answers should every request fail:
# more would be dropped.
ANSWER_COST = 1024
MAX_BATCH = 1024
# Encoded request bodies kept (a lifetime round sends the same 1,000 every two seconds; each
# encoding took ~0.2 ms under TCG). Bytes: safe to share.
BODY_CACHE = 4096


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
    proto: int | None = None  # IFA_PROTO: who added it (None: not reported)
    valid_lft: int | None = None  # seconds left; None: forever (or not reported)


class Renewal(NamedTuple):
    """One address whose lifetime ``Rtnl.renew_addresses`` restarts (see renew_address)."""

    ifindex: int  # (not "index": a tuple method)
    address: str
    prefixlen: int
    ifa_flags: int
    proto: int
    lifetime: int | None


class Rtnl(NetlinkSocket):
    def __init__(self) -> None:
        super().__init__(NETLINK_ROUTE, int.from_bytes(os.urandom(2), "little") + 1)
        try:  # a batch's lost answer must end as an error, not a recv that never returns
            self.sock.settimeout(TIMEOUT)
        except BaseException:
            self.sock.close()
            raise

    def _request(self, msg_type: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        """Send one request; return the (type, payload) replies up to DONE or the ACK."""
        seq = self.next_seq()
        self.sock.send(header(msg_type, flags, seq, body))
        replies: list[tuple[int, bytes]] = []
        while True:
            for f in frames(self.sock.recv(1 << 16)):
                if f.seq != seq:
                    continue
                if f.type == NLMSG_DONE:
                    return replies
                if f.type == NLMSG_ERROR:
                    if f.error:
                        raise NetlinkError(f.error, os.strerror(f.error))
                    return replies
                replies.append((f.type, f.payload))
            if not flags & NLM_F_DUMP and not flags & NLM_F_ACK:
                return replies

    def routes(self) -> list[RouteEntry]:
        out = []
        for family in (socket.AF_INET, socket.AF_INET6):
            body = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
            for _, payload in self._request(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, body):
                fam, dst_len, _s, _t, table, _p, _sc, rtype, _f = _RTMSG.unpack_from(payload)
                attrs = parse_attrs(payload, _RTMSG.size)
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
            attrs = parse_attrs(payload, _IFADDR.size)
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if raw:
                proto = attrs[IFA_PROTO][0] if attrs.get(IFA_PROTO) else None
                valid: int | None = None
                if len(attrs.get(IFA_CACHEINFO, b"")) >= _CACHEINFO.size:
                    valid = _CACHEINFO.unpack_from(attrs[IFA_CACHEINFO])[1]
                    valid = None if valid == INFINITY_LIFE_TIME else valid
                address = socket.inet_ntop(family, raw)
                out.append(AddrEntry(family, prefixlen, index, address, proto, valid))
        return out

    @staticmethod
    @functools.lru_cache(maxsize=BODY_CACHE)
    def _addr_body(index: int, address: str, prefixlen: int, ifa_flags: int = 0,
                   proto: int = 0, lifetime: int | None = None) -> bytes:  # fmt: skip
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        raw = socket.inet_pton(family, address)
        body = _IFADDR.pack(family, prefixlen, ifa_flags & 0xFF, 0, index)
        body += nla(IFA_LOCAL, raw) + nla(IFA_ADDRESS, raw)
        if ifa_flags:
            body += nla(IFA_FLAGS, _U32.pack(ifa_flags))
        if proto:
            body += nla(IFA_PROTO, bytes([proto]))
        if lifetime is not None:
            body += nla(IFA_CACHEINFO, _CACHEINFO.pack(lifetime, lifetime, 0, 0))
        return body

    def _addr(self, msg_type: int, flags: int, index: int, address: str, prefixlen: int,
              ifa_flags: int = 0, proto: int = 0,
              lifetime: int | None = None) -> None:  # fmt: skip
        body = self._addr_body(index, address, prefixlen, ifa_flags, proto, lifetime)
        self._request(msg_type, NLM_F_REQUEST | NLM_F_ACK | flags, body)

    def add_address(self, index: int, address: str, prefixlen: int, ifa_flags: int = 0,
                    proto: int = 0, lifetime: int | None = None) -> None:  # fmt: skip
        """Raises NetlinkError(EEXIST) if it is there already. ``proto``: IFA_PROTO (who
        added it; kernels from 6.1 keep it); ``lifetime``: seconds until the kernel removes
        the address by itself (None: never)."""
        self._addr(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, index, address, prefixlen, ifa_flags,
                   proto, lifetime)  # fmt: skip

    def renew_address(self, index: int, address: str, prefixlen: int, ifa_flags: int,
                      proto: int, lifetime: int | None) -> None:  # fmt: skip
        """Restart an address's lifetime (RTM_NEWADDR with NLM_F_REPLACE). The kernel
        adds the address if it is gone, so callers renew only what they hold."""
        self._addr(RTM_NEWADDR, NLM_F_REPLACE, *_renewal_args(
            Renewal(index, address, prefixlen, ifa_flags, proto, lifetime)))  # fmt: skip

    def batch_size(self) -> int:
        """Requests per send: as many as the receive buffer holds answers for."""
        rcvbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        return max(1, min(MAX_BATCH, rcvbuf // ANSWER_COST))

    def renew_addresses(self, requests: Sequence[Renewal]) -> list[int]:
        """``renew_address`` for many addresses in as few sends as the receive buffer
        allows; the errno of each (0: renewed). See ``_batched`` for what is answered."""
        return self._batched([
            (RTM_NEWADDR, NLM_F_REPLACE, self._addr_body(*_renewal_args(r))) for r in requests
        ])  # fmt: skip

    def add_addresses(self, requests: Sequence[Renewal]) -> list[int]:
        """``add_address`` for many addresses (a Renewal's fields: the lifetime it starts
        with), batched as ``renew_addresses``; the errno of each (EEXIST: there already)."""
        return self._batched([
            (RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, self._addr_body(*r))  # as add_address
            for r in requests
        ])  # fmt: skip

    def del_addresses(self, requests: Sequence[tuple[int, str, int]]) -> list[int]:
        """``del_address`` for many (index, address, prefixlen), batched as
        ``renew_addresses``; the errno of each (EADDRNOTAVAIL: not there)."""
        return self._batched([
            (RTM_DELADDR, 0, self._addr_body(index, address, prefixlen))
            for index, address, prefixlen in requests
        ])  # fmt: skip

    def _batched(self, requests: Sequence[tuple[int, int, bytes]]) -> list[int]:
        """(message type, flags, body) requests, in order, in as few sends as the receive
        buffer holds the answers of; the errno of each.

        Only a send's last request asks for an acknowledgement. The kernel runs a send's
        requests in order, inside the send, and answers a failed one anyway (an error
        naming its sequence number), queued before that last acknowledgement: so a request
        without an answer by then succeeded. One acknowledgement per request cost a recv
        each, ~0.6 s of a 1,000-VIP lifetime round under TCG. When the last one's answer
        does not come (ENOBUFS: answers dropped, or the error that ended the reading), each
        request without an answer failed with that error, never "done"."""
        results: list[int] = []
        size = self.batch_size() if requests else 1
        for start in range(0, len(requests), size):
            chunk = requests[start : start + size]
            seqs = [self.next_seq() for _ in chunk]
            last = seqs[-1]
            msgs = [
                header(msg_type, NLM_F_REQUEST | flags | (NLM_F_ACK if seq == last else 0),
                       seq, body)
                for (msg_type, flags, body), seq in zip(chunk, seqs, strict=True)
            ]  # fmt: skip
            try:
                got, err = self.batch(msgs, seqs, (last,))
            except OSError as e:  # the send itself failed: none of the chunk was run
                got, err = [None] * len(chunk), e
            if err is None:
                results.extend(0 if code is None else code for code in got)
                continue
            lost = (err.errno if err.errno else None) or errno.EIO
            results.extend(lost if code is None else code for code in got)
        return results

    def del_address(self, index: int, address: str, prefixlen: int) -> None:
        """Raises NetlinkError(EADDRNOTAVAIL) if it is not there."""
        self._addr(RTM_DELADDR, 0, index, address, prefixlen)


def _renewal_args(r: Renewal) -> tuple[int, str, int, int, int, int]:
    """A renewal's _addr arguments: a lifetime of None is the kernel's "forever"."""
    lifetime = INFINITY_LIFE_TIME if r.lifetime is None else r.lifetime
    return r.ifindex, r.address, r.prefixlen, r.ifa_flags, r.proto, lifetime


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


def _canonical(address: str) -> str:
    """``address`` as inet_ntop writes it (as ``ipaddress`` does); unparsable: as it is."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, address))
    except OSError:
        return address


def link_address(ifname: str, version: int, exclude: Iterable[str]) -> str | None:
    """This node's address on ``ifname`` of IP ``version``: not one of ``exclude`` (VIPs),
    not link-local; a subnet address before a host (/32, /128) one."""
    index = index_of(ifname)
    if index is None:
        return None
    # asked after every VIP reconcile, with every VIP to skip: at 1,000 VIPs, parsing them
    # all with ``ipaddress`` took seconds of the VIP lane under TCG. The dump's addresses
    # are inet_ntop's, so canonical; the others are made so by the same C calls
    skip = {_canonical(a) for a in exclude}
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    rt = Rtnl()
    try:
        entries = rt.addresses()
    finally:
        rt.close()
    best: tuple[bool, str] | None = None
    for entry in entries:
        if entry.index != index or entry.family != family or entry.address in skip:
            continue
        ip = ipaddress.ip_address(entry.address)
        if ip.is_link_local or ip.is_loopback:
            continue
        host = entry.prefixlen == ip.max_prefixlen
        if best is None or (best[0] and not host):
            best = (host, str(ip))
    return None if best is None else best[1]
