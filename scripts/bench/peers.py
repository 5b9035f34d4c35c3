"""`blatam bench peers`: our `llm` app against another OpenAI-compatible server on the same model.

The peer is any server with ``/v1/completions`` (vLLM-CPU, llama.cpp's
server, or our own): ``--peer-url`` up to ``/v1``. Ours is ``--ours-url``, or
the ``llm`` app of serve_config.yaml started here on ``--model`` and stopped
after (`scripts.bench.peers_ours`). Both must serve the same weights and
tokenizer: for the demo model, point the peer at ``blatam cache export-demo
DIR``.

The workload (notes/peers.md, issue 15), each measure on each server in
turn, the order of the servers swapped every round so a slow spell of the
shared machine lands on both alike, and each measure starts once the CPUs
are quiet (`scripts.bench.quiet_cpu`: vLLM-CPU spins a core for a second
after a burst); one warm-up round, then ``--rounds`` recorded ones, medians:

- ``ttft_uncached``: a fresh ``--prompt-tokens`` (2,049) prompt, first token.
- ``ttft_cached``: request A (untimed) and B (timed) share their first
  ``--cached-tokens`` (1,984) tokens plus a small margin, then differ.
- ``tok_s_1``: ``--sequential`` (4) fresh ``--short-prompt-tokens`` (64)
  prompts one after the other, ``--new-tokens`` (64) each.
- ``tok_s_16``: ``--concurrency`` (16) such requests at once.

Every prompt is text made fresh from a seed drawn for this run
(`scripts.bench.peers_prompts`), sized with the model's tokenizer; what
each server counted comes back in ``usage`` and is reported. Ratios are
ours / peer: below 1 is faster for TTFT, above 1 is faster for tokens/s.
"""

from __future__ import annotations

import asyncio
import os
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from scripts.bench import bench_app
from scripts.bench.cpu_use import CpuTally, mark
from scripts.bench.quiet_cpu import MAX_WAIT_S, wait_for_quiet_cpus
from scripts.bench.report import console, print_table, write_json
from scripts.up_ingress import DEFAULT_INGRESS, ingress_error

if TYPE_CHECKING:  # httpx and the tokenizer load inside the command, not for `blatam --help`
    import httpx
    from rich.progress import Progress

    from scripts.bench.peers_client import Server
    from scripts.bench.peers_prompts import PromptMaker

MEASURES = ("ttft_uncached", "ttft_cached", "tok_s_1", "tok_s_16")
TTFT_MEASURES = ("ttft_uncached", "ttft_cached")
MIN_ROUNDS = 5
COUNT_TOLERANCE = 0.02
"""A server that counts a prompt more than 2% off the target likely serves another tokenizer: said loudly."""


@dataclass(frozen=True, slots=True)
class Workload:
    """Sizes of the four measures (defaults: issue 15's)."""

    prompt_tokens: int = 2049
    cached_tokens: int = 1984
    short_prompt_tokens: int = 64
    new_tokens: int = 64
    sequential: int = 4
    concurrency: int = 16


@dataclass(slots=True)
class Samples:
    """What one server gave over the recorded rounds."""

    values: dict[str, list[float]]
    prompt_tokens: list[int]
    cached_tokens: list[int]
    completion_tokens: dict[str, list[int]]
    quiet_wait_s: float = 0.0
    """Seconds spent waiting for quiet CPUs before this server's measures."""
    cpu: CpuTally = field(default_factory=CpuTally)
    """CPU time of the recorded runs (`scripts.bench.cpu_use`)."""

    @classmethod
    def empty(cls) -> Samples:
        return cls({m: [] for m in MEASURES}, [], [], {"tok_s_1": [], "tok_s_16": []})


Measure = Callable[["httpx.AsyncClient", "Server", "PromptMaker", Workload, Samples | None], Awaitable[None]]


