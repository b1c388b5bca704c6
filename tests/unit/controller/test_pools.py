from __future__ import annotations

from datetime import UTC, datetime

from lvs_operator.api.realserverpool import PoolMember, RealServerPool
from lvs_operator.controller import pools as p
from lvs_operator.controller.conditions import ObjectRef

from . import objects as o

T0 = datetime(2024, 1, 1, tzinfo=UTC)
REF = ObjectRef("lvs.io/v1alpha1", "RealServerPool", "web", "web")


def parse(obj: dict) -> RealServerPool:
    return RealServerPool.from_object(obj)


def test_parse_weight() -> None:
    assert p.parse_weight(None, 3) == (3, None)
    assert p.parse_weight("7", 3) == (7, None)
    assert p.parse_weight("0", 3) == (0, None)
    weight, problem = p.parse_weight("heavy", 3)
    assert weight == 3 and problem and "lvs.io/weight" in problem and "0-65535" in problem
    assert p.parse_weight("70000", 3)[0] == 3


def test_pod_info() -> None:
    info = p.pod_info(
        {"metadata": {"labels": {"app": "web"}, "annotations": {"lvs.io/weight": "5"}}}
    )
    assert info == p.PodInfo({"app": "web"}, "5")
    assert p.pod_info({"metadata": {}}) == p.PodInfo({}, None)


def test_slice_info_keeps_what_membership_reads() -> None:
    sl = o.endpoint_slice(
        "web",
        [
            o.endpoint("10.0.0.1", "web-a", ready=None, node="n2"),  # unknown: ready, serving
            o.endpoint("10.0.0.2", "web-b", ready=False, serving=True, terminating=True),
        ],
        ports={"http": 8080},
    )
    sl["endpoints"].append({"addresses": ["10.0.0.3"], "targetRef": {"kind": "Node", "name": "x"}})
    sl["ports"].append({"port": 9})  # unnamed: no targetPort key
    assert p.slice_info(sl) == p.SliceInfo(
        endpoints=(
            p.SliceEndpoint(("10.0.0.1",), pod="web-a", node="n2"),
            p.SliceEndpoint(("10.0.0.2",), False, True, True, pod="web-b", node="node-1"),
            p.SliceEndpoint(("10.0.0.3",)),
        ),
        ports=(("http", 8080),),
    )
    assert p.slice_info({}) == p.SliceInfo()


def test_members_from_slices_with_named_ports_and_states() -> None:
    pool = parse(o.pool(weight=2))
    sl = o.endpoint_slice(
        "web",
        [
            o.endpoint("10.0.0.2", "web-b"),
            o.endpoint("10.0.0.10", "web-c", ready=False, serving=False),
            o.endpoint("10.0.0.1", "web-a", ready=False, serving=True, terminating=True),
            o.endpoint("10.0.0.3", "web-d", ready=None),  # unknown: ready
        ],
        ports={"http": 8080, "443": 443},
    )
    pods = {("web", "web-b"): p.PodInfo({"app": "web"}, "9")}
    outcome = p.evaluate_pool(pool, [p.slice_info(sl)], pods)
    addrs = [m.address for m in outcome.members]
    assert addrs == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.10"]  # numeric order
    a, b, d, c = outcome.members
    assert a.terminating and a.serving and not a.ready
    assert b == PoolMember(
        address="10.0.0.2",
        weight=9,
        ready=True,
        serving=True,
        terminating=False,
        ports={"http": 8080, "443": 443},
        pod="web-b",
        node="node-1",
        source="pod",
    )
    assert c.weight == 2 and not c.ready and not c.serving
    assert d.ready and d.serving
    assert (outcome.ready, outcome.total) == (2, 4)
    (ready,) = outcome.conditions
    assert (ready.status, ready.reason) == ("True", p.MEMBERS_READY)
    assert ready.message == "2 of 4 members ready"


def test_duplicate_addresses_merge_and_bad_weight_reported() -> None:
    pool = parse(o.pool())
    s1 = o.endpoint_slice("web", [o.endpoint("10.0.0.1", "web-a", ready=False)], {"http": 80})
    s2 = o.endpoint_slice("web", [o.endpoint("10.0.0.1", "web-a")], {"metrics": 9090})
    pods = {("web", "web-a"): p.PodInfo({}, "lots")}
    outcome = p.evaluate_pool(pool, [p.slice_info(s1), p.slice_info(s2)], pods)
    (m,) = outcome.members
    assert m.ready and m.ports == {"http": 80, "metrics": 9090} and m.weight == 1
    assert outcome.problems and "web/web-a" in outcome.problems[0]


