"""The controller↔agent contract: both sides use the names api/contract.py declares.

The controller's side is checked by what it renders (the DaemonSet and its environment); the
agent's side by feeding that environment to the agent's own argument parser, so a variable one
side renames and the other does not fails here rather than in a cluster.
"""

from __future__ import annotations

import ipaddress
import json

import pytest

from lvs_operator.api import contract
from lvs_operator.api import virtualserver as vs
from lvs_operator.controller import config as controller_config
from lvs_operator.controller.config import ControllerConfig, DirectorTimings
from lvs_operator.controller.manifests import build_daemonset, director_env

SELECTOR = {"lvs.io/director": "true"}


def _env_names(env: list[dict[str, object]]) -> list[str]:
    return [str(e["name"]) for e in env]


def test_group_derived_names() -> None:
    group = contract.group_name(SELECTOR)
    assert group == contract.group_name(dict(SELECTOR))  # stable
    assert group.startswith("g") and len(group) == 11
    assert contract.daemonset_name(group) == f"lvs-director-{group}"
    assert contract.lease_name(group) == f"lvs-director-{group}"
    assert contract.group_name({"a": "1", "b": "2"}) == contract.group_name({"b": "2", "a": "1"})
    assert contract.group_name({"a": "1"}) != contract.group_name({"a": "2"})


def test_the_default_node_selector_uses_the_contract_label() -> None:
    assert vs.DEFAULT_DIRECTOR_NODE_SELECTOR == {contract.DIRECTOR_NODE_LABEL: "true"}


def test_controller_sets_the_contract_environment_in_order() -> None:
    bare = director_env("g1", ControllerConfig())
    assert _env_names(bare) == list(contract.CONTROLLER_SET_ENV)
    timed = director_env(
        "g1",
        ControllerConfig(timings=DirectorTimings(5, 3.0, 1.0)),
    )
    assert _env_names(timed) == [*contract.CONTROLLER_SET_ENV, *contract.CONTROLLER_OPTIONAL_ENV]
    every_name = {v for k, v in vars(contract).items() if k.startswith("ENV_")}
    assert set(_env_names(timed)) <= every_name


def test_controller_port_defaults_are_the_contract_ones() -> None:
    assert controller_config.DEFAULT_HEALTH_PORT == contract.DEFAULT_HEALTH_PORT
    assert controller_config.DEFAULT_METRICS_PORT == contract.DEFAULT_METRICS_PORT
    assert controller_config.DEFAULT_PEER_PORT == contract.DEFAULT_PEER_PORT
    ports = {contract.DEFAULT_HEALTH_PORT, contract.DEFAULT_METRICS_PORT}
    assert len(ports | {contract.DEFAULT_PEER_PORT}) == 3


def test_the_daemonset_carries_the_contract_names() -> None:
    group = contract.group_name(SELECTOR)
    ds = build_daemonset(group, SELECTOR, ControllerConfig())
    assert ds["metadata"]["name"] == contract.daemonset_name(group)
    assert ds["metadata"]["labels"][contract.GROUP_LABEL] == group
    assert ds["metadata"]["labels"][contract.NAME_LABEL] == contract.DIRECTOR_APP
    container = ds["spec"]["template"]["spec"]["containers"][0]
    assert tuple(container["command"]) == contract.DIRECTOR_COMMAND
    assert container["livenessProbe"]["httpGet"]["path"] == contract.HEALTHZ_PATH
    assert container["readinessProbe"]["httpGet"]["path"] == contract.READYZ_PATH
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env[contract.ENV_LEASE_NAME] == contract.lease_name(group)
    assert env[contract.ENV_DIRECTOR_GROUP] == group


