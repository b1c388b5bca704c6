"""The VIP addresses the agent adds: marked as its own (IFA_PROTO), with a lifetime the
leader renews (the dead-man switch), and nothing else on the node ever touched.

``KernelAddresses`` plays the kernel's rtnetlink for addresses, with the semantics the
agent depends on: EEXIST on an exclusive add, and "replace" adding an address that is gone
(which is why ``renew`` looks first)."""

from __future__ import annotations

import errno
import itertools
import logging
import os
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import replace

import pytest

from lvs_operator.director.kernel import addresses as kaddr
from lvs_operator.director.kernel.addresses import AddrEntry, Renewal, Rtnl
from lvs_operator.director.kernel.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLMSG_ERROR,
    Frame,
    frames,
    header,
    parse_attrs,
)
from lvs_operator.director.vip import (
    VIP_PROTO,
    ForeignAddress,
    NoSuchInterface,
    VipManager,
    kernel_keeps_proto,
)

INDEX = {"front": 2, "lo": 1}
NAME = {v: k for k, v in INDEX.items()}


class KernelAddresses:
    def __init__(self, entries: list[AddrEntry] | None = None) -> None:
        self.entries = list(entries or [])
        self.calls: list[tuple[str, str, int | None]] = []  # (op, address, lifetime)
        self.batches: list[list[str]] = []  # the addresses of each renew_addresses call
        self.fail: dict[str, int] = {}  # address -> errno its renewal answers with

    def addresses(self) -> list[AddrEntry]:
        return list(self.entries)

    def _find(self, index: int, address: str) -> int | None:
        for i, e in enumerate(self.entries):
            if e.index == index and e.address == address:
                return i
        return None

    def add_address(self, index: int, address: str, prefixlen: int, ifa_flags: int = 0,
                    proto: int = 0, lifetime: int | None = None) -> None:  # fmt: skip
        self.calls.append(("add", address, lifetime))
        if self._find(index, address) is not None:
            raise OSError(errno.EEXIST, "File exists")
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.entries.append(AddrEntry(family, prefixlen, index, address, proto or None, lifetime))

    def renew_address(self, index: int, address: str, prefixlen: int, ifa_flags: int,
                      proto: int, lifetime: int | None) -> None:  # fmt: skip
        self.calls.append(("renew", address, lifetime))
        i = self._find(index, address)
        if i is None:  # the kernel's replace adds what is gone
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            self.entries.append(AddrEntry(family, prefixlen, index, address, proto, lifetime))
        else:
            self.entries[i] = replace(self.entries[i], proto=proto, valid_lft=lifetime)

    def renew_addresses(self, requests: Sequence[Renewal]) -> list[int]:
        self.batches.append([r.address for r in requests])
        codes = []
        for r in requests:
            code = self.fail.get(r.address, 0)
            if not code:
                self.renew_address(*r)
            codes.append(code)
        return codes

    def add_addresses(self, requests: Sequence[Renewal]) -> list[int]:
        self.batches.append([r.address for r in requests])
        codes = []
        for r in requests:
            try:
                self.add_address(*r)
            except OSError as exc:
                codes.append(exc.errno or errno.EIO)
            else:
                codes.append(self.fail.get(r.address, 0))
        return codes

    def del_addresses(self, requests: Sequence[tuple[int, str, int]]) -> list[int]:
        self.batches.append([address for _, address, _ in requests])
        codes = []
        for r in requests:
            try:
                self.del_address(*r)
            except OSError as exc:
                codes.append(exc.errno or errno.EIO)
            else:
                codes.append(0)
        return codes

    def del_address(self, index: int, address: str, prefixlen: int) -> None:
        self.calls.append(("del", address, None))
        i = self._find(index, address)
        if i is None:
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        del self.entries[i]


@pytest.fixture(autouse=True)
def interfaces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kaddr, "index_of", INDEX.get)
    monkeypatch.setattr(kaddr, "name_of", NAME.__getitem__)


def v4(address: str, index: int = 2, prefixlen: int = 32, proto: int | None = None,
       lft: int | None = None) -> AddrEntry:  # fmt: skip
    return AddrEntry(socket.AF_INET, prefixlen, index, address, proto, lft)


def manager(
    kernel: KernelAddresses, lifetime: int | None = 8, keeps_proto: bool = True
) -> VipManager:
    return VipManager(rt=kernel, lifetime=lifetime, keeps_proto=keeps_proto)


