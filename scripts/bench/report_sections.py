"""One markdown section per benchmark for `blatam bench report`: the headline numbers and the ratio they support.

Every function takes the JSON document a benchmark wrote (the shapes of
scripts/bench/<name>.py, soak.py's `SoakResult.to_json` and the fault test's
table) and returns markdown: a line saying what is compared, then a table
whose last column or last row is the ratio. Pure functions of their input, so
tests/scripts/test_bench_report.py renders them from small documents.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

NONE = "–"


def fmt(value: Any) -> str:
    """A figure as the README's tables write it: thousands separated, three significant digits below 100."""
    if value is None:
        return NONE
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def times(value: float | None) -> str:
    """A ratio as ``0.46x`` (two significant digits below 0.1, so 0.034 does not read 0.03)."""
    if value is None:
        return NONE
    return f"{value:.2f}x" if abs(value) >= 0.1 else f"{value:.2g}x"


def ratio(num: float | None, den: float | None) -> str:
    """``num / den`` as `times` writes it; a dash when either is missing or the denominator is 0."""
    if num is None or not den:
        return NONE
    return times(num / den)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells that are not strings go through `fmt`."""
    cells = [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def under_load(soak: dict[str, Any]) -> list[dict[str, Any]]:
    """The soak's sample windows under load that finished a request: not the last one, sampled after the load drained
    (it holds only the stragglers, the slowest requests, and would read as a spike)."""
    return [w for w in soak["windows"][:-1] if w["latency"]["n"]]


def ttft_section(runs: Sequence[dict[str, Any]]) -> str:
    """`blatam bench ttft` at each prompt length: uncached vs cached (speedup) and cached vs ideal (overhead)."""
    rows = sorted(runs, key=lambda r: r["prompt_tokens"])
    first = rows[0]
    return (f"Compared: time to first token of a fresh prompt against one whose first tokens the engine's cache "
            f"holds (all but the last {first['new_tokens']}), and against the in-process ideal (the model's own cache "
            f"object reused). Model {first['model']} ({first['dtype']}, {first['threads']} torch threads, "
            f"block {first['block_size']}), median of {plural(first['runs'], 'run')}.\n\n" + md_table(
                ["prompt tokens", "cached tokens", "uncached ms", "cached ms", "ideal ms",
                 "speedup uncached/cached", "overhead cached/ideal"],
                [[r["prompt_tokens"], r["cached_tokens"], r["uncached_ms"], r["cached_ms"], r["ideal_ms"],
                  f"**{times(r['speedup'])}**", times(r["overhead"])] for r in rows]))


def policies_section(doc: dict[str, Any]) -> str:
    """`blatam bench policies`: tokens saved per policy at each capacity, adaptive over LRU, best online over Belady."""
    results = doc["results"]
    names = list(dict.fromkeys(r["policy"] for r in results))
    online = [n for n in names if n != "belady"]
    by_cap: dict[int, dict[str, dict[str, Any]]] = {}
    for r in results:
        by_cap.setdefault(r["capacity_blocks"], {})[r["policy"]] = r
    rows = []
    for blocks, cells in sorted(by_cap.items()):
        saved = {n: cells[n]["saved_fraction"] for n in names if n in cells}
        best = max((saved[n] for n in online if n in saved), default=None)
        rows.append([f"{next(iter(cells.values()))['capacity_fraction'] * 100:.3g}%", blocks, *[saved.get(n) for n in names],
                     ratio(saved.get("adaptive"), saved.get("lru")), ratio(best, saved.get("belady"))])
    return (f"Compared: the fraction of prefill tokens each eviction policy saves when a trace ({doc['source']}, "
            f"{doc['requests']:,} requests, {doc['unique_blocks']:,} unique blocks of {doc['block_tokens']} tokens) is "
            "replayed at each cache capacity, against LRU and against the offline optimum (Belady, the bound).\n\n"
            + md_table(["capacity", "blocks", *names, "adaptive / LRU", "best online / Belady"], rows))


def dataplane_section(doc: dict[str, Any]) -> str:
    """`blatam bench dataplane`: a block batch's get/put through a shard against a memory copy of the same bytes."""
    return ("Compared: moving KV blocks (1 MiB each) between a client and its shard (put: store until committed; "
            "get: match, read, release) against `copy_` of the same bytes in memory; ratio = the slower of get and "
            f"put over the copy (1 is the memory bound). Median of {plural(doc['repeats'], 'round')}, "
            f"{plural(doc['threads'], 'torch thread')}.\n\n" + md_table(
                ["transport", "blocks", "MiB", "get MB/s", "put MB/s", "memcpy MB/s", "ratio"],
                [[r["transport"], r["blocks"], r["mb"], r["get_mb_s"], r["put_mb_s"], r["memcpy_mb_s"],
                  f"**{times(r['ratio'])}**"] for r in doc["sizes"]]))


