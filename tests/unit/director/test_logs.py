"""The agent's JSON log lines."""

from __future__ import annotations

import json
import logging

from lvs_operator.logs import JsonFormatter

VIP = "10.10.0.100"


def test_json_logs_carry_the_objects() -> None:
    record = logging.LogRecord("lvs_operator.director.agent", logging.INFO, "", 0, "VIP added",
                               (), None)  # fmt: skip
    record.vip = VIP
    out = json.loads(JsonFormatter().format(record))
    assert out["msg"] == "VIP added" and out["vip"] == VIP and out["level"] == "info"
