"""One VIP, one holder: on the real API server, a VirtualServer whose VIP another director
group already holds (any namespace, any port) is refused with reason Conflict naming the
holder; a VirtualServer of the same group may share the VIP on another port; when the
holder goes, the oldest remaining claimant's group takes the VIP."""

from __future__ import annotations

import secrets
import time
from typing import Any

import pytest
from lightkube import Client
from lightkube.resources.apps_v1 import DaemonSet

from lvs_operator.api.contract import daemonset_name, group_name

from ..helpers import wait_for
from .conftest import ControllerProcess
from .kube import (
    GROUP_LABEL,
    VS,
    condition,
    event_reasons,
    gone,
    obj,
    pool,
    ready_reason,
    virtualserver,
    wait_obj,
)

pytestmark = pytest.mark.integration


def _group_of(o: dict[str, Any]) -> str | None:
    return (o["metadata"].get("labels") or {}).get(GROUP_LABEL)


def test_a_vip_held_by_another_director_group_is_refused(
    admin: Client,
    running_controller: ControllerProcess,
    namespace: str,
    other_namespace: str,
    vips: Any,
) -> None:
    vip = next(vips)
    token = secrets.token_hex(4)
    edge = {"lvs.io/test-group": f"edge-{token}"}
    core = {"lvs.io/test-group": f"core-{token}"}
    edge_group, core_group = group_name(edge), group_name(core)
    opns = running_controller.namespace
    for ns in (namespace, other_namespace):
        admin.create(pool("web", servers=[{"address": "198.51.100.60"}]), namespace=ns)

    # The holder: the VIP on port 80, director group "edge".
    admin.create(
        virtualserver("holder", vip, "web", ports=[{"port": 80}], node_selector=edge),
        namespace=namespace,
    )
    wait_obj(
        admin,
        VS,
        "holder",
        namespace,
        lambda o: _group_of(o) == edge_group,
        what="the holder to be accepted in group edge",
    )
    time.sleep(1.1)  # creationTimestamp has second precision

    # Another namespace, another port, another group: refused.
    admin.create(
        virtualserver("intruder", vip, "web", ports=[{"port": 8443}], node_selector=core),
        namespace=other_namespace,
    )
    intruder = wait_obj(
        admin,
        VS,
        "intruder",
        other_namespace,
        lambda o: ready_reason(o) == "Conflict",
        what="Ready=False Conflict",
    )
    message = condition(intruder, "Ready")["message"]
    assert f"VIP {vip} is already held by director group {edge_group}" in message
    assert f"VirtualServer {namespace}/holder" in message
    assert condition(intruder, "Programmed")["reason"] == "Conflict"
    assert _group_of(intruder) is None and "directorGroup" not in intruder["status"]
    wait_for(lambda: "Conflict" in event_reasons(admin, other_namespace, "intruder"), timeout=10)
    # Only the holder's group runs directors: no DaemonSet for the refused group.
    wait_for(lambda: admin.get(DaemonSet, daemonset_name(edge_group), namespace=opns), timeout=20)
    assert gone(admin, DaemonSet, daemonset_name(core_group), opns)
    assert ready_reason(obj(admin, VS, "holder", namespace)) != "Conflict"
    time.sleep(1.1)

    # The same group may share the VIP on another port.
    admin.create(
        virtualserver("sibling", vip, "web", ports=[{"port": 443}], node_selector=edge),
        namespace=other_namespace,
    )
    sibling = wait_obj(
        admin,
        VS,
        "sibling",
        other_namespace,
        lambda o: _group_of(o) == edge_group,
        what="the same-group VirtualServer to be accepted",
    )
    assert ready_reason(sibling) != "Conflict"

    # The holder goes: the oldest remaining claimant (the intruder) takes the VIP for its
    # group, and the sibling, younger and of the other group, is refused in turn.
    admin.delete(VS, "holder", namespace=namespace)
    wait_obj(
        admin,
        VS,
        "intruder",
        other_namespace,
        lambda o: _group_of(o) == core_group,
        what="the intruder to take the VIP over",
    )
    sibling = wait_obj(
        admin,
        VS,
        "sibling",
        other_namespace,
        lambda o: ready_reason(o) == "Conflict",
        what="the sibling to be refused now",
    )
    message = condition(sibling, "Ready")["message"]
    assert f"VIP {vip} is already held by director group {core_group}" in message
    assert f"VirtualServer {other_namespace}/intruder" in message
    assert _group_of(sibling) is None
    wait_for(lambda: gone(admin, DaemonSet, daemonset_name(edge_group), opns), timeout=30)
