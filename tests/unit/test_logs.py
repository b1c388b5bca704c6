"""lvs_operator/logs.py: the one JSON-lines log format of the controller and the agents."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from lvs_operator import logs


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Restore the root logger and the quieted loggers after a test that sets them up."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quiet = {n: logging.getLogger(n).level for n in ("kopf", "httpx", "httpx2", "aiohttp.access")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in quiet.items():
        logging.getLogger(name).setLevel(lvl)


def _record(
    logger: str = "lvs_operator.controller.reconciler", **extra: object
) -> logging.LogRecord:
    record = logging.LogRecord(logger, logging.WARNING, "", 0, "pool %s: %d", ("web", 3), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_fields_and_extras() -> None:
    out = json.loads(logs.JsonFormatter().format(_record(pool="demo/web", members=3)))
    assert list(out)[:4] == ["ts", "level", "logger", "msg"]
    assert out["level"] == "warning"
    assert out["logger"] == "controller.reconciler"
    assert out["msg"] == "pool web: 3"
    assert (out["pool"], out["members"]) == ("demo/web", 3)
    assert isinstance(out["ts"], float)


def test_exceptions_are_one_field() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, "", 0, "failed", (), None)
        import sys

        record.exc_info = sys.exc_info()
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    assert "RuntimeError: boom" in json.loads(line)["exc"]


def test_kopf_object_records_carry_the_object_not_kopfs_plumbing() -> None:
    import kopf
    from kopf._core.actions.loggers import ObjectLogger

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    kopf_logger = logging.getLogger("kopf.objects")
    kopf_logger.addHandler(handler)
    try:
        body = {
            "apiVersion": "lvs.io/v1alpha1",
            "kind": "VirtualServer",
            "metadata": {"name": "web", "namespace": "demo", "uid": "u1"},
        }
        ObjectLogger(body=body, settings=kopf.OperatorSettings()).warning("handler failed")
    finally:
        kopf_logger.removeHandler(handler)
    out = json.loads(stream.getvalue())
    assert out["msg"] == "handler failed"
    assert (out["kind"], out["namespace"], out["name"]) == ("VirtualServer", "demo", "web")
    assert not {"settings", "k8s_ref", "k8s_skip"} & set(out)


def test_the_agent_logs_through_this_module() -> None:
    """One format: the director's entry point sets up this module's handler."""
    from lvs_operator.director import main

    assert main.setup_logging is logs.setup_logging


def test_the_controller_logs_json_lines(root_logging: None) -> None:
    from lvs_operator.controller import app

    app.setup_logging("info")
    root = logging.getLogger()
    assert len(root.handlers) == 1
    assert isinstance(root.handlers[0].formatter, logs.JsonFormatter)
    assert root.level == logging.INFO
    assert logging.getLogger("kopf").level == logging.WARNING  # chatty at INFO
    app.setup_logging("debug")
    assert logging.getLogger().level == logging.DEBUG