# -- what "ours" is ------------------------------------------------------------------------------


def test_present_lists_only_the_addresses_an_agent_added() -> None:
    kernel = KernelAddresses([
        v4("192.0.2.10", proto=VIP_PROTO, lft=8),  # an agent's VIP
        v4("10.10.0.11"),  # the node's own /32, permanent
        v4("10.96.0.1", index=1),  # a ClusterIP-like host address on another interface
        v4("192.0.2.11", lft=3600),  # someone's /32 with a lifetime (e.g. DHCP)
    ])  # fmt: skip
    assert manager(kernel).present() == {"192.0.2.10": "front"}


def test_without_ifa_proto_a_finite_lifetime_marks_ours() -> None:
    """Kernels before 6.1 drop IFA_PROTO: the lifetime is the mark; permanent ones are never
    ours. Without a lifetime configured there is no mark at all: every host address counts
    (and only the group's VIPs are ever removed, as before)."""
    entries = [v4("192.0.2.10", lft=8), v4("10.10.0.11")]
    assert manager(KernelAddresses(entries), keeps_proto=False).present() == {"192.0.2.10": "front"}
    assert set(manager(KernelAddresses(entries), lifetime=None, keeps_proto=False).present()) == {
        "192.0.2.10",
        "10.10.0.11",
    }


@pytest.mark.parametrize(
    ("release", "keeps"),
    [("6.1.0-57-amd64", True), ("6.12.3", True), ("5.15.0-91-generic", False), ("4.19.0", False)],
)
def test_kernel_keeps_proto(release: str, keeps: bool) -> None:
    assert kernel_keeps_proto(release) is keeps


# -- adding ----------------------------------------------------------------------------------------


def test_add_marks_the_vip_and_gives_it_the_lifetime() -> None:
    kernel = KernelAddresses()
    assert manager(kernel).add("192.0.2.10", "front") is True
    assert kernel.entries == [v4("192.0.2.10", proto=VIP_PROTO, lft=8)]


def test_a_vip_that_is_already_the_nodes_own_address_is_refused_and_left_alone() -> None:
    for existing in (v4("192.0.2.10"), v4("192.0.2.10", prefixlen=24, proto=VIP_PROTO)):
        kernel = KernelAddresses([existing])
        with pytest.raises(ForeignAddress, match="not added by lvs-operator"):
            manager(kernel).add("192.0.2.10", "front")
        assert kernel.entries == [existing]  # neither marked nor given a lifetime
        assert [c[0] for c in kernel.calls] == ["add"]


def test_adding_an_agents_vip_again_adopts_it_and_restarts_its_lifetime() -> None:
    kernel = KernelAddresses([v4("192.0.2.10", proto=VIP_PROTO, lft=2)])
    assert manager(kernel).add("192.0.2.10", "front") is False
    assert kernel.entries == [v4("192.0.2.10", proto=VIP_PROTO, lft=8)]


# -- renewing --------------------------------------------------------------------------------------


def test_renew_restarts_what_is_held_and_never_brings_back_what_is_gone() -> None:
    kernel = KernelAddresses([v4("192.0.2.10", proto=VIP_PROTO, lft=1)])
    failed = manager(kernel).renew([
        ("192.0.2.10", "front"),
        ("192.0.2.11", "front"),  # lapsed (or removed): a standby may hold it by now
        ("192.0.2.10", "lo"),  # moved: not on this interface
    ])  # fmt: skip
    assert failed == []
    assert kernel.entries == [v4("192.0.2.10", proto=VIP_PROTO, lft=8)]
    assert [c for c in kernel.calls if c[0] == "renew"] == [("renew", "192.0.2.10", 8)]


