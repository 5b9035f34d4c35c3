"""`blatam bench coordinator`: how the coordinator's index scales.

- **Index** (in process, the coordinator's own `GlobalIndex`): for 10^4, 10^5
  and 10^6 indexed blocks spread over 1, 8 and 64 simulated shards: the
  events per second it applies (stored events in batches of 256), the memory
  it holds (allocations traced while building it), and the time of a lookup: `where`
  for one block, `route` and `locate` for a 40-block prompt (a cached
  32-block chain followed by 8 new blocks), under two lookup distributions:
  **uniform** over the index (every lookup goes to a random block: the
  worst case for CPU caches, the one the goal is judged on) and **zipf**
  (prompts drawn by a Zipf law of exponent 1 over the chains, popular
  prefixes first, as a router sees them; keys ``*_zipf_us``). Each lookup
  time is the best of 5 passes over the same 2000 lookups (noise from other
  work on the machine only ever adds), the passes of the three sizes taken in
  turn so that a slow spell of a shared machine does not skew the growth.
- **Actor** (``--actor``): events per second a real `KVCacheCoordinator`
  actor absorbs from simulated shard actors that send batches as fast as they
  are acknowledged (1 and 8 senders; each sender is a real named actor so the
  coordinator can resync it).

``lookup_growth`` is the uniform lookup time at the largest size over the
smallest (median over shard counts; the goal: within 2x);
``lookup_growth_zipf`` is the same for the Zipf distribution.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import os
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Sequence

import typer

from scripts.bench import bench_app
from scripts.bench.report import console, print_table, write_json

BATCH = 256
ZIPF_S = 1.0
REPEATS = 5
LOOKUPS = ("where_us", "route_us", "locate_us")
BLOCKS = (10_000, 100_000, 1_000_000)
SHARDS = (1, 8, 64)


def _chains(num_blocks: int, chain_len: int = 32) -> list[list[bytes]]:
    """Prompts as chains of 32 blocks (hashes like the real ones: 32 bytes)."""
    chains = []
    for start in range(0, num_blocks, chain_len):
        parent = hashlib.sha256(start.to_bytes(8, "little")).digest()
        chain = []
        for _ in range(min(chain_len, num_blocks - start)):
            parent = hashlib.sha256(parent).digest()
            chain.append(parent)
        chains.append(chain)
    return chains


def _index_bytes(names: list[str], batches: list[tuple[str, list]]) -> int:
    """Bytes a freshly built index holds (traced allocations + the 32-byte hash keys it owns)."""
    from cache_actors.cluster.global_index import GlobalIndex

    gc.collect()
    tracemalloc.start()
    index = GlobalIndex()
    seqs = dict.fromkeys(names, 0)
    for name in names:
        index.apply(name, "node", "e1", 0, [])
        index.load_dump(name, "e1", 0, [])
    for name, events in batches:
        index.apply(name, "node", "e1", seqs[name], events)
        seqs[name] += len(events)
    traced, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # The hash objects were allocated by the benchmark (shared with its chains); in the
    # coordinator they arrive with the events and belong to the index.
    return traced + len(index) * sys.getsizeof(b"\0" * 32)


def _time_us(fn: Any, args: list[Any]) -> float:
    """Microseconds per call over one pass."""
    started = time.perf_counter()
    for arg in args:
        fn(arg)
    return (time.perf_counter() - started) / len(args) * 1e6


def _zipf_picker(items: list[Any], rng: random.Random, exponent: float = ZIPF_S) -> Any:
    """Draws items with P(rank r) ~ 1/r^exponent, ranks given by a random permutation."""
    ranked = items[:]
    rng.shuffle(ranked)
    cumulative = list(itertools.accumulate(1.0 / rank**exponent for rank in range(1, len(ranked) + 1)))
    return lambda: rng.choices(ranked, cum_weights=cumulative)[0]


class _BuiltIndex:
    """One index of ``num_blocks`` over ``num_shards`` simulated shards, with its lookup samples."""

    def __init__(self, num_blocks: int, num_shards: int, *, lookups: int, seed: int) -> None:
        # `cache_actors` imports torch (seconds): only when a benchmark runs, never for `blatam --help`.
        from cache_actors.cluster.global_index import GlobalIndex
        from cache_actors.cluster.shard_store import STORED

        chains = _chains(num_blocks)
        self.index = index = GlobalIndex()
        self.names = names = [f"kvshard:bench:node{i % 4}:sim{i}" for i in range(num_shards)]
        seqs = dict.fromkeys(names, 0)
        for name in names:
            index.apply(name, name.split(":")[2], "e1", 0, [])
            index.load_dump(name, "e1", 0, [])
        batches = []
        for number, chain in enumerate(chains):  # each prompt lands on one shard, as routing would place it
            name = names[number % num_shards]
            events = [(STORED, block, chain[i - 1] if i else None) for i, block in enumerate(chain)]
            for start in range(0, len(events), BATCH):
                batches.append((name, events[start : start + BATCH]))
        started = time.perf_counter()
        for name, events in batches:
            index.apply(name, "node", "e1", seqs[name], events)
            seqs[name] += len(events)
        apply_s = time.perf_counter() - started
        memory = _index_bytes(names, batches)
        self.row: dict[str, Any] = {
            "blocks": len(index), "applied_events": index.counters["events"], "shards": num_shards,
            "events_per_s": num_blocks / apply_s, "memory_mb": memory / 2**20,
            "bytes_per_block": memory / max(len(index), 1),
        }
        rng = random.Random(seed)
        pick = {"uniform": lambda: rng.choice(chains), "zipf": _zipf_picker(chains, rng)}
        self.samples: dict[str, tuple[list[bytes], list[list[bytes]]]] = {}
        for label, pick_chain in pick.items():
            suffix = "" if label == "uniform" else f"_{label}"
            # A prompt = a cached prefix (a stored chain) followed by 8 blocks nobody has seen.
            # Keys are fresh bytes objects, as they arrive from another process.
            prompts = [[bytes(bytearray(block)) for block in pick_chain()] + [hashlib.sha256(b"new%d:%d" % (n, i)).digest() for i in range(8)]
                       for n in range(lookups)]
            blocks = [bytes(bytearray(rng.choice(pick_chain()))) for _ in range(lookups)]
            self.samples[suffix] = (blocks, prompts)

    def time_pass(self) -> dict[str, float]:
        """One timed pass of every lookup over its samples (microseconds per lookup)."""
        index, requester = self.index, self.names[0]
        times = {}
        for suffix, (blocks, prompts) in self.samples.items():
            times[f"where{suffix}_us"] = _time_us(index.where, blocks)
            times[f"route{suffix}_us"] = _time_us(index.route, prompts)
            times[f"locate{suffix}_us"] = _time_us(
                lambda c: index.locate(c, requester=requester, node_id="node0", block_bytes=1 << 20), prompts)
        return times


def measure_shard_count(num_shards: int, sizes: Sequence[int], *, lookups: int = 2000, seed: int = 0,
                        repeats: int = REPEATS) -> list[dict[str, Any]]:
    """Rows for each index size at ``num_shards`` shards, the sizes' timing passes interleaved.

    All sizes are built first, then timed in rounds (one pass of each size per
    round, best pass kept), so a slow spell of a shared machine lands on every
    size alike instead of skewing the growth ratio.
    """
    built = [_BuiltIndex(size, num_shards, lookups=lookups, seed=seed) for size in sizes]
    best: list[dict[str, float]] = [{} for _ in built]
    for _ in range(repeats):
        for number, item in enumerate(built):
            for key, value in item.time_pass().items():
                best[number][key] = min(value, best[number].get(key, float("inf")))
    rows = [{**item.row, **times} for item, times in zip(built, best)]
    del built
    gc.collect()
    return rows


def measure_index(num_blocks: int, num_shards: int, *, lookups: int = 2000, seed: int = 0) -> dict[str, Any]:
    """One row: a single index size (see `measure_shard_count`)."""
    return measure_shard_count(num_shards, [num_blocks], lookups=lookups, seed=seed)[0]


def measure_actor_events(num_senders: int, *, batches: int = 200) -> dict[str, Any]:
    """Events/s a real coordinator actor absorbs from ``num_senders`` simulated shard actors."""
    import ray

    from cache_actors.actors.placement import get_or_create_coordinator
    from cache_actors.actors.ray_join import join_ray
    from cache_actors.actors.spec import NAMESPACE, ShardSpec

    join_ray(None, num_cpus=2, include_dashboard=False, log_to_driver=False)  # a private cluster, never a stale one
    spec = ShardSpec(model_id="bench-coordinator", model_dtype="float32", kv_layout="L1H1D1", codec="native",
                     num_layers=1, num_kv_heads=1, head_dim=1, block_size=16, num_blocks=1, health_interval_s=30.0)
    coordinator = get_or_create_coordinator(spec)
    ray.get(coordinator.ping.remote())

    @ray.remote(num_cpus=0, max_concurrency=4)  # answers the coordinator's resync while it sends
    class SimShard:
        """Answers the coordinator's resync (empty) and sends stored-event batches."""

        def __init__(self, name: str) -> None:
            self.name, self.seq = name, 0

        def ping(self) -> dict[str, Any]:
            return {"name": self.name, "epoch": "e1", "node_id": "sim", "device": "sim", "pid": os.getpid(), "gpu_ids": []}

        def dump_index(self) -> tuple[str, int, list, list]:
            return "e1", self.seq, [], []

        def join(self, coordinator: Any) -> bool:
            """First report (the coordinator resyncs us) and a warm connection, outside the timing."""
            ray.get(coordinator.report.remote(self.name, "sim", "e1", self.seq, []))
            return True

        def send(self, coordinator: Any, batches: int, salt: int) -> tuple[int, float]:
            from cache_actors.cluster.shard_store import STORED

            sent = 0
            started = time.perf_counter()
            for number in range(batches):
                events = [(STORED, hashlib.sha256(f"{salt}:{number}:{i}".encode()).digest(), None) for i in range(BATCH)]
                ray.get(coordinator.report.remote(self.name, "sim", "e1", self.seq, events))
                self.seq += len(events)
                sent += len(events)
            return sent, time.perf_counter() - started

    names = [f"kvshard:bench{time.time_ns()}:sim:s{i}" for i in range(num_senders)]
    senders = [SimShard.options(name=name, namespace=NAMESPACE).remote(name) for name in names]
    ray.get([s.join.remote(coordinator) for s in senders])
    time.sleep(1.0)  # the coordinator resyncs each new sender
    results = ray.get([s.send.remote(coordinator, batches, i) for i, s in enumerate(senders)])
    sent = sum(count for count, _ in results)
    elapsed = max(seconds for _, seconds in results)
    stats = ray.get(coordinator.stats.remote())
    for sender in senders:
        ray.kill(sender)
    ray.kill(coordinator)
    return {"senders": num_senders, "events": sent, "events_per_s": sent / elapsed, "indexed_blocks": stats["blocks"],
            "gaps": stats.get("gaps", 0)}


