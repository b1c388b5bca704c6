"""The agent's caches of the API: the group's VirtualServers and every RealServerPool's
members and health check, kept by list+watch (``lvs_operator.listwatch``).

Two watches of VirtualServers: those labelled with the group (it serves them) and those
labelled as moving to it (``NEXT_GROUP_LABEL``: it programs their IPVS services, never their
VIP, until the controller names the group in their status; the controller's docstring in
controller/virtualservers.py tells the whole hand-over). A VirtualServer that leaves one
watch as it joins the other (the hand-over's label change) is kept throughout.

A cache change calls ``on_change()`` (the agent converges); a VIP seen in a VirtualServer
calls ``on_vip(vip)`` (the agent owns it from then on). The first converge waits for both
initial lists (``vs_synced``, ``pools_synced``), so a restart never removes anything
because of a partial view.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from lvs_operator.api.contract import GROUP_LABEL, NEXT_GROUP_LABEL
from lvs_operator.api.network import IPNetwork, canonical_ip, in_ranges, parse_ip
from lvs_operator.api.realserverpool import HealthCheck, PoolMember, parse_spec
from lvs_operator.api.validation import ValidationError
from lvs_operator.api.virtualserver import VirtualServer
from lvs_operator.listwatch import KubeClient, Raw, list_then_watch

from .table import ServiceKey

log = logging.getLogger("lvs_operator.director.watches")

ObjectKey = tuple[str, str]  # (namespace, name)
# Seconds the API server keeps a watch open before the loop re-watches (below the 5-minute
# default of many load balancers in front of API servers).
T = TypeVar("T")
SERVER_TIMEOUT = 240
# The most of the event loop one slice of a list's parse holds before it yields: at 1,000
# pools x 10 members the whole parse took ~1 s on a 2-core host and ~9 s in the test VM, in
# one go, while the loop also runs the Lease renewals.
SLICE_SECONDS = 0.02


def object_key(obj: Mapping[str, Any]) -> ObjectKey:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace", "")), str(meta.get("name", "")))


@functools.cache
def resources() -> dict[str, Any]:
    """lightkube's generic resources for the kinds the agent watches, by kind (made once)."""
    from lightkube.generic_resource import create_namespaced_resource

    return {
        kind: create_namespaced_resource("lvs.io", "v1alpha1", kind, plural)
        for kind, plural in (
            ("VirtualServer", "virtualservers"),
            ("RealServerPool", "realserverpools"),
        )
    }


def health_checks(
    virtual_servers: Iterable[VirtualServer], pool_checks: Mapping[ObjectKey, HealthCheck | None]
) -> dict[ServiceKey, HealthCheck]:
    """The health check of each service whose pool has one."""
    checks: dict[ServiceKey, HealthCheck] = {}
    if not any(check is not None for check in pool_checks.values()):
        return checks
    for vs in virtual_servers:
        check = pool_checks.get((vs.namespace, vs.spec.pool_name))
        if check is None:
            continue
        for vport in vs.spec.ports:
            checks[ServiceKey(vport.protocol, vs.spec.vip, vport.port)] = check
    return checks


def refusal(vs: VirtualServer, group: str, vip_ranges: Sequence[IPNetwork] | None) -> str | None:
    """Why this agent must not program ``vs`` (None: it may).

    Trust (docs/director.md): the group label only selects what the agent watches; tenants
    who may edit VirtualServers can set it. What authorises a VirtualServer is the status,
    which only the controller writes (status subresource): accepted for this group
    (``directorGroup``) with this very VIP (``acceptedVIP``; from a controller that does not
    write it yet, the status must be of the current generation). And the VIP must lie in
    the controller's ranges, which reach the agent as ``--vip-ranges``."""
    status = vs.status
    if status.director_group != group and status.next_director_group != group:
        return (
            f"not accepted for director group {group} by the controller (its status says "
            f"{status.director_group or 'no group'}): the {GROUP_LABEL} label alone is not "
            "enough"
        )
    vip = canonical_ip(vs.spec.vip)
    if status.accepted_vip:
        accepted = canonical_ip(status.accepted_vip)
    else:
        accepted = vip if status.observed_generation == vs.meta.generation else ""
    if accepted != vip:
        return (
            f"spec.vip {vip} is not the VIP the controller accepted "
            f"({accepted or 'none for this generation'}): waiting for the controller"
        )
    address = parse_ip(vip)
    if vip_ranges is not None and (address is None or not in_ranges(address, vip_ranges)):
        return (
            f"VIP {vip} lies outside this agent's --vip-ranges "
            f"({', '.join(str(r) for r in vip_ranges) or 'none'})"
        )
    return None


def staged(vs: VirtualServer, group: str) -> bool:
    """Moving to ``group`` but still served by another: program its services, not its VIP."""
    return vs.status.director_group != group and vs.status.next_director_group == group


