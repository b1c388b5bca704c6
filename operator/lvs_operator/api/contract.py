"""The contract between the controller and the director agents, declared once.

The controller and the agents never call each other: they meet on Kubernetes objects.
The controller creates, per *director group*, a DaemonSet of agents (whose environment says
which group and Lease are theirs) and labels each VirtualServer with its group; the agents
elect a holder on the group's Lease and report back through annotations on that Lease. Every
name either side relies on is here, so a rename is one edit and a unit test
(tests/unit/api/test_contract.py) catches a side that drifts:

- **labels** the controller writes (on VirtualServers, DaemonSets, Services);
- **annotations** on the group's Lease, written by the agents and read by the controller and
  by the other agents;
- **environment variables** the controller sets on the agent container, and the agents'
  own tunables (one name per setting, shared by the agent's flags and the chart);
- **default ports** of the agents on the node, and the paths they serve;
- **names derived from a group** (DaemonSet, Lease).

Only constants and small pure functions: both sides import this module, and it imports
nothing of either.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

log = logging.getLogger(__name__)

# --- director groups -------------------------------------------------------------------------
#
# VirtualServers whose ``spec.directors.nodeSelector`` are equal share one group: one
# DaemonSet of director agents and one Lease, both in the operator's namespace.

DIRECTOR_PREFIX: Final = "lvs-director-"


def group_name(node_selector: Mapping[str, str]) -> str:
    """A short, stable, DNS-safe name for the group of a node selector.

    A hash rather than the labels themselves: selector keys may hold '/' and be long.
    """
    canonical = "\n".join(f"{k}={v}" for k, v in sorted(node_selector.items()))
    return "g" + hashlib.sha256(canonical.encode()).hexdigest()[:10]


def daemonset_name(group: str) -> str:
    """The DaemonSet of a group's agents (in the operator's namespace)."""
    return DIRECTOR_PREFIX + group


def lease_name(group: str) -> str:
    """The Lease a group's agents elect their holder on (in the operator's namespace).

    The same string as the DaemonSet's name today; two functions because they name two
    different objects, and the controller and the agents look each up by its own.
    """
    return DIRECTOR_PREFIX + group


# --- labels ----------------------------------------------------------------------------------

# On each VirtualServer (written by the controller): its director group. The agents list and
# watch VirtualServers by this label, so each sees only its own group's.
GROUP_LABEL: Final = "lvs.io/director-group"
# On a VirtualServer moving to another director group (its node selector changed): the group
# it moves to. That group's agents watch by this label too and program its IPVS services
# without the VIP until the controller hands the VIP over (make-before-break).
NEXT_GROUP_LABEL: Final = "lvs.io/next-director-group"
# On objects the controller creates (DaemonSets, Services), so it can find and clean them up.
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "lvs-operator"
COMPONENT_LABEL: Final = "app.kubernetes.io/component"
NAME_LABEL: Final = "app.kubernetes.io/name"
# The value of NAME_LABEL on director pods.
DIRECTOR_APP: Final = "lvs-director"
# Server-side-apply field managers: who owns which fields of a shared object.
CONTROLLER_FIELD_MANAGER: Final = "lvs-operator"
DIRECTOR_FIELD_MANAGER: Final = "lvs-director"
# The default director node selector: nodes labelled so run the agents.
DIRECTOR_NODE_LABEL: Final = "lvs.io/director"

# --- annotations on the group's Lease (written by the agent holding it) ----------------------

# {"<namespace>/<name>": metadata.generation} of each VirtualServer the holder has programmed;
# the controller turns it into the VirtualServers' Programmed condition.
PROGRAMMED_ANNOTATION: Final = "lvs.io/programmed"
# "ip:port" of the holder's UDP heartbeat responder; the standbys probe it.
HEARTBEAT_ANNOTATION: Final = "lvs.io/heartbeat"
# On the Lease: the standbys that heard the leader lead (JSON identity -> address); only
# these may take the Lease over before ``leaseDuration`` + the outage hold
DIRECTORS_ANNOTATION: Final = "lvs.io/directors"
# A leaving holder's note for its successor (which VIPs, and its own address on each link),
# so the successor relays the old holder's connections while they drain.
HANDOVER_ANNOTATION: Final = "lvs.io/handover"
# {"<vip>": "<reason and fix>"} of the group's VIPs the holder cannot place, add or remove
# (e.g. spec.directors.interface names an interface the node lacks); the controller turns it
# into the VirtualServers' Programmed condition.
VIP_PROBLEMS_ANNOTATION: Final = "lvs.io/vip-problems"
MAX_VIP_PROBLEM = 300  # characters of one reason kept on the Lease


def programmed_key(namespace: str, name: str) -> str:
    """A VirtualServer's key in the PROGRAMMED_ANNOTATION map."""
    return f"{namespace}/{name}"


