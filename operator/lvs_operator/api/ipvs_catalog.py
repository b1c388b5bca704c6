"""The IPVS vocabulary, declared once: protocols, forwarding methods, schedulers, scheduler
flags, and how the kernel encodes each (include/uapi/linux/ip_vs.h, include/uapi/linux/in.h).

The VirtualServer model (api/virtualserver.py) and its CRD (api/crd.py: enums, the CEL rule
tying flags to their scheduler, their messages) are generated from these tables, and the
agent's IPVS model derives its kernel encoding from them, so adding a scheduler or a flag is
one row here plus its tests. Constants and pure functions only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final


class Protocol(StrEnum):
    """The transport protocols of a virtual service (spelled as Kubernetes spells them)."""

    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"

    @property
    def number(self) -> int:
        """The IP protocol number IPVS takes (IPVS_SVC_ATTR_PROTOCOL)."""
        return IP_PROTOCOL_NUMBERS[self]

    @classmethod
    def from_number(cls, number: int) -> Protocol:
        for proto, n in IP_PROTOCOL_NUMBERS.items():
            if n == number:
                return proto
        raise ValueError(f"unsupported IP protocol number {number}")


# IPPROTO_* (include/uapi/linux/in.h).
IP_PROTOCOL_NUMBERS: Final[Mapping[Protocol, int]] = {
    Protocol.TCP: 6,
    Protocol.UDP: 17,
    Protocol.SCTP: 132,
}


class Forwarding(StrEnum):
    """How IPVS forwards to a destination (IP_VS_CONN_F_* in the kernel)."""

    MASQUERADE = "masquerade"  # NAT: replies return through the director
    DIRECT = "direct"  # gatewaying / direct routing: same L2, VIP on the real server's lo
    TUNNEL = "tunnel"  # IPIP: VIP on the real server's tunl0

    @property
    def kernel_value(self) -> int:
        """IPVS_DEST_ATTR_FWD_METHOD."""
        return FORWARDING_KERNEL_VALUES[self]

    @classmethod
    def from_kernel(cls, value: int) -> Forwarding:
        for fwd, v in FORWARDING_KERNEL_VALUES.items():
            if v == value & IP_VS_CONN_F_FWD_MASK:
                return fwd
        raise ValueError(f"unsupported IPVS forwarding method {value}")


IP_VS_CONN_F_FWD_MASK: Final = 0x7
# IP_VS_CONN_F_MASQ, _TUNNEL, _DROUTE (LOCALNODE, 1, and BYPASS, 4, are not offered).
FORWARDING_KERNEL_VALUES: Final[Mapping[Forwarding, int]] = {
    Forwarding.MASQUERADE: 0,
    Forwarding.TUNNEL: 2,
    Forwarding.DIRECT: 3,
}


class Scheduler(StrEnum):
    """IPVS schedulers: the value is the name the kernel takes (module ip_vs_<name>)."""

    RR = "rr"
    WRR = "wrr"
    LC = "lc"
    WLC = "wlc"
    LBLC = "lblc"
    LBLCR = "lblcr"
    DH = "dh"
    SH = "sh"
    SED = "sed"
    NQ = "nq"
    MH = "mh"


# Service flags (IP_VS_SVC_F_*). HASHED is kernel-internal and only reported on read;
# PERSISTENT follows from a persistence timeout, not from a flag name.
IP_VS_SVC_F_PERSISTENT: Final = 0x0001
IP_VS_SVC_F_HASHED: Final = 0x0002
IP_VS_SVC_F_ONEPACKET: Final = 0x0004
IP_VS_SVC_F_SCHED1: Final = 0x0008
IP_VS_SVC_F_SCHED2: Final = 0x0010
IP_VS_SVC_F_SCHED3: Final = 0x0020


@dataclass(frozen=True)
class SchedulerFlag:
    """One service flag, as ipvsadm spells it (``-b sh-fallback,sh-port``).

    SCHED1..3 mean something only to the scheduler, so a scheduler's flag is named
    ``<scheduler>-<meaning>`` (the CRD's CEL rule relies on that prefix); ``scheduler`` None
    is a flag for any scheduler. ``in_api``: users may write it in ``spec.schedulerFlags``;
    the others are spellings the agent uses for what it reads back from the kernel.
    """

    name: str
    bit: int
    scheduler: Scheduler | None
    in_api: bool
    meaning: str

    def __post_init__(self) -> None:
        if self.scheduler is not None and not self.name.startswith(f"{self.scheduler}-"):
            raise ValueError(f"flag {self.name!r} of scheduler {self.scheduler} must be named "
                             f"'{self.scheduler}-...'")  # fmt: skip


SCHEDULER_FLAGS: Final[tuple[SchedulerFlag, ...]] = (
    SchedulerFlag("sh-fallback", IP_VS_SVC_F_SCHED1, Scheduler.SH, True,
                  "skip an unavailable destination (weight 0 or overloaded)"),
    SchedulerFlag("sh-port", IP_VS_SVC_F_SCHED2, Scheduler.SH, True,
                  "hash the source port too"),
    SchedulerFlag("mh-fallback", IP_VS_SVC_F_SCHED1, Scheduler.MH, True,
                  "skip an unavailable destination (weight 0 or overloaded)"),
    SchedulerFlag("mh-port", IP_VS_SVC_F_SCHED2, Scheduler.MH, True,
                  "hash the source port too"),
    # Generic spellings of the scheduler bits, for what a scheduler without names reports.
    SchedulerFlag("flag-1", IP_VS_SVC_F_SCHED1, None, False, "scheduler flag 1"),
    SchedulerFlag("flag-2", IP_VS_SVC_F_SCHED2, None, False, "scheduler flag 2"),
    SchedulerFlag("flag-3", IP_VS_SVC_F_SCHED3, None, False, "scheduler flag 3"),
    SchedulerFlag("ops", IP_VS_SVC_F_ONEPACKET, None, False,
                  "one-packet scheduling: schedule every UDP datagram on its own"),
)  # fmt: skip

# name -> flag, for every name the agent understands.
FLAGS_BY_NAME: Final[Mapping[str, SchedulerFlag]] = {f.name: f for f in SCHEDULER_FLAGS}
# name -> flag, for the names spec.schedulerFlags accepts (in table order).
API_SCHEDULER_FLAGS: Final[Mapping[str, SchedulerFlag]] = {
    f.name: f for f in SCHEDULER_FLAGS if f.in_api
}
# The flag bits a service's settings carry (persistence is its own field: timeout > 0).
SETTABLE_FLAG_BITS: Final = sum({f.bit for f in SCHEDULER_FLAGS})


def flag_bits(names: Iterable[str]) -> int:
    """The kernel's flag bits for flag names (ValueError naming an unknown one)."""
    bits = 0
    for name in names:
        try:
            bits |= FLAGS_BY_NAME[name].bit
        except KeyError:
            raise ValueError(f"unknown IPVS service flag {name!r}") from None
    return bits


def flag_names(bits: int, scheduler: str) -> frozenset[str]:
    """Names for the settable flags in ``bits``, spelled for ``scheduler`` where it names
    them (else the generic spelling)."""
    names = set()
    for bit in sorted({f.bit for f in SCHEDULER_FLAGS}):
        if not bits & bit:
            continue
        candidates = [f for f in SCHEDULER_FLAGS if f.bit == bit]
        own = [f for f in candidates if f.scheduler is not None and f.scheduler == scheduler]
        generic = [f for f in candidates if f.scheduler is None]
        names.add((own or generic)[0].name)
    return frozenset(names)


def schedulers_with_api_flags() -> tuple[Scheduler, ...]:
    """The schedulers that have flags users may set, in table order."""
    out: list[Scheduler] = []
    for f in API_SCHEDULER_FLAGS.values():
        if f.scheduler is not None and f.scheduler not in out:
            out.append(f.scheduler)
    return tuple(out)


def flags_match_message() -> str:
    """The error for a flag set with another scheduler (the model's and the CRD's)."""
    return "schedulerFlags " + ", and ".join(
        f"{s}-* need scheduler {s}" for s in schedulers_with_api_flags()
    )


def flags_match_rule() -> str:
    """The CEL rule (on the VirtualServer spec) tying each flag to its scheduler."""
    anywhere = [f.name for f in API_SCHEDULER_FLAGS.values() if f.scheduler is None]
    allowed = "f.startsWith(self.scheduler + '-')"
    if anywhere:
        listed = ", ".join(f"'{n}'" for n in anywhere)
        allowed = f"f in [{listed}] || {allowed}"
    return f"!has(self.schedulerFlags) || self.schedulerFlags.all(f, {allowed})"


def flags_description() -> str:
    """The CRD's description of spec.schedulerFlags."""
    parts = []
    for i, scheduler in enumerate(schedulers_with_api_flags()):
        names = [f.name for f in API_SCHEDULER_FLAGS.values() if f.scheduler == scheduler]
        parts.append(f"{', '.join(names)} ({'scheduler ' if i == 0 else ''}{scheduler})")
    anywhere = [f.name for f in API_SCHEDULER_FLAGS.values() if f.scheduler is None]
    if anywhere:
        parts.append(f"{', '.join(anywhere)} (any scheduler)")
    return "; ".join(parts) + "."
