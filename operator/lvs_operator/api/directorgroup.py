"""Director groups: the names both the controller and the agents derive from a node selector.

VirtualServers whose ``spec.directors.nodeSelector`` are equal share one group: one
DaemonSet of director agents and one Lease (both in the operator's namespace). The
controller labels each VirtualServer with its group so an agent watches just its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

GROUP_LABEL = "lvs.io/director-group"
# Labels on objects the controller creates, so they can be found and cleaned up.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "lvs-operator"
COMPONENT_LABEL = "app.kubernetes.io/component"


def group_name(node_selector: Mapping[str, str]) -> str:
    """A short, stable, DNS-safe name for the group of a node selector.

    A hash rather than the labels themselves: selector keys may hold '/' and be long.
    """
    canonical = "\n".join(f"{k}={v}" for k, v in sorted(node_selector.items()))
    return "g" + hashlib.sha256(canonical.encode()).hexdigest()[:10]


def daemonset_name(group: str) -> str:
    return f"lvs-director-{group}"


def lease_name(group: str) -> str:
    return f"lvs-director-{group}"