def test_one_batch_renews_them_all_and_names_the_ones_that_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    held = [f"192.0.2.{i}" for i in range(10, 20)]
    kernel = KernelAddresses([v4(a, proto=VIP_PROTO, lft=4) for a in held])
    kernel.fail = {"192.0.2.13": errno.ENOMEM, "192.0.2.17": errno.EIO}
    with caplog.at_level(logging.WARNING, "lvs_operator.director.vip"):
        failed = manager(kernel).renew([(a, "front") for a in held] + [("192.0.2.99", "front")])
    assert kernel.batches == [held]  # one batch, only what is held
    assert failed == ["192.0.2.13", "192.0.2.17"]
    warned = [(r.getMessage(), getattr(r, "vip", None)) for r in caplog.records]
    assert warned == [
        (f"VIP lifetime not renewed: [Errno {errno.ENOMEM}] {os.strerror(errno.ENOMEM)}",
         "192.0.2.13"),
        (f"VIP lifetime not renewed: [Errno {errno.EIO}] {os.strerror(errno.EIO)}",
         "192.0.2.17"),
    ]  # fmt: skip
    renewed = {e.address for e in kernel.entries if e.valid_lft == 8}
    assert renewed == set(held) - set(failed)


def test_a_vip_whose_interface_is_gone_fails_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = KernelAddresses([v4("192.0.2.10", proto=VIP_PROTO, lft=1),
                              v4("192.0.2.11", index=1, proto=VIP_PROTO, lft=1)])  # fmt: skip
    vips = manager(kernel)
    vips.present()  # the names are read while both interfaces are there
    monkeypatch.setattr(kaddr, "index_of", {"front": 2}.get)  # lo is gone
    monkeypatch.setattr(
        vips, "_present", lambda: {"192.0.2.10": ("front", 1), "192.0.2.11": ("lo", 1)}
    )
    assert vips.renew([("192.0.2.10", "front"), ("192.0.2.11", "lo")]) == ["192.0.2.11"]
    assert kernel.batches == [["192.0.2.10"]]


def test_a_round_looks_up_each_interface_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A round names one interface for each of its 1,000 VIPs: one lookup (a socket and an
    ioctl each) per interface, not per VIP; a batch of adds and a move do the same."""
    kernel = KernelAddresses([v4(f"192.0.2.{i}", proto=VIP_PROTO, lft=1) for i in range(1, 101)])
    vips = manager(kernel)
    looked: list[str] = []

    def index_of(ifname: str) -> int | None:
        looked.append(ifname)
        return INDEX.get(ifname)

    monkeypatch.setattr(kaddr, "index_of", index_of)
    items = [(f"192.0.2.{i}", "front") for i in range(1, 101)]
    assert vips.renew(items) == []
    assert looked == ["front"] and len(kernel.batches[-1]) == 100
    looked.clear()
    vips.add_many([(f"198.51.100.{i}", "front") for i in range(1, 51)])
    assert looked == ["front"]


def test_a_round_renews_the_shortest_remaining_lifetime_first() -> None:
    """A round of 1,000 takes seconds in a slow VM: the ones closest to lapsing go first."""
    left = {"192.0.2.10": 6, "192.0.2.11": 2, "192.0.2.12": 4, "192.0.2.13": 3}
    kernel = KernelAddresses([v4(a, proto=VIP_PROTO, lft=s) for a, s in left.items()])
    assert manager(kernel).renew([(a, "front") for a in left]) == []
    assert kernel.batches == [["192.0.2.11", "192.0.2.13", "192.0.2.12", "192.0.2.10"]]


def test_a_renewal_with_a_second_or_less_left_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A round that renews a VIP with a second or less left (close to a lapse) says so, with
    the round's size and duration; a round in time says nothing."""
    left = {"192.0.2.10": 6, "192.0.2.11": 1, "192.0.2.12": 4}
    kernel = KernelAddresses([v4(a, proto=VIP_PROTO, lft=s) for a, s in left.items()])
    with caplog.at_level(logging.WARNING, logger="lvs_operator.director.vip"):
        assert manager(kernel).renew([(a, "front") for a in left]) == []
    late = [r for r in caplog.records if r.getMessage() == "VIP lifetimes renewed late"]
    assert [(r.shortest_remaining_s, r.renewed) for r in late] == [(1.0, 3)]  # type: ignore[attr-defined]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lvs_operator.director.vip"):
        assert manager(kernel).renew([(a, "front") for a in left]) == []  # all at 8 s now
    assert caplog.records == []


def test_no_lifetime_no_renewals() -> None:
    kernel = KernelAddresses([v4("192.0.2.10", proto=VIP_PROTO)])
    assert manager(kernel, lifetime=None).renew([("192.0.2.10", "front")]) == []
    assert kernel.calls == []


# -- the messages ----------------------------------------------------------------------------------


