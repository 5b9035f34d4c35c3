"""What the KV actors of a running cluster hold, asked of each with a bound (`blatam status`).

The calls to every actor are sent at once and awaited together under one
deadline (`cluster_admin.gather_calls`), so a dead or stuck shard costs the
view one timeout and shows as unreachable instead of hanging the command.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import ray

from cache_actors.actors.cluster_admin import gather_calls, kv_actor_names
from cache_actors.actors.spec import COORDINATOR_NAME, NAMESPACE, parse_shard_name

VIEW_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class ShardView:
    name: str
    node_id: str
    device: str
    reachable: bool
    blocks: int = 0
    capacity_blocks: int = 0
    bytes_used: int = 0
    bytes_capacity: int = 0
    seq: int = 0
    """The shard's last event sequence number (what the coordinator should have seen)."""
    coordinator_seq: int | None = None
    """The next sequence number the coordinator expects from this shard (None: it does not know the shard)."""
    tiers: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True, slots=True)
class CoordinatorView:
    reachable: bool
    blocks: int = 0
    shards: int = 0
    resyncing: list[str] = field(default_factory=list)
    snapshots_on: bool = False
    snapshot_age_s: float | None = None
    snapshot_restore_pending: bool = False
    """Redis did not hand over the last snapshot yet (the coordinator retries, and writes none meanwhile)."""
    uptime_s: float = 0.0
    error: str = ""


@dataclass(frozen=True, slots=True)
class CacheView:
    shards: list[ShardView]
    coordinator: CoordinatorView | None
    """None: no coordinator in the cluster (no replica with the distributed cache has started)."""

    def to_json(self) -> dict[str, Any]:
        return {"shards": [asdict(s) for s in self.shards],
                "coordinator": asdict(self.coordinator) if self.coordinator else None}


def cache_view(*, timeout_s: float = VIEW_TIMEOUT_S) -> CacheView:
    """Every shard's blocks, bytes, budget, sequence and tiers, and the coordinator's index, asked in parallel."""
    names = kv_actor_names()
    shard_names = [n for n in names if n != COORDINATOR_NAME]
    calls: dict[tuple[str, str], Any] = {}
    for name in names:
        try:
            handle = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:  # gone since it was listed
            continue
        calls[(name, "stats")] = handle.stats.remote()
        if name != COORDINATOR_NAME:
            calls[(name, "tiers")] = handle.probe_tiers.remote()
    answers = gather_calls(calls, timeout_s)

    coordinator = None
    coordinator_seqs: dict[str, int] = {}
    if (COORDINATOR_NAME, "stats") in answers:
        stats, error = answers[(COORDINATOR_NAME, "stats")]
        if stats is None:
            coordinator = CoordinatorView(False, error=error)
        else:
            coordinator_seqs = {name: info["next_seq"] for name, info in stats["shards"].items()}
            coordinator = CoordinatorView(
                True, blocks=stats["blocks"], shards=len(stats["shards"]), resyncing=list(stats["resyncing"]),
                snapshots_on=bool(stats.get("snapshots_on")), snapshot_age_s=stats.get("snapshot_age_s"),
                snapshot_restore_pending=bool(stats.get("snapshot_restore_pending")),
                uptime_s=float(stats.get("uptime_s", 0.0)))
    shards = []
    for name in shard_names:
        _, node_id, device = parse_shard_name(name) or ("", "", "")
        if (name, "stats") not in answers:
            continue
        stats, error = answers[(name, "stats")]
        tiers, tier_error = answers[(name, "tiers")]
        if stats is None:
            shards.append(ShardView(name, node_id, device, False, coordinator_seq=coordinator_seqs.get(name), error=error))
            continue
        shards.append(ShardView(
            name, node_id, device, True, blocks=stats["blocks"], capacity_blocks=stats["capacity_blocks"],
            bytes_used=stats["bytes_used"], bytes_capacity=stats["bytes_capacity"], seq=stats["seq"],
            coordinator_seq=coordinator_seqs.get(name),
            tiers=tiers if tiers is not None else {"?": {"reachable": False, "detail": tier_error}}))
    return CacheView(shards, coordinator)


def metrics_urls() -> list[str]:
    """Each live node's Ray metrics endpoint (Prometheus text of every process on that node)."""
    return [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
            for n in ray.nodes() if n.get("Alive") and n.get("MetricsExportPort")]
