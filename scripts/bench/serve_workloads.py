"""Workloads and metrics of `blatam bench serve` (pure: no Ray, no model).

A workload is a list of `Session`s. A client of the benchmark takes the next
session and runs its turns one after the other, each turn's chat being the
session's system prompt, the earlier user turns and the model's real answers
to them, then the new user message. So every workload is a closed loop of
chats, and the prefix a turn shares with earlier requests is what a real
service would share:

- ``multitenant``: ``tenants`` tenants, each with its own long system prompt
  (distinct text); each request is one turn: the tenant's system prompt and a
  short unique question, the tenant drawn uniformly (or Zipf with ``zipf > 0``)
  from a seeded generator. The shared-prefix case that cache-aware routing is for.
- ``unique``: one turn per request with a system prompt of the same length
  nobody else has: nothing to share (affinity has nothing to gain).
- ``chat``: multi-turn sessions (``turns`` each) with their own system
  prompt: each turn extends the previous one's prompt.

The metrics turn per-request records into the figures of the benchmark's
JSON (`summarize`).
"""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

WORKLOADS = ("multitenant", "unique", "chat")

_WORDS = (
    "account access agent answer archive audit balance billing branch budget calendar campaign card catalog change "
    "claim client code compliance contract cost credit customer data deadline delivery deposit design device "
    "discount document draft email employee energy estimate event expense export feature fee file finance form "
    "fund grant guide health holiday hour incident income insurance inventory invoice issue item journal key "
    "language lease ledger license limit loan login manual margin market meeting member message metric model "
    "network notice office order owner package partner password payment payroll permit plan policy portal price "
    "process product profile project quota quote rate record refund region renewal report request reserve "
    "resource review risk role route salary schedule score season sector service session shipment signal "
    "software staff standard statement status stock storage subscription supplier support survey system task tax "
    "team template term ticket timeline token training transfer travel trial update upgrade usage user vendor "
    "version voucher warranty warehouse website workflow"
).split()


@dataclass(frozen=True, slots=True)
class Session:
    """One client conversation: a system prompt and the user turns sent one after the other."""

    system: str
    turns: tuple[str, ...]
    tenant_id: str | None = None


def _sentence(rng: random.Random, words: int) -> str:
    picked = [rng.choice(_WORDS) for _ in range(words)]
    return " ".join(picked).capitalize() + "."


def filler_text(rng: random.Random, *, min_tokens: int, count_tokens: Callable[[str], int], head: str = "") -> str:
    """Seeded sentences after ``head`` until the text has at least ``min_tokens`` tokens."""
    text = head
    while count_tokens(text) < min_tokens:
        text = f"{text} {_sentence(rng, rng.randint(6, 14))}".strip()
    return text


def _bytes(text: str) -> int:
    return len(text.encode("utf-8"))


def _zipf_weights(n: int, s: float) -> list[float]:
    return [1.0 / (rank + 1) ** s for rank in range(n)]


def make_workload(
    name: str,
    *,
    requests: int,
    tenants: int = 8,
    prefix_tokens: int = 768,
    question_tokens: int = 24,
    turns: int = 4,
    zipf: float = 0.0,
    seed: int = 0,
    count_tokens: Callable[[str], int] = _bytes,
) -> list[Session]:
    """Sessions adding up to ``requests`` requests (turns) of workload ``name``.

    ``prefix_tokens`` is the system prompt's length and ``question_tokens``
    each user message's, counted with ``count_tokens`` (the model's tokenizer;
    UTF-8 bytes by default, which is the demo model's).

    Raises:
        ValueError: an unknown workload or a size below 1.
    """
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; choose one of {', '.join(WORKLOADS)}")
    if min(requests, tenants, prefix_tokens, question_tokens, turns) < 1:
        raise ValueError("requests, tenants, prefix_tokens, question_tokens and turns must be >= 1")
    if zipf < 0:
        raise ValueError(f"zipf must be >= 0, got {zipf}")
    rng = random.Random(seed)

    def system(owner: str) -> str:
        return filler_text(rng, min_tokens=prefix_tokens, count_tokens=count_tokens,
                           head=f"You are the assistant of {owner}. Follow its policies below.")

    def question(index: int) -> str:
        return filler_text(rng, min_tokens=question_tokens, count_tokens=count_tokens, head=f"Question {index}:")

    if name == "multitenant":
        prompts = [system(f"tenant {t} ({rng.choice(_WORDS)} {rng.choice(_WORDS)} corp)") for t in range(tenants)]
        weights = _zipf_weights(tenants, zipf)
        picks = rng.choices(range(tenants), weights=weights, k=requests)
        return [Session(prompts[t], (question(i),), f"tenant-{t}") for i, t in enumerate(picks)]
    if name == "unique":
        return [Session(system(f"customer {i}"), (question(i),), f"user-{i}") for i in range(requests)]
    sessions = []
    for s in range(math.ceil(requests / turns)):
        count = min(turns, requests - s * turns)
        sessions.append(Session(system(f"customer {s}"), tuple(question(s * turns + k) for k in range(count)),
                                f"tenant-{s % tenants}"))
    return sessions


