"""Good and bad custom resources, shared by every tier that judges them.

Each bad case changes one thing in a good object and names the field the API server must
reject and a fragment of the message it must give. The same cases run through the CRD's
schema and CEL rules offline (tests/unit/api), through the Python models (same place) and
through a real API server (tests/integration/test_crds_server.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from lvs_operator.api import realserverpool as rsp
from lvs_operator.api import virtualserver as vs
from lvs_operator.api.common import MSG_LABEL_KEY, MSG_LABEL_VALUE, MSG_SELECTOR_VALUES

API_VERSION = "lvs.io/v1alpha1"


def virtualserver(name: str = "web", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "vip": "192.0.2.10",
        "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
        "poolRef": {"name": "web"},
    }
    body.update(spec)
    return {
        "apiVersion": API_VERSION,
        "kind": "VirtualServer",
        "metadata": {"name": name},
        "spec": body,
    }


def pool(name: str = "web", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"selector": {"matchLabels": {"app": "web"}}}
    body.update(spec)
    return {
        "apiVersion": API_VERSION,
        "kind": "RealServerPool",
        "metadata": {"name": name},
        "spec": body,
    }


def without(obj: dict[str, Any], *path: str) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    node = obj
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return obj


@dataclass(frozen=True)
class Good:
    id: str
    obj: dict[str, Any]


@dataclass(frozen=True)
class Bad:
    id: str
    obj: dict[str, Any]
    path: str  # the field the server names
    fragment: str  # part of the message the server gives


GOOD: list[Good] = [
    Good("vs-minimal", virtualserver()),
    Good("vs-masquerade-source-director", virtualserver(masqueradeSource="Director")),
    Good(  # Director on direct: the default spelled out, accepted
        "vs-direct-masquerade-source-director",
        virtualserver(forwarding="direct", ports=[{"port": 80}], masqueradeSource="Director"),
    ),
    Good(
        "vs-ipv6",
        virtualserver(vip="2001:db8::10", persistence={"timeoutSeconds": 600, "prefixLength": 64}),
    ),
    Good(
        "vs-all-fields",
        virtualserver(
            ports=[
                {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"},
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"port": 53, "protocol": "TCP"},
                {"port": 9000, "protocol": "SCTP", "targetPort": 9001},
            ],
            scheduler="sh",
            schedulerFlags=["sh-fallback", "sh-port"],
            masqueradeSource="VIP",
            persistence={"timeoutSeconds": 3600, "netmask": "255.255.255.0"},
            directors={
                "nodeSelector": {"node-role.kubernetes.io/lvs": ""},
                "interface": "eth0.100",
            },
        ),
    ),
    Good(
        "vs-direct",
        virtualserver(
            forwarding="direct",
            scheduler="wrr",
            ports=[{"port": 80}, {"port": 443, "targetPort": 443}],
        ),
    ),
    Good(
        "vs-tunnel-mh",
        virtualserver(
            forwarding="tunnel", scheduler="mh", schedulerFlags=["mh-port"], ports=[{"port": 80}]
        ),
    ),
    Good("vs-private-range", virtualserver(vip="10.96.100.1")),
    Good("vs-persistence-default", virtualserver(persistence={})),
    Good("rsp-selector", pool()),
    Good(
        "rsp-static",
        pool(
            selector=None,
            servers=[
                {"address": "198.51.100.7", "port": 8080, "weight": 3},
                {"address": "198.51.100.8"},
                {"address": "2001:db8::8", "name": "v6"},
            ],
        ),
    ),
    Good(
        "rsp-expressions",
        pool(
            selector={
                "matchExpressions": [
                    {"key": "tier", "operator": "In", "values": ["web", "api"]},
                    {"key": "canary", "operator": "DoesNotExist"},
                ]
            },
            weight=0,
        ),
    ),
    Good(
        "rsp-http-check",
        pool(
            healthCheck={
                "type": "http",
                "path": "/healthz",
                "expectedStatus": 204,
                "host": "www.example.com",
                "intervalSeconds": 2,
                "timeoutSeconds": 1,
                "riseThreshold": 1,
                "fallThreshold": 2,
            }
        ),
    ),
    Good("rsp-tcp-check", pool(healthCheck={"port": 8081})),
    Good(
        "rsp-http-check-query-escapes-ipv6-host",
        pool(
            healthCheck={
                "type": "http",
                "path": "/status/v1;full?probe=lvs&name=a%20b:c@d",
                "host": "[2001:db8::7]:8080",
            }
        ),
    ),
    Good(
        "rsp-http-check-ipv4-host-port", pool(healthCheck={"type": "http", "host": "10.0.0.7:80"})
    ),
    Good(
        "rsp-label-syntax",
        pool(
            selector={
                "matchLabels": {"app.kubernetes.io/name": "web", "Tier_1.x": "", "a": "A-b_c.9"},
                "matchExpressions": [
                    {"key": "example.com/canary", "operator": "NotIn", "values": ["", "yes"]}
                ],
            }
        ),
    ),
]
# pool(selector=None, ...) means "no selector": drop the key.
for _good in GOOD:
    if _good.obj["spec"].get("selector", "") is None:
        del _good.obj["spec"]["selector"]

_VS = virtualserver()
_P = pool()

BAD: list[Bad] = [
    # --- VirtualServer: schema ---
    Bad("vs-no-vip", without(_VS, "spec", "vip"), "spec.vip", "Required value"),
    Bad("vs-no-ports", without(_VS, "spec", "ports"), "spec.ports", "Required value"),
    Bad("vs-empty-ports", virtualserver(ports=[]), "spec.ports", "at least 1 items"),
    Bad(
        "vs-too-many-ports",
        virtualserver(ports=[{"port": p} for p in range(1, 66)]),
        "spec.ports",
        "must have at most 64 items",
    ),
    Bad("vs-no-pool", without(_VS, "spec", "poolRef"), "spec.poolRef", "Required value"),
    Bad(
        "vs-pool-name",
        virtualserver(poolRef={"name": "Web_Pool"}),
        "spec.poolRef.name",
        "should match",
    ),
    Bad(
        "vs-port-zero",
        virtualserver(ports=[{"port": 0}]),
        "spec.ports[0].port",
        "greater than or equal to 1",
    ),
    Bad(
        "vs-port-too-big",
        virtualserver(ports=[{"port": 70000}]),
        "spec.ports[0].port",
        "less than or equal to 65535",
    ),
    Bad(
        "vs-port-missing",
        virtualserver(ports=[{"targetPort": 80}]),
        "spec.ports[0].port",
        "Required value",
    ),
    Bad(
        "vs-protocol",
        virtualserver(ports=[{"port": 80, "protocol": "ICMP"}]),
        "spec.ports[0].protocol",
        "Unsupported value",
    ),
    Bad("vs-scheduler", virtualserver(scheduler="random"), "spec.scheduler", "Unsupported value"),
    Bad("vs-forwarding", virtualserver(forwarding="nat"), "spec.forwarding", "Unsupported value"),
    Bad(
        "vs-flag-unknown",
        virtualserver(scheduler="sh", schedulerFlags=["sh-random"]),
        "spec.schedulerFlags[0]",
        "Unsupported value",
    ),
    Bad(
        "vs-flag-duplicate",
        virtualserver(scheduler="sh", schedulerFlags=["sh-port", "sh-port"]),
        "spec.schedulerFlags[1]",
        "Duplicate value",
    ),
    Bad(
        "vs-persistence-timeout",
        virtualserver(persistence={"timeoutSeconds": 0}),
        "spec.persistence.timeoutSeconds",
        "greater than or equal to 1",
    ),
    Bad(
        "vs-persistence-timeout-max",
        virtualserver(persistence={"timeoutSeconds": 2678401}),
        "spec.persistence.timeoutSeconds",
        "less than or equal to 2678400",
    ),
    Bad(
        "vs-netmask-noncontiguous",
        virtualserver(persistence={"netmask": "255.0.255.0"}),
        "spec.persistence.netmask",
        "Unsupported value",
    ),
    Bad(
        "vs-prefix-too-long",
        virtualserver(vip="2001:db8::1", persistence={"prefixLength": 129}),
        "spec.persistence.prefixLength",
        "less than or equal to 128",
    ),
    Bad(
        "vs-interface",
        virtualserver(directors={"interface": "eth0/1"}),
        "spec.directors.interface",
        "should match",
    ),
    Bad(
        "vs-interface-long",
        virtualserver(directors={"interface": "a-very-long-ifname0"}),
        "spec.directors.interface",
        "Too long",
    ),
    # --- VirtualServer: CEL ---
    Bad("vs-vip-garbage", virtualserver(vip="not-an-ip"), "spec.vip", vs.MSG_VIP_INVALID),
    Bad("vs-vip-leading-zero", virtualserver(vip="192.0.2.010"), "spec.vip", vs.MSG_VIP_INVALID),
    Bad("vs-vip-mapped", virtualserver(vip="::ffff:192.0.2.1"), "spec.vip", vs.MSG_VIP_INVALID),
    Bad("vs-vip-cidr", virtualserver(vip="192.0.2.0/24"), "spec.vip", vs.MSG_VIP_INVALID),
    Bad("vs-vip-loopback", virtualserver(vip="127.0.0.1"), "spec.vip", vs.MSG_VIP_NOT_UNICAST),
    Bad("vs-vip-unspecified", virtualserver(vip="::"), "spec.vip", vs.MSG_VIP_NOT_UNICAST),
    Bad("vs-vip-multicast", virtualserver(vip="224.0.0.18"), "spec.vip", vs.MSG_VIP_NOT_UNICAST),
    Bad("vs-vip-link-local", virtualserver(vip="fe80::1"), "spec.vip", vs.MSG_VIP_NOT_UNICAST),
    Bad(
        "vs-vip-broadcast", virtualserver(vip="255.255.255.255"), "spec.vip", vs.MSG_VIP_NOT_UNICAST
    ),
    Bad(
        "vs-duplicate-port",
        virtualserver(ports=[{"port": 80}, {"port": 80, "protocol": "TCP"}]),
        "spec.ports",
        vs.MSG_PORTS_UNIQUE,
    ),
    Bad(
        "vs-duplicate-port-name",
        virtualserver(ports=[{"name": "web", "port": 80}, {"name": "web", "port": 81}]),
        "spec.ports",
        vs.MSG_PORT_NAMES_UNIQUE,
    ),
    Bad(
        "vs-port-name",
        virtualserver(ports=[{"name": "HTTP", "port": 80}]),
        "spec.ports[0].name",
        "IANA service name",
    ),
    Bad(
        "vs-target-port-zero",
        virtualserver(ports=[{"port": 80, "targetPort": 0}]),
        "spec.ports[0].targetPort",
        vs.MSG_TARGET_PORT,
    ),
    Bad(
        "vs-target-port-name",
        virtualserver(ports=[{"port": 80, "targetPort": "my_port"}]),
        "spec.ports[0].targetPort",
        vs.MSG_TARGET_PORT,
    ),
    Bad(
        "vs-target-port-digits",
        virtualserver(ports=[{"port": 80, "targetPort": "8080"}]),
        "spec.ports[0].targetPort",
        vs.MSG_TARGET_PORT,
    ),
    Bad(
        "vs-flags-wrong-scheduler",
        virtualserver(scheduler="rr", schedulerFlags=["sh-port"]),
        "spec.schedulerFlags",
        vs.MSG_FLAGS_MATCH,
    ),
    Bad(
        "vs-flags-mh-on-sh",
        virtualserver(scheduler="sh", schedulerFlags=["mh-fallback"]),
        "spec.schedulerFlags",
        vs.MSG_FLAGS_MATCH,
    ),
    Bad("vs-direct-remap", virtualserver(forwarding="direct"), "spec.ports", vs.MSG_PORT_REMAP),
    Bad(
        "vs-masquerade-source-vip-on-direct",
        virtualserver(forwarding="direct", ports=[{"port": 80}], masqueradeSource="VIP"),
        "spec.masqueradeSource",
        vs.MSG_MASQUERADE_SOURCE,
    ),
    Bad(
        "vs-masquerade-source-unknown",
        virtualserver(masqueradeSource="Node"),
        "spec.masqueradeSource",
        "Unsupported value",
    ),
    Bad(
        "vs-tunnel-named",
        virtualserver(forwarding="tunnel", ports=[{"port": 80, "targetPort": "http"}]),
        "spec.ports",
        vs.MSG_PORT_REMAP,
    ),
    Bad(
        "vs-netmask-on-v6",
        virtualserver(vip="2001:db8::1", persistence={"netmask": "255.255.255.0"}),
        "spec.persistence",
        vs.MSG_NETMASK_FAMILY,
    ),
    Bad(
        "vs-prefix-on-v4",
        virtualserver(persistence={"prefixLength": 24}),
        "spec.persistence",
        vs.MSG_PREFIX_FAMILY,
    ),
    Bad(
        "vs-empty-node-selector",
        virtualserver(directors={"nodeSelector": {}}),
        "spec.directors.nodeSelector",
        vs.MSG_NODE_SELECTOR_EMPTY,
    ),
    # --- RealServerPool: schema ---
    Bad("rsp-weight", pool(weight=65536), "spec.weight", "less than or equal to 65535"),
    Bad("rsp-weight-negative", pool(weight=-1), "spec.weight", "greater than or equal to 0"),
    Bad(
        "rsp-server-no-address",
        pool(servers=[{"port": 80}]),
        "spec.servers[0].address",
        "Required value",
    ),
    Bad(
        "rsp-server-port",
        pool(servers=[{"address": "198.51.100.7", "port": 65536}]),
        "spec.servers[0].port",
        "less than or equal to 65535",
    ),
    Bad(
        "rsp-server-weight",
        pool(servers=[{"address": "198.51.100.7", "weight": 70000}]),
        "spec.servers[0].weight",
        "less than or equal to 65535",
    ),
    Bad(
        "rsp-check-type",
        pool(healthCheck={"type": "icmp"}),
        "spec.healthCheck.type",
        "Unsupported value",
    ),
    Bad(
        "rsp-check-path-too-long",
        pool(healthCheck={"type": "http", "path": "/" + "a" * 1024}),
        "spec.healthCheck.path",
        "Too long",
    ),
    Bad(
        "rsp-check-status",
        pool(healthCheck={"type": "http", "expectedStatus": 600}),
        "spec.healthCheck.expectedStatus",
        "less than or equal to 599",
    ),
    Bad(
        "rsp-check-interval",
        pool(healthCheck={"intervalSeconds": 3601}),
        "spec.healthCheck.intervalSeconds",
        "less than or equal to 3600",
    ),
    Bad(
        "rsp-check-rise",
        pool(healthCheck={"riseThreshold": 101}),
        "spec.healthCheck.riseThreshold",
        "less than or equal to 100",
    ),
    Bad(
        "rsp-selector-operator",
        pool(
            selector={"matchExpressions": [{"key": "app", "operator": "Equals", "values": ["web"]}]}
        ),
        "spec.selector.matchExpressions[0].operator",
        "Unsupported value",
    ),
    # --- RealServerPool: CEL ---
    Bad("rsp-empty", pool(selector=None), "spec", rsp.MSG_POOL_EMPTY),
    Bad("rsp-empty-servers", pool(selector=None, servers=[]), "spec", rsp.MSG_POOL_EMPTY),
    Bad("rsp-empty-selector", pool(selector={}), "spec.selector", rsp.MSG_SELECTOR_EMPTY),
    Bad(
        "rsp-server-address",
        pool(servers=[{"address": "web-1.example.com"}]),
        "spec.servers[0].address",
        rsp.MSG_SERVER_ADDRESS,
    ),
    Bad(
        "rsp-server-loopback",
        pool(servers=[{"address": "::1"}]),
        "spec.servers[0].address",
        rsp.MSG_SERVER_ADDRESS,
    ),
    Bad(
        "rsp-duplicate-server",
        pool(
            servers=[
                {"address": "198.51.100.7", "port": 80},
                {"address": "198.51.100.7", "port": 80},
            ]
        ),
        "spec.servers",
        rsp.MSG_SERVERS_UNIQUE,
    ),
    Bad(
        "rsp-check-path",
        pool(healthCheck={"type": "http", "path": "healthz"}),
        "spec.healthCheck.path",
        rsp.MSG_HTTP_PATH,
    ),
    Bad(
        "rsp-check-path-crlf",
        pool(healthCheck={"type": "http", "path": "/healthz\r\nX-Injected: 1"}),
        "spec.healthCheck.path",
        rsp.MSG_HTTP_PATH,
    ),
    Bad(
        "rsp-check-path-lf",
        pool(healthCheck={"type": "http", "path": "/healthz\n"}),
        "spec.healthCheck.path",
        rsp.MSG_HTTP_PATH,
    ),
    Bad(
        "rsp-check-path-space",
        pool(healthCheck={"type": "http", "path": "/health z HTTP/1.1"}),
        "spec.healthCheck.path",
        rsp.MSG_HTTP_PATH,
    ),
    Bad(
        "rsp-check-path-bad-escape",
        pool(healthCheck={"type": "http", "path": "/a%0"}),
        "spec.healthCheck.path",
        rsp.MSG_HTTP_PATH,
    ),
    Bad(
        "rsp-check-path-fragment",
        pool(healthCheck={"type": "http", "path": "/a#top"}),
        "spec.healthCheck.path",
        rsp.MSG_HTTP_PATH,
    ),
    Bad(
        "rsp-check-host-crlf",
        pool(healthCheck={"type": "http", "host": "example.com\r\nX-Injected: 1"}),
        "spec.healthCheck.host",
        rsp.MSG_HTTP_HOST,
    ),
    Bad(
        "rsp-check-host-path",
        pool(healthCheck={"type": "http", "host": "example.com/x"}),
        "spec.healthCheck.host",
        rsp.MSG_HTTP_HOST,
    ),
    Bad(
        "rsp-check-host-underscore",
        pool(healthCheck={"type": "http", "host": "my_host"}),
        "spec.healthCheck.host",
        rsp.MSG_HTTP_HOST,
    ),
    Bad(
        "rsp-label-key-space",
        pool(selector={"matchLabels": {"my app": "web"}}),
        "spec.selector.matchLabels",
        MSG_LABEL_KEY,
    ),
    Bad(
        "rsp-label-key-two-slashes",
        pool(selector={"matchLabels": {"example.com/a/b": "web"}}),
        "spec.selector.matchLabels",
        MSG_LABEL_KEY,
    ),
    Bad(
        "rsp-label-key-name-too-long",
        pool(selector={"matchLabels": {"a" * 64: "web"}}),
        "spec.selector.matchLabels",
        MSG_LABEL_KEY,
    ),
    Bad(
        "rsp-label-key-prefix-too-long",
        pool(selector={"matchLabels": {("a" * 60 + ".") * 4 + "abcdefghijklmnopq/x": "web"}}),
        "spec.selector.matchLabels",
        MSG_LABEL_KEY,
    ),
    Bad(
        "rsp-label-key-uppercase-prefix",
        pool(selector={"matchLabels": {"Example.com/app": "web"}}),
        "spec.selector.matchLabels",
        MSG_LABEL_KEY,
    ),
    Bad(
        "rsp-label-value",
        pool(selector={"matchLabels": {"app": "web server"}}),
        "spec.selector.matchLabels",
        MSG_LABEL_VALUE,
    ),
    Bad(
        "rsp-label-value-dash-end",
        pool(selector={"matchLabels": {"app": "web-"}}),
        "spec.selector.matchLabels",
        MSG_LABEL_VALUE,
    ),
    Bad(
        "rsp-expression-key",
        pool(
            selector={
                "matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "-tier", "operator": "Exists"}],
            }
        ),
        "spec.selector.matchExpressions[0].key",
        MSG_LABEL_KEY,
    ),
    Bad(
        "rsp-expression-value",
        pool(
            selector={
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "a/b"]}]
            }
        ),
        "spec.selector.matchExpressions[0].values",
        MSG_LABEL_VALUE,
    ),
    Bad(
        "rsp-tcp-with-path",
        pool(healthCheck={"type": "tcp", "path": "/"}),
        "spec.healthCheck",
        rsp.MSG_HTTP_ONLY,
    ),
    Bad(
        "rsp-timeout-over-interval",
        pool(healthCheck={"intervalSeconds": 2, "timeoutSeconds": 3}),
        "spec.healthCheck",
        rsp.MSG_TIMEOUT_INTERVAL,
    ),
    Bad(
        "rsp-in-without-values",
        pool(selector={"matchExpressions": [{"key": "app", "operator": "In"}]}),
        "spec.selector.matchExpressions[0]",
        MSG_SELECTOR_VALUES,
    ),
    Bad(
        "rsp-exists-with-values",
        pool(
            selector={"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]}
        ),
        "spec.selector.matchExpressions[0]",
        MSG_SELECTOR_VALUES,
    ),
]
for _bad in BAD:
    if _bad.obj["spec"].get("selector", "") is None:
        del _bad.obj["spec"]["selector"]
