"""What the KV actors of a running cluster hold, asked of each with a bound (`blatam status`).

One call per actor, all sent at once and awaited together under one
deadline, so a dead or stuck shard costs the view one timeout and shows as
unreachable instead of hanging the command.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import ray

from cache_actors.actors.cluster_admin import kv_actor_names
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


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"


def cache_view(*, timeout_s: float = VIEW_TIMEOUT_S) -> CacheView:
    """Every shard's blocks, bytes, budget, sequence and tiers, and the coordinator's index, asked in parallel."""
    names = kv_actor_names()
    shard_names = [n for n in names if n != COORDINATOR_NAME]
    calls: dict[str, tuple[Any, ...]] = {}
    for name in names:
        try:
            handle = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:  # gone since it was listed
            continue
        calls[name] = (handle.stats.remote(),) if name == COORDINATOR_NAME else (
            handle.stats.remote(), handle.probe_tiers.remote())
    refs = [ref for pair in calls.values() for ref in pair]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s) if refs else ([], [])
    done = set(ready)

    def answer(ref: Any) -> tuple[Any, str]:
        if ref not in done:
            return None, f"no answer within {timeout_s:g} s"
        try:
            return ray.get(ref, timeout=0), ""
        except ray.exceptions.RayError as exc:
            return None, _error(exc)

    coordinator = None
    coordinator_seqs: dict[str, int] = {}
    if COORDINATOR_NAME in calls:
        stats, error = answer(calls[COORDINATOR_NAME][0])
        if stats is None:
            coordinator = CoordinatorView(False, error=error)
        else:
            coordinator_seqs = {name: info["next_seq"] for name, info in stats["shards"].items()}
            coordinator = CoordinatorView(
                True, blocks=stats["blocks"], shards=len(stats["shards"]), resyncing=list(stats["resyncing"]),
                snapshots_on=bool(stats.get("snapshots_on")), snapshot_age_s=stats.get("snapshot_age_s"),
                uptime_s=float(stats.get("uptime_s", 0.0)))
    shards = []
    for name in shard_names:
        _, node_id, device = parse_shard_name(name) or ("", "", "")
        if name not in calls:
            continue
        stats, error = answer(calls[name][0])
        tiers, tier_error = answer(calls[name][1])
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
