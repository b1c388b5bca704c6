"""Addresses, ranges, ports, netmasks and names: the checks both resource models share.

Each check mirrors a rule in the CRD (a schema keyword or a CEL expression) so the Python
models reject exactly what the API server rejects. Where the CRD uses Kubernetes' CEL IP
library, these follow Go's ``net/netip`` semantics (no zones, no IPv4-mapped IPv6, no
leading zeros).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PORT_MIN = 1
PORT_MAX = 65535
WEIGHT_MIN = 0
WEIGHT_MAX = 65535
# ipvsadm accepts persistence timeouts up to 31 days (it stores seconds in 32 bits).
PERSISTENCE_TIMEOUT_MAX = 2_678_400

# Contiguous IPv4 netmasks, /0 excluded (a zero mask would pin every client to one server).
IPV4_NETMASKS: tuple[str, ...] = tuple(
    str(ipaddress.IPv4Network(f"0.0.0.0/{bits}").netmask) for bits in range(32, 0, -1)
)

# IANA service name (as a Kubernetes named port): 1-15 chars, a-z 0-9 and '-', at least
# one letter, no leading/trailing or double hyphen.
PORT_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$"
_PORT_NAME = re.compile(PORT_NAME_PATTERN)

# DNS-1123 subdomain, the rule for object names.
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_SUBDOMAIN_MAX = 253
_DNS_SUBDOMAIN = re.compile(DNS_SUBDOMAIN_PATTERN)

# Linux interface names: at most 15 bytes (IFNAMSIZ - 1), no '/', no whitespace.
INTERFACE_PATTERN = r"^[a-zA-Z0-9_.:-]+$"
INTERFACE_MAX = 15
_INTERFACE = re.compile(INTERFACE_PATTERN)


# An http health check's request target (RFC 9110 origin-form, RFC 3986 characters): '/',
# then path characters (unreserved, sub-delims, ':', '@', '/') or %XX escapes, then
# optionally '?' and a query. Nothing else: no space, no CR/LF or other control character.
_URI_CHARS = "A-Za-z0-9._~!$&'()*+,;=:@/-"  # '-' last: a literal in a bracket expression
_ESCAPE = "%[0-9A-Fa-f]{2}"
HTTP_PATH_PATTERN = rf"^/([{_URI_CHARS}]|{_ESCAPE})*([?]([?{_URI_CHARS}]|{_ESCAPE})*)?$"
HTTP_PATH_MAX = 1024
_HTTP_PATH = re.compile(HTTP_PATH_PATTERN)

# An http health check's Host header: an RFC 1123 hostname (which covers IPv4 addresses) or
# an IPv6 address in brackets, optionally with ":port".
_HOST_LABEL = "[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
HTTP_HOST_PATTERN = rf"^({_HOST_LABEL}([.]{_HOST_LABEL})*|\[[0-9A-Fa-f:.]+\])(:[0-9]{{1,5}})?$"
HTTP_HOST_MAX = 253
_HTTP_HOST = re.compile(HTTP_HOST_PATTERN)

# Label keys and values (Kubernetes' qualified names): an optional DNS-subdomain prefix of at
# most 253 characters and '/', then a name of 1-63 characters; a value is empty or a name.
_LABEL_NAME = "[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_DNS_SUBDOMAIN_BODY = "[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
LABEL_KEY_PATTERN = rf"^({_DNS_SUBDOMAIN_BODY}/)?{_LABEL_NAME}$"
# The prefix's length (the structure above cannot bound it).
LABEL_KEY_LENGTHS_PATTERN = r"^([^/]{1,253}/)?[^/]{1,63}$"
LABEL_VALUE_PATTERN = rf"^({_LABEL_NAME})?$"
_LABEL_KEY = re.compile(LABEL_KEY_PATTERN)
_LABEL_KEY_LENGTHS = re.compile(LABEL_KEY_LENGTHS_PATTERN)
_LABEL_VALUE = re.compile(LABEL_VALUE_PATTERN)


def parse_ip(text: str) -> IPAddress | None:
    """Parse an address as Kubernetes' CEL ``isIP``/``ip`` do; None when it is not one."""
    if not isinstance(text, str) or "%" in text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return None
    return address


def is_global_unicast(address: IPAddress) -> bool:
    """Go's ``IsGlobalUnicast``: private ranges count, special-purpose ones do not."""
    if isinstance(address, ipaddress.IPv4Address) and address == ipaddress.IPv4Address(
        "255.255.255.255"
    ):
        return False
    return not (
        address.is_unspecified
        or address.is_loopback
        or address.is_multicast
        or address.is_link_local
    )


def is_port_name(text: str) -> bool:
    return bool(_PORT_NAME.match(text)) and "--" not in text and any(c.isalpha() for c in text)


def is_dns_subdomain(text: str) -> bool:
    return len(text) <= DNS_SUBDOMAIN_MAX and bool(_DNS_SUBDOMAIN.match(text))


def is_interface_name(text: str) -> bool:
    return bool(_INTERFACE.match(text))


def is_http_path(text: str) -> bool:
    """A path an http health check may send (``HTTP_PATH_PATTERN``, at most 1024 chars)."""
    return (
        isinstance(text, str)
        and len(text) <= HTTP_PATH_MAX
        and _HTTP_PATH.fullmatch(text) is not None
    )


def is_http_host(text: str) -> bool:
    """A Host header an http health check may send (``HTTP_HOST_PATTERN``)."""
    return (
        isinstance(text, str)
        and len(text) <= HTTP_HOST_MAX
        and _HTTP_HOST.fullmatch(text) is not None
    )


def is_label_key(text: str) -> bool:
    return (
        isinstance(text, str)
        and _LABEL_KEY.fullmatch(text) is not None
        and _LABEL_KEY_LENGTHS.fullmatch(text) is not None
    )


def is_label_value(text: str) -> bool:
    return isinstance(text, str) and _LABEL_VALUE.fullmatch(text) is not None


def parse_ranges(items: Iterable[str]) -> list[IPNetwork]:
    """Parse VIP ranges (CIDRs, or single addresses) for the controller's allow-list.

    Raises ValueError naming the bad entry.
    """
    ranges: list[IPNetwork] = []
    for raw in items:
        text = raw.strip()
        if not text:
            continue
        try:
            ranges.append(ipaddress.ip_network(text, strict=False))
        except ValueError as exc:
            raise ValueError(
                f"bad VIP range {text!r}: expected a CIDR such as 192.0.2.0/24 or 2001:db8::/64"
            ) from exc
    return ranges


@functools.lru_cache(maxsize=1 << 16)
def canonical_ip(address: str) -> str:
    """The canonical text of an IP address ("2001:DB8::0:1" -> "2001:db8::1"), so equal
    addresses compare equal as strings; ValueError when it is not one. IPv4 text through
    the C parser (the agent canonicalises each of 10,000s of destinations, and
    ``ipaddress`` was most of a cold build's time); it takes exactly the dotted quads
    ``ipaddress`` takes (glibc refuses leading zeros too)."""
    if isinstance(address, str) and "." in address and ":" not in address:
        try:
            return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, address))
        except OSError:
            pass  # ipaddress says why
    return str(ipaddress.ip_address(address))


def in_ranges(address: IPAddress, ranges: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in ranges)
