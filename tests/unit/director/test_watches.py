"""The agent's caches of its pools: a pool whose spec the model refuses (stored before the
CRD refused it) keeps no health check, and the agent says so once per change, naming it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from lvs_operator.api.realserverpool import MSG_HTTP_HOST, MSG_HTTP_PATH
from lvs_operator.director.watches import Watches


def pool(path: str = "/healthz", host: str | None = None, rv: str = "1") -> dict[str, Any]:
    check: dict[str, Any] = {"type": "http", "path": path}
    if host is not None:
        check["host"] = host
    return {
        "metadata": {"name": "web", "namespace": "shop", "resourceVersion": rv},
        "spec": {"servers": [{"address": "198.51.100.7"}], "healthCheck": check},
        "status": {"members": [{"address": "198.51.100.7", "weight": 1, "ready": True}]},
    }


def refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "health check ignored" in r.getMessage()]


def test_an_unsafe_health_check_is_dropped_and_logged_once_per_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="lvs_operator.director.watches")
    watches = Watches(on_change=lambda: None, on_vip=lambda vip: None)
    key = ("shop", "web")
    watches.reset_pools([pool()])
    check = watches.pool_checks[key]
    assert check is not None and check.path == "/healthz"
    assert refusals(caplog) == []

    watches.apply_pool("MODIFIED", pool(path="/healthz\r\nX-Injected: 1", rv="2"))
    assert watches.pool_checks[key] is None
    (record,) = refusals(caplog)
    assert record.__dict__["pool"] == "shop/web" and MSG_HTTP_PATH in record.getMessage()
    # The members stay: only the probe goes.
    assert [m.address for m in watches.pools[key]] == ["198.51.100.7"]

    # The same refusal again (a status update, a relist): no second line.
    watches.apply_pool("MODIFIED", pool(path="/healthz\r\nX-Injected: 1", rv="3"))
    watches.reset_pools([pool(path="/healthz\r\nX-Injected: 1", rv="3")])
    assert len(refusals(caplog)) == 1

    # Another reason is a change: one more line.
    watches.apply_pool("MODIFIED", pool(host="web\r\nX-Injected: 1", rv="4"))
    assert len(refusals(caplog)) == 2 and MSG_HTTP_HOST in refusals(caplog)[-1].getMessage()

    # Fixed: the check is back; broken again later: said again.
    watches.apply_pool("MODIFIED", pool(rv="5"))
    assert watches.pool_checks[key] is not None
    watches.apply_pool("MODIFIED", pool(host="web\r\nX-Injected: 1", rv="6"))
    assert len(refusals(caplog)) == 3
    assert watches.health_checks() == {}  # no VirtualServer uses it here anyway


# -- which VirtualServers the agent programs: the trust rules -------------------------------------


def vs(vip: str = "192.0.2.10", generation: int = 2, status: dict[str, Any] | None = None,
       name: str = "web") -> dict[str, Any]:  # fmt: skip
    """A VirtualServer carrying the group label (which a tenant can set)."""
    return {
        "metadata": {"name": name, "namespace": "shop", "generation": generation,
                     "labels": {"lvs.io/director-group": "g1"}},
        "spec": {"vip": vip, "ports": [{"port": 80}], "poolRef": {"name": "web"}},
        "status": status or {},
    }  # fmt: skip


ACCEPTED = {"observedGeneration": 2, "directorGroup": "g1", "acceptedVIP": "192.0.2.10"}


def not_programmed(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "not programmed" in r.getMessage()]


@pytest.mark.parametrize(
    ("obj", "why"),
    [
        # a tenant labels a VirtualServer the controller never accepted (or refused)
        (vs(), "not accepted for director group g1"),
        (vs(status={**ACCEPTED, "directorGroup": "g2"}), "its status says g2"),
        # a tenant edits spec.vip of an accepted one: not until the controller accepts it
        (vs(vip="10.0.0.1", generation=3, status=ACCEPTED), "not the VIP the controller accepted"),
        # a controller that does not write acceptedVIP: only a status of this generation
        (vs(generation=3, status={"observedGeneration": 2, "directorGroup": "g1"}),
         "none for this generation"),
        # the agent's own ranges, whatever the status says
        (vs(vip="198.51.100.1", status={**ACCEPTED, "acceptedVIP": "198.51.100.1"}),
         "outside this agent's --vip-ranges (192.0.2.0/24)"),
    ],
)  # fmt: skip
def test_only_what_the_controller_accepted_for_the_group_is_programmed(
    caplog: pytest.LogCaptureFixture, obj: dict[str, Any], why: str
) -> None:
    import ipaddress

    caplog.set_level(logging.WARNING, logger="lvs_operator.director.watches")
    owned: list[str] = []
    watches = Watches(lambda: None, owned.append, "g1", [ipaddress.ip_network("192.0.2.0/24")])
    watches.reset_vs([obj])
    assert watches.virtual_servers == {} and owned == []  # not programmed, its VIP not owned
    (line,) = not_programmed(caplog)
    assert why in line
    watches.apply_vs("MODIFIED", obj)  # the same again: no second line
    assert len(not_programmed(caplog)) == 1


def test_accepted_ones_are_programmed_and_a_refusal_ends_when_the_controller_accepts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="lvs_operator.director.watches")
    owned: list[str] = []
    watches = Watches(lambda: None, owned.append, "g1", None)
    watches.reset_vs([vs(status=ACCEPTED)])
    assert list(watches.virtual_servers) == [("shop", "web")] and owned == ["192.0.2.10"]
    # old controller, status of this generation: accepted too
    watches.apply_vs("MODIFIED", vs(status={"observedGeneration": 2, "directorGroup": "g1"}))
    assert list(watches.virtual_servers) == [("shop", "web")]
    # the tenant moves the VIP: dropped until the controller accepts the new one
    watches.apply_vs("MODIFIED", vs(vip="192.0.2.99", generation=3, status=ACCEPTED))
    assert watches.virtual_servers == {}
    moved = {"observedGeneration": 3, "directorGroup": "g1", "acceptedVIP": "192.0.2.99"}
    watches.apply_vs("MODIFIED", vs(vip="192.0.2.99", generation=3, status=moved))
    assert watches.virtual_servers[("shop", "web")].spec.vip == "192.0.2.99"
    assert any("accepted by the controller" in r.getMessage() for r in caplog.records)


# -- pool members: a bad one is skipped alone --------------------------------------------------


def pool_status(members: object, rv: str = "1") -> dict[str, Any]:
    obj = pool(rv=rv)
    obj["status"] = {"members": members}
    return obj


def test_a_bad_member_is_left_out_alone_and_an_unreadable_status_keeps_the_pool(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="lvs_operator.director.watches")
    key = ("shop", "web")
    good = {"address": "198.51.100.7", "weight": 1, "ready": True}
    watches = Watches(on_change=lambda: None, on_vip=lambda vip: None)
    watches.reset_pools([pool_status([good, {"address": "198.51.100.8", "weight": "heavy"}])])
    assert [m.address for m in watches.pools[key]] == ["198.51.100.7"]
    watches.apply_pool("MODIFIED", pool_status([good, {"address": "not-an-ip"}], rv="2"))
    assert [m.address for m in watches.pools[key]] == ["198.51.100.7"]
    lines = [r.getMessage() for r in caplog.records if "members left out" in r.getMessage()]
    assert len(lines) == 2 and "member 1" in lines[0] and "not-an-ip" in lines[1]
    assert all(r.__dict__.get("pool") == "shop/web" for r in caplog.records)
    # a status the controller would never write: the members seen before stay
    watches.apply_pool("MODIFIED", pool_status("garbage", rv="3"))
    assert [m.address for m in watches.pools[key]] == ["198.51.100.7"]
    watches.reset_pools([pool_status({"oops": 1}, rv="4")])
    assert [m.address for m in watches.pools[key]] == ["198.51.100.7"]
    assert any("keeping the members seen before" in r.getMessage() for r in caplog.records)


# -- a VirtualServer moving in from another director group ---------------------------------------

MOVING_IN = {**ACCEPTED, "directorGroup": "g0", "nextDirectorGroup": "g1"}


@pytest.mark.parametrize("main_first", [False, True])
def test_a_virtualserver_moving_in_is_staged_then_kept_through_the_label_change(
    main_first: bool,
) -> None:
    owned: list[str] = []
    watches = Watches(lambda: None, owned.append, "g1", None)
    watches.reset_vs([])
    watches.reset_next_vs([vs(status=MOVING_IN)])
    key = ("shop", "web")
    assert watches.vs_synced.is_set()
    assert list(watches.virtual_servers) == [key] and watches.staged == {key}
    assert owned == []  # staged: its VIP is not this group's yet
    # the hand-over: the status first (both watches still see their label), then the labels
    handed = vs(status=ACCEPTED)
    watches.apply_next_vs("MODIFIED", handed)
    assert watches.staged == set() and owned == ["192.0.2.10"]
    events = [(watches.apply_next_vs, "DELETED"), (watches.apply_vs, "ADDED")]
    for apply, kind in reversed(events) if main_first else events:
        apply(kind, handed)
        assert list(watches.virtual_servers) == [key] and watches.staged == set()
    # then deleted for good
    watches.apply_vs("DELETED", handed)
    assert watches.virtual_servers == {}


def test_a_move_called_off_drops_the_staged_one() -> None:
    watches = Watches(lambda: None, lambda vip: None, "g1", None)
    watches.reset_vs([])
    watches.reset_next_vs([vs(status=MOVING_IN)])
    staying = {**ACCEPTED, "directorGroup": "g0"}  # the selector was set back
    watches.apply_next_vs("MODIFIED", vs(status=staying))
    assert watches.virtual_servers == {} and watches.staged == set()
    watches.apply_next_vs("DELETED", vs(status=staying))
    assert watches.virtual_servers == {}


def test_a_virtualserver_handed_to_another_group_is_marked_moved() -> None:
    from lvs_operator.director.table import Protocol, ServiceKey

    watches = Watches(lambda: None, lambda vip: None, "g1", None)
    watches.reset_next_vs([])
    watches.reset_vs([vs(status=ACCEPTED)])
    watches.apply_vs("MODIFIED", vs(status={**ACCEPTED, "directorGroup": "g2"}))
    assert watches.virtual_servers == {}
    assert watches.moved == {ServiceKey(Protocol.TCP, "192.0.2.10", 80)}
    # refused for another reason (a group it never served): not a move
    watches.moved.clear()
    watches.apply_vs("MODIFIED", vs(name="other", status={**ACCEPTED, "directorGroup": "g2"}))
    assert watches.moved == set()


class OneObjectClient:
    """Answers the agent's GET of one VirtualServer (None: 404)."""

    def __init__(self, obj: dict[str, Any] | None) -> None:
        self.obj = obj

    async def get(self, res: Any, name: str, namespace: str) -> Any:
        from lightkube import ApiError
        from lightkube.models.meta_v1 import Status

        if self.obj is None:
            raise ApiError(status=Status(code=404, message="not found"))
        return type("Obj", (), {"to_dict": lambda _self: self.obj})()


