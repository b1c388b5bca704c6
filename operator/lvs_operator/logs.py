"""One log format for every process of the operator: JSON lines on stderr.

Each line is an object with ``ts`` (Unix time, milliseconds), ``level``, ``logger`` (without
the ``lvs_operator.`` prefix), ``msg``, then the objects the record concerns — whatever the
caller passed as ``extra``, keyed by kind with ``"<namespace>/<name>"`` values (``vs``,
``pool``, ``lease``; ``name`` itself is taken by the LogRecord) or by what they are (``vip``,
``interface``) — and ``exc`` with a traceback. One format, so one query finds a
VirtualServer in the controller's and the agents' logs alike.

kopf's per-object loggers attach a reference to the object they concern (``k8s_ref``) and
their own plumbing (``settings``, ``k8s_skip``); the reference becomes the ``kind``,
``namespace`` and ``name`` fields, the plumbing is left out.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

# Attributes every LogRecord has: not the caller's extras.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}
KOPF_REF = "k8s_ref"
_KOPF_PLUMBING = frozenset({KOPF_REF, "k8s_skip", "settings"})
_KOPF_REF_FIELDS = ("kind", "namespace", "name")


class JsonFormatter(logging.Formatter):
    """A record as one JSON object (see the module's docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name.removeprefix("lvs_operator."),
            "msg": record.getMessage(),
        }
        ref = getattr(record, KOPF_REF, None)
        if isinstance(ref, Mapping):
            out.update((k, ref[k]) for k in _KOPF_REF_FIELDS if ref.get(k))
        for key, value in record.__dict__.items():
            if key in _RECORD_ATTRS or key in _KOPF_PLUMBING or key.startswith("_"):
                continue
            out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)


def setup_logging(level: str, quiet: Iterable[str] = (), stream: TextIO | None = None) -> None:
    """Send every logger's records (kopf's and the libraries' too) through one JSON handler
    on stderr, at ``level``; the ``quiet`` loggers are held at WARNING."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
