"""`blatam bench ttft`: time to first token without cache, with the engine's
cache, and with the in-process ideal (the model's own cache object reused).

Method (as for the peers in notes/peers.md): random token-id prompts with BOS
first. Uncached: a fresh prompt. Cached: per run a new prefix of
``prompt - new`` tokens; request A (prefix + new random tokens, untimed) fills
the cache, request B (prefix + other new tokens) is timed. Ideal: the prefix
prefilled once into a `DynamicCache`, then B's suffix run on a copy of it (the
copy is not timed). Each figure is the median of ``--runs`` runs; each run
does one trial of each kind, in an order that rotates from run to run, so
drift of a shared machine hits all of them alike.
"""

from __future__ import annotations

import statistics
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import typer

from scripts.bench import bench_app
from scripts.bench.report import console, print_table, write_json
from scripts.up_ingress import DEFAULT_INGRESS, ingress_error

if TYPE_CHECKING:  # torch, transformers and the engine load inside the command, not for `blatam --help`
    import torch
    from rich.progress import Progress

    from cache_actors import UltraAdaptiveKVCacheEngine


Timer = Callable[[list[int]], tuple[float, int]]
"""A prompt's token ids -> (TTFT in ms, tokens served from cache): one path a cached trial is timed on."""
Prompts = tuple[list[int], list[int], list[int]]
"""A cached trial's shared prefix, request A's tail and request B's tail."""


def random_ids(generator: torch.Generator, count: int, vocab: int, low: int = 3) -> list[int]:
    """Random token ids (never the special ids below ``low``): nothing of them is cached."""
    import torch

    return torch.randint(low, vocab, (count,), generator=generator).tolist()


def _engine_ttft_ms(engine: UltraAdaptiveKVCacheEngine, ids: list[int]) -> tuple[float, int]:
    from cache_actors.engine.requests import LLMRequest

    request = LLMRequest(prompt_token_ids=ids, sampling={"max_new_tokens": 1})
    result = engine.generate_ids(request, ids)
    return result["ttft_ms"], result["cached_tokens"]


def _ideal_ttft_ms(engine: UltraAdaptiveKVCacheEngine, prefix: list[int], suffix: list[int]) -> float:
    """Reuse the model's own cache object: the best any external cache can do."""
    import torch
    from transformers import DynamicCache

    with torch.inference_mode():
        runner = engine.runner
        _, full = runner.prefill(prefix)
        copy = DynamicCache()
        for index, layer in enumerate(full.layers):
            copy.update(layer.keys.clone(), layer.values.clone(), index)
        started = time.perf_counter()
        logits, _ = runner.prefill(prefix + suffix, copy)
        int(torch.argmax(logits).item())
        return (time.perf_counter() - started) * 1000


def _cached_trial(timer: Timer, prompts: Prompts) -> tuple[float, int]:
    """Request A stores the prefix (untimed), then request B, timed, reuses it."""
    prefix, fill, suffix = prompts
    timer(prefix + fill)
    return timer(prefix + suffix)


def rotated(kinds: list[str], run: int) -> list[str]:
    """``kinds`` started at position ``run`` (mod len): over the runs each kind takes every place in the order.

    A slow spell of a shared machine then lands on each kind alike, rather
    than always on the one that runs, say, right after the 2,048-token fill.
    """
    shift = run % len(kinds)
    return kinds[shift:] + kinds[:shift]