def unique_prompts(
    count: int, *, prompt_tokens: int, seed: int = 0, count_tokens: Callable[[str], int] = _bytes
) -> list[Session]:
    """``count`` one-turn sessions with no common prefix (the batching measurement)."""
    rng = random.Random(seed)
    return [Session(filler_text(rng, min_tokens=prompt_tokens, count_tokens=count_tokens, head=f"{i}:"), ("Go on.",), f"b-{i}")
            for i in range(count)]


def messages_for(session: Session, turn: int, answers: Sequence[str]) -> list[dict[str, str]]:
    """The chat of turn ``turn``: system prompt, then user/assistant pairs of the earlier turns."""
    if not 0 <= turn < len(session.turns) or len(answers) < turn:
        raise ValueError(f"turn {turn} needs the answers of the {turn} turns before it")
    messages = [{"role": "system", "content": session.system}]
    for k in range(turn):
        messages += [{"role": "user", "content": session.turns[k]}, {"role": "assistant", "content": answers[k]}]
    messages.append({"role": "user", "content": session.turns[turn]})
    return messages


# --- metrics -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class RequestRecord:
    """What the client saw of one request (times in seconds on the client's monotonic clock)."""

    sent_s: float
    first_token_s: float | None = None
    done_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    server_ttft_ms: float | None = None
    replica: str | None = None
    shard: str | None = None
    tenant_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ttft_ms(self) -> float:
        """Client-side time to the first streamed token (the whole request if none came)."""
        end = self.first_token_s if self.first_token_s is not None else self.done_s
        return (end - self.sent_s) * 1000.0


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation; ValueError on no values."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def load_balance(records: Sequence[RequestRecord], replicas: Sequence[str]) -> dict[str, Any]:
    """Requests and time-weighted in-flight requests per replica, each as max over mean.

    ``replicas`` are all replicas that could serve (one that got nothing
    still counts in the mean). The in-flight figure integrates each
    request's [sent, done] interval on the replica that served it.
    """
    names = sorted(set(replicas) | {r.replica for r in records if r.replica})
    if not names:
        raise ValueError("no replicas to balance over")
    counts = Counter(r.replica for r in records if r.replica)
    busy = {name: 0.0 for name in names}
    for r in records:
        if r.replica:
            busy[r.replica] += r.done_s - r.sent_s
    mean_count = sum(counts.values()) / len(names)
    mean_busy = sum(busy.values()) / len(names)
    span = (max(r.done_s for r in records) - min(r.sent_s for r in records)) if records else 0.0
    return {
        "requests_per_replica": {name: counts.get(name, 0) for name in names},
        "load_max_over_mean": max(counts.get(n, 0) for n in names) / mean_count if mean_count else 0.0,
        "mean_in_flight_per_replica": {name: (busy[name] / span if span > 0 else 0.0) for name in names},
        "in_flight_max_over_mean": max(busy.values()) / mean_busy if mean_busy > 0 else 0.0,
    }


def summarize(records: Sequence[RequestRecord], *, replicas: Sequence[str]) -> dict[str, Any]:
    """Throughput, TTFT percentiles, token hit rate and load balance of one measured run.

    Wall time runs from the first request sent to the last one done, so the
    rates are what the deployment sustained under this closed loop.
    """
    if not records:
        raise ValueError("no requests to summarize")
    wall_s = max(r.done_s for r in records) - min(r.sent_s for r in records)
    ttft = [r.ttft_ms for r in records]
    server_ttft = [r.server_ttft_ms for r in records if r.server_ttft_ms is not None]
    prompt = sum(r.prompt_tokens for r in records)
    cached = sum(r.cached_tokens for r in records)
    output = sum(r.completion_tokens for r in records)
    return {
        "requests": len(records),
        "wall_s": wall_s,
        "requests_per_s": len(records) / wall_s if wall_s > 0 else 0.0,
        "output_tokens_per_s": output / wall_s if wall_s > 0 else 0.0,
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p95_ms": percentile(ttft, 95),
        "ttft_p99_ms": percentile(ttft, 99),
        "ttft_mean_ms": statistics.fmean(ttft),
        "server_ttft_p50_ms": percentile(server_ttft, 50) if server_ttft else None,
        "latency_p50_ms": percentile([(r.done_s - r.sent_s) * 1000.0 for r in records], 50),
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "output_tokens": output,
        "token_hit_rate": cached / prompt if prompt else 0.0,
        **load_balance(records, replicas),
        "tenants": tenant_placement(records),
    }


def tenant_placement(records: Sequence[RequestRecord]) -> dict[str, dict[str, Any]]:
    """Per tenant: requests per replica and token hit rate (shows how routing partitioned the tenants)."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.tenant_id is None:
            continue
        entry = out.setdefault(r.tenant_id, {"replicas": Counter(), "prompt_tokens": 0, "cached_tokens": 0})
        entry["replicas"][r.replica or "?"] += 1
        entry["prompt_tokens"] += r.prompt_tokens
        entry["cached_tokens"] += r.cached_tokens
    return {
        tenant: {"replicas": dict(e["replicas"]),
                 "token_hit_rate": e["cached_tokens"] / e["prompt_tokens"] if e["prompt_tokens"] else 0.0}
        for tenant, e in sorted(out.items())
    }