async def _ttft_uncached(http: httpx.AsyncClient, server: Server, maker: PromptMaker, work: Workload,
                         into: Samples | None) -> None:
    from scripts.bench.peers_client import ttft

    result = await ttft(http, server, maker.fresh(work.prompt_tokens))
    if into is not None:
        into.values["ttft_uncached"].append(result.ms)
        if result.prompt_tokens is not None:
            into.prompt_tokens.append(result.prompt_tokens)


async def _ttft_cached(http: httpx.AsyncClient, server: Server, maker: PromptMaker, work: Workload,
                       into: Samples | None) -> None:
    from scripts.bench.peers_client import ttft

    pair = maker.cached_pair(cached=work.cached_tokens, total=work.prompt_tokens)
    await ttft(http, server, pair.fill)  # request A: the server stores the shared prefix
    result = await ttft(http, server, pair.timed)
    if into is not None:
        into.values["ttft_cached"].append(result.ms)
        if result.cached_tokens is not None:
            into.cached_tokens.append(result.cached_tokens)


def _throughput(measure: str) -> Measure:
    concurrent = measure == "tok_s_16"

    async def run(http: httpx.AsyncClient, server: Server, maker: PromptMaker, work: Workload,
                  into: Samples | None) -> None:
        from scripts.bench.peers_client import throughput

        count = work.concurrency if concurrent else work.sequential
        prompts = [maker.fresh(work.short_prompt_tokens) for _ in range(count)]
        result = await throughput(http, server, prompts, new_tokens=work.new_tokens, concurrent=concurrent)
        if into is not None:
            into.values[measure].append(result.tok_s)
            into.completion_tokens[measure].extend(result.completion_tokens)

    return run


RUNNERS: dict[str, Measure] = {"ttft_uncached": _ttft_uncached, "ttft_cached": _ttft_cached,
                               "tok_s_1": _throughput("tok_s_1"), "tok_s_16": _throughput("tok_s_16")}


async def run_rounds(http: httpx.AsyncClient, servers: list[Server], maker: PromptMaker, work: Workload, *,
                     rounds: int, progress: Progress | None = None,
                     cpu_roots: dict[str, int] | None = None, quiet_wait_s: float = MAX_WAIT_S) -> dict[str, Samples]:
    """One warm-up round, then ``rounds`` recorded ones; each measure on each server, order swapped each round.

    ``cpu_roots``: per server name, a process whose descendants are that
    server (ours, started here: this process), for CPU time per role.
    ``quiet_wait_s``: the longest wait for quiet CPUs before each measure (0: none).
    """
    cpu_roots = cpu_roots or {}
    samples = {server.name: Samples.empty() for server in servers}
    task = progress.add_task("rounds (1 warm-up)", total=(rounds + 1) * len(MEASURES) * len(servers)) \
        if progress is not None else None
    for index in range(rounds + 1):
        order = servers if index % 2 == 0 else servers[::-1]
        for measure in MEASURES:
            for server in order:
                samples[server.name].quiet_wait_s += await wait_for_quiet_cpus(max_wait_s=quiet_wait_s)
                root = cpu_roots.get(server.name)
                before = mark(root, starting=True) if index else None
                await RUNNERS[measure](http, server, maker, work, samples[server.name] if index else None)
                if before is not None:
                    samples[server.name].cpu.add(measure, before, mark(root, starting=False))
                if progress is not None and task is not None:
                    progress.advance(task)
    return samples


def summarise(samples: Samples, server: Server) -> dict[str, Any]:
    """Medians of one server's samples, what it counted, and the samples themselves."""
    medians = {m: statistics.median(v) for m, v in samples.values.items()}
    produced = {m: (sum(c) / len(c) if c else None) for m, c in samples.completion_tokens.items()}
    return {
        "url": server.base_url,
        "model": server.model,
        "ignore_eos": bool(server.extra.get("ignore_eos")),
        "ttft_uncached_ms": medians["ttft_uncached"],
        "ttft_cached_ms": medians["ttft_cached"],
        "tok_s_1": medians["tok_s_1"],
        "tok_s_16": medians["tok_s_16"],
        "prompt_tokens": statistics.median(samples.prompt_tokens) if samples.prompt_tokens else None,
        "cached_tokens": statistics.median(samples.cached_tokens) if samples.cached_tokens else None,
        "completion_tokens_per_request": produced,
        "quiet_wait_s": samples.quiet_wait_s,
        "cpu": samples.cpu.per_run_ms(),
        "samples": samples.values,
    }


