"""Cost model and ranking of the cache-aware LLM router (pure: no Ray).

The Ray adapter (`deployments.llm.router.CacheAwareRouter`) gathers, per
candidate replica, how many prompt tokens its device already caches and how
loaded it is; this module turns that into a ranking. Keeping it apart makes
every routing rule testable without a cluster.

Cost of sending a prompt of ``P`` tokens to replica ``r``::

    cost(r) = (P - matched_tokens(r)) * prefill_cost_per_token + in_flight(r) * per_request_cost

Two bounds keep affinity from piling work on one replica (the failure the
SGLang and Ray routers both had to fix): a replica is eligible only if

- its in-flight count is at most ``imbalanced_threshold`` above the least
  loaded candidate's, and
- its recent share of routed requests (a count that decays by half every
  ``load_window_requests`` decisions) would stay within ``max_load_ratio``
  times the mean share after this request, or within ``share_slack``
  requests of that mean (so the first few requests need not alternate).

The least-loaded (and the least-shared) replica always passes its own test,
so the bounds never leave the request without a target. When no candidate
holds at least ``match_rate_threshold`` of the prompt, affinity has nothing
to gain now, but where the new prefix goes decides where its later requests
stick: it goes to the replica with the smallest cache footprint (blocks the
router's own index holds for it) among those within both bounds, as
SGLang's router sends unmatched prompts to its smallest tree, so prefixes
spread by the cache room they take rather than by whichever replica was idle
at that instant (measured by ``blatam bench serve``: by load alone, 8 equally
popular tenants split 5/3 over 2 replicas whose caches held 4 each, and the 5
thrashed). With equal footprints (e.g. a fresh router) it is power of two
choices (random pair, the less loaded; ties to the replica with the smaller
recent share).

The inputs come from here too: a replica's hashing layout from its routing
stats (`parse_layout`), the prompt's block hashes in that layout
(`prompt_hashes`, the same ids and keys the replica computes), the router's
own prefix index (`LocalPrefixIndex`) merged with the coordinator's answer
(`merge_matches`), and the recent shares (`DecayedShares`).
"""

from __future__ import annotations

import math
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

from cache_actors.core.hashing import BlockHash, CacheNamespace, hash_prompt_blocks
from cache_actors.engine.requests import LLMRequest, TextEncoder

#: Kinds of decision, also the values of the router's decision metric tag.
AFFINITY = "affinity"  # the chosen replica holds a useful prefix
BALANCED = "balanced"  # a prefix was held, but the bounds or the cost sent the request elsewhere
POW2 = "pow2"  # no useful prefix anywhere: power of two choices
FALLBACK = "fallback"  # the request could not be tokenized or no replica reports stats yet
SINGLE = "single"  # one replica: nothing to choose, so no tokenizing, hashing or coordinator lookup
DECISION_KINDS = (AFFINITY, BALANCED, POW2, FALLBACK, SINGLE)
_NAMESPACE_KEYS = ("model_id", "dtype", "block_size", "kv_layout")


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    """Weights and bounds of the cost model (the router's ``request_router_kwargs``)."""

    prefill_cost_per_token: float = 1.0
    # One in-flight request delays a new one's first token about as much as
    # prefilling this many tokens would.
    per_request_cost: float = 32.0
    imbalanced_threshold: float = 8.0
    max_load_ratio: float = 1.3
    match_rate_threshold: float = 0.1
    load_window_requests: int = 128
    share_slack: float = 2.0

    def __post_init__(self) -> None:
        if self.prefill_cost_per_token < 0 or self.per_request_cost < 0:
            raise ValueError("prefill_cost_per_token and per_request_cost must be >= 0")
        if self.imbalanced_threshold < 0:
            raise ValueError(f"imbalanced_threshold must be >= 0, got {self.imbalanced_threshold}")
        if not self.max_load_ratio >= 1.0:
            raise ValueError(f"max_load_ratio must be >= 1, got {self.max_load_ratio}")
        if not 0.0 <= self.match_rate_threshold <= 1.0:
            raise ValueError(f"match_rate_threshold must be in [0, 1], got {self.match_rate_threshold}")
        if self.share_slack < 0:
            raise ValueError(f"share_slack must be >= 0, got {self.share_slack}")
        if self.load_window_requests < 1:
            raise ValueError(f"load_window_requests must be >= 1, got {self.load_window_requests}")


