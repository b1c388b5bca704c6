"""The directors' node-settings init container: on by default, the pod's only privileged
container, running the CLI's node-settings step from the agent's image; off removes it, also
from an existing DaemonSet."""

from __future__ import annotations

import ipaddress
from typing import Any

from lvs_operator import cli
from lvs_operator.controller.config import ControllerConfig
from lvs_operator.controller.manifests import (
    NODE_SETTINGS_CONTAINER,
    build_daemonset,
    carries,
    is_subset,
)
from lvs_operator.director import node_settings_command


def pod(config: ControllerConfig) -> dict[str, Any]:
    spec: dict[str, Any] = build_daemonset("gabc", {}, config)["spec"]["template"]["spec"]
    return spec


def test_on_by_default_and_the_only_privileged_container() -> None:
    config = ControllerConfig(director_image="example/lvs:1", director_image_pull_policy="Always")
    spec = pod(config)
    (init,) = spec["initContainers"]
    (agent,) = spec["containers"]
    assert init["name"] == NODE_SETTINGS_CONTAINER
    assert (init["image"], init["imagePullPolicy"]) == ("example/lvs:1", "Always")
    assert init["command"] == ["lvs-operator", "node-settings"]
    sc = init["securityContext"]
    assert sc["privileged"] is True  # /proc/sys is read-only in any other container
    assert (sc["runAsUser"], sc["readOnlyRootFilesystem"]) == (0, True)
    assert "allowPrivilegeEscalation" not in sc  # the API refuses false with privileged
    assert agent["securityContext"]["privileged"] is False
    assert agent["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]
    assert spec["hostNetwork"] is True  # so the init step writes the node's sysctls


def test_the_command_is_the_clis_node_settings_step() -> None:
    (init,) = pod(ControllerConfig())["initContainers"]
    program, subcommand, *args = init["command"]
    assert program == "lvs-operator"
    assert cli.SUBCOMMANDS[subcommand][0] == node_settings_command.__name__
    assert node_settings_command.parse_args(args).ipv6 is False


def test_ipv6_forwarding_only_when_a_vip_range_is_ipv6() -> None:
    v4 = ControllerConfig(vip_ranges=(ipaddress.ip_network("192.0.2.0/24"),))
    both = ControllerConfig(
        vip_ranges=(ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/64"))
    )
    assert pod(v4)["initContainers"][0]["command"] == ["lvs-operator", "node-settings"]
    command = pod(both)["initContainers"][0]["command"]
    assert command == ["lvs-operator", "node-settings", "--ipv6"]
    assert node_settings_command.parse_args(command[2:]).ipv6 is True


def test_off_leaves_no_init_container() -> None:
    assert pod(ControllerConfig(director_node_settings=False))["initContainers"] == []


def test_switching_it_off_or_on_changes_an_existing_daemonset() -> None:
    on = build_daemonset("gabc", {}, ControllerConfig())
    off = build_daemonset("gabc", {}, ControllerConfig(director_node_settings=False))
    assert not carries(off, on)  # the init container must go: applied again
    # as the API server stores the applied "none" (an empty list left out)
    stored_off: dict[str, Any] = {**off, "spec": {**off["spec"], "template": {
        **off["spec"]["template"],
        "spec": {k: v for k, v in off["spec"]["template"]["spec"].items()
                 if k != "initContainers"},
    }}}  # fmt: skip
    assert carries(off, stored_off)  # no apply loop
    assert not carries(on, stored_off)  # switched on again: applied


def test_an_empty_list_stands_for_none() -> None:
    assert is_subset({"a": []}, {})
    assert is_subset({"a": []}, {"a": []})
    assert not is_subset({"a": []}, {"a": [1]})
    assert not is_subset({"a": [1]}, {})
    assert not is_subset({"a": {}}, {})  # only lists: an empty map is still a map to carry
