"""A soak: fixed-rate load for minutes while every actor's memory, descriptors and the KV cache are watched.

Functional tests send a few requests; leaks show only after thousands. `run_soak`
drives a request mix open loop (`scripts.bench.load_gen`) and, every
``sample_every_s``, closes a window of latencies and samples each process
(`scripts.bench.proc_stats`) and the KV cache. It returns a `SoakResult` (no
assertion inside), which `violations` checks against `Limits`; a test asserts
on that, a benchmark report plots `SoakResult.windows` over time.

Memory growth is measured after a warm-up (the first third of the run by
default): allocators, caches and pools fill up first, then RSS must stay flat.
Descriptors and shared-memory mappings are compared between two quiet
moments, before the load and after it has drained and the client has closed
its connections, so connections that a load legitimately holds open do not
count as leaks.

Ray-free: the caller says which processes to watch and how to read the cache
(see `scripts.bench.soak_ray` for a Ray cluster's actors and KV shard).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from scripts.bench.load_gen import Kind, Outcome, run_open_loop
from scripts.bench.proc_stats import ProcSample, dev_shm_entries, sample_process

MAX_ERROR_EXAMPLES = 20


@dataclass(frozen=True, slots=True)
class SoakConfig:
    """Where to send the load and how much of it."""

    base_url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    duration_s: float = 300.0
    rate_per_s: float = 4.0
    max_in_flight: int = 16
    sample_every_s: float = 10.0
    warmup_s: float | None = None
    """Memory growth is measured from the first sample at or after this (default: a third of the run)."""
    request_timeout_s: float = 60.0
    settle_s: float = 3.0
    """Quiet time before the opening counts and after the load before the closing ones (servers close their
    side of the clients' connections)."""

    @property
    def warmup(self) -> float:
        return self.duration_s / 3 if self.warmup_s is None else self.warmup_s


@dataclass(frozen=True, slots=True)
class CacheSample:
    """The KV cache's own account of its memory."""

    bytes_used: int
    bytes_capacity: int
    blocks: int
    """Blocks in the cache's index (pending writes included)."""
    slots_used: int
    """Pool slots not free: each must belong to a block of the index, or it leaked."""
    evicted_blocks: int


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Latencies of a set of requests, in milliseconds (nearest-rank percentiles)."""

    n: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, latencies_s: Sequence[float]) -> Percentiles:
        ordered = sorted(latencies_s)
        if not ordered:
            return cls(0, 0.0, 0.0, 0.0, 0.0)

        def rank(q: float) -> float:  # the smallest value with at least q of the samples at or below it
            return ordered[min(len(ordered), max(1, math.ceil(round(q * len(ordered), 9)))) - 1] * 1000

        return cls(len(ordered), rank(0.50), rank(0.95), rank(0.99), ordered[-1] * 1000)


@dataclass(frozen=True, slots=True)
class Window:
    """The requests that finished in ``(start_s, end_s]`` and the samples taken at ``end_s``."""

    start_s: float
    end_s: float
    requests: int
    errors: int
    latency: Percentiles
    by_kind: dict[str, Percentiles]
    rss_bytes: dict[str, int]
    fds: dict[str, int]
    shm_maps: dict[str, int]
    cache: CacheSample | None


@dataclass(frozen=True, slots=True)
class ProcessReport:
    """One watched process: quiet counts before and after, and RSS over the run."""

    label: str
    pid: int
    before: ProcSample
    after: ProcSample | None
    baseline_rss_bytes: int
    """RSS at the end of the warm-up."""
    final_rss_bytes: int
    """RSS at the last sample under load."""
    max_rss_bytes: int

    @property
    def growth(self) -> float:
        """Relative RSS growth after the warm-up (0.05 = 5 %)."""
        return self.final_rss_bytes / self.baseline_rss_bytes - 1 if self.baseline_rss_bytes else 0.0


@dataclass(frozen=True, slots=True)
class SoakResult:
    """Everything a soak measured; `to_json` is what a report plots."""

    config: dict[str, Any]
    sent: int
    errors: int
    error_examples: list[str]
    max_start_lag_s: float
    wall_s: float
    latency: Percentiles
    by_kind: dict[str, Percentiles]
    windows: list[Window]
    processes: list[ProcessReport]
    replaced: list[str]
    """Watched processes that were gone, or had another PID, at the end (a crash or a restart)."""
    dev_shm_before: int
    dev_shm_after: int

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for report, process in zip(self.processes, out["processes"]):
            process["growth"] = report.growth
        return out


@dataclass(frozen=True, slots=True)
class Limits:
    """What a healthy soak stays within."""

    memory_growth: float = 0.10
    fd_slack: int = 8
    """Descriptors a process may have gained between the two quiet moments: a pool that grew once (the
    gateway's PostgreSQL pool holds up to 10). A leak of one per request would be hundreds."""
    shm_slack: int = 0
    """Shared-memory descriptors, mappings and objects a process may have gained (none: a leak per lease shows)."""
    cache_budget_bytes: int | None = None


def violations(result: SoakResult, limits: Limits) -> list[str]:
    """Every way ``result`` breaks ``limits``, one line each (empty: a clean soak)."""
    found = [f"{result.errors} of {result.sent} requests failed, e.g. {result.error_examples[:3]}"] if result.errors else []
    found += [f"{label} was gone or replaced at the end" for label in result.replaced]
    for p in result.processes:
        if p.growth > limits.memory_growth:
            found.append(f"{p.label}: RSS grew {p.growth:.1%} after the warm-up "
                         f"({p.baseline_rss_bytes >> 20} -> {p.final_rss_bytes >> 20} MiB)")
        if p.after is None:
            continue
        if p.after.fds > p.before.fds + limits.fd_slack:
            found.append(f"{p.label}: {p.before.fds} -> {p.after.fds} file descriptors")
        for name in ("shm_fds", "shm_maps", "shm_objects"):
            before, after = getattr(p.before, name), getattr(p.after, name)
            if after > before + limits.shm_slack:
                found.append(f"{p.label}: {before} -> {after} {name}")
    if limits.cache_budget_bytes is not None:
        samples = [w.cache for w in result.windows if w.cache is not None]
        if not samples:
            found.append("the KV cache was never sampled")
        for w in result.windows:
            if w.cache is not None and max(w.cache.bytes_used, w.cache.bytes_capacity) > limits.cache_budget_bytes:
                found.append(f"KV cache at {w.end_s:.0f} s: {w.cache.bytes_used} used / {w.cache.bytes_capacity} "
                             f"capacity bytes, budget {limits.cache_budget_bytes}")
    for w in result.windows:
        if w.cache is not None and w.cache.slots_used != w.cache.blocks:
            found.append(f"KV cache at {w.end_s:.0f} s: {w.cache.slots_used} pool slots used for {w.cache.blocks} "
                         "blocks (slots leaked)")
    return found


class _Collector:
    """Outcomes of the current window, and every latency per kind for the whole run."""

    def __init__(self) -> None:
        self.window: list[Outcome] = []
        self.latencies: dict[str, list[float]] = {}
        self.errors = 0
        self.error_examples: list[str] = []

    def add(self, outcome: Outcome) -> None:
        self.window.append(outcome)
        self.latencies.setdefault(outcome.kind, []).append(outcome.latency_s)
        if outcome.error is not None:
            self.errors += 1
            if len(self.error_examples) < MAX_ERROR_EXAMPLES:
                self.error_examples.append(f"{outcome.kind} #{outcome.seq} at {outcome.done_s:.1f} s: {outcome.error}")

    def close_window(self) -> list[Outcome]:
        done, self.window = self.window, []
        return done


def _window(start_s: float, end_s: float, outcomes: list[Outcome], procs: Mapping[str, ProcSample | None],
            cache: CacheSample | None) -> Window:
    kinds: dict[str, list[float]] = {}
    for o in outcomes:
        kinds.setdefault(o.kind, []).append(o.latency_s)
    live = {label: s for label, s in procs.items() if s is not None}
    return Window(start_s=start_s, end_s=end_s, requests=len(outcomes),
                  errors=sum(o.error is not None for o in outcomes),
                  latency=Percentiles.of([o.latency_s for o in outcomes]),
                  by_kind={k: Percentiles.of(v) for k, v in sorted(kinds.items())},
                  rss_bytes={k: s.rss_bytes for k, s in live.items()}, fds={k: s.fds for k, s in live.items()},
                  shm_maps={k: s.shm_maps for k, s in live.items()}, cache=cache)


async def run_soak(
    config: SoakConfig,
    kinds: Sequence[Kind],
    *,
    processes: Callable[[], Mapping[str, int]],
    cache_probe: Callable[[], CacheSample] | None = None,
) -> SoakResult:
    """Run the soak and measure; raises only if it cannot run (a failed request is a counted error).

    ``processes`` names the processes to watch (label -> PID); it is called
    before and after, so a process that was restarted shows in
    `SoakResult.replaced`. ``cache_probe`` is called in a thread at each sample.
    """
    await asyncio.sleep(config.settle_s)  # the caller's warm-up connections close
    watched = dict(processes())
    before = {label: sample_process(pid) for label, pid in watched.items()}
    missing = [label for label, s in before.items() if s is None]
    if missing:
        raise RuntimeError(f"cannot read /proc of {missing}")
    shm_before = dev_shm_entries()
    collector = _Collector()
    windows: list[Window] = []
    started = time.perf_counter()

    def sample_all() -> tuple[dict[str, ProcSample | None], CacheSample | None]:
        return {label: sample_process(pid) for label, pid in watched.items()}, (cache_probe() if cache_probe else None)

    async def close_window(start_s: float) -> float:
        procs, cache = await asyncio.to_thread(sample_all)
        end_s = time.perf_counter() - started
        windows.append(_window(start_s, end_s, collector.close_window(), procs, cache))
        return end_s

    async def sampler() -> None:
        last, tick = 0.0, 1
        while True:
            await asyncio.sleep(max(0.0, tick * config.sample_every_s - (time.perf_counter() - started)))
            last = await close_window(last)
            tick += 1

    limits = httpx.Limits(max_connections=config.max_in_flight, max_keepalive_connections=config.max_in_flight)
    sampling = asyncio.create_task(sampler())
    try:
        async with httpx.AsyncClient(base_url=config.base_url, headers=dict(config.headers), limits=limits,
                                     timeout=config.request_timeout_s) as client:
            summary = await run_open_loop(client, kinds, rate_per_s=config.rate_per_s, duration_s=config.duration_s,
                                          max_in_flight=config.max_in_flight, on_outcome=collector.add)
    finally:
        sampling.cancel()
        await asyncio.gather(sampling, return_exceptions=True)
    await asyncio.sleep(config.settle_s)
    await close_window(windows[-1].end_s if windows else 0.0)  # the drain, sampled quiet

    now = dict(processes())
    replaced = sorted(label for label, pid in watched.items() if now.get(label) != pid)
    reports = []
    for label, pid in watched.items():
        series = [(w.end_s, w.rss_bytes[label]) for w in windows[:-1] if label in w.rss_bytes]
        if not series:
            continue
        baseline = next((rss for t, rss in series if t >= config.warmup), series[-1][1])
        reports.append(ProcessReport(label=label, pid=pid, before=before[label], after=sample_process(pid),
                                     baseline_rss_bytes=baseline, final_rss_bytes=series[-1][1],
                                     max_rss_bytes=max(rss for _, rss in series)))
    return SoakResult(
        config={k: v for k, v in asdict(config).items() if k != "headers"} | {"warmup_s": config.warmup},
        sent=summary.sent, errors=collector.errors, error_examples=collector.error_examples,
        max_start_lag_s=summary.max_start_lag_s, wall_s=time.perf_counter() - started,
        latency=Percentiles.of([x for v in collector.latencies.values() for x in v]),
        by_kind={k: Percentiles.of(v) for k, v in sorted(collector.latencies.items())},
        windows=windows, processes=reports, replaced=replaced,
        dev_shm_before=shm_before, dev_shm_after=dev_shm_entries(),
    )


def print_soak(result: SoakResult) -> None:
    """The tables a person reads: latency per kind, the run over time, and each process."""
    from scripts.bench.report import print_table

    def row(name: str, p: Percentiles) -> list[Any]:
        return [name, p.n, p.p50_ms, p.p95_ms, p.p99_ms, p.max_ms]

    print_table(f"Soak latency ({result.sent} requests, {result.errors} errors, "
                f"max start lag {result.max_start_lag_s * 1000:.0f} ms)",
                ["kind", "n", "p50 ms", "p95 ms", "p99 ms", "max ms"],
                [row(k, p) for k, p in result.by_kind.items()] + [row("all", result.latency)])
    print_table("Every sample", ["end s", "requests", "errors", "p50 ms", "p95 ms", "p99 ms", "RSS all MiB",
                                 "KV MiB", "KV blocks/slots", "evicted"],
                [[w.end_s, w.requests, w.errors, w.latency.p50_ms, w.latency.p95_ms, w.latency.p99_ms,
                  sum(w.rss_bytes.values()) / 2**20] + ([w.cache.bytes_used / 2**20,
                  f"{w.cache.blocks}/{w.cache.slots_used}", w.cache.evicted_blocks] if w.cache else ["-"] * 3)
                 for w in result.windows])
    print_table(f"Processes (RSS growth from {result.config['warmup_s']:.0f} s; fds and shm quiet before -> after)",
                ["process", "RSS base MiB", "RSS final MiB", "growth %", "fds", "shm fds", "shm maps"],
                [[p.label, p.baseline_rss_bytes / 2**20, p.final_rss_bytes / 2**20, p.growth * 100,
                  f"{p.before.fds} -> {p.after.fds if p.after else '-'}",
                  f"{p.before.shm_fds} -> {p.after.shm_fds if p.after else '-'}",
                  f"{p.before.shm_maps} -> {p.after.shm_maps if p.after else '-'}"] for p in result.processes])
