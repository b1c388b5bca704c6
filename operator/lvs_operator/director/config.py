"""The agent's configuration: one typed value, built from flags and ``LVS_*`` variables
(main.py) and read by every part of the agent."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..api import contract
from ..api.network import IPNetwork
from . import handover as handover_mod
from . import peer as peer_mod
from . import traffic as traffic_mod
from .brake import BrakeConfig

# the VIPs' lifetime (the dead-man switch) is defined in early.py, the agent's first step
from .early import DEFAULT_VIP_LIFETIME
from .early import LIFETIME_RENEWALS as LIFETIME_RENEWALS  # (tests read both here)
from .election import (
    DEFAULT_LEASE_DURATION,
    DEFAULT_OUTAGE_HOLD,
    DEFAULT_RENEW_DEADLINE,
    DEFAULT_RETRY_PERIOD,
    ElectionConfig,
)

DEFAULT_HEALTH_PORT = contract.DEFAULT_HEALTH_PORT
DEFAULT_METRICS_PORT = contract.DEFAULT_METRICS_PORT
DEFAULT_VIP_REFRESH = 10.0
DEFAULT_RESYNC = 30.0
DEFAULT_ANNOUNCE_COUNT = 3
DEFAULT_STARTUP_GRACE = 1.0


@dataclass(frozen=True)
class AgentConfig:
    node_name: str
    namespace: str
    group: str
    lease_name: str
    pod_name: str = ""
    health_port: int = DEFAULT_HEALTH_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    lease_duration: int = DEFAULT_LEASE_DURATION
    renew_deadline: float = DEFAULT_RENEW_DEADLINE
    retry_period: float = DEFAULT_RETRY_PERIOD
    outage_hold: float = DEFAULT_OUTAGE_HOLD  # longest hold of the VIPs without the API
    vip_refresh: float = DEFAULT_VIP_REFRESH  # 0: no periodic re-announcement
    vip_lifetime: int = DEFAULT_VIP_LIFETIME  # 0: VIPs stay until removed (no dead-man switch)
    announce_count: int = DEFAULT_ANNOUNCE_COUNT
    announce_interval: float = 0.2
    resync: float = DEFAULT_RESYNC
    # seconds between full reads of the kernel's IPVS table (the repair of drift made behind
    # the agent's back); None: ``resync``. Converges in between diff against the agent's copy
    kernel_resync: float | None = None
    masquerade_snat: bool = True
    startup_grace: float = DEFAULT_STARTUP_GRACE  # first election step; then stale VIPs go
    startup_sync: float = 30.0  # a standby waits this long for its lists before electing
    handover_drain: float = handover_mod.DEFAULT_DRAIN  # 0: no relay on a planned handover
    peer_port: int = peer_mod.DEFAULT_PEER_PORT  # UDP heartbeat between directors (0: off)
    peer_interval: float = peer_mod.DEFAULT_PEER_INTERVAL
    peer_timeout: float = peer_mod.DEFAULT_PEER_TIMEOUT
    peer_address: str = ""  # published for the heartbeat; "": this node's on the VIP's link
    connection_sync: bool = True  # the kernel's IPVS sync daemons (sync.py)
    sync_interface: str = ""  # "": the link of the group's first VIP
    traffic_interval: float = traffic_mod.DEFAULT_INTERVAL  # IPVS counters read (0: off)
    # the group's heartbeat key; missing at the default path: unauthenticated (with a warning)
    peer_key_file: str = contract.DEFAULT_PEER_KEY_FILE
    brake: BrakeConfig = field(default_factory=BrakeConfig)  # the withdrawal brake (brake.py)
    # the controller's --vip-ranges (the same setting): None: not checked here
    vip_ranges: tuple[IPNetwork, ...] | None = None
    kubeconfig: str | None = None
    log_level: str = "INFO"

    def election(self) -> ElectionConfig:
        return ElectionConfig(
            identity=self.node_name,
            lease_duration=self.lease_duration,
            renew_deadline=self.renew_deadline,
            retry_period=self.retry_period,
            peer_timeout=self.peer_timeout,
            outage_hold=self.outage_hold,
        )

    @property
    def kernel_resync_period(self) -> float:
        return self.resync if self.kernel_resync is None else self.kernel_resync

    @property
    def lease_ref(self) -> str:
        return f"{self.namespace}/{self.lease_name}"