def measure_ttft(
    engine: UltraAdaptiveKVCacheEngine, *, prompt_tokens: int, new_tokens: int, runs: int, seed: int = 0,
    progress: Progress | None = None, actor_engine: UltraAdaptiveKVCacheEngine | None = None,
    served: Timer | None = None,
) -> dict[str, Any]:
    """Medians of uncached, cached and ideal TTFT over ``runs`` runs, their trials interleaved (`rotated`).

    With ``actor_engine`` (the same model behind the distributed cache) each
    run also times the cached request through the shard actor: ``actor_ms``
    and ``actor_overhead`` (actor path / in-process ideal) join the result.
    With ``served`` (the same model served over HTTP: `scripts.bench.ttft_served`)
    each run also times the cached request as a client sees it:
    ``served_ms`` and ``served_overhead`` (served / in-process engine).
    """
    import torch

    if not 0 < new_tokens < prompt_tokens:
        raise ValueError("need 0 < new_tokens < prompt_tokens")
    if prompt_tokens + 1 > engine.runner.max_context:
        raise ValueError(f"prompt_tokens {prompt_tokens} exceeds the model's context {engine.runner.max_context}")
    generator = torch.Generator().manual_seed(seed)
    vocab = min(engine.runner.vocab_size, 259) if engine.runner.vocab_size >= 259 else engine.runner.vocab_size
    bos = [engine.runner.tokenizer.bos_token_id or 1]
    shared = prompt_tokens - new_tokens
    # The cached paths, each timed as request A then request B (`_cached_trial`).
    paths: dict[str, Timer] = {"cached": partial(_engine_ttft_ms, engine)}
    if actor_engine is not None:
        paths["actor"] = partial(_engine_ttft_ms, actor_engine)
    if served is not None:
        paths["served"] = served
    samples: dict[str, list[float]] = {kind: [] for kind in ("uncached", "ideal", *paths)}
    hits: dict[str, list[int]] = {kind: [] for kind in paths}

    def pair() -> Prompts:
        """A new shared prefix, request A's tail and request B's."""
        return (bos + random_ids(generator, shared - 1, vocab), random_ids(generator, new_tokens, vocab),
                random_ids(generator, new_tokens, vocab))

    task = progress.add_task("ttft runs", total=runs + 1) if progress else None
    for run in range(runs + 1):  # run 0 warms up allocators and kernels; not recorded
        fresh = bos + random_ids(generator, prompt_tokens - 1, vocab)
        # Each cached path gets prompts of its own: the shard actor and the served app share a shard when
        # they cache the same model with the same block size, and one path's B must not find the other's B
        # (or A) already there. The ideal reuses the engine's prompts: it is the engine's reference.
        prompts = {kind: pair() for kind in paths}
        engine_prefix, _, engine_suffix = prompts["cached"]
        trials: dict[str, Callable[[], tuple[float, int]]] = {
            "uncached": lambda: _engine_ttft_ms(engine, fresh),
            "cached": partial(_cached_trial, paths["cached"], prompts["cached"]),
            "ideal": lambda: (_ideal_ttft_ms(engine, engine_prefix, engine_suffix), shared),
        }
        trials.update({kind: partial(_cached_trial, paths[kind], prompts[kind]) for kind in paths if kind != "cached"})
        for kind in rotated(list(trials), run):
            ms, hit = trials[kind]()
            if run:
                samples[kind].append(ms)
                if kind in paths:
                    hits[kind].append(hit)
        if progress is not None and task is not None:
            progress.advance(task)
    medians = {key: statistics.median(values) for key, values in samples.items()}
    actor = {} if actor_engine is None else {
        "actor_ms": medians["actor"], "actor_overhead": medians["actor"] / medians["ideal"], "actor_cached_tokens": min(hits["actor"]),
    }
    served_result = {} if served is None else {
        "served_ms": medians["served"], "served_overhead": medians["served"] / medians["cached"],
        "served_cached_tokens": min(hits["served"]),
    }
    return {
        **actor,
        **served_result,
        "model": engine.runner.model_id,
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "block_size": engine.config.block_size,
        "runs": runs,
        "cached_tokens": min(hits["cached"]),
        "uncached_ms": medians["uncached"],
        "cached_ms": medians["cached"],
        "ideal_ms": medians["ideal"],
        "speedup": medians["uncached"] / medians["cached"],
        "overhead": medians["cached"] / medians["ideal"],
        "samples_ms": samples,
        "cached_tokens_samples": hits,
        "threads": torch.get_num_threads(),
        "dtype": str(engine.runner.dtype).removeprefix("torch."),
    }


