"""The controller's configuration: what its flags and environment decide."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lvs_operator import __version__
from lvs_operator.api.contract import (
    DEFAULT_HEALTH_PORT,
    DEFAULT_METRICS_PORT,
    DEFAULT_PEER_PORT,
    DIRECTOR_NODE_LABEL,
)
from lvs_operator.api.network import IPNetwork

from .metrics import DEFAULT_PORT as DEFAULT_CONTROLLER_METRICS_PORT

DEFAULT_NAMESPACE = "lvs-system"
DEFAULT_DIRECTOR_IMAGE = f"lvs-operator:{__version__}"
DEFAULT_DIRECTOR_SERVICE_ACCOUNT = "lvs-director"
DEFAULT_DIRECTOR_RESOURCES: Mapping[str, Any] = {
    "requests": {"cpu": "50m", "memory": "64Mi"},
    "limits": {"memory": "256Mi"},
}
# The director agents must run on their nodes even when those are tainted for it.
DEFAULT_DIRECTOR_TOLERATIONS: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class DirectorTimings:
    """Lease timings handed to the agents (None: the agent's own default)."""

    lease_duration_seconds: int | None = None
    renew_deadline_seconds: float | None = None
    retry_period_seconds: float | None = None


@dataclass(frozen=True)
class OwnerDeployment:
    """The controller's own Deployment, which every director DaemonSet names as its owner so
    that deleting the Deployment (``helm uninstall``, ``kubectl delete -f deploy/``) lets the
    garbage collector remove the DaemonSets, and with them their heartbeat-key Secrets."""

    name: str
    uid: str

    def owner_reference(self) -> dict[str, Any]:
        # not `controller: true`: the Deployment's own controller does not manage DaemonSets
        return {"apiVersion": "apps/v1", "kind": "Deployment", "name": self.name, "uid": self.uid}


@dataclass(frozen=True)
class ControllerConfig:
    namespace: str = DEFAULT_NAMESPACE
    vip_ranges: tuple[IPNetwork, ...] = ()
    director_image: str = DEFAULT_DIRECTOR_IMAGE
    director_image_pull_policy: str = "IfNotPresent"
    # names of Secrets in the operator's namespace the kubelet pulls the agents' image with
    director_image_pull_secrets: tuple[str, ...] = ()
    director_service_account: str = DEFAULT_DIRECTOR_SERVICE_ACCOUNT
    director_tolerations: tuple[Mapping[str, Any], ...] = DEFAULT_DIRECTOR_TOLERATIONS
    director_resources: Mapping[str, Any] = field(
        default_factory=lambda: dict(DEFAULT_DIRECTOR_RESOURCES)
    )
    director_priority_class: str | None = None
    # the privileged init container that sets the node's sysctls (--director-node-settings);
    # off where the nodes' own configuration sets them
    director_node_settings: bool = True
    health_port: int = DEFAULT_HEALTH_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    peer_port: int = DEFAULT_PEER_PORT  # UDP heartbeat between the agents
    timings: DirectorTimings = field(default_factory=DirectorTimings)
    # the controller's own /metrics (--metrics-port; 0: off); the ports above are the agents'
    controller_metrics_port: int = DEFAULT_CONTROLLER_METRICS_PORT
    # every director DaemonSet also requires this node label (--director-node-label): a
    # VirtualServer's nodeSelector can narrow the director nodes, never leave them
    director_node_pin: Mapping[str, str] = field(
        default_factory=lambda: {DIRECTOR_NODE_LABEL: "true"}
    )
    # the controller's Deployment (--owner-deployment, resolved at start); None: run by hand,
    # the director DaemonSets get no ownerReference
    owner: OwnerDeployment | None = None
