"""Helpers the controller and the agents share instead of each keeping a copy."""

from __future__ import annotations

import pytest

from lvs_operator.api import network
from lvs_operator.api.common import object_key
from lvs_operator.api.realserverpool import RealServerPool
from lvs_operator.api.resources import RealServerPoolResource, VirtualServerResource
from lvs_operator.api.virtualserver import VirtualServer


def test_object_key() -> None:
    assert object_key({"metadata": {"namespace": "demo", "name": "web"}}) == ("demo", "web")
    assert object_key({"metadata": {"name": "cluster-scoped"}}) == ("", "cluster-scoped")
    assert object_key({}) == ("", "")


def test_parsed_objects_know_their_key() -> None:
    meta = {"namespace": "demo", "name": "web"}
    vs = VirtualServer.from_object(
        {
            "metadata": meta,
            "spec": {"vip": "192.0.2.1", "ports": [{"port": 80}], "poolRef": {"name": "p"}},
        }
    )
    pool = RealServerPool.from_object(
        {"metadata": meta, "spec": {"servers": [{"address": "192.0.2.10"}]}}
    )
    for obj in (vs, pool):
        assert (obj.namespace, obj.name) == ("demo", "web")
        assert obj.key == ("demo", "web") == object_key({"metadata": meta})


def test_canonical_ip() -> None:
    assert network.canonical_ip("2001:DB8:0::0:1") == "2001:db8::1"
    assert network.canonical_ip("192.0.2.1") == "192.0.2.1"
    with pytest.raises(ValueError):
        network.canonical_ip("not-an-ip")


def test_one_resource_type_per_kind() -> None:
    assert VirtualServerResource._api_info.resource.kind == "VirtualServer"
    assert RealServerPoolResource._api_info.plural == "realserverpools"