def coordinator_section(doc: dict[str, Any]) -> str:
    """`blatam bench coordinator`: lookup time as the index grows (medians over shard counts), growth largest/smallest."""
    sizes = sorted({r["blocks"] for r in doc["index"]})
    keys = ("events_per_s", "bytes_per_block", "where_us", "route_us", "locate_us", "where_zipf_us", "route_zipf_us",
            "locate_zipf_us")
    rows: list[list[Any]] = []
    for size in sizes:
        at = [r for r in doc["index"] if r["blocks"] == size]
        rows.append([size, *[statistics.median(r[k] for r in at) for k in keys]])
    growth = {**doc["lookup_growth"], **doc["lookup_growth_zipf"]}
    rows.append([f"**growth {sizes[-1]:,} / {sizes[0]:,}**", "", "",
                 *[f"**{times(growth[k])}**" if k in growth else NONE for k in keys[2:]]])
    shards = sorted({r["shards"] for r in doc["index"]})
    text = ("Compared: the coordinator's index at each size (medians over "
            f"{', '.join(map(str, shards))} shards): lookups for uniform keys (the worst case for CPU caches) and "
            f"Zipf-skewed ones (as a router sees them), {doc['timing']}; the last row is the lookup time at the largest "
            "index over the smallest (goal: within 2x for a 100x larger index).\n\n" + md_table(
                ["blocks", "events/s", "B/block", "where us", "route us", "locate us", "where us (zipf)",
                 "route us (zipf)", "locate us (zipf)"], rows))
    if doc.get("actor"):
        text += "\n\nThrough a real coordinator actor:\n\n" + md_table(
            ["senders", "events", "events/s"], [[a["senders"], a["events"], a["events_per_s"]] for a in doc["actor"]])
    return text


def serve_section(doc: dict[str, Any]) -> str:
    """`blatam bench serve`: cache-aware routing against Serve's pow2, and continuous batching against one at a time."""
    config, runs = doc["config"], {r["routing"]: r for r in doc["runs"]}
    keys = ("requests_per_s", "output_tokens_per_s", "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms", "token_hit_rate",
            "own_shard_hit_rate", "load_max_over_mean")
    rows: list[list[Any]] = [[name, *[r[k] for k in keys]] for name, r in runs.items()]
    if "affinity" in runs and "pow2" in runs:
        rows.append(["**affinity / pow2**", *[f"**{ratio(runs['affinity'][k], runs['pow2'][k])}**" for k in keys]])
    text = (f"Compared: the `llm` app ({config['replicas']} replicas, one KV shard each holding "
            f"{doc['shard_capacity_tokens']:,} tokens) under {config['concurrency']} closed-loop clients, "
            f"{config['requests']} `{config['workload']}` requests per routing, each on a fresh deployment: "
            "prefix-affinity routing against Serve's power-of-two-choices.\n\n" + md_table(
                ["routing", "req/s", "out tok/s", "TTFT p50 ms", "p95 ms", "p99 ms", "token hit rate",
                 "own-shard hit rate", "load max/mean"], rows))
    if doc.get("batching"):
        text += ("\n\nContinuous batching on one replica, unique prompts of "
                 f"{config['batch_prompt_tokens']} tokens, {config['batch_max_tokens']} new tokens each: output "
                 "tokens/s at each number of clients against one client at a time.\n\n" + md_table(
                     ["clients", "out tok/s", "mean batch", "TTFT p50 ms", "x one at a time"],
                     [[b["concurrency"], b["output_tokens_per_s"], b["mean_batch_size"], b["ttft_p50_ms"],
                       f"**{times(b['ratio_to_one_at_a_time'])}**" if b["ratio_to_one_at_a_time"] else NONE]
                      for b in doc["batching"]]))
    return text