def test_match_expressions_filter_on_pod_labels() -> None:
    pool = parse(
        o.pool(
            selector={
                "matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "track", "operator": "NotIn", "values": ["canary"]}],
            }
        )
    )
    sl = o.endpoint_slice(
        "web", [o.endpoint("10.0.0.1", "stable"), o.endpoint("10.0.0.2", "canary")]
    )
    pods = {
        ("web", "stable"): p.PodInfo({"app": "web", "track": "stable"}),
        ("web", "canary"): p.PodInfo({"app": "web", "track": "canary"}),
    }
    outcome = p.evaluate_pool(pool, [p.slice_info(sl)], pods)
    assert [m.pod for m in outcome.members] == ["stable"]


def test_only_match_expressions_is_reported() -> None:
    pool = parse(o.pool(selector={"matchExpressions": [{"key": "app", "operator": "Exists"}]}))
    (cond,) = p.evaluate_pool(pool, [], {}).conditions
    assert (cond.status, cond.reason) == ("False", p.SELECTOR_UNSUPPORTED)
    assert "matchLabels" in cond.message


def test_a_refused_service_is_reported_not_no_members() -> None:
    pool = parse(
        o.pool(servers=[{"address": "198.51.100.1"}], selector={"matchLabels": {"app": "web"}})
    )
    stale = [p.slice_info(o.endpoint_slice("web", [o.endpoint("10.0.0.1", "web-1")]))]
    message = p.service_rejected_message("web", "lvs-web", 'Service "lvs-web" is invalid: x')
    outcome = p.evaluate_pool(pool, stale, {}, message)
    (cond,) = outcome.conditions
    assert (cond.status, cond.reason) == ("False", p.SERVICE_REJECTED)
    assert cond.reason != p.NO_MEMBERS
    assert "refused the pool's headless Service web/lvs-web" in cond.message
    assert 'Service "lvs-web" is invalid: x' in cond.message and "spec.selector" in cond.message
    # The slices of an older Service are not used; static servers still are.
    assert [m.source for m in outcome.members] == ["static"]
    # It is a Warning Event, like the other problems.
    status = p.pool_status(outcome, 1, None, T0)
    (event,) = p.pool_events(REF, None, status)
    assert (event.type, event.reason) == ("Warning", p.SERVICE_REJECTED)


def test_static_servers_and_empty_pool() -> None:
    pool = parse(
        o.pool(
            servers=[
                {"address": "198.51.100.2", "port": 8080, "weight": 3},
                {"address": "198.51.100.1"},
            ]
        )
    )
    outcome = p.evaluate_pool(pool, [], {})
    assert [m.to_object() for m in outcome.members] == [
        {
            "address": "198.51.100.1",
            "weight": 1,
            "ready": True,
            "serving": True,
            "terminating": False,
            "source": "static",
        },
        {
            "address": "198.51.100.2",
            "weight": 3,
            "ready": True,
            "serving": True,
            "terminating": False,
            "source": "static",
            "port": 8080,
        },
    ]
    empty = p.evaluate_pool(parse(o.pool()), [], {})
    assert empty.total == 0
    assert (empty.conditions[0].status, empty.conditions[0].reason) == ("False", p.NO_MEMBERS)
    unready = p.evaluate_pool(
        parse(o.pool()),
        [p.slice_info(o.endpoint_slice("web", [o.endpoint("10.0.0.1", "a", ready=False)]))],
        {},
    )
    assert unready.conditions[0].reason == p.NO_READY_MEMBERS


def test_pool_status_and_idempotence() -> None:
    outcome = p.evaluate_pool(
        parse(o.pool()),
        [p.slice_info(o.endpoint_slice("web", [o.endpoint("10.0.0.1", "a")], {"http": 80}))],
        {},
    )
    status = p.pool_status(outcome, 3, None, T0)
    assert status["observedGeneration"] == 3
    assert status["readyMembers"] == 1 and status["totalMembers"] == 1
    assert status["readyOfTotal"] == "1/1"
    assert status["members"][0]["ports"] == [{"name": "http", "port": 80}]
    assert status["conditions"][0]["lastTransitionTime"] == "2024-01-01T00:00:00Z"
    later = datetime(2024, 2, 1, tzinfo=UTC)
    assert p.pool_status(outcome, 3, status, later) == status