def test_rtnetlink_messages_carry_the_mark_and_the_lifetime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[tuple[int, int, bytes]] = []
    rt = Rtnl.__new__(Rtnl)  # no socket: the requests are captured
    monkeypatch.setattr(rt, "_request", lambda t, f, body: sent.append((t, f, body)) or [])
    rt.add_address(2, "192.0.2.10", 32, 0, VIP_PROTO, 8)
    rt.renew_address(2, "192.0.2.10", 32, 0, VIP_PROTO, 8)
    rt.renew_address(2, "192.0.2.10", 32, 0, VIP_PROTO, None)
    (t_add, f_add, add), (_, f_renew, renew), (_, _, forever) = sent
    assert t_add == kaddr.RTM_NEWADDR
    assert f_add & NLM_F_CREATE and f_add & NLM_F_EXCL and not f_add & NLM_F_REPLACE
    assert f_renew & NLM_F_REPLACE and not f_renew & NLM_F_EXCL
    for body in (add, renew):
        attrs = parse_attrs(body, 8)
        assert attrs[kaddr.IFA_PROTO][0] == VIP_PROTO
        assert struct.unpack("=IIII", attrs[kaddr.IFA_CACHEINFO]) == (8, 8, 0, 0)
    cache = struct.unpack("=IIII", parse_attrs(forever, 8)[kaddr.IFA_CACHEINFO])
    assert cache[:2] == (kaddr.INFINITY_LIFE_TIME, kaddr.INFINITY_LIFE_TIME)


def test_a_dump_reports_the_mark_and_the_lifetime(monkeypatch: pytest.MonkeyPatch) -> None:
    from lvs_operator.director.kernel.netlink import nla

    def ifaddr(address: str, proto: int | None, valid: int) -> bytes:
        body = struct.pack("=BBBBI", socket.AF_INET, 32, 0, 0, 2)
        body += nla(kaddr.IFA_LOCAL, socket.inet_aton(address))
        body += nla(kaddr.IFA_CACHEINFO, struct.pack("=IIII", valid, valid, 0, 0))
        if proto is not None:
            body += nla(kaddr.IFA_PROTO, bytes([proto]))
        return body

    rt = Rtnl.__new__(Rtnl)
    replies = [
        (20, ifaddr("192.0.2.10", VIP_PROTO, 7)),
        (20, ifaddr("10.10.0.11", None, 0xFFFFFFFF)),
    ]
    monkeypatch.setattr(rt, "_request", lambda t, f, body: replies)
    assert rt.addresses() == [
        v4("192.0.2.10", proto=VIP_PROTO, lft=7),
        v4("10.10.0.11"),
    ]


def test_renew_unclaimed_leaves_a_vip_another_node_answers_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A restart that has not read the Lease: its kernel's VIPs are renewed only while no
    other node answers ARP for them (this node may have been cut off while its standby took
    over); lo has no link-layer address and is not probed."""
    kernel = KernelAddresses([
        v4("192.0.2.10", proto=VIP_PROTO, lft=1),
        v4("192.0.2.11", proto=VIP_PROTO, lft=1),
        v4("192.0.2.12", index=1, proto=VIP_PROTO, lft=1),
    ])  # fmt: skip
    vips = manager(kernel)
    probed: list[list[str]] = []
    monkeypatch.setattr(
        vips, "link_info", lambda i: None if i == "lo" else (2, "02:00:00:00:00:0a")
    )

    def answered(items: list[tuple[str, str, tuple[int, str]]], timeout: float, count: int = 3,
                 windows: int = 2) -> set[str]:  # fmt: skip
        probed.append([vip for vip, _, _ in items])
        assert (count, windows) == (1, 1)  # a renewal's light probe: it repeats every round
        return {"192.0.2.11"}

    monkeypatch.setattr(vips, "answered", answered)
    kept, taken = vips.renew_unclaimed(vips.present().items())
    assert sorted(kept) == ["192.0.2.10", "192.0.2.12"] and taken == ["192.0.2.11"]
    assert probed == [["192.0.2.10", "192.0.2.11"]]
    lifetimes = {e.address: e.valid_lft for e in kernel.entries}
    assert lifetimes == {"192.0.2.10": 8, "192.0.2.11": 1, "192.0.2.12": 8}


# -- a batch of renewals over the socket -----------------------------------------------------------


def answer(seq: int, err: int = 0) -> bytes:
    """The kernel's NLMSG_ERROR for request ``seq`` (err 0: the acknowledgement)."""
    return header(NLMSG_ERROR, 0, seq, struct.pack("=i", -err) + b"\0" * 16)


