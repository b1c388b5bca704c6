"""Fakes of the agent's collaborators: the kernel, the node's VIPs, the handover's node side.

Each implements its ``typing.Protocol``; mypy checks that (``conforming`` below, and the
``files`` of ``[tool.mypy]``), so a fake cannot drift from what the agent calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import replace
from typing import Any

from lvs_operator.director import node_settings
from lvs_operator.director.agent import ConntrackRestorer
from lvs_operator.director.conn_restore import RestoreOutcome
from lvs_operator.director.events import EventPoster
from lvs_operator.director.handover import HandoverNode, Relay
from lvs_operator.director.ipvs_sync import Connections, Kernel
from lvs_operator.director.kernel.ipvs import ServiceStats
from lvs_operator.director.kernel.ipvs_netlink import SyncDaemon
from lvs_operator.director.sync import DaemonKernel
from lvs_operator.director.table import (
    Change,
    DestKey,
    IpvsDestination,
    IpvsService,
    IpvsTable,
    ServiceKey,
    apply_to_table,
)
from lvs_operator.director.traffic import StatsReader
from lvs_operator.director.vip import Route
from lvs_operator.director.vip_owner import Announcement, Link, VipNode


class FakeKernel:
    def __init__(self, table: IpvsTable | None = None) -> None:
        self.table = table or IpvsTable.of([])
        self.connections: dict[tuple[ServiceKey, DestKey], int] = {}
        self.applied: list[Change] = []
        self.prepared: list[bool] = []
        self.vip_sourced: frozenset[ServiceKey] = frozenset()  # of the last prepare()
        self.prepare_error: Exception | None = None  # what prepare() raises (nft failing)
        self.apply_error: Exception | None = None  # what apply() raises (the kernel refusing)
        # the node's sysctls (key -> value) that check_node_settings reads; None: all right
        self.node_sysctls: dict[str, str] | None = None
        self.settings_checks: list[bool] = []  # the ipv6 argument of each check
        self.settings_error: Exception | None = None  # what check_node_settings raises
        self.reads = 0  # whole-table reads (each costs seconds at scale in a real kernel)
        self.partial_reads = 0  # reads of some services' destinations (a drain's)
        self.read_error: Exception | None = None  # what read() raises
        self.read_between: list[Callable[[], object] | None] = []  # each read's ``between``

    def read(self, between: Callable[[], object] | None = None) -> tuple[IpvsTable, Connections]:
        self.reads += 1
        self.read_between.append(between)
        if self.read_error is not None:
            raise self.read_error
        table, connections = self.table, dict(self.connections)
        for _ in table:  # after each service, as the kernel's read
            if between is not None:
                between()
        return table, connections

    def read_services(self) -> list[IpvsService]:
        if self.read_error is not None:
            raise self.read_error
        return [entry.service for entry in self.table.values()]

    def read_destinations(
        self, services: Iterable[IpvsService]
    ) -> tuple[dict[ServiceKey, tuple[IpvsDestination, ...]], Connections]:
        self.partial_reads += 1
        if self.read_error is not None:
            raise self.read_error
        keys = [s.key for s in services]
        dests = {k: self.table[k].destinations for k in keys}  # KeyError: gone
        return dests, {(k, d): n for (k, d), n in self.connections.items() if k in dests}

    def apply(self, changes: list[Change]) -> None:
        if self.apply_error is not None:
            raise self.apply_error
        self.table = apply_to_table(self.table, changes)
        self.applied += changes

    def prepare(
        self, table: IpvsTable, masquerade_snat: bool, vip_sourced: Set[ServiceKey] = frozenset()
    ) -> None:
        self.prepared.append(masquerade_snat)
        self.vip_sourced = frozenset(vip_sourced)
        if self.prepare_error is not None:
            raise self.prepare_error

    def check_node_settings(self, ipv6: bool) -> node_settings.Outcome:
        """As in the shipped pod: /proc/sys read-only, nothing written."""
        self.settings_checks.append(ipv6)
        if self.settings_error is not None:
            raise self.settings_error
        wanted = node_settings.wanted(ipv6)
        if self.node_sysctls is None:
            return node_settings.Outcome(right=wanted)
        return node_settings.enforce(wanted, DictSysctls(self.node_sysctls), write=False)


class DictSysctls:
    """``node_settings.SysctlFiles`` on a dict; ``read_only``: every write fails (EROFS)."""

    def __init__(self, values: dict[str, str], read_only: bool = False) -> None:
        self.values = values
        self.read_only = read_only
        self.writes: list[tuple[str, str]] = []

    def read(self, key: str) -> str | None:
        return self.values.get(key)

    def write(self, key: str, value: str) -> None:
        if self.read_only:
            raise OSError(errno.EROFS, "Read-only file system")
        self.writes.append((key, value))
        self.values[key] = value


class FakeVips:
    """The node's addresses. ``failures``: (vip or interface) -> the error its add and
    remove raise; ``events``: ("add" | "remove" | "renew" | "frame", vip) in order, one "frame" per
    announcement frame (rounds ``interval`` apart, stopped like VipManager's);
    ``answering``: the VIPs ``answered`` reports."""

    def __init__(self, present: dict[str, str] | None = None, interval: float = 0.0) -> None:
        self.addresses = dict(present or {})
        self.announced: list[tuple[str, str, int | None]] = []
        self.events: list[tuple[str, str]] = []
        self.failures: dict[str, Exception] = {}
        self.interval = interval
        self.rounds = 3  # announcements with count None
        self.answering: set[str] = set()
        self.probed: list[tuple[list[Announcement], float]] = []
        self.probe_frames: list[tuple[int, int]] = []  # (frames per VIP, windows) per probe
        self.add_batches: list[list[str]] = []  # the VIPs of each add_many call
        self.presents = 0  # the address dumps (present()) asked for

    def routes(self) -> list[Route]:
        return [Route(ipaddress.ip_network("10.10.0.0/24"), "front")]

    def present(self) -> dict[str, str]:
        self.presents += 1
        return dict(self.addresses)

    def _fail(self, vip: str, ifname: str) -> None:
        error = self.failures.get(vip) or self.failures.get(ifname)
        if error is not None:
            raise error

    def add(self, vip: str, ifname: str) -> bool:
        self._fail(vip, ifname)
        self.events.append(("add", vip))
        self.addresses[vip] = ifname
        return True

    def remove(self, vip: str, ifname: str) -> bool:
        self._fail(vip, ifname)
        if self.addresses.get(vip) != ifname:  # one interface per VIP here: the last added
            return False
        self.events.append(("remove", vip))
        return self.addresses.pop(vip, None) is not None

    def add_many(self, items: Sequence[tuple[str, str]]) -> list[Exception | None]:
        self.add_batches.append([vip for vip, _ in items])
        errors: list[Exception | None] = []
        for vip, ifname in items:
            try:
                self.add(vip, ifname)
            except Exception as exc:
                errors.append(exc)
            else:
                errors.append(None)
        return errors

    def move(self, moves: Mapping[str, str], to: str) -> tuple[list[str], list[str]]:
        """Like VipManager's: each one added to ``to`` first; a failure leaves it out."""
        on_target: list[str] = []
        for vip in moves:
            with contextlib.suppress(Exception):
                self.add(vip, to)
                on_target.append(vip)
        moved: list[str] = []
        for vip in on_target:
            with contextlib.suppress(Exception):
                self.remove(vip, moves[vip])  # gone from there already here (one per VIP)
                moved.append(vip)
        return on_target, moved

    def renew(self, items: Iterable[tuple[str, str]]) -> list[str]:
        """Like VipManager's: only what is on that interface now is renewed."""
        for vip, ifname in items:
            if self.addresses.get(vip) == ifname:
                self.events.append(("renew", vip))
        return []

    def link_info(self, ifname: str) -> Link | None:
        return (2, "02:00:00:00:00:0b")

    def send_many(
        self, items: list[Announcement], count: int | None, stop: threading.Event
    ) -> None:
        self.announced += [(vip, ifname, count) for vip, ifname, _ in items]
        rounds = self.rounds if count is None else count
        for i in range(rounds):
            for vip, _, _ in items:
                if stop.is_set():
                    return
                self.events.append(("frame", vip))
            if i + 1 < rounds and stop.wait(self.interval):
                return

    def answered(
        self, items: list[Announcement], timeout: float, count: int = 3, windows: int = 2
    ) -> set[str]:
        self.probed.append((items, timeout))
        self.probe_frames.append((count, windows))
        return {vip for vip, _, _ in items if vip in self.answering}


class FakeHandoverKernel:
    """Records the node side of a handover (handover.py's HandoverKernel)."""

    def __init__(self, address: str = "10.10.0.11", vips: FakeVips | None = None) -> None:
        self.address = address
        self.relays: list[Relay] | None = None
        # the ARP filter: (VIPs, interface -> source address); None: none installed
        self.arp_filter: tuple[list[str], dict[str, str]] | None = None
        self.vips = vips  # the node's addresses, seen when the filter goes in (order checks)
        self.addresses_at_filter: dict[str, str] | None = None
        self.addresses_at_unfilter: dict[str, str] | None = None
        self.filter_error: Exception | None = None  # what filter_arp raises (nft refusing)
        self.warm_error: Exception | None = None  # what warm raises
        self.events: list[str] = []

    def link_address(self, ifname: str, version: int, exclude: Iterable[str]) -> str | None:
        return self.address

    def filter_arp(self, vips: list[str], link_addresses: Mapping[str, str]) -> None:
        if self.filter_error is not None:
            raise self.filter_error
        self.events.append("arp filter on")
        self.arp_filter = (list(vips), dict(link_addresses))
        if self.vips is not None:
            self.addresses_at_filter = dict(self.vips.addresses)

    def remove_arp_filter(self) -> bool:
        had, self.arp_filter = self.arp_filter is not None, None
        if had:
            self.events.append("arp filter off")
            if self.vips is not None:
                self.addresses_at_unfilter = dict(self.vips.addresses)
        return had

    def install_relays(self, relays: list[Relay], seen_timeout: float) -> None:
        self.events.append("relay on")
        self.relays = relays

    def remove_relays(self) -> bool:
        had, self.relays = self.relays is not None, None
        if had:
            self.events.append("relay off")
        return had

    def warm(self) -> bool:
        if self.warm_error is not None:
            raise self.warm_error
        self.events.append("warm")
        return True


def conforming() -> tuple[Kernel, VipNode, HandoverNode, DaemonKernel, StatsReader, EventPoster]:
    """Never called: mypy rejects it if a fake no longer implements its Protocol."""
    return (FakeKernel(), FakeVips(), FakeHandoverKernel(), FakeDaemonKernel(),
            FakeStatsReader(), FakeEventPoster())  # fmt: skip


class FakeDaemonKernel:
    """The kernel's two daemon slots; ``refuse``: ifname -> errno a start on it returns."""

    def __init__(self) -> None:
        self.slots: dict[int, SyncDaemon] = {}
        self.calls: list[tuple[str, int]] = []
        self.refuse: dict[str, int] = {}

    def daemons(self) -> list[SyncDaemon]:
        return list(self.slots.values())

    def start_daemon(self, daemon: SyncDaemon) -> int:
        self.calls.append(("start", daemon.state))
        if daemon.ifname in self.refuse:
            return self.refuse[daemon.ifname]
        if daemon.state in self.slots:
            return errno.EEXIST
        self.slots[daemon.state] = replace(daemon, maxlen=1472)  # the kernel fills it in
        return 0

    def stop_daemon(self, state: int) -> int:
        self.calls.append(("stop", state))
        return 0 if self.slots.pop(state, None) is not None else errno.ESRCH


class FakeStatsReader:
    """The kernel's traffic counters (traffic.StatsReader): ``services`` as set, or
    ``error`` raised."""

    def __init__(self, services: list[ServiceStats] | None = None) -> None:
        self.services = services or []
        self.error: Exception | None = None
        self.closed = False

    def read_stats(self, between: Callable[[], object] | None = None) -> list[ServiceStats]:
        if self.error is not None:
            raise self.error
        for _ in self.services:  # after each service, as the kernel's read
            if between is not None:
                between()
        return list(self.services)

    def close(self) -> None:
        self.closed = True


class FakeEventPoster:
    """Collects the Events the agent posts (events.EventPoster); ``error``: raised instead;
    ``delay``: seconds each post takes."""

    def __init__(self) -> None:
        self.posted: list[dict[str, Any]] = []
        self.error: Exception | None = None
        self.delay = 0.0

    async def post(self, event: dict[str, Any]) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        self.posted.append(event)


def conforming_sysctls() -> node_settings.SysctlFiles:
    """Never called: mypy rejects it if DictSysctls no longer implements SysctlFiles."""
    return DictSysctls({})


class FakeConntrack:
    """Records the restores asked for (agent.ConntrackRestorer)."""

    def __init__(self, outcome: RestoreOutcome | None = None) -> None:
        self.calls: list[frozenset[ServiceKey]] = []
        self.outcome = outcome or RestoreOutcome(created=2)

    def restore(self, vip_sourced: Set[ServiceKey]) -> RestoreOutcome:
        self.calls.append(frozenset(vip_sourced))
        return self.outcome


_CONNTRACK: ConntrackRestorer = FakeConntrack()  # mypy checks the fake against the Protocol