# The programmed record stays small at any scale: the agent writes the plain JSON map while
# it fits PROGRAMMED_PLAIN_MAX_BYTES (the format every controller reads), else the map
# compressed (version 2, "z") while that fits PROGRAMMED_MAX_BYTES, else per-bucket digests
# of the (VirtualServer, generation) pairs (version 2, "d"), whose size depends only on the
# bucket count. Versioned records are JSON objects whose keys hold no "/", so a controller
# that reads only the plain map finds no VirtualServer in them (nothing it would misread).
PROGRAMMED_PLAIN_MAX_BYTES: Final = 16 * 1024
PROGRAMMED_MAX_BYTES: Final = 32 * 1024  # the value's hard bound, whatever the scale
PROGRAMMED_VERSION: Final = 2
PROGRAMMED_MAX_BUCKETS: Final = 2048  # x PROGRAMMED_DIGEST_BYTES, base64: ~22 KiB
PROGRAMMED_DIGEST_BYTES: Final = 8
# The Kubernetes API refuses an object whose annotations (keys + values) pass 256 KiB; the
# agent keeps its Lease's well under that (bound_annotations), so a renewal never fails on it.
LEASE_ANNOTATIONS_MAX_BYTES: Final = 128 * 1024


@dataclass(frozen=True)
class ProgrammedReport:
    """What a group's leader reports it programmed: the exact map (``generations``), or,
    past the size bound, ``count`` pairs hashed into ``len(buckets)`` bucket digests."""

    generations: Mapping[str, int] | None = None  # None: the digest form
    count: int = 0
    buckets: tuple[bytes, ...] = ()

    @property
    def exact(self) -> bool:
        return self.generations is not None

    @property
    def empty(self) -> bool:
        return (len(self.generations) if self.generations is not None else self.count) == 0

    def confirmed(self, expected: Mapping[str, int]) -> dict[str, int]:
        """Of the VirtualServers of ``expected`` (key -> generation), the generation the leader
        reports for each it can be read about: the whole map in the exact form. In the digest
        form a bucket whose digest equals that of the expected pairs in it confirms them all;
        one that does not is tried with one change in flight (one of its VirtualServers not
        programmed yet, or still at the generation before): a digest that matches then
        proves the others as much as a plain match does. Otherwise none of its."""
        if self.generations is not None:
            return {k: self.generations[k] for k in expected if k in self.generations}
        if not self.buckets:
            return {}
        out: dict[str, int] = {}
        for index, pairs in _bucketed(expected, len(self.buckets)).items():
            out.update(_read_bucket(pairs, self.buckets[index]))
        return out


def _read_bucket(pairs: list[tuple[str, int]], digest: bytes) -> list[tuple[str, int]]:
    """The pairs a bucket's digest proves (see ProgrammedReport.confirmed)."""
    if _bucket_digest(pairs) == digest:
        return pairs
    for i, (key, generation) in enumerate(pairs):
        others = pairs[:i] + pairs[i + 1 :]
        if _bucket_digest(others) == digest:
            return others  # ``key`` is not programmed (yet)
        if generation > 1 and _bucket_digest([*others, (key, generation - 1)]) == digest:
            return [*others, (key, generation - 1)]  # ``key``: its edit is being programmed
    return []