def kernel_answers(fs: list[Frame], failing: dict[int, int] | None = None) -> list[bytes]:
    """What the kernel queues for a send's requests, one datagram each, in order: an error
    for a failed one (``failing``: position -> errno), an acknowledgement for one that
    succeeded and asked for it (NLM_F_ACK), nothing for one that succeeded without asking."""
    failing = failing or {}
    return [
        answer(f.seq, failing.get(i, 0))
        for i, f in enumerate(fs)
        if i in failing or f.flags & NLM_F_ACK
    ]


def without_ack(data: bytes) -> bytes:
    """``data``'s messages with NLM_F_ACK cleared (the length, type and body unchanged)."""
    out = b""
    for f in frames(data):
        raw = f.data[f.start - 16 : f.end]
        length, kind, flags, seq, pid = struct.unpack_from("=IHHII", raw)
        out += struct.pack("=IHHII", length, kind, flags & ~NLM_F_ACK, seq, pid) + raw[16:]
    return out


class RouteSocket:
    """Plays the kernel's end of an rtnetlink socket: every send is recorded, and
    ``answers`` turns the frames of a send into the datagrams the kernel queues for it
    (default: ``kernel_answers``, nothing failing). A recv with nothing queued raises what
    the real socket (with its timeout) would."""

    def __init__(self, answers: Callable[[list[Frame]], list[bytes]] | None = None,
                 rcvbuf: int = 1 << 20, empty: OSError | None = None) -> None:  # fmt: skip
        self.sent: list[bytes] = []
        self.queue: list[bytes] = []
        self.answers = answers or kernel_answers
        self.rcvbuf = rcvbuf
        self.empty = empty or TimeoutError("timed out")

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        self.queue.extend(self.answers(list(frames(data))))
        return len(data)

    def recv(self, size: int) -> bytes:
        if not self.queue:
            raise self.empty
        return self.queue.pop(0)

    def getsockopt(self, level: int, option: int) -> int:
        assert (level, option) == (socket.SOL_SOCKET, socket.SO_RCVBUF)
        return self.rcvbuf

    def gettimeout(self) -> float | None:
        return 30.0

    def setblocking(self, flag: bool) -> None:
        pass

    def settimeout(self, value: float | None) -> None:
        pass


def rtnl(sock: RouteSocket, first_seq: int = 100) -> Rtnl:
    rt = Rtnl.__new__(Rtnl)  # no real socket
    rt.sock = sock  # type: ignore[assignment]
    rt._seq = itertools.count(first_seq)
    return rt


RENEWALS = [
    Renewal(2, "192.0.2.10", 32, 0, VIP_PROTO, 8),
    Renewal(2, "2001:db8::10", 128, 0x202, VIP_PROTO, 8),
    Renewal(1, "192.0.2.11", 32, 0, VIP_PROTO, None),
]


def test_a_batch_is_the_single_renewals_in_one_send_only_the_last_asking_for_an_ack() -> None:
    one_by_one = RouteSocket()
    single = rtnl(one_by_one)
    for r in RENEWALS:
        single.renew_address(*r)
    batched = RouteSocket()
    assert rtnl(batched).renew_addresses(RENEWALS) == [0, 0, 0]
    assert len(one_by_one.sent) == 3 and len(batched.sent) == 1
    # the same requests, byte for byte, but for the acknowledgement: a recv each cost ~0.6 s
    # per 1,000-VIP round under TCG, and a failed request is answered without asking
    assert without_ack(batched.sent[0]) == without_ack(b"".join(one_by_one.sent))
    flags = [f.flags for f in frames(batched.sent[0])]
    assert [bool(fl & NLM_F_ACK) for fl in flags] == [False, False, True]
    for f in frames(batched.sent[0]):
        assert f.type == kaddr.RTM_NEWADDR and f.flags & NLM_F_REPLACE
    assert len(batched.queue) == 0  # one answer, read


