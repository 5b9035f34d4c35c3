"""Replay a request trace through `BlockIndex` + an eviction policy.

This is how eviction policies are scored (``blatam bench policies`` and the
policy tests): the index and the policy classes are the production ones, only
the KV tensors are missing. The trace is in the Mooncake format (one JSON
object per line: ``timestamp`` in ms, ``input_length``, ``output_length`` and
``hash_ids``, one id per block of the prompt, in order).

Simulation semantics:

- Requests are processed one at a time, in arrival order (the file's order).
  The clock given to the index and the policy is the request's timestamp in
  seconds; every block of a request is touched at the same instant.
- Block keys are *chained*: block ``i`` of a request is identified by its
  ``hash_ids[i]`` together with the key of block ``i - 1``, so two blocks are
  the same only if their whole prefixes are (as with the engine's chained
  hashes), even if a trace reuses an id under another parent.
- A request starts with `BlockIndex.begin_request`, which shows the policy the
  whole prompt (``on_request``) and matches the longest cached prefix of its
  blocks: those are hits, touched (`BlockIndex.touch`) and locked (a request
  never evicts its own prefix). Every later block is a miss, even if an equal
  block exists elsewhere: a block after the first miss cannot be reused. (The
  per-request loop is `replay.replay_request`, shared with the shadow caches
  of the adaptive policy.)
- Each missed block, in order, is offered to ``policy.admit(key, parent,
  now)``; if admitted and the cache is full, one victim is evicted
  (`BlockIndex.pop_victim`); then it is inserted under the previous block and
  locked. If a block is refused or no victim exists (everything is locked),
  the rest of the request cannot be cached either (a block without its parent
  saves nothing). All the request's blocks are unlocked at the end.
- Capacity is in blocks. ``policy.set_capacity`` is called once before the
  replay, as the engine should with its pool size.
- Tokens: every block has ``block_tokens`` tokens except the last one, which
  has what is left of ``input_length``. A request with ``h`` leading hits
  saves ``min(h * block_tokens, input_length)`` prefill tokens. (A real engine
  recomputes at least the last token of a fully cached prompt; that one token
  is ignored here.)

The offline optimum ``belady`` (`simulate_belady`) runs through the same loop
with `BeladyPolicy`, which knows each block's next use: it evicts the block
used furthest in the future and refuses (bypasses) a new block that would be
used later than every evictable cached block.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Sequence

from cache_actors.core.block_index import BlockIndex, BlockNode
from cache_actors.policies.base import EvictionPolicy, PriorityPolicy
from cache_actors.policies.registry import make_policy
from cache_actors.policies.replay import replay_request

DEFAULT_BLOCK_TOKENS = 512
BELADY = "belady"


class TraceError(ValueError):
    """A trace file or line that is not a valid Mooncake-format request."""


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a Mooncake-format trace."""

    timestamp: float  # ms since the start of the trace
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]

    def to_json(self) -> str:
        ts = int(self.timestamp) if float(self.timestamp).is_integer() else self.timestamp
        return json.dumps(
            {
                "timestamp": ts,
                "input_length": self.input_length,
                "output_length": self.output_length,
                "hash_ids": list(self.hash_ids),
            }
        )


