"""Which Lease and pod events wake a reconciler pass (controller/relevance.py)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from lvs_operator.api.common import LabelSelector, LabelSelectorRequirement
from lvs_operator.api.contract import (
    DIRECTORS_ANNOTATION,
    HEARTBEAT_ANNOTATION,
    PROGRAMMED_ANNOTATION,
    VIP_PROBLEMS_ANNOTATION,
)
from lvs_operator.controller import relevance as r

from . import objects as o

T0 = datetime(2024, 1, 1, tzinfo=UTC)
OPERATOR_NS = "lvs-system"


def _renewed(lease: dict[str, Any], seconds: float) -> dict[str, Any]:
    out = copy.deepcopy(lease)
    out["spec"]["renewTime"] = (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    out["metadata"]["resourceVersion"] = str(seconds)
    return out


def _annotated(lease: dict[str, Any], key: str, value: str) -> dict[str, Any]:
    out = copy.deepcopy(lease)
    out["metadata"].setdefault("annotations", {})[key] = value
    return out


def test_a_renewal_of_a_valid_lease_does_not_matter() -> None:
    lease = o.lease("l", holder="n1", duration=10, programmed={"web/a": 1})
    assert not r.lease_change_matters(lease, _renewed(lease, 2), T0 + timedelta(seconds=3))
    # nor the annotations the controller does not read (heartbeat, listed standbys)
    for key in (HEARTBEAT_ANNOTATION, DIRECTORS_ANNOTATION):
        assert not r.lease_change_matters(lease, _annotated(lease, key, "x"), T0)


def test_lease_changes_the_controller_reads_matter() -> None:
    lease = o.lease("l", holder="n1", duration=10, programmed={"web/a": 1})
    now = T0 + timedelta(seconds=1)
    taken = copy.deepcopy(lease)
    taken["spec"]["holderIdentity"] = "n2"
    longer = copy.deepcopy(lease)
    longer["spec"]["leaseDurationSeconds"] = 20
    for new in (
        taken,
        longer,
        _annotated(lease, PROGRAMMED_ANNOTATION, '{"web/a": 2}'),
        _annotated(lease, VIP_PROBLEMS_ANNOTATION, '{"192.0.2.1": "no eth9"}'),
    ):
        assert r.lease_change_matters(lease, new, now)
    assert r.lease_change_matters(None, lease, now)  # created
    assert r.lease_change_matters(lease, None, now)  # deleted


def test_a_renewal_of_a_lease_that_ran_out_matters() -> None:
    lease = o.lease("l", holder="n1", duration=10)
    late = T0 + timedelta(seconds=12)  # expired at T0+10: the status says no active director
    assert r.lease_change_matters(lease, _renewed(lease, 11), late)


def _pod(
    name: str,
    labels: dict[str, str],
    namespace: str = "web",
    weight: str | None = None,
    ready: bool = True,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if weight is not None:
        meta["annotations"] = {"lvs.io/weight": weight}
    return {
        "metadata": meta,
        "spec": {"nodeName": "node-1"},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "podIP": "10.0.0.1",
        },
    }


SELECTORS = {
    "web": (
        r.PoolSelector(("web", "web"), LabelSelector({"app": "web"})),
        r.PoolSelector(
            ("web", "canary"),
            LabelSelector({"app": "web"}, (LabelSelectorRequirement("track", "In", ("canary",)),)),
        ),
    )
}


def _matters(old: dict[str, Any] | None, new: dict[str, Any] | None) -> bool:
    def reading(body: dict[str, Any] | None) -> r.PodRelevance | None:
        return None if body is None else r.pod_relevance(body, SELECTORS, OPERATOR_NS)

    return r.pod_change_matters(reading(old), reading(new))


def test_pods_no_pool_selects_never_matter() -> None:
    other = _pod("db-1", {"app": "db"})
    assert not _matters(None, other)  # created
    assert not _matters(other, _pod("db-1", {"app": "db", "x": "y"}, weight="5", ready=False))
    assert not _matters(other, None)  # deleted
    elsewhere = _pod("web-1", {"app": "web"}, namespace="other")  # no pool in its namespace
    assert not _matters(None, elsewhere)


def test_changes_of_a_selected_pod_matter_only_through_what_membership_reads() -> None:
    pod = _pod("web-1", {"app": "web"})
    assert _matters(None, pod) and _matters(pod, None)
    # readiness, IP, other labels: read from the EndpointSlices (their own events), not here
    busy = copy.deepcopy(pod)
    busy["status"]["conditions"][0]["status"] = "False"
    busy["metadata"]["labels"]["version"] = "2"
    busy["metadata"]["resourceVersion"] = "99"
    assert not _matters(pod, busy)
    assert _matters(pod, _pod("web-1", {"app": "web"}, weight="5"))  # its weight
    # a label a pool's matchExpressions reads: joins the canary pool
    assert _matters(pod, _pod("web-1", {"app": "web", "track": "canary"}))
    assert _matters(pod, _pod("web-1", {"app": "api"}))  # leaves the pool


def test_director_agents_matter_by_group_node_and_readiness() -> None:
    labels = {
        "app.kubernetes.io/managed-by": "lvs-operator",
        "app.kubernetes.io/component": "director",
        "lvs.io/director-group": "g1",
    }
    agent = _pod("d1", labels, namespace=OPERATOR_NS)
    assert r.pod_relevance(agent, SELECTORS, OPERATOR_NS).director is not None
    assert _matters(agent, _pod("d1", labels, namespace=OPERATOR_NS, ready=False))
    restamped = copy.deepcopy(agent)
    restamped["metadata"]["resourceVersion"] = "7"
    assert not _matters(agent, restamped)
    # a pod of the operator's namespace that is no agent (the controller itself)
    controller = _pod("lvs-operator-1", {"app": "lvs-operator"}, namespace=OPERATOR_NS)
    assert not _matters(None, controller)


def test_a_pass_at_a_lease_expiry_is_needed_only_if_it_was_not_renewed() -> None:
    lease = o.lease("l", holder="n1", duration=10)  # runs out at T0+10 unless renewed
    renewed = _renewed(lease, 8)  # now runs out at T0+18
    at_expiry = T0 + timedelta(seconds=10.05)
    last_pass = T0 + timedelta(seconds=1)
    assert r.expiry_passed([lease], last_pass, at_expiry)
    assert not r.expiry_passed([renewed], last_pass, at_expiry)
    assert r.next_expiry([renewed], at_expiry) == T0 + timedelta(seconds=18)
    # one that ran out before the last pass was already seen so
    assert not r.expiry_passed([lease], T0 + timedelta(seconds=11), T0 + timedelta(seconds=12))
    assert r.expiry_passed([renewed], None, at_expiry)  # no pass yet
    assert r.next_expiry([lease], T0 + timedelta(seconds=11)) is None


def test_pods_that_read_the_same_share_one_relevance() -> None:
    a = r.pod_relevance(_pod("web-1", {"app": "web"}), SELECTORS, OPERATOR_NS)
    b = r.pod_relevance(_pod("web-2", {"app": "web", "version": "2"}), SELECTORS, OPERATOR_NS)
    assert a is b and a == r.PodRelevance(a.pools, None)
    heavier = r.pod_relevance(_pod("web-3", {"app": "web"}, weight="5"), SELECTORS, OPERATOR_NS)
    assert heavier is not a and heavier == r.PodRelevance(a.pools, "5")
    assert r.shared_relevance((), None) == r.IRRELEVANT