def ratios(ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, float]:
    """Ours over the peer for each measure (TTFT: below 1 is faster; tokens/s: above 1 is faster)."""
    return {
        "ttft_uncached": ours["ttft_uncached_ms"] / peer["ttft_uncached_ms"],
        "ttft_cached": ours["ttft_cached_ms"] / peer["ttft_cached_ms"],
        "tok_s_1": ours["tok_s_1"] / peer["tok_s_1"],
        "tok_s_16": ours["tok_s_16"] / peer["tok_s_16"],
    }


def count_warnings(side: str, result: dict[str, Any], work: Workload) -> list[str]:
    """What a server counted that does not match the workload (another model or tokenizer, a cache miss)."""
    warnings = []
    counted = result["prompt_tokens"]
    if counted is not None and abs(counted - work.prompt_tokens) > COUNT_TOLERANCE * work.prompt_tokens:
        warnings.append(f"{side} counted {counted:g} prompt tokens for {work.prompt_tokens}: does it serve the same "
                        "model and tokenizer as --model?")
    if result["cached_tokens"] is not None and result["cached_tokens"] < work.cached_tokens:
        warnings.append(f"{side} reused {result['cached_tokens']:g} tokens of the {work.cached_tokens} shared "
                        "(prefix caching off, or a block size that does not divide them?)")
    return warnings


async def _measure(peer_url: str, peer_name: str, ours_url: str, maker: PromptMaker, work: Workload,
                   rounds: int, keys: tuple[str | None, str | None] = (None, None), ours_started_here: bool = False,
                   quiet_wait_s: float = MAX_WAIT_S) -> tuple[dict[str, Any], dict[str, Any]]:
    from rich.progress import Progress

    from scripts.bench.peers_client import connect, http_client

    async with http_client(max(work.concurrency, work.sequential)) as http:
        ours = await connect(http, "ours", ours_url, keys[0])
        peer = await connect(http, peer_name, peer_url, keys[1])
        with Progress(console=console, transient=True) as progress:
            samples = await run_rounds(http, [ours, peer], maker, work, rounds=rounds, progress=progress,
                                       cpu_roots={ours.name: os.getpid()} if ours_started_here else None,
                                       quiet_wait_s=quiet_wait_s)
    return summarise(samples[ours.name], ours), summarise(samples[peer.name], peer)


