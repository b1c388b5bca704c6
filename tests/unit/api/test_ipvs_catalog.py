"""api/ipvs_catalog.py is the one table of IPVS protocols, forwarding methods, schedulers and
flags: the CRD and the model are generated from it, and the agent's IPVS model encodes
exactly what it says (so the agent can derive its encoding from it)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from lvs_operator.api import crd, ipvs_catalog
from lvs_operator.api import realserverpool as rsp
from lvs_operator.api import virtualserver as vs
from lvs_operator.api.ipvs_catalog import (
    API_SCHEDULER_FLAGS,
    SCHEDULER_FLAGS,
    Forwarding,
    Protocol,
    Scheduler,
    SchedulerFlag,
)
from lvs_operator.api.validation import ValidationError

from .k8s_validator import evaluate_rule


def _vs_spec_schema() -> dict[str, Any]:
    return crd.virtualserver_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"
    ]["spec"]


def test_the_model_uses_the_catalog_enums() -> None:
    assert vs.Protocol is Protocol
    assert vs.Forwarding is Forwarding
    assert vs.Scheduler is Scheduler


def test_crd_enums_are_the_table() -> None:
    spec = _vs_spec_schema()
    props = spec["properties"]
    assert props["ports"]["items"]["properties"]["protocol"]["enum"] == [str(p) for p in Protocol]
    assert props["scheduler"]["enum"] == [str(s) for s in Scheduler]
    assert props["forwarding"]["enum"] == [str(f) for f in Forwarding]
    flags = props["schedulerFlags"]
    assert flags["items"]["enum"] == [f.name for f in SCHEDULER_FLAGS if f.in_api]
    assert flags["maxItems"] == len(API_SCHEDULER_FLAGS)
    rules = {r["rule"]: r["message"] for r in spec["x-kubernetes-validations"]}
    assert rules[ipvs_catalog.flags_match_rule()] == vs.MSG_FLAGS_MATCH


def test_the_generated_flag_texts_are_todays() -> None:
    """The table reproduces what the CRD said when it was written by hand."""
    assert ipvs_catalog.flags_match_message() == (
        "schedulerFlags sh-* need scheduler sh, and mh-* need scheduler mh"
    )
    assert ipvs_catalog.flags_match_rule() == (
        "!has(self.schedulerFlags) || self.schedulerFlags.all(f, "
        "f.startsWith(self.scheduler + '-'))"
    )
    assert ipvs_catalog.flags_description() == (
        "sh-fallback, sh-port (scheduler sh); mh-fallback, mh-port (mh)."
    )


def test_a_flag_for_any_scheduler_would_reach_the_crd_rule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Offering 'ops' to users is one row's in_api: the rule and texts follow."""
    rows = [
        SchedulerFlag(f.name, f.bit, f.scheduler, f.in_api or f.name == "ops", f.meaning)
        for f in SCHEDULER_FLAGS
    ]
    monkeypatch.setattr(ipvs_catalog, "API_SCHEDULER_FLAGS", {f.name: f for f in rows if f.in_api})
    rule = ipvs_catalog.flags_match_rule()
    assert evaluate_rule(rule, {"scheduler": "rr", "schedulerFlags": ["ops"]})
    assert evaluate_rule(rule, {"scheduler": "sh", "schedulerFlags": ["ops", "sh-port"]})
    assert not evaluate_rule(rule, {"scheduler": "rr", "schedulerFlags": ["sh-port"]})
    assert ipvs_catalog.flags_description().endswith("; ops (any scheduler).")


def test_the_flag_rule_agrees_with_the_model() -> None:
    rule = ipvs_catalog.flags_match_rule()
    base = {"vip": "192.0.2.1", "ports": [{"port": 80}], "poolRef": {"name": "p"}}
    for scheduler, flag in itertools.product(Scheduler, API_SCHEDULER_FLAGS):
        spec = {**base, "scheduler": str(scheduler), "schedulerFlags": [flag]}
        cel_ok = evaluate_rule(rule, spec)
        try:
            vs.parse_spec(spec)
            model_ok = True
        except ValidationError:
            model_ok = False
        assert cel_ok == model_ok == (API_SCHEDULER_FLAGS[flag].scheduler == scheduler), spec


