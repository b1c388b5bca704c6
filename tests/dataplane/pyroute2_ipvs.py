"""pyroute2's IPVS client as the reference oracle of the data-plane tests: the agent's lean
encoder (lvs_operator.director.kernel.ipvs) must read and write the same tables.

``open_ipvs(netns, backend)``: ``"netlink"`` is the package's ``IpvsKernel``, ``"pyroute2"``
this one (same read / read_table / apply / converge). Notes: pyroute2 0.9's ``"update"``
command sends IPVS_CMD_DEL_*: edits use ``"set"``. pyroute2 costs ~40 ms of Python per
request and ~130 ms per destination dump in the TCG VM.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable, Mapping
from typing import Any

from lvs_operator.director.kernel.ipvs import ConnCounts, IpvsError, IpvsKernel
from lvs_operator.director.kernel.netns import in_netns
from lvs_operator.director.table import (
    IP_VS_SVC_F_PERSISTENT,
    SETTABLE_FLAGS,
    Change,
    DestKey,
    Forwarding,
    IpvsDestination,
    IpvsService,
    IpvsTable,
    Op,
    Ownership,
    Protocol,
    ServiceEntry,
    ServiceKey,
    bits_to_flags,
    diff,
)

log = logging.getLogger(__name__)

AF_INET, AF_INET6 = socket.AF_INET.value, socket.AF_INET6.value


def _encode_netmask(service: IpvsService) -> str:
    assert service.netmask is not None
    if service.family == 4:
        return str(ipaddress.IPv4Network(f"0.0.0.0/{service.netmask}").netmask)
    # IPv6: the kernel reads a u32 prefix length in host order from the 4 bytes
    return socket.inet_ntoa(service.netmask.to_bytes(4, "little"))


def _decode_netmask(value: str | None, family: int) -> int | None:
    if not value:
        return None
    if family == AF_INET:
        return ipaddress.IPv4Network(f"0.0.0.0/{value}").prefixlen
    return int.from_bytes(socket.inet_aton(value), "little")


def _service_key_spec(service: IpvsService) -> dict[str, Any]:
    return {
        "af": AF_INET if service.family == 4 else AF_INET6,
        "protocol": service.protocol.number,
        "addr": service.address,
        "port": service.port,
    }


def _service_spec(service: IpvsService) -> dict[str, Any]:
    return {
        **_service_key_spec(service),
        "sched_name": service.scheduler,
        # mask: which bits this request sets; all of ours, so an edit also clears flags
        "flags": {"flags": service.flag_bits, "mask": 0xFFFF},
        "timeout": service.persistence_timeout,
        "netmask": _encode_netmask(service),
    }


def _dest_spec(dest: IpvsDestination) -> dict[str, Any]:
    return {
        "addr": dest.address,
        "port": dest.port,
        "fwd_method": dest.forwarding.kernel_value,
        "weight": dest.weight,
        "u_thresh": dest.upper_threshold,
        "l_thresh": dest.lower_threshold,
    }


def _attr(nla: Any, name: str, default: Any = None) -> Any:
    value = nla.get_attr(name)
    return default if value is None else value


def _service_from_nla(nla: Any) -> IpvsService | None:
    if _attr(nla, "IPVS_SVC_ATTR_FWMARK", 0):
        return None  # fwmark services: not modelled, never touched
    af = _attr(nla, "IPVS_SVC_ATTR_AF", AF_INET)
    flags = _attr(nla, "IPVS_SVC_ATTR_FLAGS", {}) or {}
    bits = int(flags.get("flags", 0)) if isinstance(flags, Mapping) else int(flags)
    sched = _attr(nla, "IPVS_SVC_ATTR_SCHED_NAME", "")
    timeout = int(_attr(nla, "IPVS_SVC_ATTR_TIMEOUT", 0))
    return IpvsService(
        address=_attr(nla, "IPVS_SVC_ATTR_ADDR"),
        port=int(_attr(nla, "IPVS_SVC_ATTR_PORT", 0)),
        protocol=Protocol.from_number(int(_attr(nla, "IPVS_SVC_ATTR_PROTOCOL"))),
        scheduler=sched,
        flags=bits_to_flags(bits & SETTABLE_FLAGS, sched),
        persistence_timeout=timeout if bits & IP_VS_SVC_F_PERSISTENT else 0,
        netmask=_decode_netmask(_attr(nla, "IPVS_SVC_ATTR_NETMASK"), af),
    )


def _dest_from_nla(nla: Any) -> IpvsDestination:
    return IpvsDestination(
        address=_attr(nla, "IPVS_DEST_ATTR_ADDR"),
        port=int(_attr(nla, "IPVS_DEST_ATTR_PORT", 0)),
        weight=int(_attr(nla, "IPVS_DEST_ATTR_WEIGHT", 0)),
        forwarding=Forwarding.from_kernel(int(_attr(nla, "IPVS_DEST_ATTR_FWD_METHOD", 0))),
        upper_threshold=int(_attr(nla, "IPVS_DEST_ATTR_U_THRESH", 0)),
        lower_threshold=int(_attr(nla, "IPVS_DEST_ATTR_L_THRESH", 0)),
    )


class Pyroute2Ipvs:
    """The IPVS table of one namespace through pyroute2, one request at a time."""

    def __init__(self, netns: str | None = None) -> None:
        from pyroute2 import IPVS  # deferred: ~30 MiB and seconds to import under TCG

        self.netns = netns
        # The socket is made with this thread inside the namespace, like the package's lean
        # client: pyroute2's own ``IPVS(netns=...)`` forks a helper and gives up after 2 s,
        # which a TCG guest under load exceeded ("could not start netns socket within
        # timeout"). Requests must come from this thread (pyroute2's sockets are per thread).
        with in_netns(netns):
            self._ipvs = IPVS()

    def close(self) -> None:
        self._ipvs.close()

    def __enter__(self) -> Pyroute2Ipvs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _svc(spec: dict[str, Any]) -> Any:
        from pyroute2 import IPVSService

        return IPVSService(**spec)

    @staticmethod
    def _dst(spec: dict[str, Any]) -> Any:
        from pyroute2 import IPVSDest

        return IPVSDest(**spec)

    def read(self) -> tuple[IpvsTable, dict[tuple[ServiceKey, DestKey], ConnCounts]]:
        entries = []
        counts: dict[tuple[ServiceKey, DestKey], ConnCounts] = {}
        for msg in self._ipvs.service("dump"):
            service = _service_from_nla(msg.get_attr("IPVS_CMD_ATTR_SERVICE"))
            if service is None:
                continue
            key = self._svc(_service_key_spec(service))
            dests = []
            for d in self._ipvs.dest("dump", service=key):
                nla = d.get_attr("IPVS_CMD_ATTR_DEST")
                dest = _dest_from_nla(nla)
                dests.append(dest)
                counts[(service.key, dest.key)] = ConnCounts(
                    int(_attr(nla, "IPVS_DEST_ATTR_ACTIVE_CONNS", 0)),
                    int(_attr(nla, "IPVS_DEST_ATTR_INACT_CONNS", 0)),
                    int(_attr(nla, "IPVS_DEST_ATTR_PERSIST_CONNS", 0)),
                )
            entries.append(ServiceEntry(service, tuple(dests)))
        return IpvsTable.of(entries), counts

    def read_table(self) -> IpvsTable:
        return self.read()[0]

    def apply_one(self, change: Change) -> None:
        svc = self._svc(
            _service_key_spec(change.service)
            if change.op is not Op.ADD_SERVICE and change.op is not Op.EDIT_SERVICE
            else _service_spec(change.service)
        )
        if change.op is Op.ADD_SERVICE:
            self._ipvs.service("add", service=svc)
        elif change.op is Op.EDIT_SERVICE:
            self._ipvs.service("set", service=svc)
        elif change.op is Op.DEL_SERVICE:
            self._ipvs.service("del", service=svc)
        else:
            assert change.dest is not None
            dst = self._dst(_dest_spec(change.dest))
            command = {Op.ADD_DEST: "add", Op.EDIT_DEST: "set", Op.DEL_DEST: "del"}[change.op]
            self._ipvs.dest(command, service=svc, dest=dst)

    def apply(self, changes: Iterable[Change]) -> list[Change]:
        applied: list[Change] = []
        for change in changes:
            try:
                self.apply_one(change)
            except Exception as e:
                raise IpvsError(f"{change}: {e}", change, applied) from e
            applied.append(change)
        return applied

    def converge(self, desired: IpvsTable, owned: Ownership = None) -> list[Change]:
        return self.apply(diff(desired, self.read_table(), owned))


def open_ipvs(netns: str | None, backend: str = "netlink") -> IpvsKernel | Pyroute2Ipvs:
    if backend == "netlink":
        return IpvsKernel(netns)
    if backend == "pyroute2":
        return Pyroute2Ipvs(netns)
    raise ValueError(f"unknown IPVS backend {backend!r}")


def read_table(netns: str | None, backend: str = "netlink") -> IpvsTable:
    with open_ipvs(netns, backend) as k:
        return k.read_table()


def converge(desired: IpvsTable, owned: Ownership, netns: str | None,
             backend: str = "netlink") -> list[Change]:  # fmt: skip
    with open_ipvs(netns, backend) as k:
        return k.converge(desired, owned)