def _bucket_of(key: str, buckets: int) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % buckets


def _bucketed(generations: Mapping[str, int], buckets: int) -> dict[int, list[tuple[str, int]]]:
    out: dict[int, list[tuple[str, int]]] = {}
    for key, generation in generations.items():
        out.setdefault(_bucket_of(key, buckets), []).append((key, generation))
    return out


def _bucket_digest(pairs: list[tuple[str, int]]) -> bytes:
    text = "".join(f"{k}\x00{g}\n" for k, g in sorted(pairs))
    return hashlib.sha256(text.encode()).digest()[:PROGRAMMED_DIGEST_BYTES]


def programmed_digests(generations: Mapping[str, int], buckets: int) -> tuple[bytes, ...]:
    """The digest of each bucket's (key, generation) pairs (an empty bucket has one too)."""
    by_bucket = _bucketed(generations, buckets)
    return tuple(_bucket_digest(by_bucket.get(i, [])) for i in range(buckets))


def _bucket_count(pairs: int) -> int:
    """A power of two near one VirtualServer per bucket, at most PROGRAMMED_MAX_BUCKETS."""
    count = 1
    while count < pairs and count < PROGRAMMED_MAX_BUCKETS:
        count *= 2
    return count


def format_programmed(generations: Mapping[str, int]) -> str:
    """The PROGRAMMED_ANNOTATION value for a map of VirtualServer -> generation (sorted, so
    an unchanged map is an unchanged string and the agent writes nothing); never longer than
    PROGRAMMED_MAX_BYTES."""
    plain = json.dumps(dict(sorted(generations.items())))
    if len(plain) <= PROGRAMMED_PLAIN_MAX_BYTES:
        return plain
    packed = base64.b64encode(zlib.compress(plain.encode(), 6)).decode()
    compressed = json.dumps({"v": PROGRAMMED_VERSION, "z": packed})
    if len(compressed) <= PROGRAMMED_MAX_BYTES:
        return compressed
    digests = programmed_digests(generations, _bucket_count(len(generations)))
    return json.dumps(
        {
            "v": PROGRAMMED_VERSION,
            "n": len(generations),
            "d": base64.b64encode(b"".join(digests)).decode(),
        }
    )


def _plain_map(data: Mapping[str, object]) -> dict[str, int]:
    return {str(k): v for k, v in data.items() if isinstance(v, int) and not isinstance(v, bool)}


def parse_programmed_report(text: str | None) -> ProgrammedReport:
    """A PROGRAMMED_ANNOTATION value in any format; anything malformed, or of a version this
    side does not know, counts as nothing programmed (logged)."""
    if not text:
        return ProgrammedReport({})
    try:
        data = json.loads(text)
    except ValueError:
        log.warning("ignoring malformed %s annotation: %.200s", PROGRAMMED_ANNOTATION, text)
        return ProgrammedReport({})
    if not isinstance(data, dict):
        return ProgrammedReport({})
    if "v" not in data:
        return ProgrammedReport(_plain_map(data))
    try:
        if data["v"] != PROGRAMMED_VERSION:
            raise ValueError(f"version {data['v']!r} (this side reads {PROGRAMMED_VERSION})")
        if "z" in data:
            inner = json.loads(zlib.decompress(base64.b64decode(data["z"], validate=True)))
            if not isinstance(inner, dict):
                raise ValueError("the compressed map is not a JSON object")
            return ProgrammedReport(_plain_map(inner))
        raw = base64.b64decode(data["d"], validate=True)
        count = data["n"]
        size = PROGRAMMED_DIGEST_BYTES
        if not isinstance(count, int) or not raw or len(raw) % size:
            raise ValueError("bad digests")
        buckets = tuple(raw[i : i + size] for i in range(0, len(raw), size))
        return ProgrammedReport(None, count, buckets)
    except (ValueError, KeyError, TypeError, zlib.error) as exc:
        log.warning("ignoring unreadable %s annotation (%s): %.200s",
                    PROGRAMMED_ANNOTATION, exc, text)  # fmt: skip
        return ProgrammedReport({})