def test_answers_map_back_by_sequence_number_in_any_order() -> None:
    def kernel(fs: list[Frame]) -> list[bytes]:
        # the second one fails; the answers come back reversed, two in one datagram
        out = kernel_answers(fs, {1: errno.EADDRNOTAVAIL})
        return [out[1] + out[0]]

    assert rtnl(RouteSocket(kernel)).renew_addresses(RENEWALS) == [0, errno.EADDRNOTAVAIL, 0]


def test_every_failure_of_a_batch_is_reported() -> None:
    def kernel(fs: list[Frame]) -> list[bytes]:
        return kernel_answers(fs, {0: errno.ENODEV, 2: errno.EADDRNOTAVAIL})

    assert rtnl(RouteSocket(kernel)).renew_addresses(RENEWALS) == [
        errno.ENODEV, 0, errno.EADDRNOTAVAIL
    ]  # fmt: skip


def test_without_the_last_acknowledgement_no_request_counts_as_done() -> None:
    def kernel(fs: list[Frame]) -> list[bytes]:
        return kernel_answers(fs, {0: errno.ENODEV})[:1]  # the last one's ack never comes

    assert rtnl(RouteSocket(kernel)).renew_addresses(RENEWALS) == [
        errno.ENODEV, errno.ETIMEDOUT, errno.ETIMEDOUT
    ]  # fmt: skip


def test_answers_dropped_by_an_overrun_are_errors() -> None:
    def kernel(fs: list[Frame]) -> list[bytes]:
        return [answer(fs[0].seq, errno.ENODEV)]  # then the buffer overran

    sock = RouteSocket(kernel, empty=OSError(errno.ENOBUFS, "No buffer space available"))
    assert rtnl(sock).renew_addresses(RENEWALS) == [errno.ENODEV, errno.ENOBUFS, errno.ENOBUFS]


def test_a_batch_is_as_long_as_the_receive_buffer_holds_its_answers() -> None:
    many = [Renewal(2, f"192.0.2.{i}", 32, 0, VIP_PROTO, 8) for i in range(1, 11)]
    sock = RouteSocket(rcvbuf=4 * kaddr.ANSWER_COST)
    assert rtnl(sock).renew_addresses(many) == [0] * 10
    assert [len(list(frames(d))) for d in sock.sent] == [4, 4, 2]
    for d in sock.sent:  # each send's last request asks for the acknowledgement
        assert [bool(f.flags & NLM_F_ACK) for f in frames(d)][-1]
        assert not any(f.flags & NLM_F_ACK for f in list(frames(d))[:-1])
    assert rtnl(RouteSocket()).renew_addresses([]) == []


# -- a handover's move to lo ---------------------------------------------------------------------


def test_a_move_adds_every_vip_to_lo_in_one_batch_then_removes_them_in_another() -> None:
    kernel = KernelAddresses([
        v4("192.0.2.10", proto=VIP_PROTO, lft=8),
        v4("192.0.2.11", proto=VIP_PROTO, lft=8),
    ])  # fmt: skip
    on_lo, moved = manager(kernel).move({"192.0.2.10": "front", "192.0.2.11": "front"}, "lo")
    assert on_lo == moved == ["192.0.2.10", "192.0.2.11"]
    assert kernel.batches == [["192.0.2.10", "192.0.2.11"]] * 2  # adds, then removals
    assert [op for op, _, _ in kernel.calls] == ["add", "add", "del", "del"]  # never missing
    assert {(e.index, e.address, e.valid_lft) for e in kernel.entries} == {
        (INDEX["lo"], "192.0.2.10", 8),
        (INDEX["lo"], "192.0.2.11", 8),
    }  # an agent's, with the lifetime, as add() makes them


def test_a_vip_that_cannot_go_to_lo_stays_on_its_interface() -> None:
    kernel = KernelAddresses([
        v4("192.0.2.10", proto=VIP_PROTO, lft=8),
        v4("192.0.2.11", proto=VIP_PROTO, lft=8),
        v4("192.0.2.11", index=INDEX["lo"]),  # the node's own address on lo: not ours
    ])  # fmt: skip
    on_lo, moved = manager(kernel).move({"192.0.2.10": "front", "192.0.2.11": "front"}, "lo")
    assert on_lo == moved == ["192.0.2.10"]
    assert any(e.index == INDEX["front"] and e.address == "192.0.2.11" for e in kernel.entries)