def prefill_section(doc: dict[str, Any]) -> str:
    """`blatam bench prefill`: a long prompt prefilled at once vs in chunks, seen by the sequences already decoding."""
    whole, chunked = doc["settings"]["whole"], doc["settings"]["chunked"]
    keys = ("max_gap_ms", "p99_gap_ms", "ttft_ms")
    return (f"Compared: one {doc['long_tokens']:,}-token prompt arriving among {doc['decoders']} decoding sequences, "
            f"prefilled at once against in chunks of {doc['chunk_tokens']} tokens: the decoders' gaps between tokens "
            f"while it is in flight, and its own TTFT (median of {plural(doc['trials'], 'trial')}).\n\n" + md_table(
                ["setting", "decoders' max gap ms", "p99 gap ms", "long prompt TTFT ms"],
                [["whole", *[whole[k] for k in keys]], ["chunked", *[chunked[k] for k in keys]],
                 ["**chunked / whole**", *[f"**{ratio(chunked[k], whole[k])}**" for k in keys]]]))


def services_section(doc: dict[str, Any]) -> str:
    """`blatam bench services`: the same BUL jobs through the gateway with the KV cache on and off."""
    keys = ("token_hit_rate", "section_ttft_p50_ms", "jobs_per_min", "wall_s")
    on, off = doc["cache_on"], doc["cache_off"]
    rows: list[list[Any]] = [[name, f"{r['completed']}/{r['jobs']}", *[r[k] for k in keys]]
                             for name, r in (("cache on", on), ("cache off", off))]
    rows.append(["**on / off**", "", NONE, f"**{ratio(on['section_ttft_p50_ms'], off['section_ttft_p50_ms'])}**",
                 f"**{ratio(on['jobs_per_min'], off['jobs_per_min'])}**", ratio(on["wall_s"], off["wall_s"])])
    return (f"Compared: {doc['jobs']} BUL jobs of mixed types (seed {doc['seed']}) through the gateway on the demo "
            "model, with the KV cache and without it (blocks longer than the context); greedy, so both do the same "
            "work.\n\n" + md_table(["run", "jobs done", "token hit rate", "section TTFT p50 ms", "jobs/min", "wall s"],
                                   rows))


def peers_section(doc: dict[str, Any]) -> str:
    """`blatam bench peers`: ours against another OpenAI-compatible server on the same model."""
    work, ours, peer, r = doc["workload"], doc["ours"], doc["peer"], doc["ratio"]
    rows = [
        (f"TTFT, fresh {work['prompt_tokens']:,}-token prompt (ms)", "ttft_uncached_ms", "ttft_uncached"),
        (f"TTFT, {work['cached_tokens']:,} of {work['prompt_tokens']:,} tokens cached (ms)", "ttft_cached_ms",
         "ttft_cached"),
        (f"output tok/s, 1 at a time ({work['new_tokens']} new)", "tok_s_1", "tok_s_1"),
        (f"output tok/s, {work['concurrency']} concurrent ({work['new_tokens']} new)", "tok_s_16", "tok_s_16"),
    ]
    return (f"Compared: Blatam's `llm` app against {doc['peer_name']} on the same model ({doc['model']}), the same "
            f"requests in turns, medians of {doc['rounds']} rounds; ours/peer below 1 is faster for TTFT, above 1 "
            "for tokens/s.\n\n" + md_table(["measure", "Blatam", doc["peer_name"], "ours/peer"],
                                            [[label, ours[k], peer[k], f"**{times(r[key])}**"] for label, k, key in rows]))