@dataclass(frozen=True, slots=True)
class Candidate:
    """What the router knows of one replica for one request."""

    replica_id: str
    in_flight: float = 0.0
    recent_share: float = 0.0
    matched_tokens: int = 0
    footprint: int = 0  # blocks the router's own prefix index holds for this replica


@dataclass(frozen=True, slots=True)
class Decision:
    """Replica ids best first, why, and the cost of each (for logs and tests)."""

    ranking: tuple[str, ...]
    kind: str
    costs: Mapping[str, float] = field(default_factory=dict)


def cost(candidate: Candidate, prompt_tokens: int, policy: RoutingPolicy) -> float:
    uncached = max(0, prompt_tokens - candidate.matched_tokens)
    return uncached * policy.prefill_cost_per_token + candidate.in_flight * policy.per_request_cost


def within_bounds(candidates: Sequence[Candidate], policy: RoutingPolicy) -> list[Candidate]:
    """The candidates that may take one more request without breaking either bound."""
    if not candidates:
        return []
    min_load = min(c.in_flight for c in candidates)
    min_share = min(c.recent_share for c in candidates)
    mean_share_after = (sum(c.recent_share for c in candidates) + 1.0) / len(candidates)
    share_cap = max(policy.max_load_ratio * mean_share_after, mean_share_after + policy.share_slack)
    return [
        c
        for c in candidates
        if c.in_flight - min_load <= policy.imbalanced_threshold
        and (c.recent_share <= min_share or c.recent_share + 1.0 <= share_cap)
    ]


def _load_key(candidate: Candidate) -> tuple[float, float]:
    return (candidate.in_flight, candidate.recent_share)


def power_of_two(candidates: Sequence[Candidate], rng: random.Random) -> list[str]:
    """A random pair, the less loaded first, then every other replica by load."""
    pool = list(candidates)
    rng.shuffle(pool)  # random order also breaks ties fairly in the stable sorts below
    pair = sorted(pool[:2], key=_load_key)
    rest = sorted(pool[2:], key=_load_key)
    return [c.replica_id for c in pair + rest]


def place_new_prefix(candidates: Sequence[Candidate], policy: RoutingPolicy, rng: random.Random) -> list[str]:
    """A prompt nobody caches: the smallest footprint within the bounds first, then power of two choices.

    Without a footprint difference among the eligible replicas this is plain
    `power_of_two`.
    """
    order = power_of_two(candidates, rng)
    allowed = within_bounds(candidates, policy)
    if len({c.footprint for c in allowed}) <= 1:
        return order
    position = {replica_id: i for i, replica_id in enumerate(order)}
    smallest = min(allowed, key=lambda c: (c.footprint, position[c.replica_id]))
    return [smallest.replica_id] + [replica_id for replica_id in order if replica_id != smallest.replica_id]


def rank(candidates: Sequence[Candidate], prompt_tokens: int, policy: RoutingPolicy, rng: random.Random) -> Decision:
    """Every candidate, best first: cheapest within the bounds, then the rest by load."""
    if prompt_tokens < 0:
        raise ValueError(f"prompt_tokens must be >= 0, got {prompt_tokens}")
    if not candidates:
        return Decision((), POW2)
    best_match = max(c.matched_tokens for c in candidates)
    if prompt_tokens == 0 or best_match <= 0 or best_match / prompt_tokens < policy.match_rate_threshold:
        return Decision(tuple(place_new_prefix(candidates, policy, rng)), POW2)
    costs = {c.replica_id: cost(c, prompt_tokens, policy) for c in candidates}
    shuffled = list(candidates)
    rng.shuffle(shuffled)
    allowed = within_bounds(shuffled, policy)
    allowed_ids = {c.replica_id for c in allowed}
    if allowed:
        head = sorted(allowed, key=lambda c: (costs[c.replica_id], c.recent_share))
    else:  # the two bounds disagree on who may go: the in-flight count decides
        head = []
    tail = sorted((c for c in shuffled if c.replica_id not in allowed_ids), key=_load_key)
    ranking = head + tail
    chosen = ranking[0]
    useful = chosen.matched_tokens > 0 and chosen.matched_tokens / prompt_tokens >= policy.match_rate_threshold
    return Decision(tuple(c.replica_id for c in ranking), AFFINITY if useful else BALANCED, costs)


