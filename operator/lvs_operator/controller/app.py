"""``lvs-operator controller``: flags, kopf settings and start-up only.

kopf runs the watches (cluster-wide: VirtualServers, RealServerPools, the pools'
EndpointSlices and Services) and keeps them in indexes (the pods are the reconciler's own
``PodCache``, podcache.py); its event handlers only wake the reconciler (reconciler.py),
which computes and writes. kopf itself writes nothing on the watched objects: no
finalizers, no progress or diff-base annotations (only index and event handlers are used),
and it posts no Events of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from lvs_operator import logs
from lvs_operator.api import contract
from lvs_operator.api.network import (
    is_dns_subdomain,
    is_label_key,
    is_label_value,
    parse_ranges,
)
from lvs_operator.options import env_text, integer, number, one_of

from .config import (
    DEFAULT_CONTROLLER_METRICS_PORT,
    DEFAULT_DIRECTOR_IMAGE,
    DEFAULT_DIRECTOR_RESOURCES,
    DEFAULT_DIRECTOR_SERVICE_ACCOUNT,
    DEFAULT_HEALTH_PORT,
    DEFAULT_METRICS_PORT,
    DEFAULT_NAMESPACE,
    DEFAULT_PEER_PORT,
    ControllerConfig,
    DirectorTimings,
    OwnerDeployment,
)

log = logging.getLogger("lvs_operator.controller")

DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"
ENV_METRICS_PORT = "LVS_CONTROLLER_METRICS_PORT"  # LVS_METRICS_PORT is the agents' (contract)
ENV_DIRECTOR_IMAGE_PULL_SECRETS = "LVS_DIRECTOR_IMAGE_PULL_SECRETS"
ENV_DIRECTOR_NODE_SETTINGS = "LVS_DIRECTOR_NODE_SETTINGS"
ENV_OWNER_DEPLOYMENT = "LVS_CONTROLLER_DEPLOYMENT"
LOG_LEVELS = ("debug", "info", "warning", "error")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lvs-operator controller",
        description="Reconcile VirtualServers and RealServerPools: pool members, director "
        "groups (a DaemonSet of agents each), status and Events.",
    )
    p.add_argument(
        "--namespace",
        default=_env(contract.ENV_POD_NAMESPACE, DEFAULT_NAMESPACE),
        help="the operator's namespace: director DaemonSets and Leases live here "
        "(env POD_NAMESPACE; default %(default)s)",
    )
    p.add_argument(
        "--vip-ranges",
        default=_env("LVS_VIP_RANGES"),
        help="comma-separated CIDRs a VIP must lie in (env LVS_VIP_RANGES); empty refuses "
        "every VIP",
    )
    p.add_argument(
        "--director-image",
        default=_env("LVS_DIRECTOR_IMAGE", DEFAULT_DIRECTOR_IMAGE),
        help="image of the director agents (env LVS_DIRECTOR_IMAGE; default %(default)s)",
    )
    p.add_argument(
        "--director-image-pull-policy",
        default=_env("LVS_DIRECTOR_IMAGE_PULL_POLICY", "IfNotPresent"),
        type=one_of("LVS_DIRECTOR_IMAGE_PULL_POLICY", PULL_POLICIES),
        metavar="{" + ",".join(PULL_POLICIES) + "}",
    )
    p.add_argument(
        "--director-image-pull-secrets",
        default=_env(ENV_DIRECTOR_IMAGE_PULL_SECRETS),
        help="comma-separated names of Secrets in the operator's namespace the kubelet pulls "
        f"the agents' image with (env {ENV_DIRECTOR_IMAGE_PULL_SECRETS}; default none)",
    )
    p.add_argument(
        "--director-service-account",
        default=_env("LVS_DIRECTOR_SERVICE_ACCOUNT", DEFAULT_DIRECTOR_SERVICE_ACCOUNT),
        help="ServiceAccount of the agents (shipped with its RBAC; default %(default)s)",
    )
    p.add_argument(
        "--director-tolerations",
        default=_env("LVS_DIRECTOR_TOLERATIONS", "[]"),
        help='JSON list of tolerations for the agents, e.g. \'[{"operator": "Exists"}]\'',
    )
    p.add_argument(
        "--director-resources",
        default=_env("LVS_DIRECTOR_RESOURCES", json.dumps(DEFAULT_DIRECTOR_RESOURCES)),
        help="JSON resources of the agent container (default %(default)s)",
    )
    p.add_argument(
        "--director-node-label",
        default=_env("LVS_DIRECTOR_NODE_LABEL", f"{contract.DIRECTOR_NODE_LABEL}=true"),
        help="key=value every director DaemonSet also requires of its nodes, whatever a "
        "VirtualServer's spec.directors.nodeSelector says (env LVS_DIRECTOR_NODE_LABEL; "
        "default %(default)s; empty: none, a VirtualServer may put directors on any node)",
    )
    p.add_argument(
        "--director-priority-class",
        default=_env("LVS_DIRECTOR_PRIORITY_CLASS") or None,
        help="priorityClassName of the agents (default none)",
    )
    p.add_argument(
        "--director-node-settings",
        default=_env(ENV_DIRECTOR_NODE_SETTINGS, "true"),
        type=one_of(ENV_DIRECTOR_NODE_SETTINGS, ("true", "false")),
        metavar="{true,false}",
        help="give each director pod the privileged init container that sets the node's "
        "sysctls (lvs-operator node-settings); false where the nodes' configuration sets them "
        f"(env {ENV_DIRECTOR_NODE_SETTINGS}; default %(default)s)",
    )
    p.add_argument(
        "--director-health-port",
        type=integer(contract.ENV_HEALTH_PORT),
        default=env_text(contract.ENV_HEALTH_PORT) or DEFAULT_HEALTH_PORT,
        help="the agents' /healthz + /readyz port on the node (default %(default)s)",
    )
    p.add_argument(
        "--director-metrics-port",
        type=integer(contract.ENV_METRICS_PORT),
        default=env_text(contract.ENV_METRICS_PORT) or DEFAULT_METRICS_PORT,
        help="the agents' metrics port on the node (default %(default)s)",
    )
    p.add_argument(
        "--director-peer-port",
        type=integer(contract.ENV_PEER_PORT),
        default=env_text(contract.ENV_PEER_PORT) or DEFAULT_PEER_PORT,
        help="the agents' UDP heartbeat port on the node (default %(default)s)",
    )
    p.add_argument(
        "--lease-duration-seconds",
        type=integer(contract.ENV_LEASE_DURATION_SECONDS),
        default=env_text(contract.ENV_LEASE_DURATION_SECONDS),
        help="passed to the agents as LVS_LEASE_DURATION_SECONDS (default: theirs)",
    )
    p.add_argument(
        "--renew-deadline-seconds",
        type=number(contract.ENV_RENEW_DEADLINE_SECONDS),
        default=env_text(contract.ENV_RENEW_DEADLINE_SECONDS),
        help="passed to the agents as LVS_RENEW_DEADLINE_SECONDS (default: theirs)",
    )
    p.add_argument(
        "--retry-period-seconds",
        type=number(contract.ENV_RETRY_PERIOD_SECONDS),
        default=env_text(contract.ENV_RETRY_PERIOD_SECONDS),
        help="passed to the agents as LVS_RETRY_PERIOD_SECONDS (default: theirs)",
    )
    p.add_argument(
        "--metrics-port",
        type=integer(ENV_METRICS_PORT),
        default=env_text(ENV_METRICS_PORT) or DEFAULT_CONTROLLER_METRICS_PORT,  # "0": off
        help=f"the controller's own /metrics port (env {ENV_METRICS_PORT}; default "
        "%(default)s; 0: off)",
    )
    p.add_argument(
        "--owner-deployment",
        default=_env(ENV_OWNER_DEPLOYMENT),
        help="name of the controller's own Deployment in --namespace (env "
        f"{ENV_OWNER_DEPLOYMENT}; set by the chart and deploy/): the owner of every director "
        "DaemonSet, so that deleting it removes them; empty: no owner (run by hand)",
    )
    p.add_argument(
        "--liveness",
        default=_env("LVS_CONTROLLER_LIVENESS", DEFAULT_LIVENESS),
        help="kopf's liveness endpoint URL, or 'none' (default %(default)s)",
    )
    p.add_argument(
        "--kubeconfig",
        default=None,
        help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or in-cluster)",
    )
    p.add_argument(
        "--log-level",
        default=_env(contract.ENV_LOG_LEVEL, "info"),
        type=one_of(contract.ENV_LOG_LEVEL, LOG_LEVELS),
        metavar="{" + ",".join(LOG_LEVELS) + "}",
    )
    return p


class ConfigError(ValueError):
    pass


def _json(flag: str, text: str, want: type) -> Any:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{flag}: not valid JSON ({exc}): {text!r}") from exc
    if not isinstance(value, want):
        raise ConfigError(f"{flag}: expected a JSON {want.__name__}, got {text!r}")
    return value


def config_from_args(args: argparse.Namespace) -> ControllerConfig:
    try:
        ranges = tuple(parse_ranges(args.vip_ranges.split(",")))
    except ValueError as exc:
        raise ConfigError(f"--vip-ranges: {exc}") from exc
    tolerations = _json("--director-tolerations", args.director_tolerations, list)
    if not all(isinstance(t, dict) for t in tolerations):
        raise ConfigError("--director-tolerations: each toleration must be a JSON object")
    resources = _json("--director-resources", args.director_resources, dict)
    for flag, port in (
        ("--director-health-port", args.director_health_port),
        ("--director-metrics-port", args.director_metrics_port),
        ("--director-peer-port", args.director_peer_port),
    ):
        if not 1 <= port <= 65535:
            raise ConfigError(f"{flag}: {port} is not a port number 1-65535")
    if not 0 <= args.metrics_port <= 65535:
        raise ConfigError(f"--metrics-port: {args.metrics_port} is not a port number 0-65535")
    if args.metrics_port and args.metrics_port == _liveness_port(args.liveness):
        raise ConfigError(
            f"--metrics-port and --liveness must use different ports (both {args.metrics_port})"
        )
    if args.director_health_port == args.director_metrics_port:
        raise ConfigError(
            "--director-health-port and --director-metrics-port must differ: the agents serve "
            "both on the node's network"
        )
    names = args.director_image_pull_secrets.split(",")
    pull_secrets = tuple(n.strip() for n in names if n.strip())
    for name in pull_secrets:
        if not is_dns_subdomain(name):
            raise ConfigError(
                f"--director-image-pull-secrets: {name!r} is not a Secret name (lowercase "
                "letters, digits, '-' and '.'); give comma-separated names, e.g. regcred,mirror"
            )
    if args.owner_deployment and not is_dns_subdomain(args.owner_deployment):
        raise ConfigError(
            f"--owner-deployment ({ENV_OWNER_DEPLOYMENT}): {args.owner_deployment!r} is not a "
            "Deployment name; give the name of the controller's Deployment, e.g. lvs-operator"
        )
    pin: dict[str, str] = {}
    if args.director_node_label:
        key, sep, value = args.director_node_label.partition("=")
        if not sep or not is_label_key(key) or not is_label_value(value):
            raise ConfigError(
                f"--director-node-label: {args.director_node_label!r} is not key=value with a "
                "valid label key and value (e.g. lvs.io/director=true)"
            )
        pin = {key: value}
    return ControllerConfig(
        namespace=args.namespace,
        director_node_pin=pin,
        vip_ranges=ranges,
        director_image=args.director_image,
        director_image_pull_policy=args.director_image_pull_policy,
        director_image_pull_secrets=pull_secrets,
        director_service_account=args.director_service_account,
        director_tolerations=tuple(tolerations),
        director_resources=resources,
        director_priority_class=args.director_priority_class,
        director_node_settings=args.director_node_settings == "true",
        health_port=args.director_health_port,
        metrics_port=args.director_metrics_port,
        peer_port=args.director_peer_port,
        controller_metrics_port=args.metrics_port,
        timings=DirectorTimings(
            lease_duration_seconds=args.lease_duration_seconds,
            renew_deadline_seconds=args.renew_deadline_seconds,
            retry_period_seconds=args.retry_period_seconds,
        ),
    )


def _liveness_port(url: str) -> int | None:
    """The port of kopf's liveness endpoint URL (None: off or not an http URL with one)."""
    if url in ("", "none"):
        return None
    try:
        return urlsplit(url).port
    except ValueError:
        return None


