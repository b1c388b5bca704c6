"""nftables, through the ``nft`` command: the source NAT that masquerade forwarding needs in
Kubernetes, and the handover's relay table (rendered by handover.py)."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterable

from lvs_operator.director.table import Forwarding, IpvsTable

NFT_TABLE = "lvs_operator"


class NftError(RuntimeError):
    """An ``nft`` command failed."""


def nft(args: list[str], netns: str | None, input: str | None = None) -> str:
    argv = ["nft", *args]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    r = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise NftError(f"{' '.join(argv)}: {r.stderr.strip()}")
    return r.stdout


def _split_families(addresses: Iterable[str]) -> tuple[list[str], list[str]]:
    v4: set[str] = set()
    v6: set[str] = set()
    for a in addresses:
        ip = ipaddress.ip_address(a)
        (v4 if ip.version == 4 else v6).add(str(ip))
    return sorted(v4, key=ipaddress.ip_address), sorted(v6, key=ipaddress.ip_address)


def masquerade_targets(table: IpvsTable) -> tuple[list[str], list[str]]:
    """(VIPs, destination addresses) of the services with masquerade destinations."""
    vips, dests = set(), set()
    for entry in table.values():
        for d in entry.destinations:
            if d.forwarding is Forwarding.MASQUERADE:
                vips.add(entry.service.address)
                dests.add(d.address)
    return sorted(vips), sorted(dests)


def render_masquerade_snat(vips: Iterable[str], destinations: Iterable[str]) -> str:
    """The nftables table: source NAT (masquerade) for connections IPVS forwards from one of
    ``vips`` to one of ``destinations``, so real servers (pods) answer through the director
    without routing back through it. Matching the conntrack's original destination (a VIP) as
    well as the new one (a real server) leaves all other traffic alone, and the L4 protocol
    match keeps IPIP-encapsulated (tunnel) packets out. Needs net.ipv4.vs.conntrack=1."""
    vip4, vip6 = _split_families(vips)
    dst4, dst6 = _split_families(destinations)

    def elements(items: list[str]) -> str:
        return f" elements = {{ {', '.join(items)} }}" if items else ""

    return (
        f"table inet {NFT_TABLE} {{\n"
        f"  set vips4 {{ type ipv4_addr;{elements(vip4)} }}\n"
        f"  set vips6 {{ type ipv6_addr;{elements(vip6)} }}\n"
        f"  set dests4 {{ type ipv4_addr;{elements(dst4)} }}\n"
        f"  set dests6 {{ type ipv6_addr;{elements(dst6)} }}\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        "    meta l4proto { tcp, udp, sctp } ip daddr @dests4 ct original ip daddr @vips4"
        " masquerade\n"
        "    meta l4proto { tcp, udp, sctp } ip6 daddr @dests6 ct original ip6 daddr @vips6"
        " masquerade\n"
        "  }\n"
        "}\n"
    )


def _current_snat(netns: str | None) -> dict[str, set[str]] | None:
    """The elements of our table's sets, or None when the table or its rules are missing."""
    try:
        out = nft(["-j", "list", "table", "inet", NFT_TABLE], netns)
    except NftError:
        return None
    sets: dict[str, set[str]] = {}
    rules = 0
    for item in json.loads(out).get("nftables", []):
        if "set" in item:
            elems = item["set"].get("elem", [])
            sets[item["set"]["name"]] = {str(e) for e in elems if isinstance(e, str)}
        elif "rule" in item:
            rules += 1
    if rules != 2:
        return None
    return sets


def ensure_masquerade_snat(
    vips: Iterable[str], destinations: Iterable[str], netns: str | None = None
) -> bool:
    """Make the ``inet lvs_operator`` nftables table match (idempotent; replaced atomically in
    one nft transaction when it differs). Returns whether anything changed. With nothing to
    masquerade the table stays, with empty sets."""
    vip4, vip6 = _split_families(vips)
    dst4, dst6 = _split_families(destinations)
    want = {"vips4": set(vip4), "vips6": set(vip6), "dests4": set(dst4), "dests6": set(dst6)}
    if _current_snat(netns) == want:
        return False
    script = (
        f"table inet {NFT_TABLE} {{}}\n"  # so the delete below never fails
        f"delete table inet {NFT_TABLE}\n" + render_masquerade_snat(vip4 + vip6, dst4 + dst6)
    )
    nft(["-f", "-"], netns, input=script)
    return True


def remove_masquerade_snat(netns: str | None = None) -> bool:
    if _current_snat(netns) is None and not _table_exists(netns):
        return False
    nft(["delete", "table", "inet", NFT_TABLE], netns)
    return True


def _table_exists(netns: str | None) -> bool:
    try:
        nft(["list", "table", "inet", NFT_TABLE], netns)
    except NftError:
        return False
    return True


# -- the handover's relay table -----------------------------------------------------------------


def replace_netdev_table(name: str, script: str, netns: str | None = None) -> None:
    """Replace the ``netdev`` table ``name`` by ``script`` in one nft transaction."""
    nft(
        ["-f", "-"], netns, input=f"table netdev {name} {{}}\ndelete table netdev {name}\n" + script
    )


def delete_netdev_table(name: str, netns: str | None = None) -> bool:
    """Delete the ``netdev`` table ``name``; False if there was none."""
    try:
        nft(["list", "table", "netdev", name], netns)
    except NftError:
        return False
    nft(["delete", "table", "netdev", name], netns)
    return True