@bench_app.command("coordinator")
def coordinator_command(
    max_blocks: int = typer.Option(1_000_000, "--max-blocks", help="Largest index size measured."),
    actor: bool = typer.Option(False, "--actor", help="Also measure a real coordinator actor fed by simulated shards."),
    json_out: Path = typer.Option(None, "--json", help="Write the results here."),
) -> None:
    """Events/s, memory and lookup time of the coordinator's index at 1e4..1e6 blocks and 1..64 shards."""
    sizes = [b for b in BLOCKS if b <= max_blocks]
    rows = []
    with console.status("importing the cache engine (torch)"):
        import cache_actors.cluster.global_index  # noqa: F401  (seconds; the rows below then start at once)
    for num_shards in SHARDS:
        with console.status(f"{num_shards} shards: {', '.join(map(str, sizes))} blocks"):
            rows.extend(measure_shard_count(num_shards, sizes))
    rows.sort(key=lambda r: (r["blocks"], r["shards"]))
    print_table(
        "Coordinator index, uniform lookups (worst case)",
        ["blocks", "shards", "events/s", "MiB", "B/block", "where us", "route us (40)", "locate us (40)"],
        [(r["blocks"], r["shards"], r["events_per_s"], r["memory_mb"], r["bytes_per_block"], r["where_us"], r["route_us"], r["locate_us"])
         for r in rows],
    )
    print_table(
        f"Coordinator index, Zipf(s={ZIPF_S}) lookups over prompts (as a router sees them)",
        ["blocks", "shards", "where us", "route us (40)", "locate us (40)"],
        [(r["blocks"], r["shards"], r["where_zipf_us"], r["route_zipf_us"], r["locate_zipf_us"]) for r in rows],
    )
    smallest = [r for r in rows if r["blocks"] == min(r["blocks"] for r in rows)]
    largest = [r for r in rows if r["blocks"] == max(r["blocks"] for r in rows)]

    def growth(suffix: str) -> dict[str, float]:
        keys = [key.replace("_us", f"{suffix}_us") for key in LOOKUPS]
        return {key: statistics.median(r[key] for r in largest) / statistics.median(r[key] for r in smallest) for key in keys}

    uniform, zipf = growth(""), growth("_zipf")
    console.print("lookup growth, uniform (largest/smallest index): " + ", ".join(f"{k} {v:.2f}x" for k, v in uniform.items()))
    console.print("lookup growth, zipf (largest/smallest index): " + ", ".join(f"{k} {v:.2f}x" for k, v in zipf.items()))
    result: dict[str, Any] = {"index": rows, "lookup_growth": uniform, "lookup_growth_zipf": zipf, "zipf_exponent": ZIPF_S,
                              "timing": f"best of {REPEATS} passes", "batch_events": BATCH}
    if actor:
        with console.status("starting Ray and a coordinator actor, sending events"):
            result["actor"] = [measure_actor_events(n) for n in (1, 8)]
        print_table("Coordinator actor", ["senders", "events", "events/s"],
                    [(r["senders"], r["events"], r["events_per_s"]) for r in result["actor"]])
    write_json(json_out, result)