# kopf is chatty at INFO about every watch stream, the HTTP clients about every request.
QUIET_LOGGERS = ("kopf", "httpx2", "httpx", "aiohttp.access")


def setup_logging(level: str) -> None:
    """JSON lines on stderr (lvs_operator/logs.py), kopf's records included."""
    logs.setup_logging(level, quiet=() if level == "debug" else QUIET_LOGGERS)


# kopf's initial LIST of each kind (at start-up, and when a watch has to start over) in
# pages of this many objects: unpaged, a restart on a full cluster parses every pod at once
# (see docs/controller.md, bench/controller_memory.py --mode list).
LIST_CHUNK_SIZE = 500
# How long kopf keeps an object's worker after the object's last event (kopf's default: 5 s).
# The worker holds that event, the whole parsed body, until it exits: a LIST of 10,000 pods,
# or pods created fast, had thousands of bodies alive at once, and the long-lived objects
# made between them (index entries, kopf's per-object memories) kept that memory from being
# reused or given back (docs/controller.md). A later event starts a new worker (cheap).
WORKER_IDLE_SECONDS = 0.2


def no_diff_base() -> Any:
    """kopf's diff-base storage for an operator with no change handlers (the controller's
    are index and event handlers only, see ``build_registry``): it builds no essence.

    kopf builds one for every event (a deep copy of the whole body, managedFields
    included, then a copy of the rest) to diff it for the create/update/resume handlers
    and daemons; with none of those registered the essence and the diff are unused, but the
    copies were made all the same (~a fifth of the controller's CPU while the objects are
    listed, in bench/controller_memory.py; no less memory). It reads no annotation and
    writes none (kopf never stores a diff-base without change handlers either)."""
    import kopf

    class NoDiffBase(kopf.DiffBaseStorage):
        def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
            return kopf.BodyEssence()

        def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
            return None

        def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
            return None

    return NoDiffBase()