def test_the_agent_understands_the_controller_environment() -> None:
    """What the controller sets is what the agent reads (the downward API filled in)."""
    from lvs_operator.director.main import parse_args

    config = ControllerConfig(
        health_port=19641,
        metrics_port=19642,
        peer_port=19643,
        timings=DirectorTimings(7, 5.0, 1.0),
        vip_ranges=(ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/64")),
    )
    downward = {
        contract.ENV_NODE_NAME: "node-a",
        contract.ENV_POD_NAME: "pod-a",
        contract.ENV_POD_NAMESPACE: "lvs-system",
    }
    env = {
        str(e["name"]): downward[str(e["name"])] if "valueFrom" in e else str(e["value"])
        for e in director_env("g1", config)
    }
    agent = parse_args([], env)
    assert (agent.node_name, agent.pod_name, agent.namespace) == ("node-a", "pod-a", "lvs-system")
    assert agent.group == "g1"
    assert agent.lease_name == contract.lease_name("g1")
    assert (agent.health_port, agent.metrics_port, agent.peer_port) == (19641, 19642, 19643)
    assert (agent.lease_duration, agent.renew_deadline, agent.retry_period) == (7, 5.0, 1.0)
    assert agent.vip_ranges == config.vip_ranges  # the agent checks the controller's ranges
    bare = {
        str(e["name"]): str(e.get("value", "x")) for e in director_env("g1", ControllerConfig())
    }
    assert parse_args([], bare).vip_ranges is None  # none configured: not checked by the agent


def test_the_agent_defaults_are_the_contract_ones() -> None:
    from lvs_operator.director.main import parse_args

    agent = parse_args(
        [],
        {
            contract.ENV_NODE_NAME: "n",
            contract.ENV_POD_NAMESPACE: "ns",
            contract.ENV_DIRECTOR_GROUP: "g1",
        },
    )
    assert agent.health_port == contract.DEFAULT_HEALTH_PORT
    assert agent.metrics_port == contract.DEFAULT_METRICS_PORT
    assert agent.peer_port == contract.DEFAULT_PEER_PORT
    assert agent.lease_name == contract.lease_name("g1")


def test_lease_annotation_keys_are_the_agents() -> None:
    from lvs_operator.director import election, handover, peer

    assert election.PROGRAMMED_ANNOTATION == contract.PROGRAMMED_ANNOTATION
    assert peer.HEARTBEAT_ANNOTATION == contract.HEARTBEAT_ANNOTATION
    assert handover.HANDOVER_ANNOTATION == contract.HANDOVER_ANNOTATION


def test_programmed_annotation_round_trip() -> None:
    generations = {contract.programmed_key("web", "b"): 2, contract.programmed_key("web", "a"): 3}
    text = contract.format_programmed(generations)
    assert text == '{"web/a": 3, "web/b": 2}'  # sorted: unchanged map, unchanged string
    assert json.loads(text) == generations
    assert contract.parse_programmed(text) == generations


def test_parse_programmed_ignores_what_is_malformed() -> None:
    assert contract.parse_programmed('{"web/a": 3, "web/b": true, "web/c": "4"}') == {"web/a": 3}
    assert contract.parse_programmed("not json") == {}
    assert contract.parse_programmed("[1]") == {}
    assert contract.parse_programmed(None) == {}
    assert contract.parse_programmed("") == {}


def _generations(count: int, name_length: int = 20) -> dict[str, int]:
    return {
        contract.programmed_key(f"team-{i % 50}", f"vs-{i:06d}".ljust(name_length, "x")): i % 7 + 1
        for i in range(count)
    }


def _old_reader(text: str) -> dict[str, int]:
    """How a controller from before the versioned record read the annotation."""
    data = json.loads(text)
    return {str(k): v for k, v in data.items() if isinstance(v, int) and not isinstance(v, bool)}


def test_programmed_record_stays_plain_while_small() -> None:
    generations = _generations(100)
    text = contract.format_programmed(generations)
    assert _old_reader(text) == generations  # what an older controller reads
    assert contract.parse_programmed_report(text).generations == generations


def test_programmed_record_compresses_an_exact_map_past_the_plain_bound() -> None:
    generations = _generations(2000)
    assert len(json.dumps(generations)) > contract.PROGRAMMED_PLAIN_MAX_BYTES
    text = contract.format_programmed(generations)
    assert len(text) <= contract.PROGRAMMED_MAX_BYTES
    report = contract.parse_programmed_report(text)
    assert report.exact and report.generations == generations
    assert contract.parse_programmed(text) == generations
    # an older controller finds no VirtualServer in it (keys hold no "/"): nothing misread
    assert not any("/" in k for k in _old_reader(text))


def test_programmed_record_of_10000_virtualservers_stays_under_the_bound() -> None:
    generations = _generations(10_000, name_length=60)
    text = contract.format_programmed(generations)
    assert len(text) <= contract.PROGRAMMED_MAX_BYTES
    report = contract.parse_programmed_report(text)
    assert not report.exact and report.count == 10_000 and not report.empty
    assert len(report.buckets) == contract.PROGRAMMED_MAX_BUCKETS
    assert report.confirmed(generations) == generations  # all programmed: decided exactly
    assert not any("/" in k for k in _old_reader(text))


def _in_another_bucket(generations: dict[str, int], taken: set[int], buckets: int) -> str:
    return next(k for k in generations if contract._bucket_of(k, buckets) not in taken)


def test_programmed_digests_read_one_change_per_bucket_exactly() -> None:
    generations = _generations(10_000, name_length=60)
    report = contract.parse_programmed_report(contract.format_programmed(generations))
    buckets = len(report.buckets)
    edited = next(iter(generations))
    added = contract.programmed_key("team-1", "new")
    taken = {contract._bucket_of(k, buckets) for k in (edited, added)}
    assert len(taken) == 2  # (these two fall in different buckets)
    # an edit being programmed, and a VirtualServer not programmed yet: each bucket has one
    # change, so its others are confirmed and the edited one is read at the generation before
    expected = {**generations, edited: generations[edited] + 1, added: 1}
    read = report.confirmed(expected)
    assert read == {**generations, edited: generations[edited]}
    assert added not in read


def test_programmed_digests_confirm_nothing_of_a_bucket_they_cannot_explain() -> None:
    generations = _generations(10_000, name_length=60)
    report = contract.parse_programmed_report(contract.format_programmed(generations))
    buckets = len(report.buckets)
    first = next(iter(generations))
    bucket = contract._bucket_of(first, buckets)
    mates = [k for k in generations if contract._bucket_of(k, buckets) == bucket]
    assert len(mates) >= 2
    # two edits in one bucket: neither explains the digest alone
    twice = {**generations, mates[0]: generations[mates[0]] + 1, mates[1]: 9}
    read = report.confirmed(twice)
    assert not set(mates) & set(read)
    assert len(read) == len(generations) - len(mates)  # the other buckets are confirmed
    # a VirtualServer the leader still lists but the controller no longer expects (deleted)
    removed = dict(generations)
    del removed[first]
    assert not set(mates) & set(report.confirmed(removed))
    other = _in_another_bucket(generations, {bucket}, buckets)
    assert report.confirmed(removed)[other] == generations[other]


def test_programmed_record_of_an_unknown_version_counts_as_nothing() -> None:
    assert contract.parse_programmed_report('{"v": 3, "x": "?"}').confirmed({"web/a": 1}) == {}
    assert contract.parse_programmed_report('{"v": 2, "z": "not base64!"}').generations == {}
    assert contract.parse_programmed_report('{"v": 2, "n": 1, "d": ""}').generations == {}
    assert contract.parse_programmed_report("{}").empty


def test_bound_annotations_leaves_out_the_largest_until_they_fit() -> None:
    small = {"lvs.io/heartbeat": "10.0.0.1:9643", "lvs.io/programmed": '{"web/a": 1}'}
    assert contract.bound_annotations(small) == (small, ())
    big = {**small, "lvs.io/vip-problems": "x" * 300_000, "other": "y" * 100_000}
    kept, dropped = contract.bound_annotations(big)
    assert dropped == ("lvs.io/vip-problems",)
    assert kept == {**small, "other": "y" * 100_000}
    kept, dropped = contract.bound_annotations(big, limit=1024)
    assert dropped == ("lvs.io/vip-problems", "other") and kept == small


def test_sync_annotation_round_trip_and_staleness() -> None:
    from lvs_operator.api.contract import DirectorSync, SyncRecord, format_sync, parse_sync

    record = SyncRecord(
        "node-a",
        {
            "node-b": DirectorSync("backup", 12, "eth0", "False"),
            "node-a": DirectorSync("master", 12, "eth0"),
            "node-c": DirectorSync("off"),
        },
    )
    text = format_sync(record)
    assert text == (
        '{"leader":"node-a","directors":{"node-a":{"role":"master","syncId":12,'
        '"interface":"eth0"},"node-b":{"role":"backup","syncId":12,"interface":"eth0",'
        '"receiving":"False"},"node-c":{"role":"off"}}}'
    )
    assert parse_sync(text) == record
    assert parse_sync(text).current_for("node-a") == record.directors
    # carried over by a holder that does not write it (an older version): stale, not shown
    assert parse_sync(text).current_for("node-b") == {}
    assert parse_sync(text).current_for("") == {}


@pytest.mark.parametrize(
    "text",
    [None, "", "{", "[]", '{"directors":{}}', '{"leader":3,"directors":{}}'],
)
def test_parse_sync_without_a_record(text: str | None) -> None:
    from lvs_operator.api.contract import SyncRecord, parse_sync

    assert parse_sync(text) == SyncRecord()


def test_parse_sync_drops_malformed_entries_and_ignores_unknown_fields() -> None:
    from lvs_operator.api.contract import DirectorSync, parse_sync

    text = json.dumps(
        {
            "leader": "node-a",
            "future": 1,
            "directors": {
                "node-a": {"role": "master", "syncId": 12, "interface": "eth0", "lag": 3},
                "node-b": {"role": "leader"},
                "node-c": {"role": "backup", "syncId": 256},
                "node-d": {"role": "backup", "syncId": True},
                "node-e": {"role": "backup", "receiving": "yes"},
                "node-f": {"role": "backup", "interface": "x" * 16},
                "node-g": "backup",
            },
        }
    )
    assert parse_sync(text).directors == {"node-a": DirectorSync("master", 12, "eth0")}