def prefix_blocks_to_tokens(blocks: int, block_size: int, prompt_tokens: int) -> int:
    """Cached tokens of a ``blocks``-long prefix, never more than the prompt."""
    return min(prompt_tokens, max(0, blocks) * block_size)


def merge_matches(
    replica_shards: Mapping[str, str | None],
    local_blocks: Mapping[str, int],
    shard_blocks: Mapping[str, int],
) -> dict[str, int]:
    """Prefix blocks per replica: the larger of the router's own view and the coordinator's.

    The coordinator knows what a shard really holds but learns of new blocks
    only after the shard's next event batch; the router's own index knows what
    it just sent but not what was evicted since. Neither is complete, so each
    replica gets the longer of the two prefixes.
    """
    merged: dict[str, int] = {}
    for replica_id, shard in replica_shards.items():
        from_shard = shard_blocks.get(shard, 0) if shard is not None else 0
        merged[replica_id] = max(local_blocks.get(replica_id, 0), from_shard)
    return merged


class DecayedShares:
    """Each replica's recent share of routed requests; halves every ``half_life`` decisions.

    One routed request adds 1 to its replica after every count was multiplied
    by ``0.5 ** (1 / half_life)``, so the counts sum to about ``half_life /
    ln 2`` in steady state and older traffic fades instead of pinning the
    balance to history.
    """

    def __init__(self, half_life: int) -> None:
        if half_life < 1:
            raise ValueError(f"half_life must be >= 1, got {half_life}")
        self._decay = 0.5 ** (1.0 / half_life)
        self._shares: dict[str, float] = {}

    def record(self, replica_id: str) -> None:
        for key in self._shares:
            self._shares[key] *= self._decay
        self._shares[replica_id] = self._shares.get(replica_id, 0.0) + 1.0

    def get(self, replica_id: str) -> float:
        return self._shares.get(replica_id, 0.0)

    def forget(self, replica_id: str) -> None:
        self._shares.pop(replica_id, None)

    def snapshot(self) -> dict[str, float]:
        return dict(self._shares)


class LocalPrefixIndex:
    """The router's own guess of which block hashes each replica's device holds.

    Recorded when the router sends a request (it will be cached there), so the
    next request of the same prefix sticks before the coordinator has heard
    from the shard. Bounded per replica (least recently routed first, leaves
    before their parents) and optionally aged out after ``ttl_s``, after which
    only the coordinator's exact view counts.
    """

    def __init__(self, blocks_per_replica: int, ttl_s: float | None = None, clock=time.monotonic) -> None:
        if blocks_per_replica < 1:
            raise ValueError(f"blocks_per_replica must be >= 1, got {blocks_per_replica}")
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0 or None, got {ttl_s}")
        self.blocks_per_replica = blocks_per_replica
        self.ttl_s = ttl_s
        self._clock = clock
        self._held: dict[str, OrderedDict[bytes, float]] = {}

    def record(self, replica_id: str, hashes: Sequence[bytes]) -> None:
        held = self._held.setdefault(replica_id, OrderedDict())
        now = self._clock()
        # Touch the chain tail first so parents end up most recent: the LRU end
        # then drops leaves before the prefixes they extend.
        for block_hash in reversed(hashes):
            held[block_hash] = now
            held.move_to_end(block_hash)
        while len(held) > self.blocks_per_replica:
            held.popitem(last=False)

    def match(self, replica_id: str, hashes: Sequence[bytes]) -> int:
        """Length of the longest prefix of ``hashes`` recorded for ``replica_id``."""
        held = self._held.get(replica_id)
        if not held:
            return 0
        oldest = -math.inf if self.ttl_s is None else self._clock() - self.ttl_s
        blocks = 0
        for block_hash in hashes:
            seen = held.get(block_hash)
            if seen is None or seen < oldest:
                break
            blocks += 1
        return blocks

    def forget(self, replica_id: str) -> None:
        self._held.pop(replica_id, None)

    def retain(self, replica_ids: Iterable[str]) -> None:
        """Drop every replica not in ``replica_ids`` (it died or was scaled away)."""
        keep = set(replica_ids)
        for replica_id in [r for r in self._held if r not in keep]:
            del self._held[replica_id]

    def size(self, replica_id: str) -> int:
        return len(self._held.get(replica_id, ()))