@bench_app.command("ttft")
def ttft_command(
    model: str = typer.Option(None, "--model", help="demo (default), smollm2 (installed with `blatam model pull`) "
                                                     "or a local Hugging Face model folder."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16, float16 or auto."),
    prompt_tokens: int = typer.Option(2048, "--prompt-tokens", min=2),
    new_tokens: int = typer.Option(64, "--new-tokens", min=1, help="Tokens after the shared prefix."),
    block_size: int = typer.Option(64, "--block-size", min=1),
    runs: int = typer.Option(5, "--runs", min=1, help="Timed runs (median); one warm-up run is added."),
    threads: int = typer.Option(None, "--threads", min=1, help="torch threads (default: torch's choice)."),
    json_out: Path = typer.Option(None, "--json", help="Write the results here."),
    distributed: bool = typer.Option(False, "--distributed", help="Also time the cache through a Ray shard actor (without the replica-local tier the served app has in front of it)."),
    served: bool = typer.Option(False, "--served", help="Also time the cached request through HTTP on "
                                "serve_config.yaml's llm app, started here on the same model and dtype "
                                "(its own block size: give --block-size 16 to match the file's)."),
    ingress: str = typer.Option(DEFAULT_INGRESS, "--ingress", help="What answers the served app's HTTP, as `blatam up "
                                "--ingress`: haproxy (the default) or proxy (Serve's)."),
) -> None:
    """Time to first token: uncached vs the engine's cache vs the in-process ideal (and served, on Ray)."""
    from contextlib import ExitStack, closing

    from cache_actors.engine.model_store import ModelPullError, models_root, resolve_model

    if (error := ingress_error(ingress)) is not None:
        console.print(f"blatam bench ttft: {error}")
        raise typer.Exit(2)
    try:
        model_path = resolve_model(model, models_root())
    except ModelPullError as exc:
        console.print(f"blatam bench ttft: {exc}")
        raise typer.Exit(2) from exc
    from rich.progress import Progress

    # Closed last in, first out: the engines' compute threads stop before the served app and Ray go, and not
    # in a torch op while the interpreter exits.
    with ExitStack() as stack:
        timer = None
        if served:  # first: its Ray cluster is the one --distributed's shard actors join
            from scripts.bench.peers_ours import ours_llm
            from scripts.bench.ttft_served import ServedTTFT

            with console.status("starting Ray + Serve with serve_config.yaml's llm app"):
                server = stack.enter_context(ours_llm(model_path, dtype=None if dtype == "auto" else dtype,
                                                      ingress=ingress))
                timer = stack.enter_context(ServedTTFT(server.base_url))
            console.print(f"served: {server.base_url} (torch threads {server.replica['torch_threads']}, "
                          f"dtype {server.replica['dtype']}; {server.ingress})")
        with console.status("importing torch and the cache engine, loading the model"):
            from cache_actors import KVCacheConfig, UltraAdaptiveKVCacheEngine

            config = KVCacheConfig(
                model_path=model_path, block_size=block_size, num_threads=threads, dtype=dtype,
                max_tokens=max(4 * prompt_tokens, 8 * block_size), cache_strategy="lru",
            )
            engine = stack.enter_context(closing(UltraAdaptiveKVCacheEngine(config)))
        actor_engine = None
        if distributed:
            with console.status("starting the distributed cache (Ray, shard, coordinator)"):
                # The shard path itself: no replica-local tier in front of it (the served app has one).
                actor_config = config.model_copy(update={"enable_distributed": True, "redis_url": None, "replica_tier_mb": 0})
                actor_engine = stack.enter_context(closing(UltraAdaptiveKVCacheEngine(actor_config,
                                                                                      runner=engine.runner)))
        with Progress(console=console, transient=True) as progress:
            result = measure_ttft(engine, prompt_tokens=prompt_tokens, new_tokens=new_tokens, runs=runs,
                                  progress=progress, actor_engine=actor_engine, served=timer)
    print_table(
        f"TTFT, {prompt_tokens} prompt tokens, {prompt_tokens - new_tokens} shared ({result['model']})",
        ["path", "median ms"],
        [("uncached", result["uncached_ms"]), ("cached (engine)", result["cached_ms"]), ("ideal (in-process)", result["ideal_ms"])]
        + ([("cached (shard actor)", result["actor_ms"])] if distributed else [])
        + ([("cached (served, HTTP)", result["served_ms"])] if served else []),
    )
    if served:
        result["served_ingress"] = server.ingress
        console.print(f"served_overhead served/engine = [bold]{result['served_overhead']:.3f}[/bold], "
                      f"served cached tokens {result['served_cached_tokens']}")
    if distributed:
        console.print(f"actor_overhead actor/ideal = [bold]{result['actor_overhead']:.3f}[/bold], "
                      f"actor cached tokens {result['actor_cached_tokens']}")
    console.print(f"speedup uncached/cached = [bold]{result['speedup']:.2f}x[/bold], "
                  f"overhead cached/ideal = [bold]{result['overhead']:.3f}[/bold], cached tokens {result['cached_tokens']}")
    write_json(json_out, result)