def test_pool_events() -> None:
    def status(*members: tuple[str, bool, bool]) -> dict:
        eps = [o.endpoint(a, a, ready=r, terminating=t) for a, r, t in members]
        outcome = p.evaluate_pool(parse(o.pool()), [p.slice_info(o.endpoint_slice("web", eps))], {})
        return p.pool_status(outcome, 1, None, T0)

    first = status(("10.0.0.1", True, False))
    evs = p.pool_events(REF, None, first)
    assert [(e.type, e.reason) for e in evs] == [("Normal", p.MEMBERS_READY)]
    second = status(("10.0.0.1", False, True), ("10.0.0.2", True, False))
    evs = p.pool_events(REF, first, second)
    assert [e.reason for e in evs] == ["MembersChanged"]
    assert "added 10.0.0.2" in evs[0].message and "10.0.0.1 terminating" in evs[0].message
    third = status()
    evs = p.pool_events(REF, second, third)
    assert [(e.type, e.reason) for e in evs] == [
        ("Normal", p.NO_MEMBERS),
        ("Normal", "MembersChanged"),
    ]
    assert "removed 10.0.0.1, 10.0.0.2" in evs[1].message
    assert p.pool_events(REF, third, third) == []


def _many_endpoints(count: int) -> list[dict]:
    # every third one not ready
    return [
        o.endpoint(f"10.1.{i // 256}.{i % 256}", f"web-{i}", ready=i % 3 != 0) for i in range(count)
    ]


def _crd_members_max_items() -> int:
    import pathlib

    import yaml

    crd = yaml.safe_load(pathlib.Path("crds/lvs.io_realserverpools.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return int(schema["properties"]["status"]["properties"]["members"]["maxItems"])


def test_a_pool_past_the_status_limit_lists_its_ready_members_first_and_says_so() -> None:
    import random

    from lvs_operator.api.realserverpool import MAX_MEMBERS

    assert _crd_members_max_items() == MAX_MEMBERS  # what the API server would accept
    pool = parse(o.pool())
    endpoints = _many_endpoints(5000)
    outcome = p.evaluate_pool(
        pool, [p.slice_info(o.endpoint_slice("web", endpoints, {"http": 8080}))], {}
    )
    assert len(outcome.members) == MAX_MEMBERS
    assert outcome.total == 5000 and outcome.ready == 5000 - 1667  # the pool's real counts
    assert sum(1 for m in outcome.members if m.ready) == 5000 - 1667  # every ready one listed
    (cond,) = outcome.conditions
    assert (cond.status, cond.reason) == ("False", p.TOO_MANY_MEMBERS)
    assert "5000 members (3333 ready)" in cond.message and str(MAX_MEMBERS) in cond.message
    status = p.pool_status(outcome, 1, None, T0)
    assert len(status["members"]) == MAX_MEMBERS and status["readyOfTotal"] == "3333/5000"
    # the same members whatever order the slices list them in: no status churn
    random.Random(1).shuffle(endpoints)
    again = p.evaluate_pool(
        pool, [p.slice_info(o.endpoint_slice("web", endpoints, {"http": 8080}))], {}
    )
    assert again.members == outcome.members


def test_a_pool_at_the_status_limit_lists_every_member() -> None:
    from lvs_operator.api.realserverpool import MAX_MEMBERS

    pool = parse(o.pool())
    endpoints = _many_endpoints(MAX_MEMBERS)
    outcome = p.evaluate_pool(
        pool, [p.slice_info(o.endpoint_slice("web", endpoints, {"http": 8080}))], {}
    )
    assert len(outcome.members) == outcome.total == MAX_MEMBERS
    assert outcome.conditions[0].reason == p.MEMBERS_READY


def test_an_index_keeps_a_copy_of_the_fields_asked_without_managed_fields() -> None:
    body = o.pool("web", status={"members": []})
    body["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    body["metadata"]["labels"] = {"app": "web"}
    kept = p.index_body(body, ("metadata", "spec"))
    assert set(kept) == {"metadata", "spec"}
    assert "managedFields" not in kept["metadata"]
    assert kept["metadata"]["labels"] == {"app": "web"} and kept["spec"] == body["spec"]
    kept["metadata"]["labels"]["app"] = "other"
    assert body["metadata"]["labels"] == {"app": "web"}  # a copy: the index owns it
    assert p.index_body(body, ("endpoints",)) == {}


def test_an_index_keeps_the_status_as_text_and_gives_a_fresh_copy() -> None:
    status = {"members": [{"address": "10.0.0.1", "ready": True}], "readyOfTotal": "1/1"}
    body = o.pool("web", status=status)
    kept = p.index_body(body, ("metadata", "spec", "status"))
    assert set(kept) == {"metadata", "spec", "status"} and len(kept) == 3
    assert kept == {k: body[k] for k in ("metadata", "spec", "status")}
    assert kept["status"] == status and kept["status"] is not kept["status"]
    kept["status"]["members"].clear()
    assert kept.get("status") == status  # what a reader changes is its own copy
    assert "status" not in p.index_body(o.pool("web"), ("metadata", "spec", "status"))
    svc = p.index_body(body, ("metadata", "spec"), as_text="spec")
    assert set(svc) == {"metadata", "spec"} and svc["spec"] == body["spec"]
