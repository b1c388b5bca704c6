"""The agent's Prometheus metrics (``/metrics`` on ``LVS_METRICS_PORT``), labelled by group."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.core import Metric


class Metrics:
    def __init__(self, group: str) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            GCCollector,
            Histogram,
            ProcessCollector,
        )

        self.registry = CollectorRegistry()
        labels = {"group": group}
        self.leader = Gauge(
            "lvs_director_leader", "1 if this director holds the group's Lease", ["group"],
            registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.services = Gauge(
            "lvs_director_ipvs_services", "IPVS services programmed for the group", ["group"],
            registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.destinations = Gauge(
            "lvs_director_ipvs_destinations", "IPVS destinations programmed", ["group"],
            registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.quiesced = Gauge(
            "lvs_director_quiesced_destinations", "destinations at weight 0 draining",
            ["group"], registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.vips = Gauge(
            "lvs_director_vips", "VIPs held on this node", ["group"], registry=self.registry
        ).labels(**labels)
        self.vip_problems = Gauge(
            "lvs_director_vip_problems", "VIPs this director cannot place, add or remove "
            "(the reason and its fix are in the agent's log)", ["group"], registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.converge_seconds = Histogram(
            "lvs_director_converge_seconds", "time to diff and apply the IPVS table (and to "
            "read it, when a converge reads it: lvs_director_kernel_reads_total)",
            ["group"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        ).labels(**labels)  # fmt: skip
        self.kernel_reads = Counter(
            "lvs_director_kernel_reads", "reads of the kernel's IPVS table by reason: whole "
            "(start, after-error, resync: in the background) or the draining services' only "
            "(drain); the converges diff against the table as last read, with this "
            "director's changes since", ["group", "reason"],
            registry=self.registry,
        )  # fmt: skip
        self.converge_errors = Counter(
            "lvs_director_converge_errors", "failed converges", ["group"], registry=self.registry
        ).labels(**labels)
        self.withdrawals_held = Gauge(
            "lvs_director_withdrawals_held", "services kept although no VirtualServer wants "
            "them any more: too many went at once (the withdrawal brake; they go when still "
            "unwanted after the hold)", ["group"], registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.prepare_errors = Counter(
            "lvs_director_prepare_errors", "converges whose nftables masquerade could not be "
            "set (the IPVS changes were still applied; the reason is logged)",
            ["group"], registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.node_settings_wrong = Gauge(
            "lvs_director_node_settings_wrong", "node sysctls the director needs that are not "
            "as needed (director/node_settings.py; each, with its fix, is in the agent's log)",
            ["group"], registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.changes = Counter(
            "lvs_director_ipvs_changes", "IPVS operations applied", ["group", "op"],
            registry=self.registry,
        )  # fmt: skip
        self.conntrack_restored = Counter(
            "lvs_director_conntrack_restored", "conntrack entries written at crash takeovers for "
            "synced connections of masqueradeSource: VIP services (director/conn_restore.py)",
            ["group"], registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.transitions = Counter(
            "lvs_director_election_transitions", "leader/standby transitions", ["group"],
            registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.peer_reply_age = Gauge(
            "lvs_director_peer_reply_age_seconds",
            "standby: seconds since the leader last answered a heartbeat (NaN: not probing)",
            ["group"], registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.peer_armed = Gauge(
            "lvs_director_peer_armed",
            "standby: 1 if a silent leader would be taken over at once (steady answers seen)",
            ["group"], registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.peer_rejected = Counter(
            "lvs_director_peer_rejected", "heartbeat probes and replies dropped as forged: a bad "
            "or missing MAC (reason=mac: another key, or spoofed) or a replayed probe "
            "(reason=replay)", ["group", "reason"], registry=self.registry,
        )  # fmt: skip
        for reason in ("mac", "replay"):  # exported at 0 from the start (alerts on rate)
            self.peer_rejected.labels(group=group, reason=reason)
        self.handover_relays = Counter(
            "lvs_director_handover_relays", "planned handovers whose connections in flight "
            "this director relayed to the old leader", ["group"], registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.takeovers_held = Counter(
            "lvs_director_takeovers_held", "takeovers not made because another node still "
            "answered ARP/NDP for the group's VIPs", ["group"], registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.authority = Gauge(
            "lvs_director_hold_seconds", "leader: how long it may still hold the VIPs without "
            "a Lease write or a standby's proof (0: not leading)", ["group"],
            registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.loop_stall = Histogram(
            "lvs_director_event_loop_stall_seconds", "how late the event loop ran a callback "
            "due every 50 ms (the election waits as long)", ["group"], registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        ).labels(**labels)  # fmt: skip
        self.loop_longest_stall = Gauge(
            "lvs_director_event_loop_longest_stall_seconds",
            "the longest event loop stall since the agent started", ["group"],
            registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.gc_pause = Histogram(
            "lvs_director_gc_pause_seconds", "how long each garbage collection held the "
            "interpreter (every thread, the event loop too), by generation",
            ["group", "generation"], registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )  # fmt: skip
        for generation in ("0", "1", "2"):  # exported from the start, at zero
            self.gc_pause.labels(group, generation)
        self.gc_longest_pause = Gauge(
            "lvs_director_gc_longest_pause_seconds",
            "the longest garbage collection since the agent started", ["group"],
            registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.last_converge = Gauge(
            "lvs_director_last_converge_timestamp_seconds", "when the kernel last matched the "
            "desired table (a converge that succeeded; 0: not yet)", ["group"],
            registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.lease_age = Gauge(
            "lvs_director_lease_age_seconds", "since the group's Lease was last renewed, as "
            "this director last saw it (NaN: not seen yet)", ["group"], registry=self.registry,
        ).labels(**labels)  # fmt: skip
        # the process itself: RSS (a design goal), CPU, open files, Python's GC
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        sync = Gauge(
            "lvs_director_sync_daemon", "1 while this node's kernel runs the IPVS connection "
            "sync daemon in this state (read back after each change)", ["group", "state"],
            registry=self.registry,
        )  # fmt: skip
        self.sync_master = sync.labels(group=group, state="master")
        self.sync_backup = sync.labels(group=group, state="backup")
        self.synced_connections = Gauge(
            "lvs_director_synced_connections", "connections in this node's IPVS table that "
            "its backup sync daemon received from the leader (origin SYNC; read on scrape)",
            ["group"], registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.sync_backups_not_receiving = Gauge(
            "lvs_director_sync_backups_not_receiving", "leader: standbys whose backup sync "
            "daemon holds no connection from this leader although it has served connections "
            "for a minute (multicast filtered on the link, another sync interface); 0 on a "
            "standby", ["group"], registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.sync_problem = Gauge(
            "lvs_director_sync_problem", "1 while the sync daemons are not as wanted (the "
            "reason and its fix are in the agent's log)", ["group"], registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.group = group

    def watch_lease(self, holder: Callable[[], tuple[str, float | None] | None]) -> None:
        """``holder()``: (the Lease holder this director last saw, its renewal as epoch
        seconds) or None: ``lvs_director_lease_age_seconds`` and
        ``lvs_director_lease_holder_info{holder}``."""

        def age() -> float:
            seen = holder()
            if seen is None or seen[1] is None:
                return float("nan")
            return max(0.0, time.time() - seen[1])

        self.lease_age.set_function(age)
        self.registry.register(_LeaseHolder(self.group, holder))

    def render(self) -> bytes:
        return b"".join(self.render_chunks())

    def render_chunks(self) -> list[bytes]:
        """The exposition text, one chunk per metric family (what /metrics writes): at 1,000
        services x 10 real servers the page is ~11 MB of 75,000 series, and rendering it
        whole (every line, their join, its encoding, then the response) held ~45 MiB at
        once, which the heap keeps after the scrape; a family at a time holds one family's."""
        from prometheus_client import generate_latest

        return [bytes(generate_latest(_OneFamily(m))) for m in self.registry.collect()]


class _OneFamily:
    """A registry of one collected family (``generate_latest`` renders a registry)."""

    def __init__(self, family: Metric) -> None:
        self.family = family

    def collect(self) -> Iterator[Metric]:
        yield self.family


class _LeaseHolder:
    """``lvs_director_lease_holder_info{group, holder}`` 1 (a label that changes with the
    holder: a collector, not a fixed gauge)."""

    def __init__(self, group: str, holder: Callable[[], tuple[str, float | None] | None]):
        self.group, self.holder = group, holder

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            "lvs_director_lease_holder_info",
            "1 for the director this one last saw holding the group's Lease (none: free)",
            labels=["group", "holder"],
        )
        seen = self.holder()
        if seen is not None and seen[0]:
            family.add_metric([self.group, seen[0]], 1.0)
        yield family

    def describe(self) -> Iterable[Metric]:
        return []
