"""Pure builders of the objects the controller owns: a headless Service per pool, and per
director group a DaemonSet of director agents and the Secret of their heartbeat key; plus
the comparison that decides whether an existing object already carries what a builder wants.

The names, label keys and environment variables the agents rely on come from
``lvs_operator.api.contract``.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lvs_operator import GROUP, VERSION
from lvs_operator.api import contract
from lvs_operator.api import realserverpool as rsp
from lvs_operator.api.contract import (
    COMPONENT_LABEL,
    DIRECTOR_APP,
    GROUP_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    daemonset_name,
    lease_name,
    peer_secret_name,
)
from lvs_operator.api.realserverpool import RealServerPool
from lvs_operator.api.virtualserver import Protocol, VirtualPort

from .config import ControllerConfig

FIELD_MANAGER = contract.CONTROLLER_FIELD_MANAGER
POOL_COMPONENT = "pool"
DIRECTOR_COMPONENT = "director"
DIRECTOR_CONTAINER = "director"
NODE_SETTINGS_CONTAINER = "node-settings"
PEER_KEY_VOLUME = "peer-key"
# On a pool's Service: the pool it serves (label values are at most 63 characters, pool
# names up to 253, so a long name is shortened with a hash; the ownerReference is exact).
POOL_LABEL = "lvs.io/pool"
SERVICE_PREFIX = "lvs-"
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _short_hash(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def service_name(pool_name: str) -> str:
    """The name of a pool's headless Service: ``lvs-<pool>``, or, when the pool's name is
    not a valid DNS-1035 label there (dots, too long), a shortened name with a hash."""
    name = SERVICE_PREFIX + pool_name
    if len(name) <= 63 and _DNS_LABEL.match(name):
        return name
    cleaned = re.sub(r"[^a-z0-9-]+", "-", pool_name.lower()).strip("-")
    return f"{SERVICE_PREFIX}{cleaned[:49].rstrip('-')}-{_short_hash(pool_name)}"


def label_value(text: str) -> str:
    """``text`` if it is a valid label value, else a shortened form ending in a hash."""
    if len(text) <= 63 and _LABEL_VALUE.match(text):
        return text
    return f"{text[:50].rstrip('-_.')}-{_short_hash(text)}"


# --- the ports a pool's Service carries -----------------------------------------------------


def target_port_key(target: int | str) -> str:
    """The key of a targetPort in a pool member's ``ports`` (and the Service port name):
    a named targetPort is its name, a numeric one its decimal string ("8080")."""
    return str(target)


@dataclass(frozen=True)
class ServicePort:
    """One port of a pool's headless Service: ``name`` is the targetPort key."""

    name: str
    port: int  # the Service's own port number (meaningless for a headless Service)
    target_port: int | str
    protocol: Protocol = Protocol.TCP

    def to_object(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "port": self.port,
            "targetPort": self.target_port,
            "protocol": str(self.protocol),
        }


def service_ports(ports: Iterable[VirtualPort]) -> tuple[ServicePort, ...]:
    """One Service port per distinct targetPort of the VirtualServers that use a pool.

    The EndpointSlice controller then resolves each (named) targetPort per pod. A key used
    with several protocols gets one Service port, TCP preferred (a named container port
    resolves to one number whatever the protocol). Numeric keys use their own number as
    the Service port; named ones take the lowest numbers left free.
    """
    protocols: dict[str, set[Protocol]] = {}
    targets: dict[str, int | str] = {}
    for p in ports:
        target = p.effective_target_port
        key = target_port_key(target)
        targets[key] = target
        protocols.setdefault(key, set()).add(p.protocol)

    def pick(key: str) -> Protocol:
        found = protocols[key]
        return Protocol.TCP if Protocol.TCP in found else sorted(found)[0]

    numeric = sorted((k for k in targets if isinstance(targets[k], int)), key=lambda k: int(k))
    named = sorted(k for k in targets if not isinstance(targets[k], int))
    used = {int(k) for k in numeric}
    out = [ServicePort(k, int(k), targets[k], pick(k)) for k in numeric]
    candidate = 1
    for key in named:
        while candidate in used:
            candidate += 1
        used.add(candidate)
        out.append(ServicePort(key, candidate, targets[key], pick(key)))
    return tuple(sorted(out, key=lambda sp: sp.name))


def owner_reference(kind: str, name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
    }


def build_service(pool: RealServerPool, ports: Sequence[ServicePort]) -> dict[str, Any] | None:
    """The headless Service of a pool with a selector (None when it selects no pods).

    Its selector is the pool's ``matchLabels`` (a Service selects by equality only);
    ``matchExpressions`` are applied by the controller to the pods' labels. It is owned
    by the pool, so the garbage collector removes it with the pool.
    """
    selector = pool.spec.selector
    if selector is None or not selector.match_labels:
        return None
    spec: dict[str, Any] = {
        "clusterIP": "None",
        "selector": dict(selector.match_labels),
    }
    if ports:
        spec["ports"] = [p.to_object() for p in ports]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(pool.name),
            "namespace": pool.namespace,
            "labels": {
                MANAGED_BY_LABEL: MANAGED_BY,
                COMPONENT_LABEL: POOL_COMPONENT,
                POOL_LABEL: label_value(pool.name),
            },
            "ownerReferences": [owner_reference(rsp.KIND, pool.name, pool.meta.uid)],
        },
        "spec": spec,
    }