def parse_programmed(text: str | None) -> dict[str, int]:
    """The exact map of a PROGRAMMED_ANNOTATION value (plain or compressed; {} for the
    digest form, which only ProgrammedReport.confirmed can read)."""
    return dict(parse_programmed_report(text).generations or {})


def bound_annotations(
    annotations: Mapping[str, str], limit: int = LEASE_ANNOTATIONS_MAX_BYTES
) -> tuple[dict[str, str], tuple[str, ...]]:
    """The annotations with the largest values left out until keys + values fit ``limit``
    bytes, and the keys left out: a Lease write must not fail on its annotations' size (a
    report left out reads as "nothing", which its reader survives; a refused renewal loses
    the group its leader)."""
    kept = dict(annotations)
    dropped: list[str] = []
    size = sum(len(k.encode()) + len(v.encode()) for k, v in kept.items())
    for key in sorted(kept, key=lambda k: len(kept[k].encode()), reverse=True):
        if size <= limit:
            break
        size -= len(key.encode()) + len(kept.pop(key).encode())
        dropped.append(key)
    return kept, tuple(dropped)


def format_vip_problems(problems: Mapping[str, str]) -> str:
    """The VIP_PROBLEMS_ANNOTATION value (sorted: unchanged problems, unchanged string)."""
    return json.dumps({k: v[:MAX_VIP_PROBLEM] for k, v in sorted(problems.items())})


def parse_vip_problems(text: str | None) -> dict[str, str]:
    """A VIP_PROBLEMS_ANNOTATION value; anything malformed counts as no problem."""
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v)[:MAX_VIP_PROBLEM] for k, v in data.items() if isinstance(v, str)}


# The connection sync state of each director of the group (written by the holder, from its own
# state and its standbys' heartbeat probes): JSON {"leader": "<the holder that wrote it>",
# "directors": {"<identity>": {"role", "syncId", "interface"[, "receiving"]}}}. "leader"
# tells a stale record (carried over by a holder of a version that does not write it) from a
# current one, for the controller and for the standbys (which send their sync state in their
# probes only to a holder that writes it: peer.py, "Extension fields").
SYNC_ANNOTATION: Final = "lvs.io/sync"
SYNC_ROLES: Final = ("master", "backup", "off")
# a backup's "receiving": True: its table holds connections it received from the master;
# False: none, although the leader has served connections for a while; Unknown: no verdict
RECEIVING_VALUES: Final = ("True", "False", "Unknown")
MAX_SYNC_DIRECTORS = 64  # entries kept on the Lease (the annotation stays small)


@dataclass(frozen=True)
class DirectorSync:
    """One director's connection sync state, as the VirtualServer's status shows it."""

    role: str  # SYNC_ROLES: master (the leader's), backup (a standby's), off (none runs)
    sync_id: int = 0
    interface: str = ""
    receiving: str = ""  # RECEIVING_VALUES, backups only ("": not judged)

    def to_object(self) -> dict[str, str | int]:
        out: dict[str, str | int] = {"role": self.role}
        if self.role != "off":
            out["syncId"] = self.sync_id
            out["interface"] = self.interface
        if self.receiving:
            out["receiving"] = self.receiving
        return out

    @classmethod
    def from_object(cls, obj: object) -> DirectorSync | None:
        """None for anything malformed; fields this version does not know are ignored."""
        if not isinstance(obj, dict) or obj.get("role") not in SYNC_ROLES:
            return None
        sync_id, interface = obj.get("syncId", 0), obj.get("interface", "")
        receiving = obj.get("receiving", "")
        if not isinstance(sync_id, int) or isinstance(sync_id, bool) or not 0 <= sync_id <= 255:
            return None
        if not isinstance(interface, str) or len(interface) > 15:
            return None
        if receiving not in ("", *RECEIVING_VALUES):
            return None
        return cls(str(obj["role"]), sync_id, interface, str(receiving))


