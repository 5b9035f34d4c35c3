"""`blatam bench prefill`: what one long prompt costs the sequences already decoding.

Continuous batching on the demo model, in process: ``--decoders`` sequences
with short prompts are decoding when a prompt of ``--long-tokens`` uncached
tokens arrives. Two settings of the batcher's ``max_prefill_tokens``:

- **whole**: larger than the prompt, so it is prefilled between two decode
  steps at once (what the batcher did before chunked prefill);
- **chunked**: ``--chunk`` tokens per iteration, decode steps in between.

For each it measures, while the long prompt is in flight (from its arrival
to its first token), the decoders' gaps between tokens (max and p99), and
the long prompt's TTFT. Trials alternate between the settings; the table
shows medians over ``--trials``. ``stall_ratio`` = chunked / whole max gap
(what chunking saves the running sequences), ``ttft_ratio`` = chunked /
whole TTFT (what the long prompt pays for it).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from scripts.bench import bench_app
from scripts.bench.report import console, print_table, write_json
from scripts.bench.ttft import random_ids

if TYPE_CHECKING:  # torch and the engine load inside the command, not for `blatam --help`
    from rich.progress import Progress

    from cache_actors import UltraAdaptiveKVCacheEngine
    from cache_actors.engine.batching import ContinuousBatcher

SETTINGS = ("whole", "chunked")


_SHORT_PROMPT_TOKENS = 16
"""Prompt length of each decoding sequence."""


async def _trial(batcher: ContinuousBatcher, *, decoders: int, long_ids: list[int], short_ids: list[list[int]],
                 decode_tokens: int) -> dict[str, float]:
    """One long prompt arriving among ``decoders`` decoding sequences: their gaps and its TTFT."""
    from cache_actors.engine.batching import SequenceRequest
    from cache_actors.engine.sampling import SamplingParams

    arrivals: list[list[float]] = [[] for _ in range(decoders)]
    finished = [False] * decoders
    started = asyncio.Event()

    async def decode(index: int) -> None:
        request = SequenceRequest(token_ids=short_ids[index],
                                  sampling=SamplingParams(max_new_tokens=decode_tokens))
        async for event in batcher.stream(request):
            if event["type"] == "delta":
                arrivals[index].append(time.perf_counter())
            if all(len(times) >= 4 or done for times, done in zip(arrivals, finished)):
                started.set()
        finished[index] = True  # (an early end of sequence: it just stops contributing gaps)
        if all(len(times) >= 4 or done for times, done in zip(arrivals, finished)):
            started.set()

    tasks = [asyncio.ensure_future(decode(i)) for i in range(decoders)]
    await asyncio.wait_for(started.wait(), timeout=300)
    sent = time.perf_counter()
    long_request = SequenceRequest(token_ids=long_ids, sampling=SamplingParams(max_new_tokens=1))
    async for event in batcher.stream(long_request):
        if event["type"] == "delta":
            break
    first_token = time.perf_counter()
    deadline = first_token + 30  # the gap that spans the prefill ends at each decoder's next token
    while time.perf_counter() < deadline and not all(
            done or (times and times[-1] > first_token) for times, done in zip(arrivals, finished)):
        await asyncio.sleep(0.001)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    gaps = [later - earlier for times in arrivals for earlier, later in zip(times, times[1:])
            if later > sent and earlier < first_token]
    gaps.sort()
    return {
        "max_gap_ms": gaps[-1] * 1000 if gaps else 0.0,
        "p99_gap_ms": gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))] * 1000 if gaps else 0.0,
        "ttft_ms": (first_token - sent) * 1000,
        "gaps": len(gaps),
    }


def demo_engine() -> UltraAdaptiveKVCacheEngine:
    """The demo model with 16-token blocks and room for every trial's prompts (imports torch: seconds)."""
    from cache_actors import KVCacheConfig, UltraAdaptiveKVCacheEngine

    return UltraAdaptiveKVCacheEngine(KVCacheConfig(block_size=16, max_tokens=65536))