def test_a_vip_already_gone_from_its_interface_counts_as_moved() -> None:
    kernel = KernelAddresses([v4("192.0.2.10", proto=VIP_PROTO, lft=8)])
    on_lo, moved = manager(kernel).move({"192.0.2.10": "front", "192.0.2.12": "front"}, "lo")
    assert on_lo == moved == ["192.0.2.10", "192.0.2.12"]


def test_batched_adds_and_removals_are_the_single_requests_byte_for_byte() -> None:
    one_by_one = RouteSocket()
    single = rtnl(one_by_one)
    for r in RENEWALS:
        single.add_address(*r)
    for r in RENEWALS:
        single.del_address(r.ifindex, r.address, r.prefixlen)
    batched = RouteSocket()
    rt = rtnl(batched)
    assert rt.add_addresses(RENEWALS) == [0, 0, 0]
    assert rt.del_addresses([(r.ifindex, r.address, r.prefixlen) for r in RENEWALS]) == [0] * 3
    assert len(batched.sent) == 2
    assert [without_ack(d) for d in batched.sent] == [
        without_ack(b"".join(one_by_one.sent[:3])), without_ack(b"".join(one_by_one.sent[3:]))
    ]  # fmt: skip


# -- a takeover's batch of adds --------------------------------------------------------------------


def test_add_many_adds_in_one_batch_adopts_ours_and_names_each_failure() -> None:
    kernel = KernelAddresses([
        v4("192.0.2.11", proto=VIP_PROTO, lft=3),  # an agent's already: adopted
        v4("192.0.2.12"),  # the node's own: not taken
    ])  # fmt: skip
    items = [("192.0.2.10", "front"), ("192.0.2.11", "front"), ("192.0.2.12", "front"),
             ("192.0.2.13", "eth9")]  # fmt: skip
    errors = manager(kernel).add_many(items)
    assert errors[:2] == [None, None]
    assert isinstance(errors[2], ForeignAddress)
    assert isinstance(errors[3], NoSuchInterface) and "eth9" in str(errors[3])
    assert kernel.batches[0] == ["192.0.2.10", "192.0.2.11", "192.0.2.12"]  # one batch
    ours = {e.address: e.valid_lft for e in kernel.entries if e.proto == VIP_PROTO}
    assert ours == {"192.0.2.10": 8, "192.0.2.11": 8}  # added, and renewed (adopted)


def test_the_link_address_skips_the_vips_however_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """The node's own address on a VIP's link (the heartbeat's): not a VIP (given in any
    spelling), not link-local, a subnet address before a host one, of the asked family."""
    entries = [
        AddrEntry(socket.AF_INET, 32, 2, "192.0.2.10", VIP_PROTO, 8),  # a VIP
        AddrEntry(socket.AF_INET, 32, 2, "192.0.2.5"),  # a host address of the node
        AddrEntry(socket.AF_INET, 24, 2, "192.0.2.2"),  # the subnet's: preferred
        AddrEntry(socket.AF_INET, 24, 3, "198.51.100.2"),  # another interface
        AddrEntry(socket.AF_INET6, 64, 2, "fe80::1"),  # link-local
        AddrEntry(socket.AF_INET6, 128, 2, "2001:db8::10", VIP_PROTO, 8),  # a VIP
        AddrEntry(socket.AF_INET6, 64, 2, "2001:db8::2"),
    ]

    class Dump:
        def addresses(self) -> list[AddrEntry]:
            return entries

        def close(self) -> None:
            pass

    monkeypatch.setattr(kaddr, "Rtnl", Dump)
    monkeypatch.setattr(kaddr, "index_of", lambda name: {"front": 2, "back": 3}.get(name))
    assert kaddr.link_address("front", 4, ["192.0.2.10"]) == "192.0.2.2"
    entries[2] = AddrEntry(socket.AF_INET, 24, 2, "192.0.2.10")  # the subnet's is a VIP now
    assert kaddr.link_address("front", 4, ["192.0.2.10"]) == "192.0.2.5"
    assert kaddr.link_address("front", 6, ["2001:DB8:0::10"]) == "2001:db8::2"
    assert kaddr.link_address("front", 6, ["2001:db8::2", "2001:db8::10"]) is None
    assert kaddr.link_address("back", 6, []) is None
    assert kaddr.link_address("nosuch", 4, []) is None
    assert kaddr.link_address("front", 4, ["not an address", "192.0.2.10"]) == "192.0.2.5"