@dataclass(frozen=True)
class SyncRecord:
    """The SYNC_ANNOTATION value: who wrote it, and each director's state."""

    leader: str = ""
    directors: Mapping[str, DirectorSync] = field(default_factory=dict)

    def current_for(self, holder: str) -> Mapping[str, DirectorSync]:
        """The directors' states if ``holder`` wrote this record, else none (stale)."""
        return self.directors if holder and self.leader == holder else {}


def format_sync(record: SyncRecord) -> str:
    """The SYNC_ANNOTATION value (sorted, compact: unchanged states, unchanged string)."""
    directors = dict(sorted(record.directors.items())[:MAX_SYNC_DIRECTORS])
    return json.dumps(
        {"leader": record.leader, "directors": {k: v.to_object() for k, v in directors.items()}},
        separators=(",", ":"),
    )


def parse_sync(text: str | None) -> SyncRecord:
    """A SYNC_ANNOTATION value; malformed counts as no record, a malformed entry as absent."""
    if not text:
        return SyncRecord()
    try:
        data = json.loads(text)
    except ValueError:
        return SyncRecord()
    if not isinstance(data, dict) or not isinstance(data.get("leader"), str):
        return SyncRecord()
    raw = data.get("directors")
    directors: dict[str, DirectorSync] = {}
    for identity, obj in raw.items() if isinstance(raw, dict) else ():
        state = DirectorSync.from_object(obj)
        if state is not None and len(directors) < MAX_SYNC_DIRECTORS:
            directors[str(identity)] = state
    return SyncRecord(data["leader"], directors)


# --- the agent's environment ------------------------------------------------------------------

# From the downward API (the pod's own node, name and namespace).
ENV_NODE_NAME: Final = "NODE_NAME"
ENV_POD_NAME: Final = "POD_NAME"
ENV_POD_NAMESPACE: Final = "POD_NAMESPACE"
# Set by the controller on every agent of a group.
ENV_DIRECTOR_GROUP: Final = "LVS_DIRECTOR_GROUP"
ENV_LEASE_NAME: Final = "LVS_LEASE_NAME"
ENV_HEALTH_PORT: Final = "LVS_HEALTH_PORT"
ENV_METRICS_PORT: Final = "LVS_METRICS_PORT"
ENV_PEER_PORT: Final = "LVS_PEER_PORT"
ENV_PEER_KEY_FILE: Final = "LVS_PEER_KEY_FILE"
# The controller's own --vip-ranges (comma-separated CIDRs): the agent refuses a VIP outside
# them too, whatever the VirtualServer says ("": not checked by the agent)
ENV_VIP_RANGES: Final = "LVS_VIP_RANGES"
# Set by the controller only when its own flags say so (else the agent's defaults hold).
ENV_LEASE_DURATION_SECONDS: Final = "LVS_LEASE_DURATION_SECONDS"
ENV_RENEW_DEADLINE_SECONDS: Final = "LVS_RENEW_DEADLINE_SECONDS"
ENV_RETRY_PERIOD_SECONDS: Final = "LVS_RETRY_PERIOD_SECONDS"
# The agent's own tunables: the controller does not set them today.
ENV_VIP_REFRESH_SECONDS: Final = "LVS_VIP_REFRESH_SECONDS"
ENV_ANNOUNCE_COUNT: Final = "LVS_ANNOUNCE_COUNT"
ENV_RESYNC_SECONDS: Final = "LVS_RESYNC_SECONDS"
ENV_MASQUERADE_SNAT: Final = "LVS_MASQUERADE_SNAT"
ENV_STARTUP_GRACE_SECONDS: Final = "LVS_STARTUP_GRACE_SECONDS"
ENV_HANDOVER_DRAIN_SECONDS: Final = "LVS_HANDOVER_DRAIN_SECONDS"
ENV_PEER_INTERVAL_SECONDS: Final = "LVS_PEER_INTERVAL_SECONDS"
ENV_PEER_TIMEOUT_SECONDS: Final = "LVS_PEER_TIMEOUT_SECONDS"
ENV_PEER_ADDRESS: Final = "LVS_PEER_ADDRESS"
ENV_CONNECTION_SYNC: Final = "LVS_CONNECTION_SYNC"
ENV_SYNC_INTERFACE: Final = "LVS_SYNC_INTERFACE"
ENV_TRAFFIC_INTERVAL: Final = "LVS_TRAFFIC_INTERVAL_SECONDS"
ENV_OUTAGE_HOLD_SECONDS: Final = "LVS_OUTAGE_HOLD_SECONDS"
ENV_VIP_LIFETIME_SECONDS: Final = "LVS_VIP_LIFETIME_SECONDS"
ENV_WITHDRAWAL_SHARE: Final = "LVS_WITHDRAWAL_SHARE"
ENV_WITHDRAWAL_HOLD_SECONDS: Final = "LVS_WITHDRAWAL_HOLD_SECONDS"
# Both processes read it (the controller's --log-level, the agent's).
ENV_LOG_LEVEL: Final = "LVS_LOG_LEVEL"

