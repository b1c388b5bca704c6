from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from lvs_operator.controller import app


def config(*argv: str):
    return app.config_from_args(app.parser().parse_args(list(argv)))


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("POD_NAMESPACE", "LVS_VIP_RANGES", "LVS_DIRECTOR_IMAGE"):
        monkeypatch.delenv(var, raising=False)
    c = config()
    assert c.namespace == "lvs-system"
    assert c.vip_ranges == ()
    assert c.director_service_account == "lvs-director"
    assert (c.health_port, c.metrics_port, c.peer_port) == (9641, 9642, 9643)
    assert c.timings.lease_duration_seconds is None
    assert c.director_resources["requests"]["cpu"] == "50m"


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "ops")
    monkeypatch.setenv("LVS_VIP_RANGES", "192.0.2.0/24, 2001:db8::/64")
    monkeypatch.setenv("LVS_DIRECTOR_IMAGE", "example/lvs:2")
    monkeypatch.setenv("LVS_LEASE_DURATION_SECONDS", "6")
    c = config()
    assert c.namespace == "ops"
    assert c.vip_ranges == (
        ipaddress.ip_network("192.0.2.0/24"),
        ipaddress.ip_network("2001:db8::/64"),
    )
    assert c.director_image == "example/lvs:2"
    assert c.timings.lease_duration_seconds == 6


def test_flags() -> None:
    c = config(
        "--namespace=x",
        "--vip-ranges=10.0.0.0/8",
        '--director-tolerations=[{"operator": "Exists"}]',
        '--director-resources={"requests": {"cpu": "1"}}',
        "--retry-period-seconds=2",
        "--director-health-port=1234",
        "--director-peer-port=4321",
    )
    assert c.namespace == "x"
    assert c.director_tolerations == ({"operator": "Exists"},)
    assert c.director_resources == {"requests": {"cpu": "1"}}
    assert c.timings.retry_period_seconds == 2
    assert c.health_port == 1234 and c.peer_port == 4321


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--vip-ranges=10.0.0.0/33"], "--vip-ranges"),
        (["--director-tolerations={}"], "expected a JSON list"),
        (["--director-tolerations=[1]"], "JSON object"),
        (["--director-resources=nope"], "not valid JSON"),
        (["--director-health-port=0"], "not a port number"),
        (["--director-peer-port=70000"], "not a port number"),
        (["--director-metrics-port=9641"], "must differ"),
    ],
)
def test_bad_flags_say_why(argv: list[str], message: str) -> None:
    with pytest.raises(app.ConfigError, match=message):
        config(*argv)


def test_run_refuses_bad_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert app.run(["--vip-ranges=bogus"]) == 2
    assert "bad VIP range" in capsys.readouterr().err


def test_registry_builds() -> None:
    class Kick:
        async def kick(self, **_: object) -> None:
            return None

    from lvs_operator.controller.config import ControllerConfig

    registry = app.build_registry(Kick(), ControllerConfig())
    assert registry is not None
    settings = app.build_settings()
    assert settings.posting.enabled is False and settings.scanning.disabled is True
    assert settings.watching.chunk_size == app.LIST_CHUNK_SIZE  # the initial LISTs paged
    assert settings.queueing.idle_timeout == app.WORKER_IDLE_SECONDS < 5  # kopf's: 5 s


def test_no_diff_base() -> None:
    """kopf builds no essence per event (the registry has no change handlers or daemons:
    build_registry refuses them), and reads or writes no diff-base annotation."""
    import kopf

    storage = app.build_settings().persistence.diffbase_storage
    body = kopf.Body(
        {
            "metadata": {
                "name": "p",
                "annotations": {"kopf.zalando.org/last-handled-configuration": '{"spec":{}}'},
            },
            "spec": {"a": 1},
        }
    )
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None
    patch = kopf.Patch()
    storage.store(body=body, patch=patch, essence={"spec": {"a": 1}})
    assert not patch


def test_registry_refuses_change_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    import kopf

    from lvs_operator.controller import pools
    from lvs_operator.controller.config import ControllerConfig

    register_pools = pools.register

    def register(registry: kopf.OperatorRegistry, kick: object) -> None:
        register_pools(registry, kick)

        @kopf.on.update("", "v1", "pods", registry=registry)
        async def on_update(**_: object) -> None:
            return None

    monkeypatch.setattr(pools, "register", register)

    class Kick:
        async def kick(self, **_: object) -> None:
            return None

    with pytest.raises(RuntimeError, match="diff-base"):
        app.build_registry(Kick(), ControllerConfig())


class _Listing:
    def __init__(self, code: int | None) -> None:
        self.code = code

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        if self.code is not None:
            from lightkube import ApiError
            from lightkube.models.meta_v1 import Status

            raise ApiError(status=Status(code=self.code, message="nope"))
        for item in ():
            yield item


class _Client:
    def __init__(self, code: int | None) -> None:
        self.code = code
        self.namespaces: list[str] = []

    def list(self, res: object, namespace: str, chunk_size: int) -> _Listing:
        self.namespaces.append(namespace)
        return _Listing(self.code)


