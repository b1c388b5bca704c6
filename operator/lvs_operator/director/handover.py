"""Planned handover without losing connections in flight.

When the leader stops (SIGTERM: a rolling update, a drained node) the standby takes the VIPs
and announces them; from then on the client side's switch or router sends *every* packet for
a VIP to the new leader, including the rest of the connections the old leader forwarded. The
new leader's IPVS has never seen those connections (and the real servers know them by the
old leader's source address), so without help each of them is reset: with a client sending a
request every 50 ms, about one request in two handovers was lost.

The handover keeps them on the old leader:

1. **Old leader** (``retire``): each VIP moves from its interface to ``lo`` (added there
   first, so it is never missing): the old leader still accepts, and its IPVS still serves,
   any packet sent to it for the VIP. Just before, it installs the nftables table ``arp
   lvs_operator_handover_arp`` (``render_arp_filter``) so that it no longer answers ARP for
   the VIP, nor names it as the sender of its own ARP requests -- what ``arp_ignore=1`` /
   ``arp_announce=2`` would do, but NET_ADMIN suffices where ``/proc/sys`` is read-only (the
   shipped pod). IPv6 needs nothing: the kernel answers neighbour solicitations only for
   addresses of the receiving interface (``ndisc_recv_ns`` looks the target up strictly on
   that device) and picks a solicitation's source among that interface's addresses, so a
   VIP on ``lo`` is never answered for or announced. It then releases the Lease with a
   ``lvs.io/handover`` annotation: which VIPs, and its own address on each VIP's link.
2. **New leader** (``render_relay_table`` / ``install_relays``), before it adds and announces
   the VIPs: an nftables ``netdev`` ingress table on each VIP interface remembers the
   connections whose SYN it sees (``seen`` sets), and forwards every other TCP packet for a
   VIP -- the rest of a connection that began on the old leader -- unchanged at layer 2 to
   the old leader (``fwd ... to``). That ends after ``drain`` seconds (the table is deleted).
3. **Old leader** waits until none of its connections to the VIPs is established for a
   moment (``drained``) and another director answers ARP for each VIP (announced there),
   bounded by ``drain`` seconds, then removes the VIPs from ``lo``, deletes its ARP filter
   and exits (an agent starting deletes one left by an agent that died during a drain). The
   answers of the relayed connections go from the old leader straight to the client (source:
   the VIP).

UDP is not relayed: a datagram after the switch is scheduled by the new leader, as it would
be without a handover. A crash has no handover (nothing runs on the dead node to relay to).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from lvs_operator.api import contract

from .kernel import addresses, nft

if TYPE_CHECKING:
    from .election import Elector
    from .ipvs_sync import Connections
    from .lanes import Lane
    from .vip_owner import VipOwner

log = logging.getLogger("lvs_operator.director.handover")

HANDOVER_ANNOTATION = contract.HANDOVER_ANNOTATION
RELAY_TABLE = "lvs_operator_handover"
DEFAULT_DRAIN = 10.0
# A handover older than this (by the wall clocks of two nodes) is ignored: clock skew
# between nodes is tolerated up to it, and a stale annotation left on the Lease never
# starts a relay.
MAX_AGE = 30.0
# the old leader's ARP filter while it keeps VIPs on lo (family arp: NET_ADMIN, no sysctl)
ARP_FILTER_TABLE = "lvs_operator_handover_arp"
LOOPBACK = "lo"


@dataclass(frozen=True)
class Handover:
    """What the old leader writes on the Lease when it releases it."""

    source: str  # the identity (node name) of the director handing over
    at: float  # its wall clock when it released the Lease (epoch seconds)
    drain: float  # seconds the new leader relays for
    relays: Mapping[str, str] = field(default_factory=dict)  # vip -> old leader's address

    def to_annotation(self) -> str:
        return json.dumps(
            {
                "from": self.source,
                "at": round(self.at, 3),
                "drain": self.drain,
                "relays": dict(sorted(self.relays.items())),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_annotation(cls, text: str | None) -> Handover | None:
        """The annotation's handover; None when absent or malformed (logged)."""
        if not text:
            return None
        try:
            data = json.loads(text)
            relays = {
                str(ipaddress.ip_address(vip)): str(ipaddress.ip_address(via))
                for vip, via in dict(data.get("relays") or {}).items()
            }
            handover = cls(
                source=str(data["from"]),
                at=float(data["at"]),
                drain=float(data["drain"]),
                relays=relays,
            )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("ignoring a malformed %s annotation: %s", HANDOVER_ANNOTATION, exc)
            return None
        if not handover.source or handover.drain <= 0:
            return None
        return handover

    def applies(self, identity: str, now: float) -> bool:
        """Whether a director ``identity`` taking the Lease at wall time ``now`` relays."""
        return self.source != identity and bool(self.relays) and now - self.at < MAX_AGE