def build_settings() -> Any:
    import kopf

    settings = kopf.OperatorSettings()
    settings.persistence.diffbase_storage = no_diff_base()
    settings.posting.enabled = False  # the reconciler posts its own Events
    settings.scanning.disabled = True  # no CRD/namespace watching: less RBAC
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.chunk_size = LIST_CHUNK_SIZE
    settings.queueing.idle_timeout = WORKER_IDLE_SECONDS
    settings.networking.request_timeout = 60
    return settings


def build_registry(reconciler: Any, config: ControllerConfig) -> Any:
    import kopf

    from . import pools, virtualservers

    registry = kopf.OperatorRegistry()
    virtualservers.register(registry, reconciler.kick)
    pools.register(registry, reconciler.kick)
    # build_settings' no_diff_base() is right only for an operator without these
    if registry._changing.get_all_handlers() or registry._spawning.get_all_handlers():
        raise RuntimeError("change handlers or daemons need kopf's diff-base storage")

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        if os.environ.get("KUBECONFIG") or os.path.exists(os.path.expanduser("~/.kube/config")):
            return kopf.login_with_kubeconfig(**kwargs)
        return kopf.login_with_service_account(**kwargs)

    return registry


async def preflight(client: Any) -> str | None:
    """Why the controller cannot start (CRDs missing, no access), or None."""
    from lightkube import ApiError

    from lvs_operator.api.resources import RealServerPoolResource, VirtualServerResource

    for resource, kind in (
        (VirtualServerResource, "virtualservers"),
        (RealServerPoolResource, "realserverpools"),
    ):
        try:
            async for _ in client.list(resource, namespace="*", chunk_size=1):
                break
        except ApiError as exc:
            if exc.status.code == 404:
                return (
                    f"the {kind}.lvs.io CRD is not installed: install the CRDs first "
                    f"(kubectl apply --server-side -f crds/, or the Helm chart)"
                )
            if exc.status.code == 403:
                return (
                    f"not allowed to list {kind}.lvs.io cluster-wide: bind the controller's "
                    f"ServiceAccount to the ClusterRole in deploy/rbac/controller.yaml "
                    f"({exc.status.message})"
                )
            raise
    return None