async def test_preflight_says_what_is_missing() -> None:
    ok = _Client(None)
    assert await app.preflight(ok) is None
    assert ok.namespaces == ["*", "*"]  # cluster-wide
    missing = await app.preflight(_Client(404))
    assert missing and "CRD is not installed" in missing and "crds/" in missing
    denied = await app.preflight(_Client(403))
    assert denied and "deploy/rbac/controller.yaml" in denied


def test_director_port_defaults_match_the_agents() -> None:
    """The controller passes its ports to the agents; unset, both must agree anyway."""
    from lvs_operator.controller import config as controller_config
    from lvs_operator.director import config as agent_config
    from lvs_operator.director import peer

    assert controller_config.DEFAULT_PEER_PORT == peer.DEFAULT_PEER_PORT
    assert controller_config.DEFAULT_HEALTH_PORT == agent_config.DEFAULT_HEALTH_PORT
    assert controller_config.DEFAULT_METRICS_PORT == agent_config.DEFAULT_METRICS_PORT


def test_director_node_label(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LVS_DIRECTOR_NODE_LABEL", raising=False)
    assert config().director_node_pin == {"lvs.io/director": "true"}
    assert config("--director-node-label=example.com/lb=edge").director_node_pin == {
        "example.com/lb": "edge"
    }
    assert config("--director-node-label=").director_node_pin == {}
    for bad in ("nolabel", "bad key=x", "k=bad value"):
        with pytest.raises(app.ConfigError, match="--director-node-label"):
            config(f"--director-node-label={bad}")


def test_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller's own /metrics: a port none of the agents' defaults use; 0 turns it off."""
    from lvs_operator.api import contract

    monkeypatch.delenv(app.ENV_METRICS_PORT, raising=False)
    default = config().controller_metrics_port
    assert default > 0
    agents = (contract.DEFAULT_HEALTH_PORT, contract.DEFAULT_METRICS_PORT)
    assert default not in (*agents, contract.DEFAULT_PEER_PORT)
    assert config("--metrics-port=0").controller_metrics_port == 0
    assert config("--metrics-port=19640").controller_metrics_port == 19640
    monkeypatch.setenv(app.ENV_METRICS_PORT, "0")
    assert config().controller_metrics_port == 0
    monkeypatch.setenv(app.ENV_METRICS_PORT, "9650")
    assert config().controller_metrics_port == 9650


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--metrics-port=70000"], "not a port number 0-65535"),
        (["--metrics-port=8080"], "--metrics-port and --liveness"),
        (["--metrics-port=9000", "--liveness=http://0.0.0.0:9000/healthz"], "different ports"),
    ],
)
def test_bad_metrics_port_says_why(argv: list[str], message: str) -> None:
    with pytest.raises(app.ConfigError, match=message):
        config(*argv)


def test_metrics_port_may_equal_liveness_port_when_liveness_is_off() -> None:
    assert config("--metrics-port=8080", "--liveness=none").controller_metrics_port == 8080


def test_director_image_pull_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LVS_DIRECTOR_IMAGE_PULL_SECRETS", raising=False)
    assert config().director_image_pull_secrets == ()
    c = config("--director-image-pull-secrets=regcred, mirror.io")
    assert c.director_image_pull_secrets == ("regcred", "mirror.io")
    monkeypatch.setenv("LVS_DIRECTOR_IMAGE_PULL_SECRETS", "regcred")
    assert config().director_image_pull_secrets == ("regcred",)


def test_director_node_settings_on_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LVS_DIRECTOR_NODE_SETTINGS", raising=False)
    assert config().director_node_settings is True
    assert config("--director-node-settings=false").director_node_settings is False
    monkeypatch.setenv("LVS_DIRECTOR_NODE_SETTINGS", "false")
    assert config().director_node_settings is False
    assert config("--director-node-settings=true").director_node_settings is True


def test_bad_image_pull_secret_names_the_flag() -> None:
    with pytest.raises(app.ConfigError, match="--director-image-pull-secrets: 'Reg_Cred'"):
        config("--director-image-pull-secrets=Reg_Cred")


def test_owner_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LVS_CONTROLLER_DEPLOYMENT", raising=False)
    assert app.parser().parse_args([]).owner_deployment == ""
    monkeypatch.setenv("LVS_CONTROLLER_DEPLOYMENT", "lvs-operator")
    assert app.parser().parse_args([]).owner_deployment == "lvs-operator"
    with pytest.raises(app.ConfigError, match=r"--owner-deployment \(LVS_CONTROLLER_DEPLOYMENT\)"):
        config("--owner-deployment=Not A Name")


class _Deployments:
    """Answers the controller's GET of its own Deployment (or refuses it with ``code``)."""

    def __init__(self, code: int | None) -> None:
        self.code = code
        self.asked: list[tuple[str, str]] = []

    async def get(self, res: object, name: str, namespace: str) -> object:
        from types import SimpleNamespace

        self.asked.append((namespace, name))
        if self.code is not None:
            from lightkube import ApiError
            from lightkube.models.meta_v1 import Status

            raise ApiError(status=Status(code=self.code, message="nope"))
        return SimpleNamespace(metadata=SimpleNamespace(name=name, uid="uid-d"))


async def test_resolve_owner_reads_the_deployment_once() -> None:
    from lvs_operator.controller.config import OwnerDeployment

    client = _Deployments(None)
    owner, problem = await app.resolve_owner(client, "lvs-system", "lvs-operator")
    assert (owner, problem) == (OwnerDeployment("lvs-operator", "uid-d"), None)
    assert client.asked == [("lvs-system", "lvs-operator")]


async def test_resolve_owner_says_how_to_fix_it() -> None:
    owner, missing = await app.resolve_owner(_Deployments(404), "lvs-system", "nope")
    assert owner is None and missing
    assert "no Deployment lvs-system/nope" in missing and "LVS_CONTROLLER_DEPLOYMENT" in missing
    owner, denied = await app.resolve_owner(_Deployments(403), "lvs-system", "lvs-operator")
    assert owner is None and denied and "deploy/rbac/controller.yaml" in denied


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("LVS_HEALTH_PORT", "abc", "--director-health-port: 'abc' is not an integer"),
        ("LVS_PEER_PORT", "9.5", "--director-peer-port: '9.5' is not an integer"),
        ("LVS_CONTROLLER_METRICS_PORT", "off", "--metrics-port: 'off' is not an integer"),
        ("LVS_LEASE_DURATION_SECONDS", "ten", "--lease-duration-seconds: 'ten'"),
        ("LVS_RETRY_PERIOD_SECONDS", "2s", "--retry-period-seconds: '2s' is not a number"),
        ("LVS_LOG_LEVEL", "verbose", "--log-level: 'verbose' is not one of debug, info"),
        ("LVS_DIRECTOR_IMAGE_PULL_POLICY", "Sometimes", "--director-image-pull-policy:"),
        ("LVS_DIRECTOR_NODE_SETTINGS", "yes", "--director-node-settings: 'yes' is not one of"),
    ],
)
def test_bad_environment_values_exit_2_naming_flag_and_variable(
    var: str,
    value: str,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SystemExit) as exit_:
        app.run([])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and f"env {var}" in err and "Traceback" not in err


