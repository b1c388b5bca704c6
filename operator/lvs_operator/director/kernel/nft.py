"""nftables: the source NAT that masquerade forwarding needs in Kubernetes, and the handover's
tables (rendered by handover.py): the new leader's relay, the old leader's ARP filter.

Commands go to libnftables in this process (ctypes, one context per thread and network
namespace) and, where that library cannot be loaded, to the ``nft`` command. The library is
the default because a handover waits on it: in the TCG test VM one ``nft`` process took
0.5-1.5 s to start, the same transaction through the library 0.01-0.06 s.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import ipaddress
import json
import subprocess
import threading
from collections.abc import Iterable, Set
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from lvs_operator.director.table import Forwarding, IpvsTable, ServiceEntry, ServiceKey

from .netns import in_netns

NFT_TABLE = "lvs_operator"
LIBNFTABLES = "libnftables.so.1"  # Debian's libnftables1, which the nft command itself uses
_OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON (nftables/libnftables.h)


class NftError(RuntimeError):
    """An nftables command failed."""


class _Libnftables:
    """libnftables through ctypes: ``run`` takes what ``nft -f`` would read."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_int
        lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_output_set_flags.restype = None
        lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
        lib.nft_ctx_set_dry_run.restype = None
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_char_p
        self.lib = lib
        # contexts are not thread-safe, and each talks to the namespace it was made in
        self._local = threading.local()

    def _context(self, netns: str | None) -> int:
        contexts: dict[str | None, int] = self._local.__dict__.setdefault("contexts", {})
        ctx = contexts.get(netns)
        if ctx is None:
            ctx = self.lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
            if not ctx:
                raise NftError("libnftables: nft_ctx_new failed")
            self.lib.nft_ctx_buffer_output(ctx)
            self.lib.nft_ctx_buffer_error(ctx)
            contexts[netns] = ctx
        return ctx

    def run(self, commands: str, netns: str | None, json_output: bool, check: bool = False) -> str:
        """``check``: parse and evaluate, and let the kernel validate the transaction, but
        apply nothing (``nft --check``)."""
        with in_netns(netns):
            ctx = self._context(netns)
            flags = self.lib.nft_ctx_output_get_flags(ctx) & ~_OUTPUT_JSON
            self.lib.nft_ctx_output_set_flags(ctx, flags | (_OUTPUT_JSON if json_output else 0))
            self.lib.nft_ctx_set_dry_run(ctx, check)
            try:
                rc = self.lib.nft_run_cmd_from_buffer(ctx, commands.encode())
            finally:
                if check:
                    self.lib.nft_ctx_set_dry_run(ctx, False)
            out = (self.lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
            err = (self.lib.nft_ctx_get_error_buffer(ctx) or b"").decode()
        if rc != 0:
            raise NftError(f"nft: {err.strip() or f'failed ({rc})'}\n{_first_line(commands)}")
        return out


def _first_line(commands: str) -> str:
    return commands.strip().splitlines()[0] if commands.strip() else ""


_library: _Libnftables | None = None
_library_loaded = False
_library_lock = threading.Lock()


def _libnftables() -> _Libnftables | None:
    global _library, _library_loaded
    with _library_lock:
        if not _library_loaded:
            _library_loaded = True
            try:
                _library = _Libnftables(ctypes.CDLL(LIBNFTABLES))
            except (OSError, AttributeError):
                _library = None  # no library (or too old): the nft command
        return _library


def nft(commands: str, netns: str | None = None, *, json_output: bool = False) -> str:
    """Run nftables ``commands`` (what ``nft -f`` reads: one transaction) in ``netns`` and
    return what they print (JSON with ``json_output``)."""
    library = _libnftables()
    if library is not None:
        return library.run(commands, netns, json_output)
    argv = ["nft", *(["-j"] if json_output else []), "-f", "-"]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    r = subprocess.run(argv, input=commands, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise NftError(f"{' '.join(argv)}: {r.stderr.strip()}\n{_first_line(commands)}")
    return r.stdout


def warm(scripts: Iterable[str], netns: str | None = None) -> bool:
    """Run each of ``scripts`` once as a check (nothing applied) through the library, so that
    a later transaction of the same kind does not pay for the library's first use. In the
    TCG test VM the first relay table of a process took 0.17-1.3 s, the same table after a
    warm-up 0.03 s; a handover waits on it. False without the library (the ``nft`` command
    runs each time: nothing to warm). Raises NftError if a script is refused: what a real
    transaction of that kind would then meet."""
    library = _libnftables()
    if library is None:
        return False
    for script in scripts:
        library.run(script, netns, json_output=False, check=True)
    return True


class NftRunner(Protocol):
    """What runs nftables commands (``nft`` above; a fake in the unit tests)."""

    def __call__(
        self, commands: str, netns: str | None = None, *, json_output: bool = False
    ) -> str: ...


def masquerade_targets(table: IpvsTable) -> tuple[list[str], list[str]]:
    """(VIPs, destination addresses) of the services with masquerade destinations."""
    vips, dests = set(), set()
    for entry in table.values():
        for d in entry.destinations:
            if d.forwarding is Forwarding.MASQUERADE:
                vips.add(entry.service.address)
                dests.add(d.address)
    return sorted(vips), sorted(dests)


# a service as the nftables sets name it: (address, "tcp" | "udp" | "sctp", port)
VipService = tuple[str, str, int]


# what one service adds to the targets: its VIP (None: no masquerade destination), its
# masquerade destinations' addresses, and itself as a VIP-sourced service (None: not one)
_Contribution = tuple[str | None, frozenset[str], VipService | None]


def _contribution(entry: ServiceEntry, sourced: bool) -> _Contribution:
    masquerade = frozenset(
        d.address for d in entry.destinations if d.forwarding is Forwarding.MASQUERADE
    )
    if not masquerade:
        return None, frozenset(), None
    service = entry.service
    vip_service = None
    if sourced:
        address = str(ipaddress.ip_address(service.address))
        vip_service = (address, str(service.protocol).lower(), service.port)
    return service.address, masquerade, vip_service


class MasqueradeTargets:
    """``masquerade_targets`` and ``vip_sourced_services`` of the tables a converge programs,
    kept per service: an entry the last table had (the very object) costs a look, so a
    converge that changed a few services costs those, not a pass over every destination
    (at 1,000 services x 10 that pass and the comparison took ~6 ms of Python per converge
    on the host). Addresses are counted: one that two services use stays until neither
    does."""

    def __init__(self) -> None:
        self._seen: dict[ServiceKey, tuple[ServiceEntry, bool, _Contribution]] = {}
        self._vips: collections.Counter[str] = collections.Counter()
        self._dests: collections.Counter[str] = collections.Counter()
        self._sourced: collections.Counter[VipService] = collections.Counter()

    def update(self, table: IpvsTable, vip_sourced: Set[ServiceKey]) -> bool:
        """Take ``table`` (and which of its services are VIP-sourced) in; whether the VIPs,
        the destinations or the VIP-sourced services changed."""
        touched: dict[tuple[str, object], bool] = {}
        entries = table.entries
        for key in [k for k in self._seen if k not in entries]:
            self._count(self._seen.pop(key)[2], -1, touched)
        for key, entry in entries.items():
            sourced = key in vip_sourced
            seen = self._seen.get(key)
            if seen is not None and seen[0] is entry and seen[1] is sourced:
                continue
            contribution = _contribution(entry, sourced)
            if seen is None or seen[2] != contribution:
                if seen is not None:
                    self._count(seen[2], -1, touched)
                self._count(contribution, 1, touched)
            self._seen[key] = (entry, sourced, contribution)
        return any(self._has(kind, item) != was for (kind, item), was in touched.items())

    def _has(self, kind: str, item: object) -> bool:
        counter: collections.Counter[Any] = getattr(self, kind)
        return item in counter

    def _count(
        self, contribution: _Contribution, step: int, touched: dict[tuple[str, object], bool]
    ) -> None:
        """Add (1) or take away (-1) one service's contribution (``touched``: each element
        whose count changed, and whether it was there before the update)."""
        vip, dests, vip_service = contribution
        for kind, items in (
            ("_vips", () if vip is None else (vip,)),
            ("_dests", dests),
            ("_sourced", () if vip_service is None else (vip_service,)),
        ):
            counter: collections.Counter[Any] = getattr(self, kind)
            for item in items:
                touched.setdefault((kind, item), item in counter)
                counter[item] += step
                if counter[item] <= 0:
                    del counter[item]

    def targets(self) -> tuple[list[str], list[str], list[VipService]]:
        """(VIPs, destinations, VIP-sourced services) ordered as ``masquerade_targets`` and
        ``vip_sourced_services`` order them."""

        def order(s: VipService) -> tuple[int, ipaddress.IPv4Address | ipaddress.IPv6Address,
                                          str, int]:  # fmt: skip
            ip = ipaddress.ip_address(s[0])
            return ip.version, ip, s[1], s[2]

        sourced = sorted(self._sourced, key=order)
        return sorted(self._vips), sorted(self._dests), sourced

    def snat_sets(self) -> SnatSets:
        return snat_sets(self._vips, self._dests, self._sourced)


def vip_sourced_services(table: IpvsTable, vip_sourced: Set[ServiceKey]) -> list[VipService]:
    """The services of ``table`` in ``vip_sourced`` that have masquerade destinations."""
    out = []
    for key, entry in table.items():
        if key in vip_sourced and any(
            d.forwarding is Forwarding.MASQUERADE for d in entry.destinations
        ):
            address = str(ipaddress.ip_address(entry.service.address))
            out.append((address, str(entry.service.protocol).lower(), entry.service.port))
    # by family first: addresses of two families do not compare
    return sorted(
        out,
        key=lambda s: (ipaddress.ip_address(s[0]).version, ipaddress.ip_address(s[0]), s[1], s[2]),
    )


@dataclass(frozen=True)
class SnatSets:
    """The elements of the masquerade table's sets, spelled as render_masquerade_snat writes
    them and ``nft -j`` lists them (``_current_snat``): a canonical address, or a VIP-sourced
    service as ``address . protocol . port``."""

    vips4: frozenset[str] = frozenset()
    vips6: frozenset[str] = frozenset()
    dests4: frozenset[str] = frozenset()
    dests6: frozenset[str] = frozenset()
    vipsrc4: frozenset[str] = frozenset()
    vipsrc6: frozenset[str] = frozenset()
    vipaddr4: frozenset[str] = frozenset()
    vipaddr6: frozenset[str] = frozenset()

    def by_name(self) -> dict[str, frozenset[str]]:
        """The sets by their names in the table."""
        return {
            "vips4": self.vips4, "vips6": self.vips6,
            "dests4": self.dests4, "dests6": self.dests6,
            "vipsrc4": self.vipsrc4, "vipsrc6": self.vipsrc6,
            "vipaddr4": self.vipaddr4, "vipaddr6": self.vipaddr6,
        }  # fmt: skip


# a converge at 1,000 services x 10 real servers passes 10,000 addresses, nearly all seen by
# the one before: parsing each again took ~25 ms on a host, many times that in the TCG VM
@functools.lru_cache(maxsize=1 << 16)
def _canonical(address: str) -> tuple[int, str]:
    """(IP version, the address as nft lists it)."""
    ip = ipaddress.ip_address(address)
    return ip.version, str(ip)


def _by_family(addresses: Iterable[str]) -> tuple[frozenset[str], frozenset[str]]:
    v4: set[str] = set()
    v6: set[str] = set()
    for a in addresses:
        version, canonical = _canonical(a)
        (v4 if version == 4 else v6).add(canonical)
    return frozenset(v4), frozenset(v6)


def snat_sets(
    vips: Iterable[str], destinations: Iterable[str], vip_sourced: Iterable[VipService] = ()
) -> SnatSets:
    """The elements render_masquerade_snat gives the table's sets for these arguments."""
    vips4, vips6 = _by_family(vips)
    dests4, dests6 = _by_family(destinations)
    src: dict[int, set[str]] = {4: set(), 6: set()}
    addr: dict[int, set[str]] = {4: set(), 6: set()}
    for address, proto, port in vip_sourced:
        version, canonical = _canonical(address)
        src[version].add(f"{canonical} . {proto} . {port}")
        addr[version].add(canonical)
    return SnatSets(
        vips4, vips6, dests4, dests6,
        frozenset(src[4]), frozenset(src[6]), frozenset(addr[4]), frozenset(addr[6]),
    )  # fmt: skip


def _element_order(element: str) -> tuple[int, int, str, int]:
    """Addresses in numeric order, a service's after its address by protocol and port."""
    parts = element.split(" . ")
    ip = ipaddress.ip_address(parts[0])
    if len(parts) == 3:
        return ip.version, int(ip), parts[1], int(parts[2])
    return ip.version, int(ip), "", 0


def _in_order(elements: Iterable[str]) -> list[str]:
    return sorted(elements, key=_element_order)


def render_masquerade_snat(
    vips: Iterable[str], destinations: Iterable[str], vip_sourced: Iterable[VipService] = ()
) -> str:
    """The nftables table: source NAT for connections IPVS forwards from one of ``vips`` to
    one of ``destinations``, so real servers (pods) answer through the director without
    routing back through it. Matching the conntrack's original destination (a VIP) as well
    as the new one (a real server) leaves all other traffic alone, and the L4 protocol match
    keeps IPIP-encapsulated (tunnel) packets out. Needs net.ipv4.vs.conntrack=1.

    The services in ``vip_sourced`` (``masqueradeSource: VIP``) are translated to their VIP,
    the source port kept where the kernel can: a connection then has the same addresses on
    the real server whichever director forwards it, so after a crash failover the new
    director's conntrack picks a synced connection up with the client's next packet (its
    IPVS has the entry from the sync daemon). The others are masqueraded to the director's
    own address on the outgoing link.

    The ``input`` chain drops, rather than lets the local stack answer with a reset, a TCP
    packet from a real server to a VIP-sourced VIP that starts no connection and belongs to
    none (``ct state new``, no SYN or RST): after a crash, an answer the real server sends
    again can reach the new director before the client's next packet has made the conntrack
    entry, and a reset would end the connection on the real server. Dropped, the real server
    sends it again, and by then the client's retransmission has made the entry. At priority
    200 the chain runs after IPVS's own input hooks (98, 99), so only packets IPVS left to
    the local stack reach it (a real server that is itself a client of the VIP is IPVS's).

    The ``forward`` chain drops a packet to a VIP-sourced VIP that this director would route
    on (it does not hold the VIP): a director never forwards to a VIP, and without the rule
    a real server's packet that a new leader relays to the old one after a planned handover
    (handover.py: a flow the new leader did not see start) comes back once the old one has
    let the VIP go, relayed again, and so on until its TTL runs out."""
    return _render_snat_table(snat_sets(vips, destinations, vip_sourced))


def _render_snat_table(sets: SnatSets) -> str:
    def elements(items: frozenset[str]) -> str:
        return f" elements = {{ {', '.join(_in_order(items))} }}" if items else ""

    stray = "ct state new tcp flags & (syn | rst) == 0"

    l4 = "meta l4proto { tcp, udp, sctp }"
    return (
        f"table inet {NFT_TABLE} {{\n"
        f"  set vips4 {{ type ipv4_addr;{elements(sets.vips4)} }}\n"
        f"  set vips6 {{ type ipv6_addr;{elements(sets.vips6)} }}\n"
        f"  set dests4 {{ type ipv4_addr;{elements(sets.dests4)} }}\n"
        f"  set dests6 {{ type ipv6_addr;{elements(sets.dests6)} }}\n"
        "  set vipsrc4 { type ipv4_addr . inet_proto . inet_service;"
        f"{elements(sets.vipsrc4)} }}\n"
        "  set vipsrc6 { type ipv6_addr . inet_proto . inet_service;"
        f"{elements(sets.vipsrc6)} }}\n"
        f"  set vipaddr4 {{ type ipv4_addr;{elements(sets.vipaddr4)} }}\n"
        f"  set vipaddr6 {{ type ipv6_addr;{elements(sets.vipaddr6)} }}\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f"    {l4} ip daddr @dests4 ct original ip daddr . meta l4proto . ct original proto-dst"
        " @vipsrc4 counter snat ip to ct original ip daddr\n"
        f"    {l4} ip6 daddr @dests6 ct original ip6 daddr . meta l4proto . ct original"
        " proto-dst @vipsrc6 snat ip6 to ct original ip6 daddr\n"
        f"    {l4} ip daddr @dests4 ct original ip daddr @vips4 masquerade\n"
        f"    {l4} ip6 daddr @dests6 ct original ip6 daddr @vips6 masquerade\n"
        "  }\n"
        "  chain input {\n"
        "    type filter hook input priority 200; policy accept;\n"
        f"    ip saddr @dests4 ip daddr @vipaddr4 {stray} counter drop\n"
        f"    ip6 saddr @dests6 ip6 daddr @vipaddr6 {stray} counter drop\n"
        "  }\n"
        "  chain forward {\n"
        "    type filter hook forward priority 0; policy accept;\n"
        "    ip daddr @vipaddr4 counter drop\n"
        "    ip6 daddr @vipaddr6 counter drop\n"
        "  }\n"
        "}\n"
    )


SNAT_RULES = 8  # the rules render_masquerade_snat writes


def _element(e: object) -> str | None:
    """A set element from ``nft -j``: an address, or a concatenation (``{"concat": [...]}``)
    written as render_masquerade_snat writes it."""
    if isinstance(e, str):
        return e
    if isinstance(e, dict) and isinstance(e.get("concat"), list):
        return " . ".join(str(part) for part in e["concat"])
    return None


def _current_snat(netns: str | None) -> dict[str, set[str]] | None:
    """The elements of our table's sets, or None when the table or its rules are missing
    (or are another version's)."""
    try:
        out = nft(f"list table inet {NFT_TABLE}", netns, json_output=True)
    except NftError:
        return None
    sets: dict[str, set[str]] = {}
    rules = 0
    for item in json.loads(out).get("nftables", []):
        if "set" in item:
            elems = (_element(e) for e in item["set"].get("elem", []))
            sets[item["set"]["name"]] = {e for e in elems if e is not None}
        elif "rule" in item:
            rules += 1
    if rules != SNAT_RULES:
        return None
    return sets


def ensure_masquerade_snat(
    vips: Iterable[str],
    destinations: Iterable[str],
    netns: str | None = None,
    vip_sourced: Iterable[VipService] = (),
) -> bool:
    """Make the ``inet lvs_operator`` nftables table match (idempotent; replaced atomically in
    one nft transaction when it differs). Returns whether anything changed. With nothing to
    masquerade the table stays, with empty sets."""
    want = snat_sets(vips, destinations, vip_sourced)
    if _current_snat(netns) == want.by_name():
        return False
    script = (
        f"table inet {NFT_TABLE} {{}}\n"  # so the delete below never fails
        f"delete table inet {NFT_TABLE}\n" + _render_snat_table(want)
    )
    nft(script, netns)
    return True


class SnatChange(NamedTuple):
    """How many set elements an incremental update added and removed (over all sets)."""

    added: int
    removed: int


# (set name, elements gone, elements new)
SetDifference = tuple[str, frozenset[str], frozenset[str]]


def _snat_differences(old: SnatSets, new: SnatSets) -> list[SetDifference]:
    """Each set's difference, in the table's order of the sets."""
    was, now = old.by_name(), new.by_name()
    return [(name, was[name] - now[name], now[name] - was[name]) for name in now]


def render_snat_update(old: SnatSets, new: SnatSets) -> str:
    """The transaction that turns the table's sets from ``old`` into ``new`` by the elements
    that differ: the ones gone deleted (per set), then the new ones added (per set). One
    script, so nft applies all of it or nothing. "" when the two are equal.

    Only right while the table holds ``old``: deleting an element a set does not hold fails
    (and with it the whole transaction), adding one it holds does not."""
    return _render_differences(_snat_differences(old, new))


def _render_differences(differences: list[SetDifference]) -> str:
    def command(verb: str, name: str, elements: frozenset[str]) -> str:
        if not elements:
            return ""
        return f"{verb} element inet {NFT_TABLE} {name} {{ {', '.join(_in_order(elements))} }}\n"

    # the deletes first: within the transaction no set grows beyond its old or new size
    deletes = "".join(command("delete", name, gone) for name, gone, _ in differences)
    adds = "".join(command("add", name, added) for name, _, added in differences)
    return deletes + adds


def update_masquerade_snat(old: SnatSets, new: SnatSets, netns: str | None = None) -> SnatChange:
    """Turn the table's sets from ``old`` (what the table holds: the last write) into ``new``
    in one transaction of the elements that differ, without listing the table first: at
    1,000 services x 10 real servers ensure_masquerade_snat lists 10,000 elements and writes
    them all again for one real server that comes or goes. Raises NftError when the table is
    not what ``old`` says (deleted, an element already gone); ensure_masquerade_snat then
    repairs it."""
    differences = _snat_differences(old, new)
    script = _render_differences(differences)
    if script:
        nft(script, netns)
    return SnatChange(
        added=sum(len(added) for _, _, added in differences),
        removed=sum(len(gone) for _, gone, _ in differences),
    )


def remove_masquerade_snat(netns: str | None = None) -> bool:
    if _current_snat(netns) is None and not _table_exists(netns):
        return False
    nft(f"delete table inet {NFT_TABLE}", netns)
    return True


def _table_exists(netns: str | None) -> bool:
    try:
        nft(f"list table inet {NFT_TABLE}", netns)
    except NftError:
        return False
    return True


# -- the handover's tables ----------------------------------------------------------------------


def replace_table(
    family: str, name: str, script: str, netns: str | None = None, run: NftRunner = nft
) -> None:
    """Replace the table ``family name`` by ``script`` in one nft transaction (created first
    so that the delete never fails; no other table is touched)."""
    run(replacing(family, name, script), netns)


def replacing(family: str, name: str, script: str) -> str:
    """The transaction of ``replace_table``."""
    return f"table {family} {name} {{}}\ndelete table {family} {name}\n" + script


def delete_table(family: str, name: str, netns: str | None = None, run: NftRunner = nft) -> bool:
    """Delete the table ``family name``; False if there was none."""
    try:
        run(f"list table {family} {name}", netns)
    except NftError:
        return False
    run(f"delete table {family} {name}", netns)
    return True