@dataclass(frozen=True)
class Relay:
    """Forward the old leader's connections to ``vips`` arriving on ``ifname`` to ``via``."""

    ifname: str
    via: str
    vips: tuple[str, ...]

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.via).version


def plan_relays(handover: Handover, placements: Mapping[str, str]) -> list[Relay]:
    """One relay per (interface, old leader address); VIPs this director does not place,
    or whose relay address is of the other family, are left out."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for vip, via in handover.relays.items():
        ifname = placements.get(vip)
        if ifname is None or ifname == LOOPBACK:
            continue
        if ipaddress.ip_address(vip).version != ipaddress.ip_address(via).version:
            continue
        grouped.setdefault((ifname, via), []).append(vip)
    return [
        Relay(ifname, via, tuple(sorted(vips, key=ipaddress.ip_address)))
        for (ifname, via), vips in sorted(grouped.items())
    ]


def _quote(ifname: str) -> str:
    if not ifname or any(c in ifname for c in '"\\ \n;{}'):
        raise ValueError(f"unusable interface name {ifname!r}")
    return f'"{ifname}"'


def render_relay_table(
    relays: Iterable[Relay], seen_timeout: float, table: str = RELAY_TABLE
) -> str:
    """The nftables script (table ``netdev lvs_operator_handover``, created fresh)."""
    timeout = max(1, int(seen_timeout + 0.999))
    lines = [f"table netdev {table} {{"]
    for fam, addr in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        lines += [
            f"  set seen{fam} {{",
            f"    type {addr} . inet_service . {addr} . inet_service",
            f"    flags dynamic,timeout; timeout {timeout}s; size 262144",
            "  }",
        ]
    for n, relay in enumerate(relays):
        ip = "ip" if relay.family == 4 else "ip6"
        fam = relay.family
        vips = ", ".join(relay.vips)
        flow = f"{ip} saddr . tcp sport . {ip} daddr . tcp dport"
        dev = _quote(relay.ifname)
        lines += [
            f"  chain relay{n} {{",
            f"    type filter hook ingress device {dev} priority -500; policy accept;",
            # a connection that starts here is this director's own: a client's SYN, or a
            # real server's SYN-ACK to the VIP (masqueradeSource: VIP, the real servers
            # answer the VIP: for the old leader's connections they are relayed below)
            f"    {ip} daddr {{ {vips} }} tcp flags & syn == syn update @seen{fam} {{ {flow} }}",
            # the rest of one that did not: the old leader's, send it there
            f"    {ip} daddr {{ {vips} }} tcp flags & syn == 0 {flow} != @seen{fam} "
            f"fwd {ip} to {relay.via} device {dev}",
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- the old leader's side ------------------------------------------------------------------------


def render_arp_filter(
    vips: Iterable[str], link_addresses: Mapping[str, str], table: str = ARP_FILTER_TABLE
) -> str:
    """The nftables script (table ``arp lvs_operator_handover_arp``, created fresh) that keeps
    the old leader's ARP quiet about the IPv4 ``vips`` it keeps on lo while it drains, on
    its output hook (the frames its kernel sends; the agent's own probes go through packet
    sockets and are not filtered):

    - a reply whose sender is a VIP is dropped: the new leader answers for it;
    - a request whose sender is a VIP (the kernel resolving a next hop for an answer sent from
      the VIP, with ``arp_announce=0``) gets this node's own address on that link
      (``link_addresses``: interface -> address) as its sender, as ``arp_announce=2`` would:
      dropping it would leave the relayed connections without a next hop, sending it as is
      would re-point the neighbours' entry for the VIP at this node;
    - anything else naming a VIP as its sender (a link without an address of ours) is
      dropped."""
    v4 = sorted({str(ipaddress.IPv4Address(v)) for v in vips}, key=ipaddress.ip_address)
    if not v4:
        raise ValueError("no IPv4 VIP to filter ARP for")
    lines = [
        f"table arp {table} {{",
        f"  set vips {{ type ipv4_addr; elements = {{ {', '.join(v4)} }} }}",
        "  chain output {",
        "    type filter hook output priority filter; policy accept;",
        "    arp operation reply arp saddr ip @vips drop",
    ]
    for ifname, address in sorted(link_addresses.items()):
        source = ipaddress.IPv4Address(address)
        lines.append(f"    oifname {_quote(ifname)} arp saddr ip @vips arp saddr ip set {source}")
    lines += ["    arp saddr ip @vips drop", "  }", "}"]
    return "\n".join(lines) + "\n"


@dataclass
class DrainWatch:
    """Whether the old leader's relayed connections are done: no established connection to
    the VIPs for ``quiet`` seconds in a row (a connection in its handshake becomes
    established later, so one look at zero is not enough)."""

    quiet: float = 1.0
    _zero_since: float | None = None

    def observe(self, established: int, now: float) -> bool:
        if established > 0:
            self._zero_since = None
            return False
        if self._zero_since is None:
            self._zero_since = now
        return now - self._zero_since >= self.quiet


def wall_clock() -> float:
    return time.time()


class HandoverKernel:
    """The node side of a handover (the agent's unit tests replace it with a fake)."""

    def __init__(self, netns: str | None = None, run: nft.NftRunner = nft.nft) -> None:
        self.netns = netns
        self.run = run

    def link_address(self, ifname: str, version: int, exclude: Iterable[str]) -> str | None:
        return addresses.link_address(ifname, version, exclude)

    def filter_arp(self, vips: list[str], link_addresses: Mapping[str, str]) -> None:
        script = render_arp_filter(vips, link_addresses)
        nft.replace_table("arp", ARP_FILTER_TABLE, script, self.netns, self.run)

    def remove_arp_filter(self) -> bool:
        return nft.delete_table("arp", ARP_FILTER_TABLE, self.netns, self.run)

    def install_relays(self, relays: list[Relay], seen_timeout: float) -> None:
        script = render_relay_table(relays, seen_timeout)
        nft.replace_table("netdev", RELAY_TABLE, script, self.netns, self.run)

    def remove_relays(self) -> bool:
        return nft.delete_table("netdev", RELAY_TABLE, self.netns, self.run)

    def warm(self) -> bool:
        """Check (apply nothing) a relay table and an ARP filter like a handover's, on lo
        and under other names: the handover's own transactions then skip the library's first
        use (nft.warm). False: nothing to warm (no library)."""
        relay = render_relay_table(WARM_RELAYS, DEFAULT_DRAIN, WARM_TABLE)
        arp = render_arp_filter(["192.0.2.1"], {"lo": "192.0.2.2"}, WARM_TABLE)
        return nft.warm(
            [nft.replacing("netdev", WARM_TABLE, relay), nft.replacing("arp", WARM_TABLE, arp)],
            self.netns,
        )


# placeholders for HandoverKernel.warm (documentation addresses; the check applies nothing)
WARM_TABLE = "lvs_operator_warmup"
WARM_RELAYS = (
    Relay(ifname="lo", via="192.0.2.2", vips=("192.0.2.1",)),
    Relay(ifname="lo", via="2001:db8::2", vips=("2001:db8::1",)),
)


class HandoverNode(Protocol):
    """The node side of a handover (``HandoverKernel``; a fake in the unit tests)."""

    def link_address(self, ifname: str, version: int, exclude: Iterable[str]) -> str | None: ...

    def filter_arp(self, vips: list[str], link_addresses: Mapping[str, str]) -> None:
        """Replace the old leader's ARP filter (``render_arp_filter``)."""
        ...

    def remove_arp_filter(self) -> bool:
        """Delete it; False if there was none."""
        ...

    def install_relays(self, relays: list[Relay], seen_timeout: float) -> None: ...

    def remove_relays(self) -> bool: ...

    def warm(self) -> bool:
        """Prepare the handover's nftables transactions ahead of time (HandoverKernel.warm);
        False: nothing to prepare."""
        ...


async def warm_up(node: HandoverNode) -> None:
    """At start-up, on a thread of its own (not the VIP lane, where the start-up's VIP
    work runs): check a relay table and an ARP filter, so that a handover's own nftables
    transactions do not pay for the library's first use. A planned handover waits on
    them: a new leader's first relay table took 1.9 s in a loaded test VM, and the VIPs
    were added after it. A refusal here is what a handover would meet: said now."""
    start = time.monotonic()
    try:
        warmed = await asyncio.to_thread(node.warm)
    except Exception as exc:
        log.warning(
            "nftables refuses the handover's tables here: a planned handover will not "
            "relay connections in flight (they may be reset): %s",
            exc,
        )
        return
    if warmed:
        log.info(
            "handover's nftables transactions prepared",
            extra={"seconds": round(time.monotonic() - start, 3)},
        )


class PlannedHandover:
    """The whole sequence: the old leader retires its VIPs to lo and notes the handover on
    the Lease; the new leader relays; the old leader drains, then drops the VIPs."""

    def __init__(
        self,
        identity: str,
        drain: float,
        node: HandoverNode,
        vips: VipOwner,
        elector: Elector,
        lane: Lane,
        connections: Callable[[], Awaitable[Connections | None]],
        on_relay: Callable[[], None],
    ) -> None:
        self.identity = identity
        self.drain_seconds = drain  # 0: no relay, the VIPs go before the release
        self.node = node
        self.vips = vips
        self.elector = elector
        self.lane = lane
        self.connections = connections
        self.on_relay = on_relay
        self._arp_filtered = False  # the old leader's ARP filter is installed
        self._relay_end: asyncio.Task[None] | None = None

    async def clean_leftover(self) -> None:
        """At start-up: a relay or an ARP filter left by an agent that died during a handover
        goes (a filter left would keep this node from answering ARP for a VIP it takes)."""
        for remove, what in (
            (self.node.remove_relays, "relay table"),
            (self.node.remove_arp_filter, "ARP filter"),
        ):
            try:
                if await self.lane.run(remove):
                    log.info("removed a handover %s left by an earlier agent", what)
            except Exception as exc:
                log.warning("cannot check for a handover %s: %s", what, exc)

    # -- the new leader ------------------------------------------------------------------------

    async def start_relay(self) -> bool:
        """When the Lease just taken carries a fresh handover note from another director,
        relay that director's connections in flight back to it (before the VIPs are
        announced here), for the note's drain time. True when a note was there (a planned
        handover, relayed or not), False for a takeover without one (a crash)."""
        record = self.elector.record
        if record is None:
            return False
        note = Handover.from_annotation(record.annotations.get(HANDOVER_ANNOTATION))
        if note is None or not note.applies(self.identity, wall_clock()):
            return False
        self.elector.set_annotation(HANDOVER_ANNOTATION, "")  # used: clear it
        relays = plan_relays(note, self.vips.placements)
        if not relays:
            return True
        asked = time.monotonic()
        ran: list[float] = []

        def install() -> None:
            start = time.monotonic()
            try:
                self.node.install_relays(relays, note.drain + 60)
            finally:
                ran.extend([start - asked, time.monotonic() - start])

        try:
            await self.lane.run(install)
        except Exception as exc:
            log.warning(
                "cannot relay the old leader's connections (they may be reset): %s",
                exc,
                extra={"from": note.source},
            )
            return True
        self.on_relay()
        log.info(
            "relaying the old leader's connections in flight",
            extra={
                "from": note.source,
                "vips": [v for r in relays for v in r.vips],
                "via": sorted({r.via for r in relays}),
                "seconds": note.drain,
                # queued behind other VIP-lane work, then the nftables transaction itself
                "install_waited": round(ran[0], 3),
                "install_took": round(ran[1], 3),
            },
        )
        if self._relay_end is not None:
            self._relay_end.cancel()
        self._relay_end = asyncio.create_task(self._end_relay(note.drain))
        return True

    async def _end_relay(self, after: float) -> None:
        await asyncio.sleep(after)
        try:
            if await self.lane.run(self.node.remove_relays):
                log.info("relay to the old leader ended")
        except Exception as exc:
            log.warning("cannot remove the relay table: %s", exc)

    async def stop_relay(self) -> None:
        """Stopping while relaying: the relay goes with us."""
        if self._relay_end is not None and not self._relay_end.done():
            self._relay_end.cancel()
            try:
                await self.lane.run(self.node.remove_relays)
            except Exception as exc:
                log.warning("cannot remove the relay table: %s", exc)

    # -- the old leader ------------------------------------------------------------------------

    async def retire(self) -> None:
        """On SIGTERM: move each VIP to lo, stop answering ARP for it, and put the handover
        note (this node's address on each VIP's link) on the Lease for the release."""
        exclude = self.vips.not_node_addresses()
        addresses: dict[tuple[str, int], str | None] = {}  # one lookup per link and family
        # the Lease is released after this: where its time goes, in the log
        start = time.monotonic()
        marks: dict[str, float] = {}

        async def relay_via(vip: str, ifname: str) -> str | None:
            version = ipaddress.ip_address(vip).version
            if (ifname, version) not in addresses:
                addresses[ifname, version] = await self.lane.run(
                    self.node.link_address, ifname, version, exclude
                )
            via = addresses[ifname, version]
            if via is None:
                log.warning(
                    "no address of this node on the VIP's interface: its connections in "
                    "flight are not relayed",
                    extra={"vip": vip, "interface": ifname},
                )
                return None
            return via

        async def before_move(plan: Mapping[str, tuple[str, str]]) -> None:
            """Quiet this node's ARP for the IPv4 VIPs before they go to lo: from then on
            the kernel would answer for them on any interface."""
            marks["filter_at"] = time.monotonic()
            v4 = {vip: link for vip, link in plan.items() if ipaddress.ip_address(vip).version == 4}
            if not v4:
                return
            sources = {ifname: via for ifname, via in v4.values()}
            try:
                await self.lane.run(self.node.filter_arp, sorted(v4), sources)
            except Exception as exc:
                log.warning(
                    "handover: cannot filter ARP for the VIPs on lo (this node may answer ARP "
                    "for them while it drains): %s",
                    exc,
                    extra={"vips": sorted(v4)},
                )
                return
            self._arp_filtered = True
            log.info(
                "handover: this node's ARP for the VIPs filtered while they are on lo",
                extra={"vips": sorted(v4), "table": f"arp {ARP_FILTER_TABLE}"},
            )

        relays = await self.vips.retire(relay_via, before_move)
        if relays:
            note = Handover(
                source=self.identity, at=wall_clock(), drain=self.drain_seconds, relays=relays
            )
            self.elector.set_annotation(HANDOVER_ANNOTATION, note.to_annotation())
            filter_at = marks.get("filter_at", start)
            log.info(
                "handing over: VIPs moved to lo, connections in flight stay here",
                extra={
                    "vips": sorted(relays),
                    "seconds": self.drain_seconds,
                    # announcements stopped and addresses looked up; ARP filter and moves
                    "before_filter_s": round(filter_at - start, 3),
                    "filter_and_move_s": round(time.monotonic() - filter_at, 3),
                },
            )

    async def drain(self) -> None:
        """After the release: wait until no connection to the retired VIPs is established
        (for a moment) *and* another director answers ARP for each of them, at most
        ``drain`` seconds; then drop them and restore the sysctls.

        Both, because short connections are rarely seen established by a poll: while the new
        leader is still getting ready (its relay and VIPs took over 1 s in a loaded test VM)
        clients keep sending to this node, which looks idle. Dropping the VIPs then left
        nobody serving them (a request failed in the gap); until they are announced
        elsewhere, this node keeps serving them from lo."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        end = t0 + self.drain_seconds
        watch = DrainWatch(quiet=min(1.0, self.drain_seconds / 4))
        vips = set(self.vips.retired)
        established, taken_over, readable, probed = 0, False, True, False
        while loop.time() < end:
            try:
                conns = await self.connections()
            except Exception as exc:
                log.warning("handover: cannot read the connections: %s", exc)
                readable = False
                break
            established = sum(
                n for (service, _), n in (conns or {}).items() if service.address in vips
            )
            if watch.observe(established, loop.time()):
                # probed only once quiet; a takeover, once seen, stays seen
                probed = True
                taken_over = taken_over or vips <= await self.vips.answered_retired()
                if taken_over:
                    break
            await asyncio.sleep(0.2)
        extra = {"seconds": round(loop.time() - t0, 2), "established": established}
        if established == 0 and taken_over:
            log.info("handover drained", extra=extra)
        elif readable and probed and not taken_over:
            log.warning(
                "handover drain time is up and no other director answers for the VIPs: "
                "dropping them (check the new leader's log)",
                extra=extra | {"vips": sorted(vips)},
            )
        else:
            log.info("handover drain time is up", extra=extra)
        await self.vips.drop_retired()
        if self._arp_filtered:  # after the VIPs left lo: never a moment answering for them
            try:
                await self.lane.run(self.node.remove_arp_filter)
                log.info("handover ARP filter removed", extra={"table": f"arp {ARP_FILTER_TABLE}"})
            except Exception as exc:
                log.warning(
                    "cannot remove the handover ARP filter (the next agent here removes it): %s",
                    exc,
                    extra={"table": f"arp {ARP_FILTER_TABLE}"},
                )
            self._arp_filtered = False