def test_a_scheduler_flag_must_carry_its_scheduler_prefix() -> None:
    with pytest.raises(ValueError, match=r"must be named 'sh-\.\.\.'"):
        SchedulerFlag("port", ipvs_catalog.IP_VS_SVC_F_SCHED2, Scheduler.SH, True, "")


def test_kernel_encodings() -> None:
    """Values from include/uapi/linux/ip_vs.h and in.h."""
    assert {p: p.number for p in Protocol} == {
        Protocol.TCP: 6,
        Protocol.UDP: 17,
        Protocol.SCTP: 132,
    }
    assert {f: f.kernel_value for f in Forwarding} == {
        Forwarding.MASQUERADE: 0,
        Forwarding.TUNNEL: 2,
        Forwarding.DIRECT: 3,
    }
    for p in Protocol:
        assert Protocol.from_number(p.number) is p
    for f in Forwarding:
        assert Forwarding.from_kernel(f.kernel_value | 0x100) is f  # other conn flags ignored
    with pytest.raises(ValueError):
        Protocol.from_number(1)
    with pytest.raises(ValueError):
        Forwarding.from_kernel(1)  # LOCALNODE: not offered
    assert ipvs_catalog.SETTABLE_FLAG_BITS == 0x4 | 0x8 | 0x10 | 0x20
    assert ipvs_catalog.flag_bits(["sh-fallback", "sh-port"]) == 0x18
    assert ipvs_catalog.flag_names(0x18, "sh") == {"sh-fallback", "sh-port"}
    assert ipvs_catalog.flag_names(0x18 | 0x20 | 0x4, "rr") == {"flag-1", "flag-2", "flag-3", "ops"}
    with pytest.raises(ValueError, match="unknown IPVS service flag"):
        ipvs_catalog.flag_bits(["nope"])


def test_the_agents_ipvs_model_encodes_what_the_table_says() -> None:
    """director/table.py keeps its own copy for now; it must equal the catalog."""
    from lvs_operator.director import table

    assert [str(p) for p in table.Protocol] == [str(p) for p in Protocol]
    assert {str(p): p.number for p in table.Protocol} == {str(p): p.number for p in Protocol}
    assert {str(f): f.kernel_value for f in table.Forwarding} == {
        str(f): f.kernel_value for f in Forwarding
    }
    assert table.IP_VS_CONN_F_FWD_MASK == ipvs_catalog.IP_VS_CONN_F_FWD_MASK
    assert {f.name: f.bit for f in SCHEDULER_FLAGS} == table.FLAG_BITS
    assert table.SETTABLE_FLAGS == ipvs_catalog.SETTABLE_FLAG_BITS
    for name in ("PERSISTENT", "HASHED", "ONEPACKET", "SCHED1", "SCHED2", "SCHED3"):
        assert getattr(table, f"IP_VS_SVC_F_{name}") == getattr(ipvs_catalog, f"IP_VS_SVC_F_{name}")
    for bits, scheduler in itertools.product(range(0x40), [*map(str, Scheduler), "other"]):
        assert table.bits_to_flags(bits, scheduler) == ipvs_catalog.flag_names(bits, scheduler)


# --- health-check types -----------------------------------------------------------------------


def _pool_spec(check: dict[str, Any]) -> dict[str, Any]:
    return {"servers": [{"address": "192.0.2.10"}], "healthCheck": check}


def test_health_check_type_enum_is_the_models() -> None:
    schema = crd.realserverpool_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    health = schema["properties"]["spec"]["properties"]["healthCheck"]
    assert health["properties"]["type"]["enum"] == [str(t) for t in rsp.HealthCheckType]


@pytest.mark.parametrize("kind", ["grpc", "HTTP", "", None, 1, ["tcp"]])
def test_an_unknown_health_check_type_is_refused(kind: Any) -> None:
    with pytest.raises(ValidationError, match=r"spec\.healthCheck\.type"):
        rsp.parse_spec(_pool_spec({"type": kind}))


def test_a_health_check_built_in_code_cannot_carry_an_unknown_type() -> None:
    assert rsp.HealthCheck(type="http").type is rsp.HealthCheckType.HTTP  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        rsp.HealthCheck(type="grpc")  # type: ignore[arg-type]