# --- the director DaemonSet of a group ------------------------------------------------------


def director_selector_labels(group: str) -> dict[str, str]:
    return {NAME_LABEL: DIRECTOR_APP, GROUP_LABEL: group}


def director_labels(group: str) -> dict[str, str]:
    return {
        **director_selector_labels(group),
        MANAGED_BY_LABEL: MANAGED_BY,
        COMPONENT_LABEL: DIRECTOR_COMPONENT,
    }


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def director_env(group: str, config: ControllerConfig) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        _field_env(contract.ENV_NODE_NAME, "spec.nodeName"),
        _field_env(contract.ENV_POD_NAME, "metadata.name"),
        _field_env(contract.ENV_POD_NAMESPACE, "metadata.namespace"),
        {"name": contract.ENV_DIRECTOR_GROUP, "value": group},
        {"name": contract.ENV_LEASE_NAME, "value": lease_name(group)},
        {"name": contract.ENV_HEALTH_PORT, "value": str(config.health_port)},
        {"name": contract.ENV_METRICS_PORT, "value": str(config.metrics_port)},
        {"name": contract.ENV_PEER_PORT, "value": str(config.peer_port)},
        {"name": contract.ENV_PEER_KEY_FILE, "value": contract.DEFAULT_PEER_KEY_FILE},
        {"name": contract.ENV_VIP_RANGES, "value": ",".join(str(r) for r in config.vip_ranges)},
    ]
    t = config.timings
    for name, value in (
        (contract.ENV_LEASE_DURATION_SECONDS, t.lease_duration_seconds),
        (contract.ENV_RENEW_DEADLINE_SECONDS, t.renew_deadline_seconds),
        (contract.ENV_RETRY_PERIOD_SECONDS, t.retry_period_seconds),
    ):
        if value is not None:
            env.append({"name": name, "value": str(value)})
    return env


def build_daemonset(
    group: str, node_selector: Mapping[str, str], config: ControllerConfig
) -> dict[str, Any]:
    """The DaemonSet of director agents of a group, in the operator's namespace.

    hostNetwork (the VIP lives on the node), the agent with NET_ADMIN + NET_RAW only (IPVS,
    addresses, gratuitous ARP, nftables), never privileged; probes on the agent's health
    port. Before it, unless ``director_node_settings`` is off, the init container
    ``node_settings_container`` sets the node's sysctls. The group's heartbeat key
    (``build_peer_secret``) is mounted read-only; not optional: an agent does not start
    without it (the kubelet waits for the Secret), rather than run unauthenticated.
    """

    def probe(path: str, period: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": config.health_port, "scheme": "HTTP"},
            "periodSeconds": period,
            "timeoutSeconds": 2,
            "failureThreshold": failures,
        }

    container: dict[str, Any] = {
        "name": DIRECTOR_CONTAINER,
        "image": config.director_image,
        "imagePullPolicy": config.director_image_pull_policy,
        "command": list(contract.DIRECTOR_COMMAND),
        "env": director_env(group, config),
        "ports": [
            {"name": "health", "containerPort": config.health_port, "protocol": "TCP"},
            {"name": "metrics", "containerPort": config.metrics_port, "protocol": "TCP"},
            # the agents' heartbeat to each other (director/peer.py; contract.ENV_PEER_PORT)
            {"name": "heartbeat", "containerPort": config.peer_port, "protocol": "UDP"},
        ],
        "volumeMounts": [
            {"name": PEER_KEY_VOLUME, "mountPath": contract.PEER_KEY_DIR, "readOnly": True}
        ],
        "livenessProbe": probe(contract.HEALTHZ_PATH, 10, 3),
        "readinessProbe": probe(contract.READYZ_PATH, 5, 2),
        "securityContext": {
            # Root for this one process: a non-root user keeps no capabilities (Kubernetes
            # grants no ambient ones), and the image's default user is non-root.
            "runAsUser": 0,
            "runAsNonRoot": False,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    }
    if config.director_resources:
        container["resources"] = dict(config.director_resources)
    init = [node_settings_container(config)] if config.director_node_settings else []
    pod_spec: dict[str, Any] = {
        "hostNetwork": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        # the operator's pin last: a VirtualServer cannot choose nodes outside it
        "nodeSelector": {**node_selector, **config.director_node_pin},
        "serviceAccountName": config.director_service_account,
        "terminationGracePeriodSeconds": 30,
        # The container runtime's default seccomp filter (Pod Security "restricted" asks for
        # it). What the agent calls is allowed by it: sockets of AF_NETLINK (IPVS, addresses,
        # nftables), AF_PACKET (ARP) and AF_INET/AF_INET6 (heartbeat, raw ICMPv6), setsockopt,
        # dlopen of libnftables or exec of `nft`; setns (refused by it) is only called where
        # the data-plane tests put agents in network namespaces, never in the pod.
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        # [] when off: an empty list stands for "none" (is_subset), so switching it off
        # removes it from an existing DaemonSet
        "initContainers": init,
        "containers": [container],
        "volumes": [
            {
                "name": PEER_KEY_VOLUME,
                "secret": {
                    "secretName": peer_secret_name(group),
                    "items": [{"key": contract.PEER_SECRET_KEY, "path": contract.PEER_SECRET_KEY}],
                    "defaultMode": 0o400,  # root's only (the agent runs as root)
                },
            }
        ],
    }
    if config.director_image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in config.director_image_pull_secrets]
    if config.director_tolerations:
        pod_spec["tolerations"] = [dict(t) for t in config.director_tolerations]
    if config.director_priority_class:
        pod_spec["priorityClassName"] = config.director_priority_class
    metadata: dict[str, Any] = {
        "name": daemonset_name(group),
        "namespace": config.namespace,
        "labels": director_labels(group),
    }
    if config.owner is not None:
        # the controller's Deployment (same namespace): removing it removes the directors
        metadata["ownerReferences"] = [config.owner.owner_reference()]
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": metadata,
        "spec": {
            "selector": {"matchLabels": director_selector_labels(group)},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {"metadata": {"labels": director_labels(group)}, "spec": pod_spec},
        },
    }


