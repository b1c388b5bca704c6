"""A whole read parses each destination message with one unpack of the layout learned from
the first (``DestLayout``): the same rows as ``parse_attrs``, whatever the values; a message
laid out otherwise goes through ``parse_attrs``."""

from __future__ import annotations

import itertools
import random
import socket
import struct

import pytest

from lvs_operator.director.kernel import ipvs
from lvs_operator.director.kernel import ipvs_netlink as nl
from lvs_operator.director.kernel.netlink import NLMSG_DONE, NLMSG_ERROR, NetlinkError, header
from lvs_operator.director.table import Forwarding, IpvsDestination

FAMILY_ID = 0x1F
NLM_F_MULTI = 2
TUN_TYPE, TUN_PORT, TUN_FLAGS = 13, 14, 15  # IPVS_DEST_ATTR_TUN_* (Linux 5.2 on)
U32 = struct.Struct("=I")


def dest_attrs(af: int, address: str, port: int, values: list[int], *, tunnel: bool = True,
               family_first: bool = False) -> bytes:  # fmt: skip
    """A destination as ``ip_vs_genl_fill_dest`` writes it (the nf_inet_addr union: 16 bytes
    for IPv4 too), counters nested at the end; ``family_first``: another layout."""
    fwd, weight, upper, lower, active, inactive, persistent = values
    addr = socket.inet_pton(af, address).ljust(16, b"\0")
    family = nl.nla(nl.DEST_ADDR_FAMILY, struct.pack("=H", af))
    parts = [
        nl.nla(nl.DEST_ADDR, addr),
        nl.nla(nl.DEST_PORT, struct.pack("!H", port)),
        nl.nla(nl.DEST_FWD_METHOD, U32.pack(fwd)),
        nl.nla(nl.DEST_WEIGHT, U32.pack(weight)),
    ]
    if tunnel:
        parts += [nl.nla(TUN_TYPE, b"\0"), nl.nla(TUN_PORT, b"\0\0"), nl.nla(TUN_FLAGS, b"\0\0")]
    parts += [nl.nla(nl.DEST_U_THRESH, U32.pack(upper)), nl.nla(nl.DEST_L_THRESH, U32.pack(lower)),
              nl.nla(nl.DEST_ACTIVE_CONNS, U32.pack(active)),
              nl.nla(nl.DEST_INACT_CONNS, U32.pack(inactive)),
              nl.nla(nl.DEST_PERSIST_CONNS, U32.pack(persistent))]  # fmt: skip
    parts = [family, *parts] if family_first else [*parts, family]
    stats = b"".join(nl.nla(k, U32.pack(k)) for k in range(1, 11))
    parts += [nl.nested(nl.STATS, stats), nl.nested(nl.STATS64, stats + stats)]
    return b"".join(parts)


def message(seq: int, attrs: bytes) -> bytes:
    # the kernel's nest has no NLA_F_NESTED flag (nla_nest_start_noflag)
    body = struct.pack("=BBH", nl.CMD_NEW_DEST, 1, 0) + nl.nla(nl.ATTR_DEST, attrs)
    return header(FAMILY_ID, NLM_F_MULTI, seq, body)


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.answers: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def recv(self, size: int) -> bytes:
        return self.answers.pop(0)


def fake_netlink() -> tuple[nl.IpvsNetlink, FakeSocket]:
    sock = nl.IpvsNetlink.__new__(nl.IpvsNetlink)
    fake = FakeSocket()
    sock.sock = fake  # type: ignore[assignment]
    sock._seq = itertools.count(1)
    sock.family = FAMILY_ID
    sock.dest_layout, sock._layout_tried, sock.slow_rows = None, False, 0
    return sock, fake