def soak_section(doc: dict[str, Any]) -> str:
    """The soak: latency per kind over the run, and the last third of its samples against the first (drift)."""
    windows = under_load(doc)
    third = max(1, len(windows) // 3)
    early, late = windows[:third], windows[-third:]

    def median_of(group: list[dict[str, Any]], key: str) -> float | None:
        return statistics.median(w["latency"][key] for w in group) if group else None

    kinds = [[kind, p["n"], p["p50_ms"], p["p95_ms"], p["p99_ms"], p["max_ms"]] for kind, p in doc["by_kind"].items()]
    total = doc["latency"]
    kinds.append(["**all**", total["n"], total["p50_ms"], total["p95_ms"], total["p99_ms"], total["max_ms"]])
    drift = [[label, median_of(early, key), median_of(late, key),
              f"**{ratio(median_of(late, key), median_of(early, key))}**"]
             for label, key in (("p50 ms", "p50_ms"), ("p95 ms", "p95_ms"), ("p99 ms", "p99_ms"))]
    growth = max(doc["processes"], key=lambda p: p["growth"], default=None)
    config = doc["config"]
    text = (f"Fixed-rate load through the gateway ({config['rate_per_s']:g} requests/s open loop for "
            f"{config['duration_s']:g} s, a mix of {', '.join(f'`{k}`' for k in doc['by_kind'])}): {doc['sent']:,} requests, "
            f"{doc['errors']} errors, latency sampled every {config['sample_every_s']:g} s.\n\n"
            + md_table(["kind", "requests", "p50 ms", "p95 ms", "p99 ms", "max ms"], kinds)
            + "\n\nCompared: the median over sample windows of the soak's last third against its first third "
              "(above 1: latency crept up during the run).\n\n"
            + md_table(["latency", f"first {plural(len(early), 'sample')}", f"last {plural(len(late), 'sample')}",
                        "last / first"], drift))
    if growth is not None:
        text += (f"\n\nLargest RSS growth after the warm-up: {growth['label']} {growth['growth']:+.1%} "
                 f"({growth['baseline_rss_bytes'] / 2**20:.0f} -> {growth['final_rss_bytes'] / 2**20:.0f} MiB; "
                 "the soak test allows 10%). Processes gone or restarted: "
                 f"{', '.join(doc['replaced']) or 'none'}.")
    return text


def faults_section(doc: dict[str, Any]) -> str:
    """tests/faults: each fault under fixed-rate load; answers ok / cleanly refused / failed, and recovery."""
    rows = [[name, r["sent"], r["ok"], r["refused"], f"**{r['failed']}**" if r["failed"] else 0,
             f"{r['ok'] / r['sent']:.0%}" if r["sent"] else NONE, r["recovery_s"], r.get("healthy_after_load_s"),
             f"{r['acknowledged_writes'] - r['writes_missing']}/{r['acknowledged_writes']}"]
            for name, r in doc.items()]
    return ("Compared, per fault injected under fixed-rate load through the gateway: requests answered ok against "
            "those sent (the rest were refused cleanly, a 503 with Retry-After, or failed: the goal is 0), the "
            "seconds from the fault to the last refused request, and the writes the services acknowledged that "
            "still exist.\n\n" + md_table(["fault", "sent", "ok", "refused", "failed", "ok / sent", "recovery s",
                                            "healthy after load s", "writes kept"], rows))


SECTIONS = {
    "ttft": ("Time to first token (`blatam bench ttft`)", ttft_section),
    "policies": ("Eviction policies (`blatam bench policies`)", policies_section),
    "dataplane": ("KV data plane (`blatam bench dataplane`)", dataplane_section),
    "coordinator": ("Coordinator index (`blatam bench coordinator`)", coordinator_section),
    "serve": ("Serving: routing and batching (`blatam bench serve`)", serve_section),
    "prefill": ("Chunked prefill (`blatam bench prefill`)", prefill_section),
    "services": ("Services through the gateway (`blatam bench services`)", services_section),
    "peers": ("Against a peer server (`blatam bench peers`)", peers_section),
    "soak": ("Soak (tests/deployments/test_soak.py)", soak_section),
    "faults": ("Faults under load (tests/faults/test_faults.py)", faults_section),
}
"""Part name -> (heading, renderer), in the page's order."""
