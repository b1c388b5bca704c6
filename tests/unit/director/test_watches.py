"""The agent's caches of its pools: a pool whose spec the model refuses (stored before the
CRD refused it) keeps no health check, and the agent says so once per change, naming it."""

from __future__ import annotations

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
