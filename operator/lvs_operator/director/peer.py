"""Direct peer heartbeat between the directors of a group: fast takeover after a leader crash.

Lease expiry alone bounds crash failover by the Lease duration. Here a standby probes the
current Lease holder over UDP every ``interval`` and, once the holder has stopped answering
for ``timeout`` (or answers that it no longer leads), tells the Elector, which may then take
the Lease before it expires. The Lease stays the fence: the takeover is a PUT carrying the
resourceVersion, so of two directors acting on the same view only one wins.

Wire format (UDP, ASCII, no trailing newline, single spaces)::

    probe:  LVSHB2 <nonce> <identity> <ack> <g> <seq> <mac>
                                nonce = 16 lowercase hex chars,
                                identity = the prober's node name,
                                ack = the nonce of the newest "leading" reply it got from
                                this holder, or "-",
                                g = 1: the prober checks ARP before any takeover ("gated"),
                                0: it does not,
                                seq = 16 lowercase hex chars, strictly increasing per prober
                                (its wall clock in ns, or the last seq + 1 if that is more)
    reply:  LVSHB2 <nonce> <identity> <1|0> <mac>
                                1 = leading, identity = the responder's node name

    mac = the first 16 bytes of HMAC-SHA256(key, "probe " + text) (or "reply " + text), as 32
          lowercase hex chars, where text is the message up to the space before the mac; "-"
          when this director has no key (unauthenticated).

(A probe of the nonce alone, ``LVSHB2 <nonce> <mac>``, is still answered; it confirms
nothing and no agent sends one.) The ack is how the leader learns that a standby *heard* it
leading, and since when at least (the time the acknowledged reply was sent): the standby
cannot judge the holder silent before that time plus its timeout, which bounds how long the
leader may keep its VIPs without the API server (election.py, "Outage tolerance"). A gated
prober never takes over while another node answers ARP for the group's VIPs, so its silence
alone does not end the leader's hold.

Authentication (``key``: the group's Secret, mounted by the DaemonSet): with a key, every
message must carry the MAC over all its fields, else it is dropped and counted
(``rejected``), *before* the responder charges the sender's reply budget (below), so a
spoofer without the key can neither forge a leading answer, an ack or a gate flag, nor spend
the standby's budget. A keyed responder also drops a probe whose seq is not above the newest
it accepted from that identity (a replay of a recorded probe; an identity silent for
``FORGET_AFTER`` is forgotten, so a prober whose clock stepped back recovers). A reply
answers one pending nonce only, so a replayed reply is stale. The magic changed with the
format (LVSHB1 had no mac): an agent of the old version and one of this one do not answer
each other (failover falls back to the Lease while both run, e.g. during a rolling update).
Without a key everything is accepted unchecked, as before; the agent warns once at start.

Extension fields (compatibility rule): a probe or reply may carry further fields after the
ones above and before the mac, each ``<name>=<value>`` (name: lowercase letters and digits,
starting with a letter; value: visible ASCII, no spaces), covered by the mac like the rest.
A receiver ignores names it does not know, so a newer agent's messages are understood by an
older one (from the version that brought this rule on); a field it knows with a malformed
value, or an extra token that is not ``name=value``, drops the whole message. The fields
defined so far: ``sync=`` on a probe (the prober's connection sync state, ``SyncReport``).

Anything else (other magic, missing fields, bad characters, oversized) is dropped. A reply is
at most the probe plus the identity (<= 253 chars) and the responder rate-limits its replies
per requesting address, so it is a poor reflector. (Per address, not overall: a flood from
elsewhere must not starve the standby's probes, or it could force a failover.)

Anti-flap ("armed"): a holder is only ever judged unreachable by a standby that has had good
replies *from that holder* for ``arm_after`` seconds (gaps shorter than ``timeout``) since it
started targeting it. After a standby took the Lease from a leader that was alive but cut off
from it (a partition between the directors only), the displaced director targets the new
holder, gets no reply, is never armed, and falls back to Lease expiry (which the new holder,
renewing through the API, never lets happen): no ping-pong. ``arm_after`` additionally bounds
the takeover rate over a link that keeps going up and down.

``PeerHealth`` is the pure state machine (injected clock, no sockets); ``HeartbeatResponder``
answers probes; ``HeartbeatMonitor`` sends them and calls ``on_lost`` when the holder is lost.
Both run on threads of their own, so a stall of the agent's event loop is not a silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import ipaddress
import logging
import re
import secrets
import select
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lvs_operator.api import contract

log = logging.getLogger("lvs_operator.director.peer")

HEARTBEAT_ANNOTATION = (
    contract.HEARTBEAT_ANNOTATION
)  # "ip:port" of the holder's responder, on the Lease

DEFAULT_PEER_PORT = contract.DEFAULT_PEER_PORT
# 6 probe intervals: with 5 % loss each way (a round trip lost ~10 % of the time) six in a row
# go missing about once in 10^6 probes; and a silence alone never moves a VIP that still
# answers ARP (the check before a takeover), so a false alarm costs a probe, not a failover
DEFAULT_PEER_INTERVAL = 0.05
DEFAULT_PEER_TIMEOUT = 0.3
# A gated standby (it checks ARP before any takeover, and every VIP of the group is placed on
# its node) judges the holder silent after this share of the timeout: its takeover rests on
# the ARP check alone (a holder whose kernel still has a VIP answers for it), not on the
# leader stepping down first, so it needs no margin over the leader's bound
# (docs/director.md, "Outage tolerance").
GATED_TIMEOUT_SHARE = 2 / 3
DEFAULT_ARM_AFTER = 1.0
DEFAULT_REPLY_RATE = 100.0  # replies per second to one address (a standby sends 20)
_MAX_BUCKETS = 1024
_MAX_REMEMBERED = 4096  # "leading" replies whose ack would count (~20 s of 10 standbys)

MAGIC = b"LVSHB2"
NONCE_LEN = 16
SEQ_LEN = 16
MAC_LEN = 16  # bytes of HMAC-SHA256 kept (32 hex chars on the wire)
MIN_KEY_LEN = 16
MAX_IDENTITY = 253
NO_MAC = b"-"
NO_ACK = "-"
_MAC_FIELD = 1 + 2 * MAC_LEN
PROBE_LEN = len(MAGIC) + 1 + NONCE_LEN  # the nonce part every message starts with
# the longest messages of the fields every version knows (extension fields may follow, up to
# MAX_DATAGRAM in all)
MAX_PROBE_LEN = PROBE_LEN + 1 + MAX_IDENTITY + 1 + NONCE_LEN + 2 + 1 + SEQ_LEN + _MAC_FIELD
MAX_REPLY_LEN = PROBE_LEN + 1 + MAX_IDENTITY + 2 + _MAC_FIELD
MAX_DATAGRAM = 512  # anything larger is dropped unread
FORGET_AFTER = 600.0  # a keyed responder forgets a prober's newest seq after this silence

Address = tuple[str, int]

_NONCE = re.compile(rb"[0-9a-f]{16}")
_MAC = re.compile(rb"[0-9a-f]{32}|-")
_IDENTITY = re.compile(rb"[\x21-\x7e]{1,253}")
_EXTENSION = re.compile(rb"([a-z][a-z0-9]{0,15})=([\x21-\x7e]*)")


# -- wire format -------------------------------------------------------------------------------


def valid_identity(identity: str) -> bool:
    return identity.isascii() and _IDENTITY.fullmatch(identity.encode("ascii")) is not None


def _valid_nonce(nonce: str) -> bool:
    return nonce.isascii() and _NONCE.fullmatch(nonce.encode("ascii")) is not None


def _mac(kind: bytes, text: bytes, key: bytes | None) -> bytes:
    if key is None:
        return NO_MAC
    return hmac.digest(key, kind + b" " + text, "sha256")[:MAC_LEN].hex().encode("ascii")


def _sign(kind: bytes, text: bytes, key: bytes | None) -> bytes:
    return text + b" " + _mac(kind, text, key)


def verify(kind: str, data: bytes, key: bytes) -> bool:
    """Whether ``data`` (a well-formed "probe" or "reply") carries the MAC of ``key``."""
    text, _, mac = data.rpartition(b" ")
    expected = _mac(kind.encode("ascii"), text, key)
    return bool(text) and hmac.compare_digest(mac, expected)


def make_probe(
    nonce: str,
    identity: str = "",
    ack: str | None = None,
    gated: bool = False,
    seq: int = 0,
    key: bytes | None = None,
    sync: SyncReport | None = None,
) -> bytes:
    """A probe; with ``identity`` it also carries ``ack`` (the nonce of the newest "leading"
    reply received from the holder, None: none yet), whether the prober is gated, its
    sequence number and, with ``sync``, the ``sync=`` extension field; signed with ``key``
    (None: unauthenticated, mac "-")."""
    if not _valid_nonce(nonce):
        raise ValueError(f"nonce must be {NONCE_LEN} lowercase hex chars: {nonce!r}")
    probe = MAGIC + b" " + nonce.encode("ascii")
    if not identity:
        return _sign(b"probe", probe, key)
    if not valid_identity(identity):
        raise ValueError(f"identity must be 1-{MAX_IDENTITY} visible ASCII chars: {identity!r}")
    if ack is not None and not _valid_nonce(ack):
        raise ValueError(f"ack must be a nonce: {ack!r}")
    if not 0 <= seq < 1 << (4 * SEQ_LEN):
        raise ValueError(f"seq must fit {SEQ_LEN} hex chars: {seq}")
    text = b" ".join(
        (
            probe,
            identity.encode("ascii"),
            (ack or NO_ACK).encode("ascii"),
            b"1" if gated else b"0",
            f"{seq:016x}".encode("ascii"),
        )
    )
    if sync is not None:
        text += b" sync=" + sync.encode()
    return _sign(b"probe", text, key)


SYNC_ROLES = ("master", "backup", "off")
_SYNC = re.compile(
    rb"(master|backup|off),(\d{1,3}),([\x21-\x2b\x2d-\x7e]{0,15}),(\d{1,10}),(\d{1,10}|-)"
)
_MAX_COUNT = 10**10 - 1  # what ten digits hold (the wire caps the figures there)


@dataclass(frozen=True)
class SyncReport:
    """A director's connection sync state, as its probes carry it (``sync=`` field):
    the role of the daemon that matters (a leader's master, a standby's backup, off: none),
    the sync id and interface it runs with, the connections its backup received (origin
    SYNC in its table), and how long ago it last saw any (None: not since it started)."""

    role: str  # SYNC_ROLES
    sync_id: int = 0
    interface: str = ""
    synced: int = 0
    received_ago: int | None = None  # whole seconds

    def encode(self) -> bytes:
        ago = "-" if self.received_ago is None else str(min(self.received_ago, _MAX_COUNT))
        text = f"{self.role},{self.sync_id},{self.interface},{min(self.synced, _MAX_COUNT)},{ago}"
        data = text.encode("ascii")
        if not _SYNC.fullmatch(data):
            raise ValueError(f"not a valid sync report: {text!r}")
        return data

    @classmethod
    def decode(cls, data: bytes) -> SyncReport | None:
        match = _SYNC.fullmatch(data)
        if match is None or int(match[2]) > 255:
            return None
        role, sync_id, ifname, synced, ago = match.groups()
        return cls(
            role.decode("ascii"),
            int(sync_id),
            ifname.decode("ascii"),
            int(synced),
            None if ago == b"-" else int(ago),
        )


@dataclass(frozen=True)
class Probe:
    nonce: str
    identity: str = ""  # "": an anonymous probe (answered, confirms nothing)
    ack: str | None = None
    gated: bool = False
    seq: int = 0
    sync: SyncReport | None = None  # the sync= extension field (None: not sent)


def _extensions(fields: list[bytes]) -> dict[bytes, bytes] | None:
    """The ``name=value`` extension fields (the last of a repeated name wins); None if a
    token is not of that form."""
    out: dict[bytes, bytes] = {}
    for field_ in fields:
        match = _EXTENSION.fullmatch(field_)
        if match is None:
            return None
        out[match[1]] = match[2]
    return out


def parse_probe_full(data: bytes) -> Probe | None:
    """A well-formed probe, else None (the MAC is checked by ``verify``, not here).
    Extension fields it does not know are ignored; a known one that is malformed makes
    the probe malformed."""
    if len(data) > MAX_DATAGRAM or not data.startswith(MAGIC + b" "):
        return None
    parts = data.split(b" ")
    if not (len(parts) == 3 or len(parts) >= 7) or not _NONCE.fullmatch(parts[1]):
        return None
    if not _MAC.fullmatch(parts[-1]):
        return None
    nonce = parts[1].decode("ascii")
    if len(parts) == 3:
        return Probe(nonce)
    identity, ack, gated, seq = parts[2], parts[3], parts[4], parts[5]
    if not _IDENTITY.fullmatch(identity) or gated not in (b"0", b"1"):
        return None
    if ack != NO_ACK.encode("ascii") and not _NONCE.fullmatch(ack):
        return None
    if not _NONCE.fullmatch(seq):  # same shape: 16 lowercase hex chars
        return None
    extensions = _extensions(parts[6:-1])
    if extensions is None:
        return None
    sync = None
    if b"sync" in extensions:
        sync = SyncReport.decode(extensions[b"sync"])
        if sync is None:
            return None
    return Probe(
        nonce,
        identity.decode("ascii"),
        None if ack == b"-" else ack.decode("ascii"),
        gated == b"1",
        int(seq, 16),
        sync,
    )


def parse_probe(data: bytes) -> str | None:
    """The nonce of a well-formed probe, else None."""
    probe = parse_probe_full(data)
    return None if probe is None else probe.nonce


def make_reply(nonce: str, identity: str, leader: bool, key: bytes | None = None) -> bytes:
    if not _valid_nonce(nonce):
        raise ValueError(f"nonce must be {NONCE_LEN} lowercase hex chars: {nonce!r}")
    if not valid_identity(identity):
        raise ValueError(f"identity must be 1-{MAX_IDENTITY} visible ASCII chars: {identity!r}")
    text = b" ".join(
        (MAGIC, nonce.encode("ascii"), identity.encode("ascii"), b"1" if leader else b"0")
    )
    return _sign(b"reply", text, key)


def parse_reply(data: bytes) -> tuple[str, str, bool] | None:
    """(nonce, identity, leader) of a well-formed reply, else None (the MAC is checked by
    ``verify``, not here). A reply defines no extension field yet: any is ignored."""
    if len(data) > MAX_DATAGRAM:
        return None
    parts = data.split(b" ")
    if len(parts) < 5 or parts[0] != MAGIC or parts[3] not in (b"0", b"1"):
        return None
    if not _NONCE.fullmatch(parts[1]) or not _IDENTITY.fullmatch(parts[2]):
        return None
    if not _MAC.fullmatch(parts[-1]) or _extensions(parts[4:-1]) is None:
        return None
    return parts[1].decode("ascii"), parts[2].decode("ascii"), parts[3] == b"1"


def load_key(path: str, required: bool = False) -> bytes | None:
    """The group's heartbeat key: the bytes of the file at ``path``, used as they are.
    None when ``path`` is "" or, unless ``required``, the file does not exist (then the
    heartbeat runs unauthenticated). ValueError if it cannot be read or is shorter than
    MIN_KEY_LEN bytes: a key that is set but unusable must not silently turn into none."""
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            key = f.read(4096)
    except FileNotFoundError:
        if required:
            raise ValueError(f"peer key file {path} does not exist") from None
        return None
    except OSError as exc:
        raise ValueError(f"cannot read the peer key file {path}: {exc}") from None
    if len(key) < MIN_KEY_LEN:
        raise ValueError(
            f"the peer key in {path} has {len(key)} bytes; at least {MIN_KEY_LEN} are needed "
            "(the controller's Secret holds 32 random bytes)"
        )
    return key


class RejectLog:
    """Logs rejected heartbeat messages: the first at once, then at most one line per
    ``every`` seconds saying how many there were (a flood must not flood the log)."""

    def __init__(
        self, what: str, every: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.what, self.every, self._clock = what, every, clock
        self._next = 0.0
        self._count = 0
        self._lock = threading.Lock()  # the responder's and the monitor's threads call it

    def __call__(self, reason: str, source: str) -> None:
        with self._lock:
            self._count += 1
            now = self._clock()
            if now < self._next:
                return
            count, first = self._count, self._next == 0.0
            self._count = 0
            self._next = now + self.every
        log.warning(
            "%s rejected: %d in the last %s (newest from %s: %s); a director with another "
            "key (the group's Secret) or spoofed packets",
            self.what,
            count,
            "moment" if first else f"{self.every:.0f} s",
            source,
            "bad or missing MAC" if reason == "mac" else "a replayed probe",
        )


# -- addresses ---------------------------------------------------------------------------------


def parse_address(text: str) -> Address:
    """``"10.0.0.1:9643"`` or ``"[fd00::1]:9643"`` -> (host, port); host must be an IP."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"heartbeat address {text!r}: expected [ipv6]:port")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"heartbeat address {text!r}: expected ip:port (IPv6 as [addr]:port)")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"heartbeat address {text!r}: {host!r} is not an IP address") from None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"heartbeat address {text!r}: port must be 1-65535")
    if text.startswith("[") and ip.version != 6:
        raise ValueError(f"heartbeat address {text!r}: brackets are for IPv6 only")
    return str(ip), int(port_text)


