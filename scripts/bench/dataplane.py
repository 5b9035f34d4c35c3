"""`blatam bench dataplane`: moving blocks between a client and its shard vs a memory copy.

For 1, 16 and 128 blocks of the demo model's geometry (1 MiB of fp32 KV per
64-token block, so 16 and 128 blocks are batches of 16 and 128 MiB):

- ``put``: `DistributedKVCache.store` of blocks already computed, until the
  shard has committed them (reserve call, copy into the shared pool,
  checksums, commit call);
- ``get``: `match` + `read_blocks` into a block buffer + `release` (lease
  call, checksum verification, copy out of the shared pool). The engine then
  reads into its prefix layout instead, a strided copy it pays in one process too;
- ``memcpy``: ``copy_`` of the same bytes into a warm buffer, same run.

``ratio`` is the slower of get and put over memcpy. With ``--object-store``
the same is measured through Ray's object store (the path a client on
another node takes) as extra rows.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import typer

from scripts.bench import bench_app
from scripts.bench.report import console, print_table, write_json

SIZES = (1, 16, 128)
GEOMETRY = {"num_layers": 8, "num_kv_heads": 4, "head_dim": 64, "block_size": 64}  # the demo model, 1 MiB per block


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def measure_dataplane(
    *, sizes: tuple[int, ...] = SIZES, repeats: int = 11, object_store: bool = False, threads: int | None = 1,
) -> dict[str, Any]:
    """Rows ``{"transport", "blocks", "mb", "get_mb_s", "put_mb_s", "memcpy_mb_s", "ratio"}``.

    ``threads`` sets torch's intra-op threads for the whole run (copies are
    memory-bound; one thread keeps a shared machine's noise out of them).
    """
    import torch

    from cache_actors.actors.client import DistributedKVCache
    from cache_actors.actors.ray_join import join_ray
    from cache_actors.actors.spec import ShardSpec
    from cache_actors.core.hashing import CacheNamespace, hash_prompt_blocks

    if threads:
        torch.set_num_threads(threads)
    join_ray(None, num_cpus=2, include_dashboard=False, log_to_driver=False)  # a private cluster, never a stale one
    spec = ShardSpec(model_id="bench-dataplane", model_dtype="float32", kv_layout="L8H4D64", codec="native",
                     num_blocks=max(sizes) * 3, prefetch_size=0, **GEOMETRY)
    client = DistributedKVCache.connect(spec)
    root = CacheNamespace("bench-dataplane", "float32", 64, "L8H4D64").root_hash()
    shape = (spec.num_layers, 2, spec.num_kv_heads, spec.block_size, spec.head_dim)
    rows = []
    transports = ["shared_memory"] + (["object_store"] if object_store else [])
    serial = 0
    for transport in transports:
        client._same_node = transport == "shared_memory"
        for blocks in sizes:
            kv = torch.randn((blocks, *shape))
            out = torch.empty_like(kv)
            flat = kv.view(-1)
            warm = torch.empty_like(flat)
            put_s, get_s, copy_s = [], [], []
            for _ in range(repeats + 1):  # the first round warms pages and connections
                serial += 1
                hashes = hash_prompt_blocks(root, [serial % 250 + 3] + list(range(blocks * spec.block_size)), spec.block_size)[:blocks]
                started = time.perf_counter()
                stored = client.store(hashes, 0, lambda first, count: kv[first : first + count])
                client._await_pending_write()  # until the shard has the blocks
                put = time.perf_counter() - started
                started = time.perf_counter()
                hit = client.match(hashes)
                client.read_blocks(hit, out)
                client.release(hit)
                get = time.perf_counter() - started
                started = time.perf_counter()
                warm.copy_(flat)
                copy = time.perf_counter() - started
                if stored != blocks or hit.num_blocks != blocks:
                    raise RuntimeError(f"{transport}: stored {stored} and got {hit.num_blocks} of {blocks} blocks")
                put_s.append(put)
                get_s.append(get)
                copy_s.append(copy)
            mb = kv.numel() * kv.element_size() / 2**20
            put_mb_s, get_mb_s, copy_mb_s = (mb / (_median_ms(s[1:]) / 1000) for s in (put_s, get_s, copy_s))
            rows.append({"transport": transport, "blocks": blocks, "mb": mb, "get_mb_s": get_mb_s, "put_mb_s": put_mb_s,
                         "memcpy_mb_s": copy_mb_s, "ratio": min(get_mb_s, put_mb_s) / copy_mb_s,
                         "get_ms": _median_ms(get_s[1:]), "put_ms": _median_ms(put_s[1:]), "memcpy_ms": _median_ms(copy_s[1:])})
    return {"sizes": rows, "repeats": repeats, "threads": torch.get_num_threads(), "cpus": os.cpu_count()}


@bench_app.command("dataplane")
def dataplane_command(
    repeats: int = typer.Option(11, "--repeats", min=1, help="Timed rounds per size (median); one warm-up round is added."),
    object_store: bool = typer.Option(False, "--object-store", help="Also measure the object-store path of other nodes."),
    threads: int = typer.Option(1, "--threads", min=1, help="torch threads for the copies."),
    json_out: Path = typer.Option(None, "--json", help="Write the results here."),
) -> None:
    """Get/put of 1, 16, 128 blocks through a shard vs a local memory copy."""
    with console.status("importing torch and Ray, starting a shard, measuring"):
        result = measure_dataplane(repeats=repeats, object_store=object_store, threads=threads)
    print_table(
        "KV data plane: client <-> shard",
        ["transport", "blocks", "MiB", "get MB/s", "put MB/s", "memcpy MB/s", "ratio"],
        [(r["transport"], r["blocks"], r["mb"], r["get_mb_s"], r["put_mb_s"], r["memcpy_mb_s"], r["ratio"]) for r in result["sizes"]],
    )
    write_json(json_out, result)