def measure_prefill_stall(*, long_tokens: int = 1536, chunk: int = 256, decoders: int = 4, trials: int = 3,
                          decode_tokens: int = 400, seed: int = 0, engine: UltraAdaptiveKVCacheEngine | None = None,
                          progress: Progress | None = None) -> dict[str, Any]:
    """Per setting: median max/p99 decoder gap and long-prompt TTFT; ``stall_ratio`` and ``ttft_ratio``."""
    import torch

    from cache_actors.engine.batching import BatcherConfig, ContinuousBatcher

    engine = engine or demo_engine()
    vocab = engine.runner.vocab_size
    # Room for the long prompt and for every decoder's prompt plus its decode budget (a decoder that does
    # not fit was refused, and the trial waited for tokens that never came).
    model_len = max(long_tokens, _SHORT_PROMPT_TOKENS + decode_tokens) + 64
    budgets = {"whole": model_len, "chunked": chunk}
    batchers = {name: ContinuousBatcher(engine, BatcherConfig(max_batch_size=decoders + 1, max_model_len=model_len,
                                                              max_prefill_tokens=budget))
                for name, budget in budgets.items()}
    generator = torch.Generator().manual_seed(seed)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
    task = progress.add_task("prefill stall", total=trials * len(SETTINGS)) if progress else None
    try:
        for _ in range(trials):
            for name in SETTINGS:  # alternate, so drift on a shared machine hits both
                short = [random_ids(generator, _SHORT_PROMPT_TOKENS, vocab) for _ in range(decoders)]
                result = asyncio.run(_trial(batchers[name], decoders=decoders, long_ids=random_ids(generator, long_tokens, vocab),
                                            short_ids=short, decode_tokens=decode_tokens))
                samples[name].append(result)
                if progress is not None and task is not None:
                    progress.advance(task)
    finally:
        for batcher in batchers.values():
            batcher.close()
    rows = {name: {key: statistics.median(s[key] for s in samples[name]) for key in ("max_gap_ms", "p99_gap_ms", "ttft_ms")}
            for name in SETTINGS}
    return {
        "long_tokens": long_tokens, "chunk_tokens": chunk, "decoders": decoders, "trials": trials,
        "budgets": budgets, "settings": rows, "samples": samples,
        "stall_ratio": rows["chunked"]["max_gap_ms"] / rows["whole"]["max_gap_ms"] if rows["whole"]["max_gap_ms"] else None,
        "ttft_ratio": rows["chunked"]["ttft_ms"] / rows["whole"]["ttft_ms"],
    }


@bench_app.command("prefill")
def prefill_command(
    long_tokens: int = typer.Option(1536, "--long-tokens", help="Uncached tokens of the long prompt."),
    chunk: int = typer.Option(256, "--chunk", help="max_prefill_tokens of the chunked setting."),
    decoders: int = typer.Option(4, "--decoders", help="Sequences decoding when the long prompt arrives."),
    trials: int = typer.Option(3, "--trials", help="Trials per setting (medians are reported)."),
    json_out: Path = typer.Option(None, "--json", help="Write the results here."),
) -> None:
    """Decode stall caused by one long prompt: prefilled at once vs in chunks (demo model, in process)."""
    with console.status("importing torch and the cache engine, loading the demo model"):
        engine = demo_engine()
    from rich.progress import Progress

    with Progress(console=console, transient=True) as progress:
        result = measure_prefill_stall(long_tokens=long_tokens, chunk=chunk, decoders=decoders, trials=trials,
                                       engine=engine, progress=progress)
    print_table(
        f"One {long_tokens}-token prompt arriving among {decoders} decoding sequences (medians of {trials})",
        ["setting", "max_prefill_tokens", "decoders' max gap ms", "p99 gap ms", "long prompt TTFT ms"],
        [(name, result["budgets"][name], row["max_gap_ms"], row["p99_gap_ms"], row["ttft_ms"])
         for name, row in result["settings"].items()],
    )
    stall = f"{result['stall_ratio']:.2f}x" if result["stall_ratio"] is not None else "n/a (no decoder was running)"
    console.print(f"stall_ratio (chunked/whole max gap) {stall}, ttft_ratio (chunked/whole) {result['ttft_ratio']:.2f}x")
    write_json(json_out, result)
