"""Completing a shard's misses from elsewhere: peers, Redis, disk (used by `KVCacheShard`).

The coordinator says where the missing blocks of a chain are cheapest to
fetch (`GlobalIndex.locate`); without a coordinator, or when it places
nothing, the first tier is probed directly (the index may have lost tier
locations in a restart; one probe is cheap). Runs are fetched in chain order
under one deadline, verified block by block against their checksums, and
inserted into the store; the first shortfall ends the chain (a block without
its parent saves nothing). Prefetch uses the same path for the blocks the
coordinator expects next.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Sequence

import numpy as np
import ray
import torch
from ray.exceptions import RayError

from cache_actors.actors.metrics import metrics
from cache_actors.actors.spec import NAMESPACE, ShardSpec
from cache_actors.cluster.global_index import TIER_TAGS
from cache_actors.core.hashing import BlockHash
from cache_actors.cluster.part_arrays import parts_from_numpy
from cache_actors.cluster.shard_store import Entry, ShardStore
from cache_actors.tiers import BlockTier, WireError, decode_block


class RemoteFetcher:
    def __init__(
        self,
        *,
        name: str,
        node_id: str,
        spec: ShardSpec,
        store: ShardStore,
        tiers: list[BlockTier],
        coordinator: Callable[[], Any],
        on_coordinator_failure: Callable[[BaseException], None],
        counters: dict[str, int],
        count_mismatch: Callable[[str, int], None],
    ) -> None:
        self.name = name
        self.node_id = node_id
        self.spec = spec
        self.store = store
        self.tiers = tiers
        self._coordinator = coordinator
        self._on_coordinator_failure = on_coordinator_failure
        self.counters = counters
        self._count_mismatch = count_mismatch
        self._peers: dict[str, Any] = {}
        dtypes = {n: str(d).removeprefix("torch.") for n, (_, d) in store.codec.part_specs().items()}
        self._wire_specs = {n: (tuple(shape), dtypes[n]) for n, (shape, _) in store.codec.part_specs().items()}

    async def complete(self, hashes: Sequence[BlockHash], start: int, tenant: str | None = None) -> dict[str, int]:
        """Fetch blocks ``start..`` of ``hashes`` from wherever is cheapest, within ``remote_fetch_s``
        (a fetched first block of the chain gets ``tenant``'s tag, as if the requester had written it).

        Returns blocks inserted per tier tag ("peer", "redis", "disk").
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.spec.timeouts.remote_fetch_s
        wanted = list(hashes[start : start + self.spec.max_remote_blocks])
        runs = await self._locate(wanted)
        if runs is None:  # no coordinator: ask the first tier directly
            runs = [(self.tiers[0].name, wanted)] if self.tiers else []
        got: dict[str, int] = {}
        parent = hashes[start - 1] if start else None
        covered = 0
        for source, run in runs:
            remaining = deadline - loop.time()
            if remaining <= 0:
                self.counters["remote_deadline"] += 1
                break
            inserted = await self._fetch_run(source, run, parent, remaining, tenant)
            tag = TIER_TAGS.get(source, "peer")
            got[tag] = got.get(tag, 0) + inserted
            covered += inserted
            if inserted < len(run):
                break
            parent = run[-1]
        else:
            first_tier = self.tiers[0] if self.tiers else None
            if (first_tier is not None and covered < len(wanted) and deadline > loop.time()
                    and all(source != first_tier.name for source, _ in runs)):
                # The index may have lost tier locations (a coordinator restart): one probe is cheap.
                inserted = await self._fetch_run(first_tier.name, wanted[covered:], parent, deadline - loop.time(), tenant)
                tag = TIER_TAGS[first_tier.name]
                got[tag] = got.get(tag, 0) + inserted
        if runs:
            metrics().fetch_latency_ms.observe((loop.time() - started) * 1000, tags={"path": "shard_remote"})
        return {tier: n for tier, n in got.items() if n}

    async def _locate(self, hashes: list[BlockHash]) -> list[tuple[str, list[BlockHash]]] | None:
        coordinator = self._coordinator()
        if coordinator is None:
            return None
        try:
            return await asyncio.wait_for(
                coordinator.locate.remote(self.name, self.node_id, hashes, self.store.codec.bytes_per_block()),
                self.spec.timeouts.locate_s,
            )
        except (RayError, asyncio.TimeoutError, TimeoutError) as exc:
            self._on_coordinator_failure(exc)
            return None

    async def _fetch_run(
        self, source: str, run: list[BlockHash], parent: BlockHash | None, timeout_s: float, tenant: str | None = None,
    ) -> int:
        tier = next((t for t in self.tiers if t.name == source), None)
        try:
            if tier is not None:
                entries, parts = await asyncio.wait_for(self._read_tier(tier, run, parent), timeout_s)
            else:
                peer = self._peer(source)
                entries, arrays = await asyncio.wait_for(peer.get.remote(run), timeout_s)
                parts = parts_from_numpy(arrays, self.store.codec.part_specs()) if entries else {}
        except (RayError, ValueError, asyncio.TimeoutError, TimeoutError) as exc:
            self.counters[f"fetch_failed_{TIER_TAGS.get(source, 'peer')}"] += 1
            metrics().add(metrics().tier_errors, 1, tier=TIER_TAGS.get(source, "peer"), kind=type(exc).__name__)
            self._peers.pop(source, None)
            return 0
        inserted, mismatches = self.store.insert_verified(entries, parts, tenant)
        self._count_mismatch(TIER_TAGS.get(source, "peer"), mismatches)
        return inserted

    async def _read_tier(self, tier: BlockTier, run: list[BlockHash], parent: BlockHash | None) -> tuple[list[Entry], dict[str, torch.Tensor]]:
        blobs = await tier.get_many(run)
        entries: list[Entry] = []
        rows: list[dict[str, np.ndarray]] = []
        for block_hash, blob in zip(run, blobs):
            if blob is None:
                self.store.note_tier_miss(block_hash, tier.name)
                break
            try:
                parts, checksum = decode_block(blob, codec=self.store.codec.name, specs=self._wire_specs)
            except WireError:
                self._count_mismatch(tier.name, 1)
                break
            entries.append((block_hash, parent, checksum))
            rows.append(parts)
            parent = block_hash
        if not rows:
            return [], {}
        stacked = {name: np.concatenate([row[name] for row in rows]) for name in rows[0]}
        return entries, parts_from_numpy(stacked, self.store.codec.part_specs())

    def _peer(self, name: str) -> Any:
        handle = self._peers.get(name)
        if handle is None:
            handle = self._peers[name] = ray.get_actor(name, namespace=NAMESPACE)
        return handle

    async def prefetch(self, parent: BlockHash, runs: list[tuple[str, list[BlockHash]]]) -> int:
        """Pull blocks the coordinator expects next (bounded by ``timeouts.prefetch_s``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.spec.timeouts.prefetch_s
        total = 0
        for source, run in runs:
            remaining = deadline - loop.time()
            if remaining <= 0 or self.store.index.get(parent) is None:
                break
            inserted = await self._fetch_run(source, run, parent, remaining)
            total += inserted
            if inserted < len(run):
                break
            parent = run[-1]
        self.counters["prefetched_blocks"] += total
        return total