async def resolve_owner(
    client: Any, namespace: str, name: str
) -> tuple[OwnerDeployment | None, str | None]:
    """(the controller's Deployment as owner, None), or (None, why it cannot be read)."""
    from lightkube import ApiError
    from lightkube.resources.apps_v1 import Deployment

    try:
        obj = await client.get(Deployment, name, namespace=namespace)
    except ApiError as exc:
        if exc.status.code == 404:
            return None, (
                f"--owner-deployment ({ENV_OWNER_DEPLOYMENT}): no Deployment {namespace}/{name}: "
                "set it to the name of the controller's own Deployment, or leave it empty "
                "when running the controller by hand"
            )
        if exc.status.code == 403:
            return None, (
                f"not allowed to get Deployment {namespace}/{name} (--owner-deployment): grant "
                "`get` on deployments in the Role of deploy/rbac/controller.yaml "
                f"({exc.status.message})"
            )
        raise
    return OwnerDeployment(name=obj.metadata.name, uid=obj.metadata.uid), None


async def main(
    config: ControllerConfig,
    kubeconfig: str | None,
    liveness: str | None,
    owner_name: str = "",
) -> int:
    import kopf
    from lightkube import AsyncClient, KubeConfig
    from lightkube.core.exceptions import ConfigError as KubeConfigError

    from .manifests import FIELD_MANAGER
    from .metrics import ControllerMetrics
    from .reconciler import Reconciler

    try:
        kc = KubeConfig.from_file(kubeconfig) if kubeconfig else KubeConfig.from_env()
    except KubeConfigError as exc:
        log.error(
            "no cluster to connect to: %s (give --kubeconfig, set KUBECONFIG, or run in a pod)",
            exc,
        )
        return 2
    client = AsyncClient(kc, field_manager=FIELD_MANAGER)
    problem = await preflight(client)
    if not problem and owner_name:
        owner, problem = await resolve_owner(client, config.namespace, owner_name)
        config = dataclasses.replace(config, owner=owner)
    elif not problem:
        log.warning(
            "no --owner-deployment (env %s): the director DaemonSets get no ownerReference, "
            "so deleting the controller leaves them running; delete them with `kubectl -n %s "
            "delete daemonset -l app.kubernetes.io/managed-by=lvs-operator`",
            ENV_OWNER_DEPLOYMENT,
            config.namespace,
        )
    if problem:
        log.error("%s", problem)
        await client.close()
        return 1
    metrics = ControllerMetrics()
    metrics_server = None
    if config.controller_metrics_port:
        try:
            metrics_server = await metrics.serve(config.controller_metrics_port)
        except OSError as exc:
            log.error("cannot serve /metrics on port %d (--metrics-port): %s",
                      config.controller_metrics_port, exc)  # fmt: skip
            await client.close()
            return 1
    reconciler = Reconciler(config, client, metrics=metrics)
    registry = build_registry(reconciler, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    log.info(
        "starting: namespace=%s vip-ranges=%s director-image=%s owner=%s",
        config.namespace,
        ",".join(str(r) for r in config.vip_ranges) or "(none: every VIP is refused)",
        config.director_image,
        f"Deployment/{config.owner.name}" if config.owner else "(none)",
    )
    worker = asyncio.create_task(reconciler.run(), name="reconciler")
    operator = asyncio.create_task(
        kopf.operator(
            registry=registry,
            settings=build_settings(),
            clusterwide=True,
            standalone=True,
            liveness_endpoint=liveness,
            stop_flag=stop,
        ),
        name="kopf",
    )
    done, _ = await asyncio.wait({worker, operator}, return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    worker.cancel()
    for t in (worker, operator):
        try:
            await asyncio.wait_for(t, timeout=10)
        except (asyncio.CancelledError, TimeoutError):
            pass
        except Exception:
            log.exception("%s failed", t.get_name())
    if metrics_server is not None:
        metrics_server.close()
    await client.close()
    log.info("stopped")
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            return 1
    return 0


def kubeconfig_problem(flag: str | None, env_value: str | None) -> str | None:
    """Why the kubeconfig named by --kubeconfig (else env KUBECONFIG) cannot be used, or None
    (neither given: ~/.kube/config or the in-cluster ServiceAccount, checked at connection)."""
    if flag:
        return None if os.path.isfile(flag) else f"--kubeconfig: no such file: {flag}"
    for path in (env_value or "").split(os.pathsep):
        if path and not os.path.isfile(path):
            return f"env KUBECONFIG: no such file: {path} (unset it, or fix the path)"
    return None


def run(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    setup_logging(args.log_level)
    try:
        config = config_from_args(args)
        problem = kubeconfig_problem(args.kubeconfig, os.environ.get("KUBECONFIG"))
        if problem:
            raise ConfigError(problem)
    except ConfigError as exc:
        print(f"lvs-operator controller: {exc}", file=sys.stderr)
        return 2
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig  # for kopf's login as well
    if not config.vip_ranges:
        log.warning(
            "no VIP ranges: every VirtualServer is refused until --vip-ranges (env "
            "LVS_VIP_RANGES) lists the CIDRs its VIPs may use"
        )
    liveness = None if args.liveness in ("", "none") else args.liveness
    return asyncio.run(main(config, args.kubeconfig, liveness, args.owner_deployment))