def moved_away(vs: VirtualServer, group: str) -> bool:
    """The controller handed it to another group (make-before-break done): its withdrawal
    here is an intent, not a glitch (brake.py lets it go at once)."""
    status = vs.status
    return bool(status.director_group) and group not in (
        status.director_group,
        status.next_director_group,
    )


def service_keys(vs: VirtualServer) -> set[ServiceKey]:
    return {ServiceKey(p.protocol, vs.spec.vip, p.port) for p in vs.spec.ports}


async def in_slices(items: Sequence[Raw], parse: Callable[[Raw], T]) -> list[T]:
    """``[parse(item) for item in items]``, yielding to the event loop every
    ``SLICE_SECONDS`` of it."""
    out: list[T] = []
    due = time.monotonic() + SLICE_SECONDS
    for item in items:
        out.append(parse(item))
        if time.monotonic() >= due:
            await asyncio.sleep(0)
            due = time.monotonic() + SLICE_SECONDS
    return out


MAIN, NEXT = "main", "next"  # the two VirtualServer watches: serving, moving in
# Seconds after a hand-over's label change (seen by one watch only) before the agent reads
# the object itself, in case the other watch never says anything (the object was deleted
# between the controller's status and label writes).
TRANSFER_CHECK = 5.0


class Watches:
    def __init__(
        self,
        on_change: Callable[[], None],
        on_vip: Callable[[str], None],
        group: str = "",
        vip_ranges: Sequence[IPNetwork] | None = None,
    ) -> None:
        self.on_change = on_change
        self.on_vip = on_vip
        self.group = group
        self.vip_ranges = vip_ranges
        self._refusals: dict[ObjectKey, str] = {}  # VirtualServer -> why not programmed (logged)
        # what each VirtualServer watch holds (MAIN: labelled with the group; NEXT: moving in)
        self._stores: dict[str, dict[ObjectKey, VirtualServer]] = {MAIN: {}, NEXT: {}}
        self._listed: set[str] = set()  # the watches whose initial list is in
        self.virtual_servers: dict[ObjectKey, VirtualServer] = {}  # both, MAIN first
        self.staged: set[ObjectKey] = set()  # programmed without their VIP (moving in)
        # services of VirtualServers handed to another group since the last converge
        self.moved: set[ServiceKey] = set()
        self.pools: dict[ObjectKey, tuple[PoolMember, ...]] = {}
        self.pool_checks: dict[ObjectKey, HealthCheck | None] = {}
        self._refused: dict[ObjectKey, str] = {}  # pool -> why its check was ignored (logged)
        self._bad_members: dict[ObjectKey, list[str]] = {}  # pool -> members left out (logged)
        self.vs_synced = asyncio.Event()
        self.pools_synced = asyncio.Event()
        self._client: KubeClient | None = None
        self._checks: set[asyncio.Task[None]] = set()  # transfers being verified

    def start(self, client: KubeClient) -> list[asyncio.Task[None]]:
        from lightkube import ALL_NS

        vs_res, pool_res = resources()["VirtualServer"], resources()["RealServerPool"]
        self._client = client
        watch_vs = list_then_watch(
            client, vs_res, namespace=ALL_NS, labels={GROUP_LABEL: self.group},
            reset=self.reset_vs_sliced, apply=self.apply_vs, what="VirtualServers",
            server_timeout=SERVER_TIMEOUT,
        )  # fmt: skip
        watch_next = list_then_watch(
            client, vs_res, namespace=ALL_NS, labels={NEXT_GROUP_LABEL: self.group},
            reset=self.reset_next_vs_sliced, apply=self.apply_next_vs,
            what="VirtualServers moving in", server_timeout=SERVER_TIMEOUT,
        )  # fmt: skip
        watch_pools = list_then_watch(
            client, pool_res, namespace=ALL_NS, labels=None, reset=self.reset_pools_sliced,
            apply=self.apply_pool, what="RealServerPools", server_timeout=SERVER_TIMEOUT,
        )  # fmt: skip
        return [
            asyncio.create_task(watch_vs, name="watch-vs"),
            asyncio.create_task(watch_next, name="watch-vs-next"),
            asyncio.create_task(watch_pools, name="watch-pools"),
        ]

    async def synced(self) -> None:
        await self.vs_synced.wait()
        await self.pools_synced.wait()

    def health_checks(self) -> dict[ServiceKey, HealthCheck]:
        """The health check of each service whose pool has one."""
        return health_checks(self.virtual_servers.values(), self.pool_checks)

    # -- VirtualServers ------------------------------------------------------------------------

    def _parse_vs(self, obj: Raw) -> VirtualServer | None:
        """The VirtualServer if this agent may program it; else None, and one log line per
        change of the reason (naming the object)."""
        key = object_key(obj)
        try:
            vs = VirtualServer.from_object(obj)
            reason = refusal(vs, self.group, self.vip_ranges)
        except ValidationError as exc:
            # the controller only accepts valid ones: an old controller or a hand edit
            vs, reason = None, f"its spec is invalid: {exc}"
        if reason is None:
            if self._refusals.pop(key, None) is not None:
                log.info("VirtualServer accepted by the controller: programmed",
                         extra={"vs": "/".join(key)})  # fmt: skip
            return vs
        known = self.virtual_servers.get(key)
        if vs is not None and known is not None and moved_away(vs, self.group):
            # handed over: its services go now (the brake is for glitches, not for this)
            self.moved |= service_keys(known)
            reason = f"moved to director group {vs.status.director_group}"
        if self._refusals.get(key) != reason:
            self._refusals[key] = reason
            log.warning("VirtualServer not programmed: %s", reason, extra={"vs": "/".join(key)})
        return None

    def _merge(self) -> None:
        """The VirtualServers to program: both watches' (the one serving them first)."""
        merged = {**self._stores[NEXT], **self._stores[MAIN]}
        self.staged = {k for k, vs in merged.items() if staged(vs, self.group)}
        for key, vs in merged.items():
            if key not in self.staged:
                self.on_vip(canonical_ip(vs.spec.vip))
        self.virtual_servers = merged

    def _reset(
        self, which: str, items: Iterable[Raw], parsed: list[VirtualServer | None] | None = None
    ) -> None:
        items = list(items)
        if parsed is None:
            parsed = [self._parse_vs(obj) for obj in items]
        store: dict[ObjectKey, VirtualServer] = {}
        for obj, vs in zip(items, parsed, strict=True):
            if vs is not None:
                store[object_key(obj)] = vs
        self._stores[which] = store
        self._listed.add(which)
        listed = set(self._stores[MAIN]) | set(self._stores[NEXT])
        listed |= {object_key(obj) for obj in items}
        self._refusals = {k: v for k, v in self._refusals.items() if k in listed}
        self._merge()
        if self._listed >= {MAIN, NEXT}:
            self.vs_synced.set()
        self.on_change()

    def _apply(self, which: str, kind: str, obj: Raw) -> None:
        key = object_key(obj)
        store, other = self._stores[which], self._stores[NEXT if which == MAIN else MAIN]
        if kind == "DELETED":
            gone = store.pop(key, None)
            if gone is not None and which == NEXT and not staged(gone, self.group):
                # the hand-over: its status names this group, and its label moves it to the
                # other watch, which may not have said so yet
                if key not in other:
                    other[key] = gone
                    self._verify_later(key)
            elif key not in other:
                self._refusals.pop(key, None)
        elif kind in ("ADDED", "MODIFIED"):
            vs = self._parse_vs(obj)
            if vs is None:
                store.pop(key, None)
                other.pop(key, None)  # refused: whichever watch said so last
            else:
                store[key] = vs
                if key in other:
                    other[key] = vs  # the newer state for both
        else:
            return
        self._merge()
        log.debug("VirtualServer %s", kind.lower(), extra={"vs": "/".join(key)})
        self.on_change()

    def _verify_later(self, key: ObjectKey) -> None:
        """A VirtualServer kept through a hand-over's label change: read it after a while,
        so one deleted in between (no watch will tell) does not stay programmed."""
        if self._client is None:
            return
        task = asyncio.create_task(self._verify(key, self._client))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _verify(self, key: ObjectKey, client: KubeClient) -> None:
        from lightkube import ApiError

        await asyncio.sleep(TRANSFER_CHECK)
        try:
            obj = await client.get(resources()["VirtualServer"], key[1], namespace=key[0])
        except ApiError as exc:
            if exc.status.code != 404:
                log.warning("cannot read a VirtualServer after its hand-over: %s",
                            exc.status.message, extra={"vs": "/".join(key)})  # fmt: skip
                return
            raw: Raw | None = None
        else:
            raw = obj.to_dict()
        labels = ((raw or {}).get("metadata") or {}).get("labels") or {}
        if raw is not None and labels.get(GROUP_LABEL) == self.group:
            self._apply(MAIN, "MODIFIED", raw)
        elif raw is not None and labels.get(NEXT_GROUP_LABEL) == self.group:
            self._apply(NEXT, "MODIFIED", raw)
        elif key in self._stores[MAIN] or key in self._stores[NEXT]:
            log.info("VirtualServer gone since its hand-over: not programmed",
                     extra={"vs": "/".join(key)})  # fmt: skip
            self._stores[MAIN].pop(key, None)
            self._stores[NEXT].pop(key, None)
            self._merge()
            self.on_change()

    def reset_vs(self, items: Iterable[Raw]) -> None:
        self._reset(MAIN, items)

    async def reset_vs_sliced(self, items: list[Raw]) -> None:
        """``reset_vs``, its parse in slices that leave the loop running (the watch's)."""
        self._reset(MAIN, items, await in_slices(items, self._parse_vs))

    async def reset_next_vs_sliced(self, items: list[Raw]) -> None:
        self._reset(NEXT, items, await in_slices(items, self._parse_vs))

    def apply_vs(self, kind: str, obj: Raw) -> None:
        self._apply(MAIN, kind, obj)

    def reset_next_vs(self, items: Iterable[Raw]) -> None:
        self._reset(NEXT, items)

    def apply_next_vs(self, kind: str, obj: Raw) -> None:
        self._apply(NEXT, kind, obj)

    # -- RealServerPools -----------------------------------------------------------------------

    def _check(self, obj: Mapping[str, Any]) -> HealthCheck | None:
        """The pool's health check; None without one, or when the pool fails the model's
        checks (e.g. an http path with a CR/LF stored before the CRD refused it): then its
        members are not probed, and one line per change says so, naming the pool."""
        key = object_key(obj)
        try:
            check = parse_spec(obj.get("spec"), name="/".join(key)).health_check
        except ValidationError as exc:
            reason = str(exc)
            if self._refused.get(key) != reason:
                self._refused[key] = reason
                log.warning(
                    "pool's health check ignored: its spec is invalid: %s",
                    reason,
                    extra={"pool": "/".join(key)},
                )
            return None
        except (TypeError, ValueError, KeyError):
            return None
        self._refused.pop(key, None)
        return check

    def _members(self, obj: Mapping[str, Any]) -> tuple[PoolMember, ...] | None:
        """The pool's members from its status. A member that cannot be read (a bad weight,
        an address that is none) is left out, alone, and said once per change; a status
        whose member list cannot be read at all gives None: keep the members seen before
        (never empty a serving pool because of one bad write)."""
        key = object_key(obj)
        name = "/".join(key)
        status = obj.get("status")
        raw: object = (status.get("members") or []) if isinstance(status, Mapping) else None
        if status is None:
            raw = []  # no status yet: no members
        if not isinstance(raw, list):
            log.warning("pool status unreadable (no list of members): keeping the members "
                        "seen before", extra={"pool": name})  # fmt: skip
            return None
        members: list[PoolMember] = []
        bad: list[str] = []
        for i, item in enumerate(raw):
            try:
                member = PoolMember.from_object(item)
                canonical_ip(member.address)  # an address (ValueError if not)
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                bad.append(f"member {i}: {exc}")
                continue
            members.append(member)
        if bad and self._bad_members.get(key) != bad:
            log.warning("pool members left out: %s", "; ".join(bad[:5]), extra={"pool": name})
        if bad:
            self._bad_members[key] = bad
        else:
            self._bad_members.pop(key, None)
        return tuple(members)

    def _parse_pool(self, obj: Raw) -> tuple[tuple[PoolMember, ...] | None, HealthCheck | None]:
        return self._members(obj), self._check(obj)

    def reset_pools(
        self,
        items: Iterable[Raw],
        parsed: list[tuple[tuple[PoolMember, ...] | None, HealthCheck | None]] | None = None,
    ) -> None:
        items = list(items)
        if parsed is None:
            parsed = [self._parse_pool(obj) for obj in items]
        pools: dict[ObjectKey, tuple[PoolMember, ...]] = {}
        checks: dict[ObjectKey, HealthCheck | None] = {}
        for obj, (members, check) in zip(items, parsed, strict=True):
            key = object_key(obj)
            pools[key] = self.pools.get(key, ()) if members is None else members
            checks[key] = check
        self.pools = pools
        self.pool_checks = checks
        self.pools_synced.set()
        self.on_change()

    async def reset_pools_sliced(self, items: list[Raw]) -> None:
        """``reset_pools``, its parse in slices that leave the loop running; the pools are
        replaced at once when all are parsed (events meanwhile wait in the watch's stream)."""
        self.reset_pools(items, await in_slices(items, self._parse_pool))

    def apply_pool(self, kind: str, obj: Raw) -> None:
        key = object_key(obj)
        if kind == "DELETED":
            self.pools.pop(key, None)
            self.pool_checks.pop(key, None)
            self._refused.pop(key, None)
            self._bad_members.pop(key, None)
        elif kind in ("ADDED", "MODIFIED"):
            read, check = self._members(obj), self._check(obj)
            members = self.pools.get(key, ()) if read is None else read
            if self.pools.get(key) == members and self.pool_checks.get(key) == check:
                return  # nothing the agent uses changed
            self.pools[key] = members
            self.pool_checks[key] = check
        else:
            return
        if any((vs.namespace, vs.spec.pool_name) == key for vs in self.virtual_servers.values()):
            self.on_change()
