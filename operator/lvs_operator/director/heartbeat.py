"""The agent's side of the peer heartbeat (peer.py): answer probes, probe the holder, and
publish on the Lease where this director answers.

The standby probes the holder at the address the holder published on the Lease, and takes
the Lease when it stops answering, before the Lease expires. Both ends sign and check every
message with the group's key (``--peer-key-file``, the Secret the DaemonSet mounts); without
one they run unauthenticated and say so once at start.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from . import peer as peer_mod
from .election import Elector
from .metrics import Metrics
from .vip_owner import first_vip

log = logging.getLogger("lvs_operator.director.heartbeat")

# (interface, IP version, addresses to skip) -> this node's address there
NodeAddress = Callable[[str, int, list[str]], Awaitable[str | None]]


class Heartbeat:
    def __init__(
        self,
        identity: str,
        port: int,
        interval: float,
        timeout: float,
        address: str,
        elector: Elector,
        metrics: Metrics,
        node_address: NodeAddress,
        key: bytes | None = None,
        key_file: str = "",
    ) -> None:
        self.identity = identity
        self.key = key
        self.port = port  # 0: off
        self.address = address  # --peer-address; "": this node's on the first VIP's link
        self.elector = elector
        self.node_address = node_address
        self.monitor: peer_mod.HeartbeatMonitor | None = None
        self.responder: peer_mod.HeartbeatResponder | None = None
        self._published = ""
        self._on_reject: Callable[[str, str], None] | None = None
        if not port:
            return
        if key is None:
            log.warning(
                "peer heartbeat is NOT authenticated (no key at %s): anyone who can send UDP to "
                "port %s can forge a leader's answers or a standby's acknowledgements, and spoof "
                "probes from a standby's address to spend its reply budget, so that it sees a "
                "healthy leader as silent. Fix: mount the group's Secret (the controller creates "
                "it and mounts it in the DaemonSets it builds) or give --peer-key-file "
                "(LVS_PEER_KEY_FILE) a file of >= %d random bytes, the same on every director of "
                "the group",
                key_file or "--peer-key-file",
                port,
                peer_mod.MIN_KEY_LEN,
            )
        else:
            log.info("peer heartbeat authenticated with the group's key", extra={"file": key_file})
        rejected = metrics.peer_rejected
        self._reject_log = peer_mod.RejectLog("heartbeat messages")

        def on_reject(reason: str, source: str) -> None:
            rejected.labels(group=metrics.group, reason=reason).inc()
            self._reject_log(reason, source)

        self._on_reject = on_reject
        monitor = peer_mod.HeartbeatMonitor(
            elector.wake,
            interval=interval,
            timeout=timeout,
            identity=identity,
            key=key,
            on_reject=on_reject,
            probing=False,  # start_probing(), once this agent has settled
        )
        self.monitor = monitor
        elector.holder_unreachable = monitor.unreachable
        elector.holder_heard = monitor.heard_leading
        elector.gated = lambda: monitor.health.gated
        elector.on_record = lambda record: monitor.follow(
            record.holder, record.annotations, identity
        )
        health = monitor.health

        def reply_age() -> float:
            if not health.holder or health.last_ok is None:
                return float("nan")
            return health.lost_for(time.monotonic())

        metrics.peer_reply_age.set_function(reply_age)
        metrics.peer_armed.set_function(lambda: 1.0 if health.armed else 0.0)

    def set_gated(self, gated: bool) -> None:
        """Tell the holder in every probe whether we check ARP before a takeover."""
        if self.monitor is not None:
            with self.monitor._lock:
                self.monitor.health.gated = gated

    def start_probing(self) -> None:
        """This agent has settled (its first placement is done): probe the holder from now
        on. Before, its probes would come irregularly (start-up starves its threads) and a
        holder listing it would step down at the first gap."""
        if self.monitor is not None:
            self.monitor.start_probing()

    async def publish(self, placements: Mapping[str, str], exclude: list[str]) -> None:
        """Put where this director answers heartbeats in its Lease annotations (written when
        it leads): --peer-address, else its address on the interface of the group's first
        VIP, the link the VIP moves over."""
        if self.responder is None or self.responder.address is None:
            return
        address = self.address
        first = first_vip(placements)
        if not address and first is not None:
            vip, ifname = first
            version = ipaddress.ip_address(vip).version
            address = await self.node_address(ifname, version, exclude) or ""
        if not address or address == self._published:
            return
        port = self.responder.address[1]
        self.elector.set_annotation(
            peer_mod.HEARTBEAT_ANNOTATION, peer_mod.format_address((address, port))
        )
        self._published = address
        log.info("heartbeat address published", extra={"address": address, "port": port})

    async def start(self) -> None:
        if not self.port:
            return
        host = "::" if self.address and ":" in self.address else "0.0.0.0"
        responder = peer_mod.HeartbeatResponder(
            self.identity,
            lambda: self.elector.serving,
            host=host,
            port=self.port,
            key=self.key,
            on_reject=self._on_reject,
        )
        try:
            await responder.start()
        except OSError as exc:
            log.error(
                "cannot listen for peer heartbeats on UDP port %s: %s; failover waits for the "
                "Lease to expire (free the port, or set --peer-port)",
                self.port,
                exc,
            )
            return
        self.responder = responder
        # outage tolerance needs to know which standbys hear us lead (classic mode without)
        self.elector.confirmations = responder.confirmations
        if self.monitor is not None:
            await self.monitor.start()

    async def close(self) -> None:
        if self.responder is not None:
            self.responder.close()
        if self.monitor is not None:
            await self.monitor.close()