def node_settings_container(config: ControllerConfig) -> dict[str, Any]:
    """The init container that sets the node's sysctls a director needs
    (``lvs-operator node-settings``: exactly director/node_settings.py's list, idempotent),
    from the agent's image; ``--ipv6`` (IPv6 forwarding) when a VIP range is IPv6."""
    command = list(contract.NODE_SETTINGS_COMMAND)
    if any(r.version == 6 for r in config.vip_ranges):
        command.append("--ipv6")
    return {
        "name": NODE_SETTINGS_CONTAINER,
        "image": config.director_image,
        "imagePullPolicy": config.director_image_pull_policy,
        "command": command,
        "securityContext": {
            # The pod's only privileged container, and why: the container runtime mounts
            # /proc/sys read-only in every unprivileged container, whatever its capabilities,
            # and these sysctls are the node's (hostNetwork: its network namespace). It runs
            # one short command that writes those few keys and exits before the agent starts;
            # the agent stays unprivileged. Off (--director-node-settings=false) where the
            # nodes' own configuration sets them.
            "privileged": True,
            "runAsUser": 0,
            "runAsNonRoot": False,
            "readOnlyRootFilesystem": True,
        },
    }


def build_peer_secret(
    group: str, config: ControllerConfig, owner_uid: str, key: bytes | None = None
) -> dict[str, Any]:
    """The Secret of a group's heartbeat key: ``contract.PEER_KEY_BYTES`` random bytes (or
    ``key``), created once and never rewritten (an agent reads its key at start). Owned by
    the group's DaemonSet, so the garbage collector removes it with the group."""
    key = secrets.token_bytes(contract.PEER_KEY_BYTES) if key is None else key
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": peer_secret_name(group),
            "namespace": config.namespace,
            "labels": director_labels(group),
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "DaemonSet",
                    "name": daemonset_name(group),
                    "uid": owner_uid,
                    "controller": True,
                }
            ],
        },
        "type": "Opaque",
        "data": {contract.PEER_SECRET_KEY: base64.b64encode(key).decode("ascii")},
    }


# --- comparing what we want with what is there ----------------------------------------------


def is_subset(desired: Any, current: Any) -> bool:
    """True when ``current`` carries everything ``desired`` says.

    Maps: every desired key is present with a matching value (the server adds defaults,
    so extra keys are fine). Lists: the same length and element-wise matches (a dropped
    port or env variable is a difference). Scalars: equal; numbers and their decimal
    strings are not confused. A desired empty list also matches a missing key (the API server
    leaves empty lists out): ``[]`` says "none", and a current list with items differs.
    """
    if isinstance(desired, Mapping):
        if not isinstance(current, Mapping):
            return False
        return all(
            is_subset(v, current[k]) if k in current else v == [] for k, v in desired.items()
        )
    if isinstance(desired, list | tuple):
        if not isinstance(current, list | tuple) or len(desired) != len(current):
            return False
        return all(is_subset(d, c) for d, c in zip(desired, current, strict=True))
    if type(desired) is not type(current) and not (
        isinstance(desired, int | float)
        and isinstance(current, int | float)
        and not isinstance(desired, bool)
        and not isinstance(current, bool)
    ):
        return False
    return bool(desired == current)


def carries(desired: Mapping[str, Any], current: Mapping[str, Any] | None) -> bool:
    """Whether an existing object already has the metadata and spec a builder wants
    (apiVersion/kind are not compared: watch caches may leave them out)."""
    if current is None:
        return False
    return is_subset({k: v for k, v in desired.items() if k in ("metadata", "spec")}, current)
