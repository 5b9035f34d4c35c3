"""Seeded generators of Mooncake-format request traces, and `blatam bench gen-trace`.

Each workload stands for a kind of traffic that stresses eviction differently:

- ``multiturn``: chat sessions. Every turn resends the whole conversation so far
  (system prompt, earlier turns, answers) plus a new message; sessions
  interleave and pause for a user's think time. Reuse is recency-shaped.
- ``sysprompt``: many tenants/apps, each with a system prompt of several blocks
  and a few few-shot/context variants, chosen with Zipf popularity, followed
  by a unique user message. Reuse is frequency-shaped with one-off tails.
- ``agent``: agent loops. An agent type has a long system + tool-definition
  prompt; each step appends the model's action and a long tool output and
  re-reads everything. Steps come seconds apart; many episodes overlap.
- ``documents``: mostly one-off long documents (a scan), some follow-up
  questions on a recent document, and a small popular reference library.
- ``mixed``: the four above at once, with disjoint ids, merged by time.

Sizes follow what is reported for production traffic (Mooncake: 512-token
blocks, prompts of several thousand tokens); default request counts give
10^4-10^5 unique blocks while keeping a policy sweep to seconds.
Block ids follow the Mooncake convention: each new block gets the next integer,
and equal ids mean an equal prefix up to that block. A partial last block gets
an id of its own (its content differs from the block that later completes it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import typer
from rich.console import Console

from scripts.bench import bench_app

if TYPE_CHECKING:  # numpy and `cache_actors` (torch: seconds) load when a trace is built, not for `--help`
    import numpy as np

    from cache_actors.policies.simulator import TraceRequest

DEFAULT_REQUESTS = 4000
DEFAULT_BLOCK_TOKENS = 512
"""Mooncake's block: the value of `cache_actors.policies.simulator.DEFAULT_BLOCK_TOKENS` (a test keeps them equal),
repeated here so that the options' defaults need no import of the cache engine."""