def test_metrics_port_zero_from_the_environment_turns_it_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LVS_CONTROLLER_METRICS_PORT", "0")
    assert config().controller_metrics_port == 0


def test_missing_kubeconfig_names_where_it_came_from(tmp_path: object) -> None:
    assert app.kubeconfig_problem(None, None) is None
    assert app.kubeconfig_problem("/no/such/kubeconfig", None) == (
        "--kubeconfig: no such file: /no/such/kubeconfig"
    )
    problem = app.kubeconfig_problem(None, "/no/such/kubeconfig")
    assert problem and problem.startswith("env KUBECONFIG: no such file: /no/such/kubeconfig")
    assert app.kubeconfig_problem(__file__, "/no/such/kubeconfig") is None  # the flag wins


def test_run_exits_2_on_a_missing_kubeconfig(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBECONFIG", "/no/such/kubeconfig")
    assert app.run(["--vip-ranges=192.0.2.0/24"]) == 2
    assert "env KUBECONFIG: no such file" in capsys.readouterr().err
    assert app.run(["--kubeconfig=/no/such/file"]) == 2
    assert "--kubeconfig: no such file: /no/such/file" in capsys.readouterr().err


async def test_no_cluster_to_connect_to_exits_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither flag, KUBECONFIG, ~/.kube/config nor a ServiceAccount: a message, not a trace."""
    from lvs_operator.controller.config import ControllerConfig

    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert await app.main(ControllerConfig(), None, None) == 2
    assert "no cluster to connect to" in caplog.text


def test_handlers_run_on_the_event_loop_not_in_threads() -> None:
    """kopf runs a plain ``def`` handler in its thread pool (threads, their stacks and
    malloc arenas, a hop per object); the index handlers are ``async`` so it calls them
    in the loop."""
    import inspect

    class Kick:
        async def kick(self, **_: object) -> None:
            return None

    from lvs_operator.controller.config import ControllerConfig

    registry = app.build_registry(Kick(), ControllerConfig())
    indexing = registry._indexing.get_all_handlers()
    watching = registry._watching.get_all_handlers()
    assert {h.id for h in indexing} >= {"lvs_pools", "lvs_slices", "lvs_services"}
    # pods are the reconciler's PodCache's, not kopf's: kopf would keep its own per-object
    # memory and index entries for every pod in the cluster (podcache.py)
    assert not [h for h in [*indexing, *watching] if h.selector.plural == "pods"]
    for handler in [*indexing, *watching]:
        assert inspect.iscoroutinefunction(handler.fn), handler.id
