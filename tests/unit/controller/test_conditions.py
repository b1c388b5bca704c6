from __future__ import annotations

from datetime import UTC, datetime

from lvs_operator.api.common import Condition
from lvs_operator.controller import conditions as c


def test_timestamps() -> None:
    t = datetime(2024, 5, 6, 7, 8, 9, 123, tzinfo=UTC)
    assert c.timestamp(t) == "2024-05-06T07:08:09Z"
    assert c.parse_timestamp("2024-05-06T07:08:09Z") == t.replace(microsecond=0)
    assert c.parse_timestamp("2024-05-06T07:08:09.000123Z") == t
    assert c.parse_timestamp("") is None
    assert c.parse_timestamp("yesterday") is None


def test_merge_keeps_transition_time_while_status_holds() -> None:
    t1 = datetime(2024, 1, 1, tzinfo=UTC)
    t2 = datetime(2024, 1, 2, tzinfo=UTC)
    first = c.merge_conditions([], [c.condition("Ready", False, "A", "a")], t1, 1)
    assert first[0].last_transition_time == "2024-01-01T00:00:00Z"
    assert first[0].observed_generation == 1
    # Same status, other reason/message: the time stays.
    second = c.merge_conditions(first, [c.condition("Ready", False, "B", "b")], t2, 2)
    assert second[0].last_transition_time == "2024-01-01T00:00:00Z"
    assert (second[0].reason, second[0].observed_generation) == ("B", 2)
    # Status flips: a new time.
    third = c.merge_conditions(second, [c.condition("Ready", True, "C")], t2, 2)
    assert third[0].last_transition_time == "2024-01-02T00:00:00Z"


def test_changed_and_find() -> None:
    a = Condition("Ready", "True", "X")
    assert c.changed(None, a)
    assert not c.changed(a, Condition("Ready", "True", "X", "other message"))
    assert c.changed(a, Condition("Ready", "True", "Y"))
    assert c.find([a], "Ready") is a and c.find([a], "Other") is None
    assert c.conditions_from({"conditions": [a.to_object()]})[0].reason == "X"
    assert c.conditions_from(None) == ()


def test_build_event() -> None:
    ref = c.ObjectRef("lvs.io/v1alpha1", "VirtualServer", "web", "site", "uid-1")
    ev = c.build_event(
        c.EventSpec(ref, c.WARNING, "Conflict", "x" * 2000), datetime(2024, 1, 1, tzinfo=UTC)
    )
    assert ev["metadata"] == {"generateName": "site.", "namespace": "web"}
    assert ev["involvedObject"] == {
        "apiVersion": "lvs.io/v1alpha1",
        "kind": "VirtualServer",
        "namespace": "web",
        "name": "site",
        "uid": "uid-1",
    }
    assert ev["type"] == "Warning" and ev["reason"] == "Conflict"
    assert len(ev["message"]) == 1024
    assert ev["source"] == {"component": "lvs-operator"}
    assert ev["firstTimestamp"] == ev["lastTimestamp"] == "2024-01-01T00:00:00Z"