@pytest.mark.parametrize("present", [False, True])
async def test_a_virtualserver_kept_through_a_hand_over_is_read_back(
    monkeypatch: pytest.MonkeyPatch, present: bool
) -> None:
    """Deleted between the controller's status and label writes, a VirtualServer leaves the
    moving-in watch but never arrives in the other: the agent reads it back and drops it; one
    that is there (labelled with the group) stays."""
    from lvs_operator.director import watches as w

    monkeypatch.setattr(w, "TRANSFER_CHECK", 0.01)
    watches = Watches(lambda: None, lambda vip: None, "g1", None)
    handed = vs(status=ACCEPTED)
    watches._client = OneObjectClient(handed if present else None)  # type: ignore[assignment]
    watches.reset_vs([])
    watches.reset_next_vs([vs(status=MOVING_IN)])
    watches.apply_next_vs("MODIFIED", handed)
    watches.apply_next_vs("DELETED", handed)
    assert list(watches.virtual_servers) == [("shop", "web")]
    await asyncio.gather(*watches._checks)
    assert list(watches.virtual_servers) == ([("shop", "web")] if present else [])


# -- a list's parse in slices ------------------------------------------------------------------


async def test_a_listed_parse_in_slices_leaves_the_loop_running_and_ends_as_the_whole_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The watches' resets parse in slices (``SLICE_SECONDS`` each, here 0: one object per
    slice), yielding to the loop between them, and install the same state as the one-go
    reset, at once at the end."""
    import lvs_operator.director.watches as watches_mod

    monkeypatch.setattr(watches_mod, "SLICE_SECONDS", 0.0)
    members = [{"address": f"10.20.0.{i}", "weight": 1, "ready": True} for i in range(1, 4)]
    pools = []
    for n in range(20):
        obj = pool_status(members)
        obj["metadata"]["name"] = f"web{n}"
        pools.append(obj)
    servers = [
        {**vs(vip=f"192.0.2.{10 + n}", name=f"web{n}"),
         "status": {**ACCEPTED, "acceptedVIP": f"192.0.2.{10 + n}"}}
        for n in range(20)
    ]  # fmt: skip
    whole, sliced = Watches(lambda: None, lambda _: None, group="g1"), None
    whole.reset_vs(servers)
    whole.reset_pools(pools)
    changes: list[tuple[int, int]] = []
    sliced = Watches(lambda: changes.append((len(sliced.virtual_servers), len(sliced.pools))),
                     lambda _: None, group="g1")  # fmt: skip
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        await sliced.reset_vs_sliced(servers)
        await sliced.reset_next_vs_sliced([])
        await sliced.reset_pools_sliced(pools)
    finally:
        task.cancel()
    assert ticks >= 39  # the loop ran after every object parsed but the last
    assert changes == [(20, 0), (20, 0), (20, 20)]  # each list installed whole, once
    assert sliced.virtual_servers == whole.virtual_servers
    assert sliced.pools == whole.pools and sliced.pool_checks == whole.pool_checks
    assert sliced.vs_synced.is_set() and sliced.pools_synced.is_set()
