"""Where shards and the coordinator run, and how a replica finds its own shard.

- A node with GPUs gets one shard per GPU (``num_gpus=spec.shard_gpus``, 1 by
  default). A node that advertises ``spec.device_resource`` (a custom
  resource standing in for devices, as the tests do) gets one shard per unit
  of it. Any other node gets ``spec.cpu_shards`` shards in host memory.
- Every shard is pinned to its node with a hard `NodeAffinitySchedulingStrategy`,
  named ``kvshard:<fingerprint>:<node id>:<device>`` in namespace
  ``blatam-kv``, detached (it outlives the replica that created it) and
  restarted by Ray when it dies (``max_restarts=-1``; calls are not retried,
  the client recomputes instead).
- Creation uses ``get_if_exists``, so the client, the coordinator's
  maintenance loop (which covers nodes that join later) and concurrent
  replicas can all ask for the same shard without duplicates.
"""

from __future__ import annotations

import logging
import os
import zlib
from typing import Any, Sequence

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cache_actors.actors.coordinator import CoordinatorActor
from cache_actors.actors.shard import ShardActor
from cache_actors.actors.spec import COORDINATOR_NAME, NAMESPACE, ShardSpec

logger = logging.getLogger(__name__)


def node_devices(spec: ShardSpec, node: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``[(device label, actor resource options)]`` for the shards a node should have."""
    resources = node.get("Resources", {})
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return [(f"gpu{i}", {"num_gpus": spec.shard_gpus}) for i in range(gpus)]
    if spec.device_resource and resources.get(spec.device_resource, 0) >= 1:
        return [(f"dev{i}", {"resources": {spec.device_resource: 1}}) for i in range(int(resources[spec.device_resource]))]
    return [(f"cpu{i}", {}) for i in range(spec.cpu_shards)]


def _shard_options(spec: ShardSpec, name: str, node_id: str, resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": NAMESPACE,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
        "max_task_retries": 0,
        "max_concurrency": 1000,
        "num_cpus": 0,
        "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False),
        **resources,
    }


def _shard(spec: ShardSpec, name: str, node_id: str, device: str, resources: dict[str, Any]) -> Any:
    """The named shard's handle, created if missing (the one place a shard is made)."""
    return ShardActor.options(**_shard_options(spec, name, node_id, resources)).remote(
        spec, name, device, get_or_create_coordinator)


def existing_actor_names() -> set[str]:
    return {e["name"] for e in ray.util.list_named_actors(all_namespaces=True) if e.get("namespace") == NAMESPACE}


def ensure_node_shards(spec: ShardSpec, node: dict[str, Any], *, existing: set[str] | None = None) -> int:
    """Create the shards ``node`` (an entry of `ray.nodes()`) lacks. Returns how many were created.

    ``existing`` (from `existing_actor_names`) lets a periodic sweep skip the
    shards that exist without a call per shard.
    """
    existing = existing or set()
    created = 0
    for device, resources in node_devices(spec, node):
        name = spec.shard_name(node["NodeID"], device)
        if name in existing:
            continue
        _shard(spec, name, node["NodeID"], device, resources)
        created += 1
    return created


def place_missing_shards(specs: Sequence[ShardSpec]) -> int:
    """Create every shard of ``specs`` that a live node lacks (the coordinator's periodic sweep)."""
    existing = existing_actor_names()
    return sum(ensure_node_shards(spec, node, existing=existing)
               for node in ray.nodes() if node.get("Alive") for spec in specs)


def node_shards(spec: ShardSpec, node_id: str) -> list[tuple[str, Any]]:
    """``[(name, handle)]`` of the shards of ``node_id``, created if missing."""
    node = next((n for n in ray.nodes() if n["NodeID"] == node_id and n.get("Alive")), None)
    if node is None:
        raise RuntimeError(f"node {node_id} is not alive")
    out = []
    for device, resources in node_devices(spec, node):
        name = spec.shard_name(node_id, device)
        out.append((name, _shard(spec, name, node_id, device, resources)))
    return out


def pick_local_shard(spec: ShardSpec, shards: list[tuple[str, Any]], *, index: int | None = None) -> tuple[str, Any]:
    """The shard of this worker's device: its GPU's shard, else shard ``index`` (modulo), else a stable choice."""
    gpu_ids = [str(i) for i in ray.get_gpu_ids()] if ray.is_initialized() else []
    if gpu_ids and len(shards) > 1:
        infos = ray.get([handle.ping.remote() for _, handle in shards], timeout=30)
        for (name, handle), info in zip(shards, infos):
            if set(info.get("gpu_ids", ())) & set(gpu_ids):
                return name, handle
    if index is not None:
        return shards[index % len(shards)]
    worker = ray.get_runtime_context().get_worker_id() if ray.is_initialized() else str(os.getpid())
    return shards[zlib.crc32(worker.encode()) % len(shards)]


def get_or_create_coordinator(spec: ShardSpec) -> Any:
    """The detached coordinator, created (with ``spec``'s settings) if there is none."""
    return CoordinatorActor.options(
        name=COORDINATOR_NAME,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_task_retries=0,
        max_concurrency=1000,
        num_cpus=0,
    ).remote(spec, place_missing_shards)


def warn_on_other_capacity(spec: ShardSpec, name: str, identity: dict[str, Any]) -> None:
    """Say so when the shard joined holds another number of blocks than this client's config asked for.

    Why: a shard is per node and per model layout, made by whichever client
    came first, and its pool cannot be resized in place; a second app serving
    the same model on the node shares it, and its own ``max_memory_mb`` is
    silently not what it gets (a test app asking 256 MB joined a 16 MB shard
    and had 2,048 of 4,949 prompt tokens cached where it expected over 70%).
    """
    held = identity.get("num_blocks")
    if held is None or held == spec.num_blocks:
        return
    logger.warning(
        "KV cache shard %s holds %d blocks, made by another client; this config asked for %d, which does not apply "
        "while that shard lives (same model and block size share it: give each app the same max_memory_mb, or "
        "another block_size for a shard of its own)", name, held, spec.num_blocks)