def _int_field(obj: dict[str, Any], name: str, where: str, *, required: bool = True) -> int:
    value = obj.get(name, None if required else 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TraceError(f"{where}: {name!r} must be a non-negative integer, got {value!r}")
    return value


def parse_trace_line(line: str, *, where: str = "trace") -> TraceRequest:
    """Parse one JSONL line; raises `TraceError` naming the field that is wrong."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TraceError(f"{where}: not JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise TraceError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    ts = obj.get("timestamp", 0)
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts) or ts < 0:
        raise TraceError(f"{where}: 'timestamp' must be a non-negative number of ms, got {ts!r}")
    input_length = _int_field(obj, "input_length", where)
    output_length = _int_field(obj, "output_length", where, required=False)
    ids = obj.get("hash_ids")
    if not isinstance(ids, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
        raise TraceError(f"{where}: 'hash_ids' must be a list of integers")
    return TraceRequest(float(ts), input_length, output_length, tuple(ids))


def load_trace(path: str | Path) -> list[TraceRequest]:
    """Read a Mooncake-format JSONL trace (blank lines are skipped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TraceError(f"cannot read trace {path}: {exc.strerror}") from None
    requests = [
        parse_trace_line(line, where=f"{path}:{n}")
        for n, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]
    if not requests:
        raise TraceError(f"{path}: the trace has no requests")
    return requests


def write_trace(path: str | Path, requests: Iterable[TraceRequest]) -> int:
    """Write requests as Mooncake JSONL; returns how many were written."""
    count = 0
    with Path(path).open("w", encoding="utf-8") as out:
        for req in requests:
            out.write(req.to_json() + "\n")
            count += 1
    return count


@dataclass(slots=True)
class PreparedTrace:
    """A trace turned into chained integer block keys, ready to replay many times."""

    block_tokens: int
    keys: list[list[int]]
    input_lengths: list[int]
    clock_s: list[float]
    unique_blocks: int
    total_blocks: int
    total_tokens: int

    @property
    def num_requests(self) -> int:
        return len(self.keys)

    def capacity_blocks(self, capacity: float) -> int:
        """A fraction (< 1) of the unique blocks, or an absolute count (>= 1)."""
        if not capacity > 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        if capacity >= 1:
            return int(capacity)
        return max(1, round(capacity * self.unique_blocks))


def prepare_trace(requests: Sequence[TraceRequest], block_tokens: int = DEFAULT_BLOCK_TOKENS) -> PreparedTrace:
    """Check block counts against input lengths and chain the block ids.

    Raises `TraceError` when ``len(hash_ids) != ceil(input_length /
    block_tokens)`` (usually a wrong ``block_tokens``).
    """
    if block_tokens <= 0:
        raise ValueError(f"block_tokens must be positive, got {block_tokens}")
    canon: dict[tuple[int, int], int] = {}
    keys: list[list[int]] = []
    for n, req in enumerate(requests):
        expected = -(-req.input_length // block_tokens)
        if len(req.hash_ids) != expected:
            raise TraceError(
                f"request {n}: input_length {req.input_length} needs {expected} blocks of "
                f"{block_tokens} tokens but hash_ids has {len(req.hash_ids)} (is block_tokens right?)"
            )
        parent = -1
        chain: list[int] = []
        for hid in req.hash_ids:
            parent = canon.setdefault((parent, hid), len(canon))
            chain.append(parent)
        keys.append(chain)
    return PreparedTrace(
        block_tokens=block_tokens,
        keys=keys,
        input_lengths=[r.input_length for r in requests],
        clock_s=[r.timestamp / 1000.0 for r in requests],
        unique_blocks=len(canon),
        total_blocks=sum(len(k) for k in keys),
        total_tokens=sum(r.input_length for r in requests),
    )


@dataclass(slots=True)
class SimResult:
    """Counters of one replay."""

    policy: str
    capacity_blocks: int
    requests: int = 0
    blocks_total: int = 0
    blocks_hit: int = 0
    tokens_total: int = 0
    tokens_saved: int = 0
    inserted: int = 0
    evicted: int = 0
    refused: int = 0  # requests whose tail the policy did not admit
    no_room: int = 0  # requests whose tail found no room: every cached block was locked

    @property
    def hit_rate(self) -> float:
        return self.blocks_hit / self.blocks_total if self.blocks_total else 0.0

    @property
    def saved_fraction(self) -> float:
        return self.tokens_saved / self.tokens_total if self.tokens_total else 0.0


def simulate(
    trace: PreparedTrace,
    policy: EvictionPolicy,
    capacity_blocks: int,
    *,
    name: str | None = None,
    before_request: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> SimResult:
    """Replay ``trace`` through a fresh `BlockIndex` holding at most ``capacity_blocks``.

    ``before_request(i)`` runs before request ``i`` (the Belady oracle uses it);
    ``progress(n)`` is called every few thousand requests with how many were done.
    """
    if capacity_blocks < 1:
        raise ValueError(f"capacity_blocks must be >= 1, got {capacity_blocks}")
    index = BlockIndex(policy)
    policy.set_capacity(capacity_blocks)
    res = SimResult(policy=name or getattr(policy, "name", type(policy).__name__), capacity_blocks=capacity_blocks)
    bt = trace.block_tokens
    for r, keys in enumerate(trace.keys):
        if before_request is not None:
            before_request(r)
        input_length = trace.input_lengths[r]
        tokens = [bt] * len(keys)
        if keys:
            tokens[-1] = input_length - bt * (len(keys) - 1)
        out = replay_request(index, keys, trace.clock_s[r], capacity_blocks, tokens)
        res.blocks_total += len(keys)
        res.blocks_hit += out.hits
        res.tokens_total += input_length
        res.tokens_saved += min(out.hits * bt, input_length)
        res.inserted += out.inserted
        res.refused += out.refused
        res.no_room += out.no_room
        if progress is not None and (r + 1) % 2000 == 0:
            progress(r + 1)
    res.requests = trace.num_requests
    res.evicted = res.inserted - len(index)
    if progress is not None:
        progress(trace.num_requests)
    return res


# --- offline optimum -----------------------------------------------------------------


class NextUseOracle:
    """Next request index that uses each block, kept current as the replay advances.

    ``advance(r)`` must run before request ``r`` (it is `simulate`'s
    ``before_request``); afterwards ``next_use[key]`` is the first request after
    ``r`` that uses ``key`` (infinity if none) for every key of request ``r``;
    keys not in request ``r`` keep their value, which is still right.
    """

    def __init__(self, trace: PreparedTrace) -> None:
        self._keys = trace.keys
        self.next_use: dict[Hashable, float] = {}
        following: dict[int, float] = {}
        self._after: list[list[float]] = [[]] * trace.num_requests
        for r in range(trace.num_requests - 1, -1, -1):
            keys = trace.keys[r]
            self._after[r] = [following.get(k, math.inf) for k in keys]
            for k in keys:
                following[k] = r

    def advance(self, r: int) -> None:
        nu = self.next_use
        for key, nxt in zip(self._keys[r], self._after[r]):
            nu[key] = nxt


class BeladyPolicy(PriorityPolicy):
    """Clairvoyant MIN with bypass: the ceiling for every online policy.

    Evicts the evictable block whose next use is furthest away, and refuses a
    new block when the cache is full and the block's next use is no sooner
    than that of the block it would displace. Because every use of a block is
    also a use of its parent, the furthest block can always be taken among the
    leaves. Not a production policy (it needs the future), so it is not in the
    registry.
    """

    name = BELADY

    def __init__(self, next_use: dict[Hashable, float]) -> None:
        super().__init__()
        self._next_use = next_use
        self._size = 0

    def priority(self, node: BlockNode, now: float) -> Any:
        return -self._next_use.get(node.key, math.inf)

    def on_insert(self, node: BlockNode, now: float) -> None:
        self._size += 1

    def on_remove(self, node: BlockNode, now: float) -> None:
        self._size -= 1

    def admit(self, key: Hashable, parent: BlockNode | None, now: float) -> bool:
        if self.capacity is None or self._size < self.capacity:
            return True
        top = self._peek()
        if top is None:
            return True  # nothing evictable: the caller will find no room anyway
        return -self._next_use.get(key, math.inf) > top[0]

    def reset(self) -> None:
        super().reset()
        self._size = 0


def simulate_belady(
    trace: PreparedTrace, capacity_blocks: int, *, progress: Callable[[int], None] | None = None
) -> SimResult:
    """The offline optimum (`BeladyPolicy`) replayed through the same loop."""
    oracle = NextUseOracle(trace)
    return simulate(
        trace,
        BeladyPolicy(oracle.next_use),
        capacity_blocks,
        name=BELADY,
        before_request=oracle.advance,
        progress=progress,
    )


@dataclass(slots=True)
class SweepCell:
    """One (policy, capacity) result of `sweep`."""

    capacity_fraction: float  # of the trace's unique blocks
    result: SimResult

    def as_dict(self) -> dict[str, Any]:
        r = self.result
        return {
            "policy": r.policy,
            "capacity_blocks": r.capacity_blocks,
            "capacity_fraction": self.capacity_fraction,
            "hit_rate": r.hit_rate,
            "tokens_saved": r.tokens_saved,
            "tokens_total": r.tokens_total,
            "saved_fraction": r.saved_fraction,
            "blocks_hit": r.blocks_hit,
            "blocks_total": r.blocks_total,
            "inserted": r.inserted,
            "evicted": r.evicted,
            "refused": r.refused,
        }


def sweep(
    trace: PreparedTrace,
    capacities: Sequence[float],
    policies: Sequence[str],
    *,
    progress: Callable[[str, float, int], None] | None = None,
) -> list[SweepCell]:
    """Replay ``trace`` for every capacity and policy name (registry names or ``belady``).

    ``progress(policy, capacity, requests_done)`` reports each replay's advance.
    Unknown policy names raise ValueError before anything runs.
    """
    factories: dict[str, Callable[[], EvictionPolicy] | None] = {
        name: None if name == BELADY else _factory(name) for name in policies
    }
    cells: list[SweepCell] = []
    for capacity in capacities:
        blocks = trace.capacity_blocks(capacity)
        fraction = capacity if capacity < 1 else blocks / max(1, trace.unique_blocks)
        for name, factory in factories.items():
            report = None if progress is None else (lambda n, _p=name, _c=capacity: progress(_p, _c, n))
            if factory is None:
                result = simulate_belady(trace, blocks, progress=report)
            else:
                result = simulate(trace, factory(), blocks, name=name, progress=report)
            cells.append(SweepCell(fraction, result))
    return cells


def _factory(name: str) -> Callable[[], EvictionPolicy]:
    make_policy(name)  # raises ValueError listing the supported names
    return lambda: make_policy(name)