def _figure(value: float) -> str:
    """Milliseconds or tokens/s as the README's tables show them: whole numbers, tenths below 100."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def print_report(ours: dict[str, Any], peer: dict[str, Any], ratio: dict[str, float], peer_name: str,
                 work: Workload) -> None:
    """The rich table: one row per measure, ours, the peer, ours/peer."""
    rows = [
        (f"TTFT, fresh {work.prompt_tokens:,}-token prompt (ms)", "ttft_uncached_ms", "ttft_uncached"),
        (f"TTFT, {work.cached_tokens:,} of {work.prompt_tokens:,} tokens cached (ms)", "ttft_cached_ms",
         "ttft_cached"),
        (f"output tok/s, 1 at a time ({work.new_tokens} new)", "tok_s_1", "tok_s_1"),
        (f"output tok/s, {work.concurrency} concurrent ({work.new_tokens} new)", "tok_s_16", "tok_s_16"),
    ]
    print_table(f"Blatam vs {peer_name}, same model, text prompts through /v1/completions",
                ["measure", "Blatam", peer_name, "ours/peer"],
                [(label, _figure(ours[key]), _figure(peer[key]), f"{ratio[r]:.2f}") for label, key, r in rows])
    console.print("ours/peer: below 1 is faster for TTFT, above 1 is faster for tok/s. "
                  f"Cached tokens reported: ours {ours['cached_tokens']}, {peer_name} {peer['cached_tokens']}.")


def print_cpu_report(ours: dict[str, Any], peer: dict[str, Any], peer_name: str) -> None:
    """CPU time per run of each measure: the machine's with each server, and ours per process role.

    The machine's figure includes whatever else runs (the other server idling, this client), alike for both.
    """
    measures = [m for m in MEASURES if m in ours["cpu"] and m in peer["cpu"]]
    machine = [(m, ours["cpu"][m]["machine_ms"], peer["cpu"][m]["machine_ms"]) for m in measures]
    if machine and all(o is not None and p is not None for _, o, p in machine):
        print_table(f"CPU per run, the whole machine (ms of CPU over {os.cpu_count()} cores)",
                    ["measure", "Blatam", peer_name, "ours/peer"],
                    [(m, f"{o:,.0f}", f"{p:,.0f}", f"{o / p:.2f}" if p else "-") for m, o, p in machine])
    roles_by_measure = {m: ours["cpu"][m]["roles_ms"] for m in measures if ours["cpu"][m]["roles_ms"]}
    if roles_by_measure:
        roles = sorted({r for by_role in roles_by_measure.values() for r in by_role},
                       key=lambda r: -sum(by_role.get(r, 0.0) for by_role in roles_by_measure.values()))
        print_table("Our CPU per run by process (ms)", ["process", *roles_by_measure],
                    [(r, *(f"{by_role.get(r, 0.0):,.0f}" for by_role in roles_by_measure.values())) for r in roles])


DTYPES = ("float32", "bfloat16", "config")


@bench_app.command("peers")
def peers_command(
    peer_url: Annotated[str, typer.Option("--peer-url", help="The peer's OpenAI API, up to /v1 "
                                          "(e.g. http://127.0.0.1:18081/v1 for vLLM).")],
    json_out: Annotated[Path, typer.Option("--json", help="Write the results here.")],
    peer_name: Annotated[str, typer.Option("--peer-name", help="The peer's name in the table.")] = "vLLM-CPU",
    ours_url: Annotated[str | None, typer.Option(
        "--ours-url", help="Our llm app's /v1, or the gateway's /v1 of `blatam up` (with --ours-api-key) "
                           "(default: start serve_config.yaml's llm app here and stop it after).")
    ] = None,
    ours_api_key: Annotated[str | None, typer.Option(
        "--ours-api-key", envvar="BLATAM_BENCH_OURS_API_KEY",
        help="Bearer key for --ours-url (the gateway's /v1 wants one: `blatam keys create`).")] = None,
    peer_api_key: Annotated[str | None, typer.Option(
        "--peer-api-key", envvar="BLATAM_BENCH_PEER_API_KEY",
        help="Bearer key for --peer-url (a vLLM started with --api-key; or our gateway measured as the peer).")
    ] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="demo (default), smollm2 or a Hugging Face folder: what ours serves and whose tokenizer "
                        "sizes the prompts; the peer must serve the same (`blatam cache export-demo DIR`).")] = None,
    rounds: Annotated[int, typer.Option(help="Recorded rounds (medians); one warm-up round is added.",
                                        min=MIN_ROUNDS)] = MIN_ROUNDS,
    prompt_tokens: Annotated[int, typer.Option(help="Tokens of a TTFT prompt, BOS included.", min=8)] = 2049,
    cached_tokens: Annotated[int, typer.Option(help="Tokens the cached TTFT prompt shares with the one before "
                                                    "(a multiple of both block sizes).", min=1)] = 1984,
    short_prompt_tokens: Annotated[int, typer.Option(help="Prompt tokens of a throughput request.", min=2)] = 64,
    new_tokens: Annotated[int, typer.Option(help="Tokens generated per throughput request.", min=1)] = 64,
    sequential: Annotated[int, typer.Option(help="Requests one after the other (tok_s_1).", min=1)] = 4,
    concurrency: Annotated[int, typer.Option(help="Requests at once (tok_s_16).", min=1)] = 16,
    dtype: Annotated[str, typer.Option(
        help="Compute dtype of ours when started here: float32 (as the README starts vLLM-CPU), bfloat16, "
             "or config (serve_config.yaml's `auto`: bf16 on a CPU with AMX). Give the peer the same one.")
    ] = "float32",
    ingress: Annotated[str, typer.Option(
        "--ingress", help="What answers ours' HTTP when started here, as `blatam up --ingress`: haproxy (the "
                          "default) or proxy (Serve's).")] = DEFAULT_INGRESS,
    seed: Annotated[int | None, typer.Option(help="Prompt seed (default: a new one every run, so a peer "
                                                   "that stays up never sees a prompt twice).")] = None,
    quiet_wait_s: Annotated[float, typer.Option(
        "--quiet-wait-s", min=0.0, help="Longest wait for quiet CPUs before each measure; 0 waits never (on a "
                                        "machine that is never quiet, e.g. beside a test run).")] = MAX_WAIT_S,
) -> None:
    """Ours vs a peer server on the same model: TTFT uncached and cached, output tok/s at 1 and N at once."""
    from contextlib import ExitStack

    from cache_actors.engine.model_store import ModelPullError, models_root, resolve_model
    from scripts.bench.peers_client import PeerError
    from scripts.bench.peers_prompts import PREFIX_MARGIN, PromptMaker, run_seed

    if dtype not in DTYPES:
        console.print(f"blatam bench peers: --dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        raise typer.Exit(2)
    if (error := ingress_error(ingress)) is not None:
        console.print(f"blatam bench peers: {error}")
        raise typer.Exit(2)
    work = Workload(prompt_tokens, cached_tokens, short_prompt_tokens, new_tokens, sequential, concurrency)
    if prompt_tokens - cached_tokens < 2 * PREFIX_MARGIN:
        console.print(f"blatam bench peers: --cached-tokens {cached_tokens} leaves too little of --prompt-tokens "
                      f"{prompt_tokens} to differ (at least {2 * PREFIX_MARGIN} tokens)")
        raise typer.Exit(2)
    try:
        model_path = resolve_model(model, models_root())
    except ModelPullError as exc:
        console.print(f"blatam bench peers: {exc}")
        raise typer.Exit(2) from exc
    seed = run_seed() if seed is None else seed
    with console.status("loading the model's tokenizer"):
        from cache_actors.engine.prompt_encoder import load_tokenizer

        maker = PromptMaker(load_tokenizer(model_path), seed)
    replica = front = None
    with ExitStack() as stack:
        if ours_url is None:
            from scripts.bench.peers_ours import ours_llm

            with console.status("starting Ray + Serve with serve_config.yaml's llm app"):
                server = stack.enter_context(ours_llm(model_path, dtype=None if dtype == "config" else dtype,
                                                      ingress=ingress))
            ours_url, replica, front = server.base_url, server.replica, server.ingress
            console.print(f"ours: {ours_url} (torch threads {replica['torch_threads']}, "
                          f"num_cpus {replica['num_cpus']}, dtype {replica['dtype']}; {front})")
        try:
            ours, peer = asyncio.run(_measure(peer_url, peer_name, ours_url, maker, work, rounds,
                                              (ours_api_key, peer_api_key), ours_started_here=replica is not None,
                                              quiet_wait_s=quiet_wait_s))
        except PeerError as exc:
            console.print(f"blatam bench peers: {exc}")
            raise typer.Exit(1) from exc
    ours["replica"], ours["ingress"] = replica, front
    ratio = ratios(ours, peer)
    print_report(ours, peer, ratio, peer_name, work)
    print_cpu_report(ours, peer, peer_name)
    for line in count_warnings("ours", ours, work) + count_warnings(peer_name, peer, work):
        console.print(f"[yellow]warning:[/yellow] {line}")
    write_json(json_out, {
        "benchmark": "peers",
        "peer_name": peer_name,
        "model": model or "demo",
        "seed": seed,
        "rounds": rounds,
        "workload": asdict(work),
        "cpus": os.cpu_count(),
        "ours": ours,
        "peer": peer,
        "ratio": ratio,
    })