def random_dest(rng: random.Random) -> tuple[int, str, int, list[int]]:
    if rng.random() < 0.3:
        af, address = socket.AF_INET6, f"2001:db8::{rng.randrange(1, 0xFFFF):x}"
    else:
        octets = (rng.randrange(256), rng.randrange(256), rng.randrange(1, 255))
        af, address = socket.AF_INET, "10.{}.{}.{}".format(*octets)
    values = [rng.choice((0, 2, 3)), rng.randrange(0, 0x7FFFFFFF),
              *(rng.choice((0, 1, rng.randrange(1 << 32))) for _ in range(5))]  # fmt: skip
    return af, address, rng.randrange(65536), values


def generic(attrs: bytes) -> nl.DestRow:
    return nl.dest_row(nl.parse_attrs(attrs))


@pytest.mark.parametrize("tunnel", [True, False], ids=["tunnel-attrs", "older-kernel"])
def test_rows_read_through_the_learned_layout_equal_the_generic_parse(tunnel: bool) -> None:
    rng = random.Random(7)
    sock, fake = fake_netlink()
    dests = [dest_attrs(*random_dest(rng), tunnel=tunnel) for _ in range(300)]
    msgs = [message(1, d) for d in dests]
    # three datagrams, as a dump arrives in several receives
    fake.answers = [b"".join(msgs[:100]), b"".join(msgs[100:]),
                    header(NLMSG_DONE, NLM_F_MULTI, 1, b"\0\0\0\0")]  # fmt: skip
    rows = sock.dest_rows(b"key")
    assert rows == [generic(d) for d in dests]
    assert sock.dest_layout is not None and sock.slow_rows == 0


def test_a_message_laid_out_otherwise_is_parsed_generically() -> None:
    rng = random.Random(8)
    sock, fake = fake_netlink()
    first = dest_attrs(*random_dest(rng))
    other = dest_attrs(*random_dest(rng), family_first=True)
    older = dest_attrs(*random_dest(rng), tunnel=False)
    done = header(NLMSG_DONE, NLM_F_MULTI, 1, b"\0\0\0\0")
    fake.answers = [message(1, first) + message(1, other) + message(1, older) + done]
    assert sock.dest_rows(b"key") == [generic(first), generic(other), generic(older)]
    assert sock.slow_rows == 2  # the layout is the first message's


def test_messages_of_other_requests_are_skipped_and_an_error_raises() -> None:
    rng = random.Random(9)
    sock, fake = fake_netlink()
    mine = dest_attrs(*random_dest(rng))
    stale = dest_attrs(*random_dest(rng))
    fake.answers = [message(99, stale) + message(1, mine),
                    header(NLMSG_DONE, NLM_F_MULTI, 1, b"\0\0\0\0")]  # fmt: skip
    assert sock.dest_rows(b"key") == [generic(mine)]
    fake.answers = [header(NLMSG_ERROR, 0, 2, struct.pack("=i", -2) + b"\0" * 16)]
    with pytest.raises(NetlinkError):
        sock.dest_rows(b"key")


def test_a_row_makes_the_destination_the_generic_decoder_makes() -> None:
    rng = random.Random(10)
    for _ in range(200):
        af, address, port, values = random_dest(rng)
        attrs = nl.parse_attrs(dest_attrs(af, address, port, values))
        dest, conns = ipvs._row_dest(nl.dest_row(attrs), af)
        want, want_conns = ipvs._nl_dest(attrs, af)
        assert dest == want and hash(dest) == hash(want) and conns == want_conns
        assert dest.address == want.address and type(dest.forwarding) is Forwarding
    # no family attribute: the service's
    attrs = nl.parse_attrs(dest_attrs(socket.AF_INET, "10.0.0.1", 80, [0] * 7))
    del attrs[nl.DEST_ADDR_FAMILY]
    dest, _ = ipvs._row_dest(nl.dest_row(attrs), socket.AF_INET)
    assert dest == IpvsDestination("10.0.0.1", 80, 0)
    with pytest.raises(ValueError, match="forwarding method 5"):
        ipvs._row_dest(nl.dest_row(nl.parse_attrs(dest_attrs(
            socket.AF_INET, "10.0.0.1", 80, [5, 1, 0, 0, 0, 0, 0]))), socket.AF_INET)  # fmt: skip
