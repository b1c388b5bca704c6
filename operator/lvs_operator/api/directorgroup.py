"""Moved to ``lvs_operator.api.contract``; these names remain until the director imports it.

Remove this module once nothing imports it (``grep -rn directorgroup operator tests``).
"""

from __future__ import annotations

from .contract import (
    COMPONENT_LABEL,
    GROUP_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    daemonset_name,
    group_name,
    lease_name,
)

__all__ = [
    "COMPONENT_LABEL",
    "GROUP_LABEL",
    "MANAGED_BY",
    "MANAGED_BY_LABEL",
    "daemonset_name",
    "group_name",
    "lease_name",
]
