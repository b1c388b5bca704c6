"""After a crash takeover: conntrack entries for the synced connections of the services whose
source is translated to the VIP (``masqueradeSource: VIP``).

Why: for such a service the real server knows a connection as VIP:client-port -> RS:port, the
same from either director, and the new leader's IPVS has the connection from the sync daemon.
What it lacks is the conntrack entry that undoes the source translation. The client's next
packet creates one (``nf_conntrack_tcp_loose``), but a connection whose answer was lost with
the crashed director has no next client packet: the client waits for the answer, and the real
server's retransmissions of it, addressed to VIP:client-port, match nothing here. So at the
takeover the new leader writes, for each established synced connection of those services, the
entry its own forwarding would have made (as conntrackd does for keepalived):

- original direction: client:cport -> VIP:vport;
- reply direction before the source NAT: RS:rport -> client:cport (IPVS's translation);
- source NAT to VIP:cport, so the kernel's NAT makes the reply RS:rport -> VIP:cport.

Pure: the IPVS connection table (``/proc/net/ip_vs_conn_sync``) in, entries out;
``kernel/conntrack.py`` writes them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Set
from dataclasses import dataclass

from .table import Protocol, ServiceKey

# What a restored entry is given: the established timeout is the kernel's own once packets flow
# (any packet refreshes it), so this only bounds an entry nobody uses.
RESTORED_TIMEOUT = 600
PROTOCOL_NUMBERS = {"TCP": 6}  # only TCP: its retransmissions are what needs the entry


@dataclass(frozen=True)
class IpvsConnection:
    """One line of ``/proc/net/ip_vs_conn_sync``."""

    protocol: str  # "TCP", "UDP", ...
    client: str
    client_port: int
    vip: str
    vip_port: int
    dest: str
    dest_port: int
    state: str  # "ESTABLISHED", ...
    origin: str  # "SYNC" (from the master) or "LOCAL"
    expires: int  # seconds

    @property
    def template(self) -> bool:
        """A persistence template (client port 0), not a connection."""
        return self.client_port == 0


@dataclass(frozen=True)
class ConntrackEntry:
    """A connection's conntrack entry as the leader's forwarding would have made it."""

    protocol: int  # IP protocol number
    client: str
    client_port: int
    vip: str
    vip_port: int
    dest: str
    dest_port: int
    timeout: int = RESTORED_TIMEOUT

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.client).version


def _address(text: str) -> str:
    """An address as the table writes it: IPv4 as 8 hex digits, IPv6 in colon form."""
    if ":" in text:
        return str(ipaddress.IPv6Address(text))
    return str(ipaddress.IPv4Address(int(text, 16)))


def _table_service(protocol: str, address: str, port: int) -> tuple[str, str, str]:
    """A service as the table writes it: IPv4 and ports as upper-case hex, IPv6 compressed."""
    ip = ipaddress.ip_address(address)
    text = f"{int(ip):08X}" if ip.version == 4 else str(ip)
    return protocol.upper(), text, f"{port:04X}"


def parse_conn_table(
    lines: Iterable[str], services: Set[ServiceKey] | None = None
) -> list[IpvsConnection]:
    """The connections of ``/proc/net/ip_vs_conn_sync`` (header first; lines that do not
    parse are skipped: the table is read while the kernel changes it). With ``services``,
    only theirs: the others are skipped before any address is parsed (the table can hold
    every connection of the node, and the restore is on a takeover's clock)."""
    it = iter(lines)
    header = next(it, "").split()
    if "Origin" not in header:
        return []
    wanted = (
        None
        if services is None
        else {_table_service(k.protocol.value, k.address, k.port) for k in services}
    )
    out = []
    for line in it:
        f = line.split()
        if len(f) < 10:
            continue
        if wanted is not None:
            vip = f[3].upper() if ":" not in f[3] else _address(f[3])
            if (f[0].upper(), vip, f[4].upper()) not in wanted:
                continue
        try:
            conn = IpvsConnection(
                f[0].upper(), _address(f[1]), int(f[2], 16), _address(f[3]), int(f[4], 16),
                _address(f[5]), int(f[6], 16), f[7].upper(), f[8].upper(), int(f[9]),
            )  # fmt: skip
            out.append(conn)
        except ValueError:
            continue
    return out


def conntrack_entries(
    connections: Iterable[IpvsConnection], vip_sourced: Set[ServiceKey]
) -> list[ConntrackEntry]:
    """The entries to write: established TCP connections (not templates) of the services in
    ``vip_sourced``, each once."""
    out: dict[tuple[str, int, str, int], ConntrackEntry] = {}
    for c in connections:
        number = PROTOCOL_NUMBERS.get(c.protocol)
        if number is None or c.template or c.state != "ESTABLISHED":
            continue
        if ServiceKey(Protocol(c.protocol), c.vip, c.vip_port) not in vip_sourced:
            continue
        key = (c.client, c.client_port, c.vip, c.vip_port)
        out.setdefault(
            key,
            ConntrackEntry(number, c.client, c.client_port, c.vip, c.vip_port, c.dest,
                           c.dest_port),
        )  # fmt: skip
    return list(out.values())


@dataclass(frozen=True)
class RestoreOutcome:
    created: int = 0
    existing: int = 0  # the kernel had the entry already (the client's packet was first)
    failed: int = 0
    error: str = ""  # the first failure's reason
    seconds: float = 0.0  # reading the table and writing the entries
