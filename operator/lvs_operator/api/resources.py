"""The lightkube resource types of the two custom resources, defined once for every client
(the controller, the agents, the tests): lightkube builds a class per call, so two
definitions would be two types for one kind."""

from __future__ import annotations

from lightkube.generic_resource import create_namespaced_resource

from .. import GROUP, VERSION
from . import realserverpool as rsp
from . import virtualserver as vs

VirtualServerResource = create_namespaced_resource(GROUP, VERSION, vs.KIND, vs.PLURAL)
RealServerPoolResource = create_namespaced_resource(GROUP, VERSION, rsp.KIND, rsp.PLURAL)