def format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _same_ip(a: str, b: str) -> bool:
    try:
        x, y = ipaddress.ip_address(a.split("%", 1)[0]), ipaddress.ip_address(b.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(x, ipaddress.IPv6Address) and x.ipv4_mapped is not None:
        x = x.ipv4_mapped
    if isinstance(y, ipaddress.IPv6Address) and y.ipv4_mapped is not None:
        y = y.ipv4_mapped
    return x == y


@dataclass(frozen=True)
class Confirmation:
    """A standby heard this director leading at ``at`` or later (responder's clock)."""

    address: str  # where its probes come from
    at: float
    gated: bool = False  # it checks ARP before any takeover (its newest probe said so)
    sync: SyncReport | None = None  # its connection sync state (its newest probe's sync=)


# -- the state machine -------------------------------------------------------------------------


class PeerHealth:
    """Whether the current Lease holder still answers; pure, the caller passes the time."""

    def __init__(
        self,
        timeout: float = DEFAULT_PEER_TIMEOUT,
        arm_after: float = DEFAULT_ARM_AFTER,
        outstanding: int = 8,
        nonce: Callable[[], str] | None = None,
        identity: str = "",
        key: bytes | None = None,
        wall_ns: Callable[[], int] = time.time_ns,
        on_reject: Callable[[str, str], None] | None = None,
    ) -> None:
        if timeout <= 0 or arm_after < 0 or outstanding < 1:
            raise ValueError("timeout must be > 0, arm_after >= 0, outstanding >= 1")
        self.identity = identity  # ours, sent with the ack in every probe ("": anonymous)
        self.key = key  # the group's; None: unauthenticated
        self._wall_ns = wall_ns  # seeds the probes' seq: above any of a previous run's
        self._probe_seq = 0
        self.on_reject = on_reject  # (reason, source address) of a dropped reply
        self.rejected = 0  # replies without the key's MAC
        self.gated = False  # we check ARP before any takeover (the agent sets it)
        # our connection sync state for the holder (the agent sets it); sent only while the
        # holder understands the field (``extensions``: it writes the Lease's sync record)
        self.sync_report: Callable[[], SyncReport | None] | None = None
        self.extensions = False
        self.timeout = timeout
        self.gated_timeout = timeout * GATED_TIMEOUT_SHARE
        self.arm_after = arm_after
        self.outstanding = outstanding
        self._nonce = nonce or (lambda: secrets.token_hex(NONCE_LEN // 2))
        self.holder = ""
        self.address: Address | None = None
        self._reset()

    def _reset(self) -> None:
        self.armed = False
        self.disowned = False
        self.last_ok: float | None = None
        self._run_start = 0.0  # first reply of the current run (gaps < timeout)
        self._seq = 0
        self._last_seq = 0  # sequence number of the newest probe answered
        self._pending: OrderedDict[str, int] = OrderedDict()  # nonce -> sequence number
        self._ack: str | None = None  # nonce of the newest "leading" reply

    def target(self, holder: str, address: Address | None) -> bool:
        """Probe ``holder`` at ``address``; a change resets everything (returns True)."""
        if holder == self.holder and address == self.address:
            return False
        self.holder, self.address = holder, address
        self._reset()
        return True

    def next_probe(self, now: float) -> bytes:
        nonce = self._nonce()
        self._seq += 1
        self._pending[nonce] = self._seq
        while len(self._pending) > self.outstanding:
            self._pending.popitem(last=False)
        self._probe_seq = max(self._probe_seq + 1, self._wall_ns())
        sync = None
        if self.extensions and self.identity and self.sync_report is not None:
            # never at the cost of the probe: a state the wire cannot carry (an interface
            # name with a comma) goes unsent
            try:
                sync = self.sync_report()
                if sync is not None:
                    sync.encode()
            except Exception:
                sync = None
        return make_probe(
            nonce, self.identity, self._ack, self.gated, self._probe_seq, self.key, sync
        )

    def on_reply(self, data: bytes, source: tuple[Any, ...], now: float) -> bool:
        """Feed one datagram; True if it was a valid reply of the target to a pending probe."""
        parsed = parse_reply(data)
        if parsed is None or self.address is None or not self.holder:
            return False
        nonce, identity, leader = parsed
        if self.key is not None and not verify("reply", data, self.key):
            self.rejected += 1
            if self.on_reject is not None:
                self.on_reject("mac", str(source[0]) if source else "?")
            return False
        if not source or not _same_ip(str(source[0]), self.address[0]):
            return False
        seq = self._pending.get(nonce)
        if seq is None or seq <= self._last_seq or identity != self.holder:
            return False
        # answered: this probe and every older one are done (a late reply is stale)
        self._last_seq = seq
        for old in [n for n, s in self._pending.items() if s <= seq]:
            del self._pending[old]
        if not leader:
            if self.armed:
                self.disowned = True
            return True
        if self.last_ok is None or now - self.last_ok >= self.timeout:
            self._run_start = now
        self.last_ok = now
        self._ack = nonce
        self.disowned = False
        if now - self._run_start >= self.arm_after:
            self.armed = True
        return True

    @property
    def limit(self) -> float:
        """The silence after which the holder is judged lost: shorter while gated."""
        return self.gated_timeout if self.gated else self.timeout

    def unreachable(self, holder: str, now: float) -> bool:
        if not holder or holder != self.holder or not self.armed or self.last_ok is None:
            return False
        return self.disowned or now - self.last_ok >= self.limit

    def heard_leading(self, holder: str, now: float) -> bool:
        """Whether ``holder`` answered "leading" within the limit (armed or not): while it
        does, no standby takes its Lease, expired or not."""
        return (
            bool(holder)
            and holder == self.holder
            and self.last_ok is not None
            and not self.disowned
            and now - self.last_ok < self.limit
        )

    def deadline(self) -> float | None:
        """When ``unreachable`` turns True if no reply comes (None: it cannot by silence)."""
        if not self.armed or self.disowned or self.last_ok is None:
            return None
        return self.last_ok + self.limit

    def lost_for(self, now: float) -> float:
        """Seconds since the last good reply (0 if none yet)."""
        return 0.0 if self.last_ok is None else max(0.0, now - self.last_ok)


# -- the responder -----------------------------------------------------------------------------
#
# Both ends run on threads of their own, not on the agent's event loop: a loop busy for a
# moment (decoding a large watch event, a converge) must neither make a live leader look dead
# nor make a standby misjudge a leader whose answers arrived meanwhile. Python hands the GIL
# over every few milliseconds, so a busy loop delays an answer by milliseconds, not by the
# length of its stall. The Lease stays the backstop for a process that is hung altogether.

RECV_TIMEOUT = 0.2  # the threads check for close() this often


def unmapped(ip: str) -> str:
    """An IPv4-mapped IPv6 address (::ffff:a.b.c.d) as the IPv4 address it is."""
    if ip.startswith("::ffff:"):
        with contextlib.suppress(ValueError):
            mapped = ipaddress.IPv6Address(ip).ipv4_mapped
            if mapped is not None:
                return str(mapped)
    return ip


def _bind_udp(host: str, port: int) -> socket.socket:
    """A UDP socket bound to (host, port); "0.0.0.0" becomes "::" with both families where
    the node has IPv6, else stays IPv4 only."""
    if host == "0.0.0.0" and socket.has_ipv6:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        except OSError:
            pass  # no IPv6 in this kernel or namespace: IPv4 only
        else:
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind(("::", port))
                return sock
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    raise
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class HeartbeatResponder:
    """Answers probes with this director's identity and whether it leads."""

    def __init__(
        self,
        identity: str,
        is_leader: Callable[[], bool],
        host: str = "0.0.0.0",
        port: int = DEFAULT_PEER_PORT,
        *,
        rate: float = DEFAULT_REPLY_RATE,
        clock: Callable[[], float] = time.monotonic,
        key: bytes | None = None,
        on_reject: Callable[[str, str], None] | None = None,
    ) -> None:
        if not valid_identity(identity):
            raise ValueError(f"identity must be 1-{MAX_IDENTITY} visible ASCII chars")
        self.identity = identity
        self.key = key  # the group's; None: unauthenticated
        self.on_reject = on_reject  # (reason "mac" or "replay", source address)
        # keyed: prober identity -> (its newest accepted seq, when); older seqs are replays
        self._seqs: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self.is_leader = is_leader
        self.host, self.port = host, port
        self.rate = rate
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # ip -> tokens, at
        # nonce -> when the "leading" reply to it was sent: an ack of it in a later probe
        # proves the prober heard us leading at that time or later
        self._leading_replies: OrderedDict[str, float] = OrderedDict()
        self._confirmed: dict[str, Confirmation] = {}  # prober identity -> newest proof
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._address: Address | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.replies = 0
        self.dropped = 0  # malformed or over the rate
        self.rejected = 0  # keyed: bad or missing MAC, or replayed (never charged a budget)

    @property
    def address(self) -> Address | None:
        """The bound (host, port) once started (port 0 resolved)."""
        return self._address

    async def start(self) -> None:
        """Bind (OSError if the port is taken) and answer on a thread of its own. The
        default host "0.0.0.0" binds both families where the node has IPv6 (the agent may
        publish either, e.g. its address on an IPv6 VIP's link)."""
        sock = _bind_udp(self.host, self.port)
        sock.settimeout(RECV_TIMEOUT)
        name = sock.getsockname()
        self._sock, self._address = sock, (str(name[0]), int(name[1]))
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._serve, args=(sock,), name="peer-responder", daemon=True
        )
        self._thread.start()
        log.info("heartbeat responder listening on %s", format_address(self._address))

    def confirmations(self) -> dict[str, Confirmation]:
        """Prober identity -> (its address, the send time of the newest "leading" reply it
        acknowledged), on this responder's clock."""
        with self._lock:
            return dict(self._confirmed)

    def close(self) -> None:
        """Stop answering at once (the thread ends within RECV_TIMEOUT)."""
        self._stop.set()
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _serve(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM + 1)
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    return
                log.debug("heartbeat responder: %s", exc)
                self._stop.wait(0.01)
                continue
            if self._stop.is_set():
                return  # closed while this probe was arriving: no answer
            self._on_probe(sock, data, addr)

    def _allow(self, ip: str) -> bool:
        """A token bucket per requesting address (burst = one second's worth)."""
        now = self._clock()
        tokens, at = self._buckets.pop(ip, (self.rate, now))
        tokens = min(self.rate, tokens + (now - at) * self.rate)
        allowed = tokens >= 1
        self._buckets[ip] = (tokens - 1 if allowed else tokens, now)
        while len(self._buckets) > _MAX_BUCKETS:
            self._buckets.popitem(last=False)
        return allowed

    def _fresh(self, probe: Probe) -> bool:
        """Keyed: whether an authentic probe is newer than every one accepted from its
        prober (else it is a recorded one sent again); records it."""
        if not probe.identity:
            return True  # anonymous: confirms nothing, no agent sends one
        now = self._clock()
        newest = self._seqs.get(probe.identity)
        if newest is not None and probe.seq <= newest[0] and now - newest[1] < FORGET_AFTER:
            return False
        self._seqs[probe.identity] = (probe.seq, now)
        self._seqs.move_to_end(probe.identity)
        while len(self._seqs) > _MAX_BUCKETS:
            self._seqs.popitem(last=False)
        return True

    def _reject(self, reason: str, ip: str) -> None:
        self.rejected += 1
        if self.on_reject is not None:
            self.on_reject(reason, ip)

    def _on_probe(self, sock: socket.socket, data: bytes, addr: tuple[Any, ...]) -> None:
        probe = parse_probe_full(data) if len(data) <= MAX_DATAGRAM else None
        if probe is None:
            self.dropped += 1
            return
        ip = unmapped(str(addr[0]))  # an IPv4 prober on the dual-stack socket: its IPv4
        # authenticity and freshness first: only a probe made with the key may spend its
        # source's reply budget, so a spoofer cannot exhaust the standby's
        if self.key is not None:
            if not verify("probe", data, self.key):
                self._reject("mac", ip)
                return
            if not self._fresh(probe):
                self._reject("replay", ip)
                return
        if not self._allow(ip):
            self.dropped += 1
            return
        self.note_ack(probe, ip)
        try:
            leader = bool(self.is_leader())
        except Exception as exc:  # never answer with a guess
            log.warning("heartbeat responder: is_leader failed: %s", exc)
            return
        sent_at = self._clock()
        try:
            sock.sendto(make_reply(probe.nonce, self.identity, leader, self.key), addr)
        except OSError as exc:
            log.debug("heartbeat reply to %s failed: %s", addr[0], exc)
            return
        self.replies += 1
        if leader and probe.identity:
            self._remember(probe.nonce, sent_at)

    def note_ack(self, probe: Probe, ip: str) -> None:
        """Record what a probe acknowledges, and whether its prober is gated (pure
        bookkeeping; the socket thread calls it)."""
        if not probe.identity:
            return
        with self._lock:
            known = self._confirmed.get(probe.identity)
            sent_at = self._leading_replies.get(probe.ack) if probe.ack else None
            if known is not None and known.address == ip:
                at = known.at if sent_at is None else max(known.at, sent_at)
            elif sent_at is not None:
                at = sent_at
            else:
                return  # no proof from this address yet
            confirmation = Confirmation(ip, at, probe.gated, probe.sync)
            if confirmation != known:
                self._confirmed[probe.identity] = confirmation
                while len(self._confirmed) > _MAX_BUCKETS:
                    self._confirmed.pop(next(iter(self._confirmed)))

    def _remember(self, nonce: str, sent_at: float) -> None:
        with self._lock:
            self._leading_replies[nonce] = sent_at
            while len(self._leading_replies) > _MAX_REMEMBERED:
                self._leading_replies.popitem(last=False)


# -- the monitor -------------------------------------------------------------------------------


class HeartbeatMonitor:
    """Probes the current Lease holder; ``on_lost()`` once (on the event loop that called
    ``start()``) when it stops answering."""

    def __init__(
        self,
        on_lost: Callable[[], None] | None = None,
        *,
        interval: float = DEFAULT_PEER_INTERVAL,
        timeout: float = DEFAULT_PEER_TIMEOUT,
        arm_after: float = DEFAULT_ARM_AFTER,
        clock: Callable[[], float] = time.monotonic,
        identity: str = "",
        key: bytes | None = None,
        on_reject: Callable[[str, str], None] | None = None,
        on_suspect: Callable[[], None] | None = None,
        suspect_lead: float = 0.1,
        probing: bool = True,
    ) -> None:
        if not 0 < interval < timeout:
            raise ValueError(
                f"heartbeat interval ({interval}s) must be > 0 and below the timeout ({timeout}s)"
            )
        self.on_lost = on_lost
        # on_suspect(): once per silence, ``suspect_lead`` before the holder is judged lost
        # (armed standbys only), so a takeover's checks can start early
        self.on_suspect = on_suspect
        self.suspect_lead = suspect_lead  # at most half the limit: effective_lead
        self._suspect_fired = False
        self.interval = interval
        self.health = PeerHealth(
            timeout=timeout, arm_after=arm_after, identity=identity, key=key, on_reject=on_reject
        )
        self._clock = clock
        # the health state is shared by the loop (set_target, unreachable) and the thread
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._socks: dict[int, socket.socket] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_probe = 0.0
        self._lost_fired = False
        self._closed = False
        # Every probe is a confirmation the holder may list us by, and then its hold depends
        # on our next ones: an agent still starting (imports, first kernel read) probes
        # irregularly, so it starts probing only once it has settled (start_probing()).
        self._probing = probing
        self.probes = 0
        self.replies = 0
        self.send_errors = 0

    # -- public --------------------------------------------------------------------------------

    def set_target(self, holder: str, address: Address | None) -> None:
        """Probe ``holder`` at ``address`` (None or holder "": probe nobody)."""
        if not holder:
            holder, address = "", None
        with self._lock:
            changed = self.health.target(holder, address)
            if changed:
                self._lost_fired = False
                self._next_probe = 0.0
        if changed:
            self._poke()
            log.debug(
                "heartbeat target %r at %s",
                holder,
                format_address(address) if address else "-",
            )

    def follow(self, holder: str, annotations: Mapping[str, str], identity: str) -> None:
        """Target the holder of a Lease record (nobody if it is free or ours)."""
        if not holder or holder == identity:
            self.set_target("", None)
            return
        address: Address | None = None
        raw = annotations.get(HEARTBEAT_ANNOTATION)
        if raw:
            try:
                address = parse_address(raw)
            except ValueError as exc:
                log.debug("ignoring the Lease's heartbeat annotation: %s", exc)
            if address is not None and ipaddress.ip_address(address[0]).is_unspecified:
                address = None
        self.set_target(holder, address)
        # a holder that writes the sync record understands the sync= field (peer.py,
        # "Extension fields"); one of an older version would drop our probes
        understood = contract.parse_sync(annotations.get(contract.SYNC_ANNOTATION)).leader
        with self._lock:
            self.health.extensions = understood == holder

    def start_probing(self) -> None:
        """Begin probing the holder (a monitor made with ``probing=False``)."""
        if not self._probing:
            self._probing = True
            self._poke()
            log.info("probing the Lease holder's heartbeat")

    @property
    def probing(self) -> bool:
        return self._probing

    def unreachable(self, holder: str) -> bool:
        with self._lock:
            return self.health.unreachable(holder, self._clock())

    def heard_leading(self, holder: str) -> bool:
        with self._lock:
            return self.health.heard_leading(holder, self._clock())

    async def start(self) -> None:
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._closed = False
            self._thread = threading.Thread(target=self._run, name="peer-monitor", daemon=True)
            self._thread.start()

    async def close(self) -> None:
        self._closed = True
        self._poke()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, 2.0)
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()

    # -- the thread ----------------------------------------------------------------------------

    def suspect_with(self, callback: Callable[[], None], lead: float) -> None:
        """Call ``callback`` once per silence, ``lead`` seconds (at most half the limit)
        before the holder is judged lost: long enough for the takeover's own check to be
        done by then."""
        self.on_suspect = callback
        self.suspect_lead = lead

    @property
    def effective_lead(self) -> float:
        """The suspicion's lead: longer than half the limit, it would suspect a holder that
        missed a reply or two."""
        return min(self.suspect_lead, self.health.limit / 2)

    def _poke(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _run(self) -> None:
        while not self._closed:
            try:
                self._step()
            except Exception:  # never die silently: the standby would fall back to expiry
                log.exception("peer heartbeat monitor failed; retrying")
                time.sleep(self.interval)

    def _step(self) -> None:
        """Send the probe that is due, check the holder, wait for answers or the next event."""
        with self._lock:
            address = self.health.address
        if address is None or not self._probing:
            self._wait(RECV_TIMEOUT * 5)
            return
        now = self._clock()
        if now >= self._next_probe:
            with self._lock:
                probe = self.health.next_probe(now)
            self._send(address, probe)
            now = self._clock()
            self._next_probe = now + self.interval
        # replies that queued while this thread was not running count before any judgement
        # (a thread starved for longer than the limit must not judge from stale state)
        self._wait(0)
        now = self._clock()
        self._check(now)
        wake = self._next_probe
        with self._lock:
            deadline = self.health.deadline()
        if deadline is not None and not self._lost_fired:
            wake = min(wake, deadline)
            if not self._suspect_fired:
                wake = min(wake, deadline - self.effective_lead)
        self._wait(max(0.005, wake - self._clock()))

    def _wait(self, timeout: float) -> None:
        """Until ``timeout``, a poke, or answers (which are processed)."""
        ready, _, _ = select.select([self._wake_r, *self._socks.values()], [], [], timeout)
        for sock in ready:
            if sock is self._wake_r:
                with contextlib.suppress(OSError):
                    while sock.recv(64):
                        pass
                continue
            self._drain(sock)

    def _drain(self, sock: socket.socket) -> None:
        for _ in range(64):  # bounded: a flood cannot keep the thread here
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM + 1)
            except BlockingIOError:
                return
            except OSError:
                self.send_errors += 1  # ICMP unreachable and the like: a missing reply
                return
            self._on_datagram(data, addr)

    def _send(self, address: Address, data: bytes) -> None:
        self.probes += 1
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        try:
            sock = self._socks.get(family)
            if sock is None:
                sock = socket.socket(family, socket.SOCK_DGRAM)
                sock.setblocking(False)
                sock.bind(("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))
                self._socks[family] = sock
            sock.sendto(data, address)
        except (OSError, ValueError) as exc:
            self.send_errors += 1
            log.debug("heartbeat probe to %s failed: %s", format_address(address), exc)

    def _on_datagram(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if len(data) > MAX_DATAGRAM:
            return
        now = self._clock()
        with self._lock:
            good = self.health.on_reply(data, addr, now)
        if good:
            self.replies += 1
            self._check(now)

    def _check(self, now: float) -> None:
        with self._lock:
            health = self.health
            deadline = health.deadline()
            suspect = deadline is not None and now >= deadline - self.effective_lead
            if not suspect:
                self._suspect_fired = False
            elif not self._suspect_fired:
                self._suspect_fired = True
                self._tell(self._call_on_suspect)
            if not health.unreachable(health.holder, now):
                self._lost_fired = False  # (answering again:) a later loss fires again
                return
            if self._lost_fired:
                return
            self._lost_fired = True
            holder, disowned, silent = health.holder, health.disowned, health.lost_for(now)
        log.info(
            "peer heartbeat lost: %r %s",
            holder,
            "no longer leads" if disowned else f"silent for {silent:.2f}s",
        )
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
                loop.call_soon_threadsafe(self._call_on_lost)

    def _tell(self, callback: Callable[[], None]) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
                loop.call_soon_threadsafe(callback)

    def _call_on_suspect(self) -> None:
        if self.on_suspect is not None:
            try:
                self.on_suspect()
            except Exception:
                log.exception("heartbeat on_suspect callback failed")

    def _call_on_lost(self) -> None:
        if self.on_lost is not None:
            try:
                self.on_lost()
            except Exception:
                log.exception("heartbeat on_lost callback failed")