# The variables the controller always sets on an agent container, in the order it sets them.
CONTROLLER_SET_ENV: Final = (
    ENV_NODE_NAME,
    ENV_POD_NAME,
    ENV_POD_NAMESPACE,
    ENV_DIRECTOR_GROUP,
    ENV_LEASE_NAME,
    ENV_HEALTH_PORT,
    ENV_METRICS_PORT,
    ENV_PEER_PORT,
    ENV_PEER_KEY_FILE,
    ENV_VIP_RANGES,
)
# ... and those it sets only when configured.
CONTROLLER_OPTIONAL_ENV: Final = (
    ENV_LEASE_DURATION_SECONDS,
    ENV_RENEW_DEADLINE_SECONDS,
    ENV_RETRY_PERIOD_SECONDS,
)

# --- the agent's endpoints on the node (hostNetwork) ------------------------------------------

DEFAULT_HEALTH_PORT: Final = 9641  # TCP: HEALTHZ_PATH, READYZ_PATH
DEFAULT_METRICS_PORT: Final = 9642  # TCP: METRICS_PATH
DEFAULT_PEER_PORT: Final = 9643  # UDP: the heartbeat between the agents of a group
HEALTHZ_PATH: Final = "/healthz"  # liveness: the agent's event loop answers
READYZ_PATH: Final = "/readyz"  # readiness: lists done and the kernel converged once
METRICS_PATH: Final = "/metrics"  # Prometheus text format

# The agent's entry point in the image (lvs_operator/cli.py).
DIRECTOR_COMMAND: Final = ("lvs-operator", "director")
# The directors' init step: the node's sysctls (director/node_settings.py); --ipv6 adds IPv6
# forwarding.
NODE_SETTINGS_COMMAND: Final = ("lvs-operator", "node-settings")


# --- the heartbeat key of a group -------------------------------------------------------------
#
# A Secret per group in the operator's namespace (created by the controller when missing:
# PEER_KEY_BYTES random bytes under PEER_SECRET_KEY), mounted read-only into the group's
# agents; they sign and check every heartbeat message with it (director/peer.py).

PEER_SECRET_KEY: Final = "key"
PEER_KEY_DIR: Final = "/etc/lvs-operator/peer"
DEFAULT_PEER_KEY_FILE: Final = PEER_KEY_DIR + "/" + PEER_SECRET_KEY
PEER_KEY_BYTES: Final = 32


def peer_secret_name(group: str) -> str:
    """The Secret holding a group's heartbeat key (in the operator's namespace)."""
    return DIRECTOR_PREFIX + group + "-peer"