# --- inputs: stats and prompts -> block hashes --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplicaLayout:
    """What a replica's block hashes depend on, read from its routing stats."""

    model_path: Optional[str]
    namespace: tuple[str, str, int, str]  # model_id, dtype, block_size, kv_layout
    tenant_isolation: bool
    shard: Optional[str]

    @property
    def block_size(self) -> int:
        return self.namespace[2]


def parse_layout(stats: Mapping[str, Any], model_path_override: Optional[str] = None) -> Optional[ReplicaLayout]:
    """A replica's layout, or None while its stats are missing or malformed (route by load then)."""
    namespace = stats.get("namespace") if isinstance(stats, Mapping) else None
    if not isinstance(namespace, Mapping) or any(k not in namespace for k in _NAMESPACE_KEYS):
        return None
    try:
        key = (str(namespace["model_id"]), str(namespace["dtype"]), int(namespace["block_size"]), str(namespace["kv_layout"]))
    except (TypeError, ValueError):
        return None
    if key[2] < 1:
        return None
    shard = stats.get("shard")
    return ReplicaLayout(
        model_path=model_path_override if model_path_override is not None else stats.get("model_path"),
        namespace=key,
        tenant_isolation=bool(stats.get("tenant_isolation", False)),
        shard=shard if isinstance(shard, str) else None,
    )


@dataclass(frozen=True, slots=True)
class PromptHashes:
    prompt_tokens: int
    hashes: dict[str, list[BlockHash]]  # replica id -> block hashes in its layout (shared lists)


def prompt_hashes(
    request: LLMRequest,
    layouts: Mapping[str, Optional[ReplicaLayout]],
    encoders: Mapping[Optional[str], TextEncoder],
) -> Optional[PromptHashes]:
    """Block hashes of the request's prompt in each replica's layout, as that replica computes them.

    Replicas without a layout or without a loaded encoder are left out (None
    if that is all of them). The tenant salts the root only where the replica
    isolates tenants. Raises ValueError for a request the encoder refuses.
    """
    ids_by_path: dict[Optional[str], list[int]] = {}
    by_key: dict[tuple, list[BlockHash]] = {}
    hashes: dict[str, list[BlockHash]] = {}
    tenant_id = request.tenant_id or ""
    for replica_id, layout in layouts.items():
        if layout is None or layout.model_path not in encoders:
            continue
        if layout.model_path not in ids_by_path:
            ids_by_path[layout.model_path] = request.encode(encoders[layout.model_path])
        tenant = tenant_id if layout.tenant_isolation else ""
        key = (layout.model_path, layout.namespace, tenant)
        if key not in by_key:
            root = CacheNamespace(*layout.namespace, tenant=tenant).root_hash()
            by_key[key] = hash_prompt_blocks(root, ids_by_path[layout.model_path], layout.block_size)
        hashes[replica_id] = by_key[key]
    if not hashes:
        return None
    return PromptHashes(max(len(ids) for ids in ids_by_path.values()), hashes)
