"""The two CustomResourceDefinitions, built from the same constants as the models.

This module is the source of the YAML in ``crds/`` (``make crds`` writes it; a unit test
fails when the files are stale), so a rule and its message live in one place.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from .. import GROUP, VERSION
from . import contract, ipvs_catalog, network
from . import realserverpool as rsp
from . import virtualserver as vs
from .schema import (
    MAX_LABEL_VALUE,
    MAX_SELECTOR_TERMS,
    PORT_NAME_RULE,
    Schema,
    bounded_int,
    cel_rule,
    conditions,
    label_selector,
    matches,
    unicast_address,
)

# --- VirtualServer ---------------------------------------------------------------------------


def virtualserver_spec_schema() -> Schema:
    port: Schema = {
        "type": "object",
        "required": ["port"],
        "properties": {
            "name": {
                "type": "string",
                "maxLength": 15,
                "description": "Optional port name.",
                "x-kubernetes-validations": [
                    cel_rule(
                        PORT_NAME_RULE, "name must be an IANA service name (1-15 of a-z, 0-9, '-')"
                    )
                ],
            },
            "port": bounded_int(network.PORT_MIN, network.PORT_MAX, "The port clients connect to."),
            "protocol": {
                "type": "string",
                "enum": [str(p) for p in vs.Protocol],
                "default": str(vs.DEFAULT_PROTOCOL),
            },
            "targetPort": {
                "x-kubernetes-int-or-string": True,
                "description": "Port on the real servers: a number, or a named container "
                "port resolved per pod. Defaults to port.",
                # Bounds the CEL cost estimate (a port name has at most 15 characters).
                "maxLength": 15,
                "x-kubernetes-validations": [
                    cel_rule(
                        "type(self) == int ? (self >= 1 && self <= 65535) : "
                        f"(size(self) <= 15 && {PORT_NAME_RULE})",
                        vs.MSG_TARGET_PORT,
                    )
                ],
            },
        },
    }
    return {
        "type": "object",
        "required": ["vip", "ports", "poolRef"],
        "properties": {
            "vip": unicast_address(
                "The virtual IP (IPv4 or IPv6) clients connect to.",
                vs.MSG_VIP_INVALID,
                vs.MSG_VIP_NOT_UNICAST,
            ),
            "ports": {
                "type": "array",
                "minItems": 1,
                "maxItems": vs.MAX_PORTS,
                "x-kubernetes-list-type": "atomic",
                "items": port,
                "x-kubernetes-validations": [
                    cel_rule(
                        "self.all(p, has(p.port) ? self.exists_one(q, has(q.port) ? "
                        "(q.port == p.port && q.protocol == p.protocol) : false) : true)",
                        vs.MSG_PORTS_UNIQUE,
                    ),
                    cel_rule(
                        "self.all(p, has(p.name) ? self.exists_one(q, has(q.name) ? "
                        "q.name == p.name : false) : true)",
                        vs.MSG_PORT_NAMES_UNIQUE,
                    ),
                ],
            },
            "poolRef": {
                "type": "object",
                "required": ["name"],
                "description": "The RealServerPool (same namespace) whose members serve.",
                "properties": {
                    "name": {
                        "type": "string",
                        "maxLength": network.DNS_SUBDOMAIN_MAX,
                        "pattern": network.DNS_SUBDOMAIN_PATTERN,
                    }
                },
            },
            "scheduler": {
                "type": "string",
                "enum": [str(s) for s in vs.Scheduler],
                "default": str(vs.DEFAULT_SCHEDULER),
                "description": "IPVS scheduler.",
            },
            "schedulerFlags": {
                "type": "array",
                "maxItems": len(ipvs_catalog.API_SCHEDULER_FLAGS),
                "x-kubernetes-list-type": "set",
                "items": {"type": "string", "enum": list(ipvs_catalog.API_SCHEDULER_FLAGS)},
                "description": ipvs_catalog.flags_description(),
            },
            "forwarding": {
                "type": "string",
                "enum": [str(f) for f in vs.Forwarding],
                "default": str(vs.DEFAULT_FORWARDING),
                "description": "masquerade (NAT), direct (gatewaying) or tunnel (IPIP).",
            },
            "masqueradeSource": {
                "type": "string",
                "enum": [str(m) for m in vs.MasqueradeSource],
                "description": "masquerade only: the source address real servers see. "
                "Director (when left out): the forwarding director's own address. VIP: the "
                "VIP, so that established connections survive a crash failover (with "
                "connection sync); the real servers must be able to route to the VIP.",
            },
            "persistence": {
                "type": "object",
                "description": "Sticky sessions: a client stays on one real server.",
                "properties": {
                    "timeoutSeconds": bounded_int(
                        1,
                        network.PERSISTENCE_TIMEOUT_MAX,
                        "Idle time after which stickiness ends.",
                        vs.DEFAULT_PERSISTENCE_TIMEOUT,
                    ),
                    "netmask": {
                        "type": "string",
                        "enum": list(network.IPV4_NETMASKS),
                        "description": "IPv4 VIPs: clients in one netmask share a server.",
                    },
                    "prefixLength": bounded_int(
                        1, 128, "IPv6 VIPs: clients in one prefix share a server."
                    ),
                },
            },
            "directors": {
                "type": "object",
                "default": {},
                "description": "Which nodes direct traffic for this VIP.",
                "properties": {
                    "nodeSelector": {
                        "type": "object",
                        "maxProperties": MAX_SELECTOR_TERMS,
                        "additionalProperties": {"type": "string", "maxLength": MAX_LABEL_VALUE},
                        "default": dict(vs.DEFAULT_DIRECTOR_NODE_SELECTOR),
                        "x-kubernetes-validations": [
                            cel_rule("size(self) > 0", vs.MSG_NODE_SELECTOR_EMPTY)
                        ],
                    },
                    "interface": {
                        "type": "string",
                        "maxLength": 15,
                        "pattern": network.INTERFACE_PATTERN,
                        "description": "Interface for the VIP (default: the one "
                        "routing to the VIP's subnet).",
                    },
                },
            },
        },
        "x-kubernetes-validations": [
            cel_rule(
                ipvs_catalog.flags_match_rule(),
                vs.MSG_FLAGS_MATCH,
                ".schedulerFlags",
            ),
            cel_rule(
                "!(self.forwarding in ['direct', 'tunnel']) || self.ports.all(p, "
                "!has(p.targetPort) || !has(p.port) || "
                "(type(p.targetPort) == int && p.targetPort == p.port))",
                vs.MSG_PORT_REMAP,
                ".ports",
            ),
            cel_rule(
                "!has(self.masqueradeSource) || self.masqueradeSource != 'VIP' || "
                "self.forwarding == 'masquerade'",
                vs.MSG_MASQUERADE_SOURCE,
                ".masqueradeSource",
            ),
            cel_rule(
                "!has(self.persistence) || !has(self.persistence.netmask) || "
                "!isIP(self.vip) || ip(self.vip).family() == 4",
                vs.MSG_NETMASK_FAMILY,
                ".persistence",
            ),
            cel_rule(
                "!has(self.persistence) || !has(self.persistence.prefixLength) || "
                "!isIP(self.vip) || ip(self.vip).family() == 6",
                vs.MSG_PREFIX_FAMILY,
                ".persistence",
            ),
        ],
    }


def virtualserver_status_schema() -> Schema:
    return {
        "type": "object",
        "properties": {
            "observedGeneration": {"type": "integer", "minimum": 0},
            "directorGroup": {"type": "string", "maxLength": 63},
            # the VIP the controller accepted for directorGroup: director agents program
            # only a VirtualServer whose spec.vip is this (tenants cannot write status)
            "acceptedVIP": {"type": "string", "maxLength": 45},
            # while the VirtualServer moves to another director group: that group, which
            # programs its services without the VIP until the controller hands it over
            "nextDirectorGroup": {"type": "string", "maxLength": 63},
            "activeDirector": {"type": "string", "maxLength": 253},
            "directors": {
                "type": "array",
                "maxItems": 64,
                "items": {
                    "type": "object",
                    "properties": {
                        "node": {"type": "string", "maxLength": 253},
                        "role": {"type": "string", "enum": ["active", "standby"]},
                        # its IPVS connection sync, as the active director reported it
                        # (api/contract.py DirectorSync): the daemon that matters (master on
                        # the active director, backup on a standby), its sync id and link,
                        # and for a backup whether it receives the active one's connections
                        "sync": {
                            "type": "object",
                            "required": ["role"],
                            "properties": {
                                "role": {"type": "string", "enum": list(contract.SYNC_ROLES)},
                                "syncId": {"type": "integer", "minimum": 0, "maximum": 255},
                                "interface": {"type": "string", "maxLength": 15},
                                "receiving": {
                                    "type": "string",
                                    "enum": list(contract.RECEIVING_VALUES),
                                },
                            },
                        },
                    },
                },
            },
            "readyRealServers": {"type": "integer", "minimum": 0},
            "totalRealServers": {"type": "integer", "minimum": 0},
            "readyOfTotal": {"type": "string", "maxLength": 32},
            "conditions": conditions(),
        },
    }


# --- RealServerPool --------------------------------------------------------------------------


def realserverpool_spec_schema() -> Schema:
    server: Schema = {
        "type": "object",
        "required": ["address"],
        "properties": {
            "address": unicast_address(
                "A real server outside the cluster.", rsp.MSG_SERVER_ADDRESS, rsp.MSG_SERVER_ADDRESS
            ),
            "port": bounded_int(
                network.PORT_MIN,
                network.PORT_MAX,
                "Its port (default: the VirtualServer's targetPort).",
            ),
            "weight": bounded_int(
                network.WEIGHT_MIN,
                network.WEIGHT_MAX,
                "IPVS weight (0 drains).",
                rsp.DEFAULT_WEIGHT,
            ),
            "name": {"type": "string", "maxLength": 63},
        },
    }
    health: Schema = {
        "type": "object",
        "description": "Director-side health check; failing members are drained (weight 0).",
        "properties": {
            "type": {
                "type": "string",
                "enum": [str(t) for t in rsp.HealthCheckType],
                "default": str(rsp.HealthCheckType.TCP),
            },
            "port": bounded_int(
                network.PORT_MIN,
                network.PORT_MAX,
                "Port to check (default: the member's target port).",
            ),
            "path": {
                "type": "string",
                "maxLength": network.HTTP_PATH_MAX,
                "description": "http: the path to GET (default /): an absolute URI path, "
                "optionally with ?query; %XX escapes for other characters.",
                "x-kubernetes-validations": [
                    cel_rule(matches("self", network.HTTP_PATH_PATTERN), rsp.MSG_HTTP_PATH)
                ],
            },
            "expectedStatus": bounded_int(
                100, 599, "http: the status that means healthy (default 200)."
            ),
            "host": {
                "type": "string",
                "maxLength": network.HTTP_HOST_MAX,
                "description": "http: the Host header to send (default: the member's "
                "address): a hostname or an IP address (IPv6 in brackets), optionally :port.",
                "x-kubernetes-validations": [
                    cel_rule(matches("self", network.HTTP_HOST_PATTERN), rsp.MSG_HTTP_HOST)
                ],
            },
            "intervalSeconds": bounded_int(
                1, 3600, "Time between checks.", rsp.DEFAULT_HEALTH_INTERVAL
            ),
            "timeoutSeconds": bounded_int(
                1, 3600, "Time a check may take.", rsp.DEFAULT_HEALTH_TIMEOUT
            ),
            "riseThreshold": bounded_int(
                1, 100, "Passes in a row to become healthy.", rsp.DEFAULT_RISE
            ),
            "fallThreshold": bounded_int(
                1, 100, "Failures in a row to become unhealthy.", rsp.DEFAULT_FALL
            ),
        },
        "x-kubernetes-validations": [
            cel_rule(
                f"self.type == '{rsp.HealthCheckType.HTTP}' || "
                f"({' && '.join(f'!has(self.{k})' for k in rsp.HTTP_ONLY_FIELDS)})",
                rsp.MSG_HTTP_ONLY,
            ),
            cel_rule("self.timeoutSeconds <= self.intervalSeconds", rsp.MSG_TIMEOUT_INTERVAL),
        ],
    }
    return {
        "type": "object",
        "properties": {
            "selector": label_selector(),
            "weight": bounded_int(
                network.WEIGHT_MIN,
                network.WEIGHT_MAX,
                "IPVS weight of selected pods (a pod's lvs.io/weight annotation overrides it).",
                rsp.DEFAULT_WEIGHT,
            ),
            "servers": {
                "type": "array",
                "maxItems": rsp.MAX_SERVERS,
                "x-kubernetes-list-type": "atomic",
                "items": server,
                "x-kubernetes-validations": [
                    cel_rule(
                        "self.all(s, has(s.address) ? self.exists_one(t, has(t.address) ? "
                        "(t.address == s.address && "
                        "(has(t.port) ? t.port : 0) == (has(s.port) ? s.port : 0)) : false) "
                        ": true)",
                        rsp.MSG_SERVERS_UNIQUE,
                    )
                ],
            },
            "healthCheck": health,
        },
        "x-kubernetes-validations": [
            cel_rule(
                "has(self.selector) || (has(self.servers) && size(self.servers) > 0)",
                rsp.MSG_POOL_EMPTY,
            ),
        ],
    }


def realserverpool_status_schema() -> Schema:
    member: Schema = {
        "type": "object",
        "properties": {
            "address": {"type": "string", "maxLength": 45},
            "port": {"type": "integer"},
            "ports": {
                "type": "array",
                "maxItems": 64,
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "maxLength": 15},
                        "port": {"type": "integer"},
                    },
                },
            },
            "weight": {"type": "integer"},
            "ready": {"type": "boolean"},
            "serving": {"type": "boolean"},
            "terminating": {"type": "boolean"},
            "pod": {"type": "string", "maxLength": 253},
            "node": {"type": "string", "maxLength": 253},
            "source": {"type": "string", "enum": ["pod", "static"]},
        },
    }
    return {
        "type": "object",
        "properties": {
            "observedGeneration": {"type": "integer", "minimum": 0},
            "members": {"type": "array", "maxItems": rsp.MAX_MEMBERS, "items": member},
            "readyMembers": {"type": "integer", "minimum": 0},
            "totalMembers": {"type": "integer", "minimum": 0},
            "readyOfTotal": {"type": "string", "maxLength": 32},
            "conditions": conditions(),
        },
    }


# --- the CRDs --------------------------------------------------------------------------------


def _crd(
    kind: str,
    plural: str,
    short: str,
    spec: Schema,
    status: Schema,
    columns: list[Schema],
    description: str,
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "lvs-operator"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["lvs"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def virtualserver_crd() -> dict[str, Any]:
    return _crd(
        vs.KIND,
        vs.PLURAL,
        "lvs",
        virtualserver_spec_schema(),
        virtualserver_status_schema(),
        [
            {"name": "VIP", "type": "string", "jsonPath": ".spec.vip"},
            {"name": "Ports", "type": "string", "jsonPath": ".spec.ports[*].port"},
            {"name": "Scheduler", "type": "string", "jsonPath": ".spec.scheduler", "priority": 1},
            {"name": "Forwarding", "type": "string", "jsonPath": ".spec.forwarding", "priority": 1},
            {"name": "Active", "type": "string", "jsonPath": ".status.activeDirector"},
            {"name": "Ready", "type": "string", "jsonPath": ".status.readyOfTotal"},
            {
                "name": "Status",
                "type": "string",
                "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
                "priority": 1,
            },
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
        "A virtual service: clients reach VIP:port on the active director, IPVS forwards "
        "them to the members of a RealServerPool.",
    )


def realserverpool_crd() -> dict[str, Any]:
    return _crd(
        rsp.KIND,
        rsp.PLURAL,
        "rsp",
        realserverpool_spec_schema(),
        realserverpool_status_schema(),
        [
            {"name": "Ready", "type": "string", "jsonPath": ".status.readyOfTotal"},
            {"name": "Weight", "type": "integer", "jsonPath": ".spec.weight", "priority": 1},
            {
                "name": "Status",
                "type": "string",
                "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
                "priority": 1,
            },
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
        "Real servers: pods selected by labels and/or static addresses, with weights and an "
        "optional health check.",
    )


CRD_FILES = {
    "lvs.io_virtualservers.yaml": virtualserver_crd,
    "lvs.io_realserverpools.yaml": realserverpool_crd,
}

HEADER = "# Generated by `make crds` (python -m lvs_operator.api.crd crds/) - do not edit.\n"


def render(builder: Any) -> str:
    return HEADER + yaml.safe_dump(builder(), sort_keys=False, width=100)


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, builder in CRD_FILES.items():
        path = directory / filename
        path.write_text(render(builder))
        written.append(path)
    return written


if __name__ == "__main__":  # pragma: no cover - exercised by `make crds`
    for path in write(Path(sys.argv[1] if len(sys.argv) > 1 else "crds")):
        print(f"wrote {path}")
