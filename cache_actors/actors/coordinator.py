"""`KVCacheCoordinator`: the detached actor with the cluster-wide view.

It is off the data path and rebuildable: losing it costs prefetch, remote
lookups and routing advice until it is back, never a request. It holds a
`GlobalIndex` fed by the shards' event batches (`report`) and answers:

- `locate`: where the blocks a shard misses are cheapest to fetch;
- `hint`: a shard just stored or served a chain: prefetch the blocks seen
  following its last block into that shard, in the background, bounded;
- `route`: which shard holds the longest prefix (advice for the router).

Maintenance (every ``health_interval_s``): ping every known shard and purge
the dead ones (their node left, or they were killed for good); create the
shards of every registered cache spec on nodes that have none yet (a new
node gets its shards); snapshot the index to Redis every
``snapshot_interval_s``. On start it restores the last snapshot and resyncs
every live shard it finds by name, so a killed coordinator comes back with
its index.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Callable, Sequence

import ray
from ray.exceptions import RayActorError, RayError

from cache_actors.actors.spec import NAMESPACE, ShardSpec, parse_shard_name
from cache_actors.cluster.global_index import GlobalIndex, ReportReply
from cache_actors.core.hashing import BlockHash
from cache_actors.tiers import RedisTier
from cache_actors.actors.worker_logs import route_package_logs

logger = logging.getLogger(__name__)

SNAPSHOT_KEY_SUFFIX = "coordinator-snapshot"
_PING_TIMEOUT_S = 2.0
_DEAD_AFTER_MISSED_PINGS = 3
_NICENESS = 5
#: Bound on one snapshot read or write. Snapshots are off the data path and can be megabytes, so the
#: tier's per-operation bound (50 ms, sized for block reads) made the socket time out on a loaded
#: machine: a restarted coordinator's first read failed, and it wrote no snapshot until a later round.
SNAPSHOT_OP_TIMEOUT_S = 2.0


def snapshot_client(url: str) -> RedisTier:
    """The coordinator's Redis client, bounded by ``SNAPSHOT_OP_TIMEOUT_S`` rather than a block read's bound."""
    return RedisTier(url, key_prefix="blatam:kv", timeout_s=SNAPSHOT_OP_TIMEOUT_S)


class KVCacheCoordinator:
    def __init__(self, spec: ShardSpec, place_shards: Callable[[Sequence[ShardSpec]], int] | None = None) -> None:
        """``place_shards(specs)`` creates the shards live nodes lack and returns how many
        (`placement.place_missing_shards`, handed in so this module need not import the shard's)."""
        route_package_logs()
        self._place = place_shards
        # Off the data path: on a shared node, model compute goes first.
        os.nice(_NICENESS)
        self.spec = spec
        self.index = GlobalIndex(hot_min_hits=spec.demote_min_hits)
        self.specs: dict[str, ShardSpec] = {spec.fingerprint(): spec}
        self.handles: dict[str, Any] = {}
        self.missed_pings: dict[str, int] = {}
        self._resyncing: set[str] = set()
        self._prefetching: set[str] = set()
        # See _announce_new_holders; from its start, so a restarted coordinator's replies are newer than old news.
        self._announced_ns = time.time_ns()
        self.redis = snapshot_client(spec.redis_url) if spec.redis_url else None
        self.started = time.monotonic()
        self.last_snapshot_at: float | None = None  # monotonic time of the last snapshot written
        self.counters: dict[str, int] = {"prefetch_plans": 0, "snapshots": 0, "restored_blocks": 0, "shards_created": 0}
        self._restore_pending = self.redis is not None  # see _restore_snapshot
        self._restore_lock = asyncio.Lock()  # start-up, a spec's registration and maintenance may all try at once
        self._restore_failures = 0
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._startup()), loop.create_task(self._maintenance())]

    # --- shard events -----------------------------------------------------------------------------
    async def report(self, name: str, node_id: str, epoch: str, first_seq: int, events: list) -> ReportReply:
        """A shard's event batch; what became hot among its blocks, and whether anyone else holds blocks."""
        before = self.index.holders()
        result = self.index.apply(name, node_id, epoch, first_seq, events)
        if result.resync:
            self._schedule_resync(name)
        holders = self._announce_new_holders(before)
        return ReportReply(result.hot, bool(holders - {name}), self._announced_ns)

    def _announce_new_holders(self, before: frozenset[str]) -> frozenset[str]:
        """Tell every shard that another one started holding blocks; returns the holders now.

        A shard skips asking `locate` while no other shard holds anything (a
        single-node cache, every miss's answer "nowhere", cost a round trip
        through this actor on each request: 8-12 ms of a cached TTFT on 2 busy
        cores). It learns "none" lazily from `report`'s reply, and "some" from
        here at once, so a peer's fresh blocks are never skipped.
        """
        holders = self.index.holders()
        new = holders - before
        if new:
            self._announced_ns = time.time_ns()
            for other in list(self.index.shards):
                if new - {other}:
                    try:
                        self._handle(other).peers_hold_blocks.remote(self._announced_ns)
                    except (RayError, ValueError) as exc:  # gone: the maintenance ping purges it
                        logger.debug("coordinator: cannot tell %s about new holders (%s)", other, exc)
        return holders

    def _schedule_resync(self, name: str) -> None:
        if name not in self._resyncing:
            self._resyncing.add(name)
            asyncio.get_running_loop().create_task(self._resync(name))

    async def _resync(self, name: str) -> None:
        try:
            for _ in range(3):
                handle = self._handle(name)
                epoch, seq, entries, tiers = await asyncio.wait_for(handle.dump_index.remote(), _PING_TIMEOUT_S * 5)
                if name not in self.index.shards or self.index.shards[name].epoch != epoch:
                    info = await asyncio.wait_for(handle.ping.remote(), _PING_TIMEOUT_S)
                    self.index.apply(name, info["node_id"], epoch, seq, [])
                before = self.index.holders()
                if self.index.load_dump(name, epoch, seq, entries, tiers):
                    self._announce_new_holders(before)
                    return
        except (RayError, ValueError, asyncio.TimeoutError, TimeoutError) as exc:
            logger.warning("coordinator: resync of %s failed (%s)", name, type(exc).__name__)
        finally:
            self._resyncing.discard(name)

    def _handle(self, name: str) -> Any:
        handle = self.handles.get(name)
        if handle is None:
            handle = self.handles[name] = ray.get_actor(name, namespace=NAMESPACE)
        return handle

    # --- questions from shards and routers ----------------------------------------------------------
    def locate(self, name: str, node_id: str, hashes: Sequence[BlockHash], block_bytes: int) -> list[tuple[str, list[BlockHash]]]:
        return self.index.locate(hashes, requester=name, node_id=node_id, block_bytes=block_bytes)

    def route(self, hashes: Sequence[BlockHash]) -> list[tuple[str, int]]:
        return self.index.route(hashes)

    def where(self, block_hash: BlockHash) -> list[str]:
        return self.index.where(block_hash)

    def hints(self, name: str, node_id: str, last_hashes: list[BlockHash]) -> int:
        """`hint` for each chain a shard stored or served since its last report: one call per tick, not per chain.

        Why: a burst of 16 requests ending in one decode step gave 32 calls,
        each costing both processes Ray's per-call work on the model's cores.
        """
        return sum(self.hint(name, node_id, last_hash) for last_hash in last_hashes)

    def hint(self, name: str, node_id: str, last_hash: BlockHash) -> int:
        """Plan a prefetch of the blocks seen after ``last_hash`` into shard ``name``."""
        if name in self._prefetching or name not in self.index.shards:
            return 0
        spec = self.specs.get(name.split(":")[1], self.spec)
        successors = self.index.successors(last_hash, spec.prefetch_size)
        missing = [block_hash for block_hash in successors if not self.index.holds(name, block_hash)]
        if not missing or missing[0] != successors[0]:
            return 0  # only a chain that continues right after what the shard has is usable
        runs = self.index.locate(missing, requester=name, node_id=node_id, block_bytes=1 << 20)
        if not runs:
            return 0
        self.counters["prefetch_plans"] += 1
        self._prefetching.add(name)
        asyncio.get_running_loop().create_task(self._prefetch(name, last_hash, runs, spec))
        return sum(len(run) for _, run in runs)

    async def _prefetch(self, name: str, parent: BlockHash, runs: list, spec: ShardSpec) -> None:
        try:
            await asyncio.wait_for(self._handle(name).prefetch.remote(parent, runs), spec.timeouts.prefetch_s * 2)
        except (RayError, ValueError, asyncio.TimeoutError, TimeoutError):
            pass  # prefetch is advisory
        finally:
            self._prefetching.discard(name)

    # --- specs and placement --------------------------------------------------------------------------
    async def register_spec(self, spec: ShardSpec) -> str:
        """A client (or a shard) serves this cache: keep its shards on every node from now on.

        The coordinator is created by whichever client or shard comes first; a
        later one that brings Redis when the first had none turns snapshots on
        and restores the last one (cluster-wide settings otherwise stay the
        first one's). Shards register on every (re)connection, so a coordinator
        re-created by a shard of a cache without Redis still gets its tier
        locations back.
        """
        self.specs[spec.fingerprint()] = spec
        if self.redis is None and spec.redis_url:
            self.redis = snapshot_client(spec.redis_url)
            logger.info("coordinator: Redis snapshots on (brought by a client of cache %s)", spec.fingerprint())
            self._restore_pending = True
            await self._restore_snapshot()
        return spec.fingerprint()

    # --- lifecycle ---------------------------------------------------------------------------------------
    async def _restore_snapshot(self) -> None:
        """Merge the last snapshot in Redis into the index (tier locations and hit counts).

        Until Redis has answered (with a snapshot or with none) the restore
        stays pending: the maintenance loop tries again each round, and no
        snapshot is written meanwhile. Why: a coordinator restarted while Redis
        was slow (its first read timed out on a loaded CI machine) or down came
        up empty for good, then replaced the last snapshot with that empty
        index at its next snapshot, losing every tier location it held.
        """
        async with self._restore_lock:
            if not self._restore_pending:
                return
            answered, blob = await self.redis.read_raw(f"blatam:kv:{SNAPSHOT_KEY_SUFFIX}")
            if not answered:
                if not self._restore_failures:
                    logger.warning("coordinator: the last snapshot could not be read; no snapshot is written until it is")
                self._restore_failures += 1
                return
            self._restore_pending = False
            if self._restore_failures:
                logger.info("coordinator: the last snapshot was read after %d failed tries", self._restore_failures)
            if blob:
                try:
                    self.counters["restored_blocks"] += self.index.restore(blob)
                except ValueError as exc:
                    logger.warning("coordinator: ignoring snapshot (%s)", exc)

    async def _startup(self) -> None:
        await self._restore_snapshot()
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry.get("namespace") == NAMESPACE and parse_shard_name(entry["name"]):
                self._schedule_resync(entry["name"])

    async def _maintenance(self) -> None:
        last_snapshot = time.monotonic()
        while True:
            await asyncio.sleep(self.spec.health_interval_s)
            try:
                await self._check_shards()
                self._place_shards()
                await self._restore_snapshot()  # nothing to do once read (or without Redis)
                if self.redis is not None and time.monotonic() - last_snapshot >= self.spec.snapshot_interval_s:
                    last_snapshot = time.monotonic()
                    await self.snapshot()
            except Exception:  # noqa: BLE001 - maintenance must keep running; the next round retries
                logger.exception("coordinator: maintenance step failed")

    async def _check_shards(self) -> None:
        names = list(self.index.shards)
        pings = [self._ping(name) for name in names]
        for name, (alive, info) in zip(names, await asyncio.gather(*pings)):
            if alive is False:
                self._purge(name)
            elif alive and info["epoch"] != self.index.shards[name].epoch:
                self.index.apply(name, info["node_id"], info["epoch"], 0, [])  # restarted without reporting yet
                self._schedule_resync(name)

    async def _ping(self, name: str) -> tuple[bool | None, dict[str, Any] | None]:
        """(True, info) alive; (False, None) dead for good; (None, None) unknown this round."""
        try:
            info = await asyncio.wait_for(self._handle(name).ping.remote(), _PING_TIMEOUT_S)
            self.missed_pings.pop(name, None)
            return True, info
        except RayActorError as exc:
            if not getattr(exc, "preempted", False) and "restart" not in str(exc).lower():
                return False, None
        except ValueError:  # no actor by that name any more
            return False, None
        except (RayError, asyncio.TimeoutError, TimeoutError):
            pass
        self.missed_pings[name] = self.missed_pings.get(name, 0) + 1
        if self.missed_pings[name] >= _DEAD_AFTER_MISSED_PINGS:
            return False, None
        return None, None

    def _purge(self, name: str) -> None:
        held = self.index.purge(name)
        self.handles.pop(name, None)
        self.missed_pings.pop(name, None)
        logger.info("coordinator: purged shard %s (%d blocks)", name, held)

    def _place_shards(self) -> None:
        if self._place is not None:
            self.counters["shards_created"] += self._place(list(self.specs.values()))

    async def snapshot(self) -> bool:
        """Write the index to Redis; False (nothing written) without Redis or while the last snapshot is unread."""
        if self.redis is None or self._restore_pending:
            return False
        ok = await self.redis.set_raw(f"blatam:kv:{SNAPSHOT_KEY_SUFFIX}", self.index.snapshot())
        self.counters["snapshots"] += ok
        if ok:
            self.last_snapshot_at = time.monotonic()
        return ok

    # --- introspection -----------------------------------------------------------------------------------
    def ping(self) -> dict[str, Any]:
        return {"uptime_s": time.monotonic() - self.started, "blocks": len(self.index), "shards": len(self.index.shards)}

    def stats(self) -> dict[str, Any]:
        age = None if self.last_snapshot_at is None else time.monotonic() - self.last_snapshot_at
        return {**self.index.stats(), **self.counters, "resyncing": sorted(self._resyncing), "specs": sorted(self.specs),
                "uptime_s": time.monotonic() - self.started, "snapshot_age_s": age, "snapshots_on": self.redis is not None,
                "snapshot_restore_pending": self._restore_pending}


CoordinatorActor = ray.remote(KVCacheCoordinator)