class _Ids:
    """Consecutive block ids shared by every stream of one trace."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, n: int) -> list[int]:
        start = self.next
        self.next += n
        return list(range(start, start + n))


@dataclass(slots=True)
class _Prompt:
    """A prompt that grows by appending text: full blocks keep their ids."""

    ids: _Ids
    block_tokens: int
    full: list[int] = field(default_factory=list)
    tail_tokens: int = 0
    tail_id: int = -1

    @property
    def tokens(self) -> int:
        return len(self.full) * self.block_tokens + self.tail_tokens

    def fork(self) -> "_Prompt":
        return _Prompt(self.ids, self.block_tokens, list(self.full), self.tail_tokens, self.tail_id)

    def extend(self, tokens: int) -> "_Prompt":
        total = self.tail_tokens + tokens
        n_full, self.tail_tokens = divmod(total, self.block_tokens)
        self.full.extend(self.ids.take(n_full))
        self.tail_id = self.ids.take(1)[0] if self.tail_tokens else -1
        return self

    def hash_ids(self) -> tuple[int, ...]:
        return tuple(self.full) + ((self.tail_id,) if self.tail_tokens else ())


@dataclass(slots=True)
class _Gen:
    """Random helpers around one seeded numpy generator."""

    rng: np.random.Generator
    ids: _Ids
    block_tokens: int

    def lognormal_int(self, median: float, sigma: float, lo: int, hi: int) -> int:
        import numpy as np

        return int(np.clip(self.rng.lognormal(np.log(median), sigma), lo, hi))

    def zipf_sampler(self, n: int, alpha: float) -> Callable[[], int]:
        import numpy as np

        weights = 1.0 / np.arange(1, n + 1) ** alpha
        cdf = np.cumsum(weights / weights.sum())
        perm = self.rng.permutation(n)  # popularity rank is unrelated to creation order
        return lambda: int(perm[min(int(np.searchsorted(cdf, self.rng.random())), n - 1)])

    def prompt(self, tokens: int = 0) -> _Prompt:
        return _Prompt(self.ids, self.block_tokens).extend(tokens)


# Each stream yields (time_ms, prompt hash ids, input tokens, output tokens), not
# necessarily in time order; `generate` sorts and truncates.
_Event = tuple[float, tuple[int, ...], int, int]


def _multiturn(g: _Gen, n: int) -> Iterator[_Event]:
    apps = [g.prompt(g.lognormal_int(900, 0.6, 200, 4000)) for _ in range(12)]
    pick_app = g.zipf_sampler(len(apps), 1.0)
    made, t0 = 0, 0.0
    while made < n:
        t0 += g.rng.exponential(1500.0)  # a new session every 1.5 s on average
        convo = apps[pick_app()].fork()
        t = t0
        for _ in range(min(int(g.rng.geometric(1 / 7)), 40)):
            pasted = g.rng.random() < 0.15  # a pasted document or code file
            convo.extend(g.lognormal_int(3000, 0.7, 500, 16000) if pasted else g.lognormal_int(150, 1.0, 5, 3000))
            out = g.lognormal_int(350, 0.8, 10, 4000)
            yield t, convo.hash_ids(), convo.tokens, out
            made += 1
            convo.extend(out)
            t += out * 25.0 + g.rng.exponential(60_000.0)  # generation + think time


def _sysprompt(g: _Gen, n: int) -> Iterator[_Event]:
    n_apps = 400
    apps = [g.prompt(g.lognormal_int(1800, 0.8, 300, 12000)) for _ in range(n_apps)]
    # few-shot / retrieved-context variants on top of each app's system prompt
    variants = [[a.fork().extend(g.lognormal_int(1200, 0.6, 200, 5000)) for _ in range(4)] for a in apps]
    pick_app = g.zipf_sampler(n_apps, 0.9)
    pick_variant = g.zipf_sampler(4, 1.0)
    t = 0.0
    for _ in range(n):
        t += g.rng.exponential(200.0)
        app = pick_app()
        base = variants[app][pick_variant()] if g.rng.random() < 0.4 else apps[app]
        req = base.fork().extend(g.lognormal_int(500, 0.9, 10, 6000))
        yield t, req.hash_ids(), req.tokens, g.lognormal_int(300, 0.7, 10, 2000)


def _agent(g: _Gen, n: int) -> Iterator[_Event]:
    kinds = [g.prompt(g.lognormal_int(4000, 0.5, 1500, 12000)) for _ in range(10)]
    pick_kind = g.zipf_sampler(len(kinds), 0.8)
    made, t0 = 0, 0.0
    while made < n:
        t0 += g.rng.exponential(4000.0)  # a new episode every 4 s on average
        ctx = kinds[pick_kind()].fork().extend(g.lognormal_int(400, 0.8, 50, 3000))  # the task
        t = t0
        for _ in range(min(int(g.rng.geometric(1 / 12)), 60)):
            action = g.lognormal_int(150, 0.7, 20, 1500)
            yield t, ctx.hash_ids(), ctx.tokens, action
            made += 1
            tool_out = g.lognormal_int(1200, 1.0, 50, 16000)  # file read, search results, logs
            ctx.extend(action + tool_out)
            t += action * 25.0 + g.rng.exponential(3000.0)  # generation + tool latency


def _documents(g: _Gen, n: int) -> Iterator[_Event]:
    instructions = [g.prompt(g.lognormal_int(300, 0.5, 100, 1500)) for _ in range(6)]
    library = [g.prompt(g.lognormal_int(8000, 0.6, 2000, 30000)) for _ in range(60)]
    pick_book = g.zipf_sampler(len(library), 1.0)
    recent: list[_Prompt] = []
    t = 0.0
    for _ in range(n):
        t += g.rng.exponential(400.0)
        u = g.rng.random()
        if u < 0.2 and recent:  # follow-up question on a recently uploaded document
            age = min(int(g.rng.geometric(1 / 8)), len(recent))
            req = recent[-age].fork()
        elif u < 0.35:  # a question over a popular reference document
            req = library[pick_book()].fork()
        else:  # a new one-off document under a task instruction
            req = instructions[int(g.rng.integers(len(instructions)))].fork()
            req.extend(g.lognormal_int(6000, 0.8, 500, 32000))
            doc = req.fork()
            doc.tail_tokens, doc.tail_id = 0, -1  # follow-ups share the full blocks only
            recent.append(doc)
            recent = recent[-200:]
        req.extend(g.lognormal_int(80, 0.8, 5, 1000))
        yield t, req.hash_ids(), req.tokens, g.lognormal_int(400, 0.7, 20, 3000)


_STREAMS: dict[str, Callable[[_Gen, int], Iterator[_Event]]] = {
    "multiturn": _multiturn,
    "sysprompt": _sysprompt,
    "agent": _agent,
    "documents": _documents,
}
WORKLOADS: tuple[str, ...] = (*_STREAMS, "mixed")


def generate(
    workload: str,
    num_requests: int = DEFAULT_REQUESTS,
    *,
    seed: int = 0,
    block_tokens: int = DEFAULT_BLOCK_TOKENS,
) -> list[TraceRequest]:
    """Requests of ``workload`` in arrival order (same seed, same trace)."""
    import numpy as np

    from cache_actors.policies.simulator import TraceRequest

    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; supported: {list(WORKLOADS)}")
    if num_requests < 1:
        raise ValueError(f"num_requests must be >= 1, got {num_requests}")
    g = _Gen(np.random.default_rng(seed), _Ids(), block_tokens)
    if workload == "mixed":
        share = -(-num_requests // len(_STREAMS))
        events = [e for stream in _STREAMS.values() for e in stream(g, share)]
    else:
        events = list(_STREAMS[workload](g, num_requests))
    events.sort(key=lambda e: e[0])  # stable: equal times keep generation order
    events = events[:num_requests]
    return [TraceRequest(float(round(t)), tokens, out, ids) for t, ids, tokens, out in events]


@bench_app.command("gen-trace")
def gen_trace(
    workload: str = typer.Option(..., "--workload", "-w", help=f"One of: {', '.join(WORKLOADS)}."),
    out: Path = typer.Option(..., "--out", "-o", help="JSONL file to write (Mooncake format)."),
    requests: int = typer.Option(DEFAULT_REQUESTS, "--requests", "-n", min=1, help="Number of requests."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same seed, same trace."),
    block_tokens: int = typer.Option(DEFAULT_BLOCK_TOKENS, "--block-tokens", min=1, help="Tokens per block."),
) -> None:
    """Write a synthetic request trace of one workload."""
    if workload not in WORKLOADS:
        raise typer.BadParameter(f"unknown workload {workload!r}; supported: {', '.join(WORKLOADS)}", param_hint="--workload")
    from cache_actors.policies.simulator import write_trace

    reqs = generate(workload, requests, seed=seed, block_tokens=block_tokens)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_trace(out, reqs)
    unique = len({i for r in reqs for i in r.hash_ids})
    Console().print(f"wrote {len(reqs)} requests ({unique} unique block ids) of workload {workload!r} to {out}")
