"""`CacheAwareRouter`: Serve request router that sends a prompt where its KV prefix is.

`deployments.llm.app.build_llm` puts it on the ``LLMServer`` deployment from
the app's args (``routing: affinity``, ``routing_stats_period_s``, and
``router``: the kwargs below), as Serve's::

    request_router_config:
      request_router_class: deployments.llm.router:CacheAwareRouter
      request_routing_stats_period_s: 1
      request_router_kwargs: {imbalanced_threshold: 8, max_load_ratio: 1.3}

For each request it tokenizes the prompt exactly as the replica will
(`PromptEncoder`), hashes its full blocks in the namespace each replica
reports (`record_routing_stats`), and asks two sources how long a prefix each
replica's device holds: the KV coordinator (exact but late: shards report in
batches) and its own index of what it routed where (immediate but
approximate). Each replica gets the longer of the two. The ranking itself
(cost, load bounds, power-of-two fallback) is `routing_policy.rank`. Nothing
here can fail a request: an unreadable request, missing stats, a missing
tokenizer or a slow or dead coordinator all degrade to power of two choices.

request_router_kwargs (all optional):

- ``prefill_cost_per_token`` (1.0) and ``per_request_cost`` (32.0): cost
  weights; one in-flight request counts as that many uncached prompt tokens.
- ``imbalanced_threshold`` (8): never pick a replica with more than this many
  in-flight requests above the least loaded candidate.
- ``max_load_ratio`` (1.3): never let a replica's recent share of requests
  exceed this multiple of the mean share.
- ``load_window_requests`` (128): half-life, in routed requests, of that share;
  ``share_slack`` (2): the share may also exceed the mean by this many requests.
- ``match_rate_threshold`` (0.1): below this fraction of the prompt cached
  anywhere, route by power of two choices.
- ``use_coordinator`` (true), ``coordinator_name`` / ``coordinator_namespace``
  (the cache's `kv-coordinator` in `blatam-kv`), ``coordinator_timeout_s``
  (0.025), ``coordinator_retry_s`` (5.0: wait after a failed lookup of the actor).
- ``local_index_blocks`` (32768 per replica) and ``local_index_ttl_s`` (none):
  bound and age of the router's own prefix index.
- ``model_path``: tokenizer folder on the router's host when it differs from
  the replicas' reported ``model_path`` (default: theirs; none = demo model).
- ``pending_ttl_s`` (30): forget a chosen replica if Serve never confirms it.
- ``seed``: seed of the random pair choice (tests).

Load of a replica = max(in-flight requests this router sent there, including
ones chosen but not yet confirmed (`in_flight.InFlight`); Serve's queue-length
cache, which also sees other routers' requests, and can read one high for up to
its timeout after concurrent requests to a replica).

Calls that one replica makes while serving one request share that request's
`internal_request_id` (unless made with `deployments.common.serve_calls.
call_as_own_request`, as our ingresses do). Serve's base router hands a replica
to the pending request with the chosen request's id, so it gave the first such
sibling every replica chosen for the others, which then waited forever: a
user's deployment calling this one concurrently hung. This router hands it to
the very request it was chosen for (`_fulfill_next_pending_request`), and
counts siblings apart.

With a single replica there is nothing to choose: it gets every request
with no tokenizing, hashing or lookup (decision kind ``single``).

Metrics: ``ray_llm_router_decisions_total{deployment, kind}`` (kind: affinity,
balanced, pow2, fallback, single) and ``ray_llm_router_coordinator_lookups_total
{deployment, outcome}`` (ok, timeout, error).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import ray
from ray.serve.request_router import PendingRequest, ReplicaID, ReplicaResult, RequestRouter, RunningReplica
from ray.serve._private.common import RequestMetadata

from cache_actors.actors.spec import COORDINATOR_NAME, NAMESPACE
from cache_actors.core.hashing import BlockHash
from cache_actors.engine.prompt_encoder import PromptEncoder
from cache_actors.engine.requests import LLMRequest
from deployments.llm.in_flight import InFlight, Tracked
from deployments.llm.routing_policy import (
    DECISION_KINDS,
    FALLBACK,
    SINGLE,
    Candidate,
    DecayedShares,
    Decision,
    LocalPrefixIndex,
    ReplicaLayout,
    RoutingPolicy,
    merge_matches,
    parse_layout,
    power_of_two,
    prefix_blocks_to_tokens,
    prompt_hashes,
    rank,
)

logger = logging.getLogger(__name__)

_MAX_TRACKED_REQUESTS = 100_000
_ENCODER_RETRY_S = 30.0


def request_of(pending_request: Optional[PendingRequest]) -> Optional[LLMRequest]:
    """The LLM request: first positional argument, or the ``request`` keyword (a plain dict is validated).

    None when there is none or it is invalid: the replica answers the 4xx, the router only falls back.
    """
    if pending_request is None:
        return None
    request = pending_request.args[0] if pending_request.args else (pending_request.kwargs or {}).get("request")
    if not isinstance(request, (LLMRequest, Mapping)):
        return None
    try:
        return LLMRequest.parse(request)
    except ValueError as exc:
        logger.debug("cache-aware router: invalid request (%s)", exc)
        return None


@dataclass
class _Encoders:
    loaded: dict[Optional[str], PromptEncoder] = field(default_factory=dict)
    failed_at: dict[Optional[str], float] = field(default_factory=dict)
    loading: dict[Optional[str], asyncio.Future] = field(default_factory=dict)


class CacheAwareRouter(RequestRouter):
    """Ranks replicas by uncached prompt tokens plus load, within load bounds."""

    def initialize_state(
        self,
        prefill_cost_per_token: float = 1.0,
        per_request_cost: float = 32.0,
        imbalanced_threshold: float = 8.0,
        max_load_ratio: float = 1.3,
        match_rate_threshold: float = 0.1,
        load_window_requests: int = 128,
        share_slack: float = 2.0,
        use_coordinator: bool = True,
        coordinator_name: str = COORDINATOR_NAME,
        coordinator_namespace: str = NAMESPACE,
        coordinator_timeout_s: float = 0.025,
        coordinator_retry_s: float = 5.0,
        local_index_blocks: int = 32768,
        local_index_ttl_s: Optional[float] = None,
        model_path: Optional[str] = None,
        pending_ttl_s: float = 30.0,
        seed: Optional[int] = None,
    ) -> None:
        self.policy = RoutingPolicy(
            prefill_cost_per_token=float(prefill_cost_per_token),
            per_request_cost=float(per_request_cost),
            imbalanced_threshold=float(imbalanced_threshold),
            max_load_ratio=float(max_load_ratio),
            match_rate_threshold=float(match_rate_threshold),
            load_window_requests=int(load_window_requests),
            share_slack=float(share_slack),
        )
        if coordinator_timeout_s <= 0 or coordinator_retry_s < 0 or pending_ttl_s <= 0:
            raise ValueError("coordinator_timeout_s and pending_ttl_s must be > 0, coordinator_retry_s >= 0")
        self._use_coordinator = bool(use_coordinator)
        self._coordinator_name = coordinator_name
        self._coordinator_namespace = coordinator_namespace
        self._coordinator_timeout_s = float(coordinator_timeout_s)
        self._coordinator_retry_s = float(coordinator_retry_s)
        self._coordinator: Any = None
        self._coordinator_retry_at = 0.0
        self._model_path = model_path
        self._pending_ttl_s = float(pending_ttl_s)
        self._rng = random.Random(seed)
        self._index = LocalPrefixIndex(int(local_index_blocks), local_index_ttl_s)
        self._shares = DecayedShares(self.policy.load_window_requests)
        self._in_flight = InFlight(_MAX_TRACKED_REQUESTS)
        self._encoders = _Encoders()
        self.decisions: Counter[str] = Counter()  # kind -> count, also exported as a metric
        self._decision_metric = self._coordinator_metric = None
        try:
            from ray.util import metrics

            self._decision_metric = metrics.Counter(
                "llm_router_decisions",
                description="Cache-aware routing decisions by kind (affinity, balanced, pow2, fallback, single).",
                tag_keys=("deployment", "kind"),
            )
            self._coordinator_metric = metrics.Counter(
                "llm_router_coordinator_lookups",
                description="Router prefix lookups at the KV coordinator by outcome (ok, timeout, error).",
                tag_keys=("deployment", "outcome"),
            )
        except Exception:  # metrics are optional: a router without them still routes
            logger.warning("cache-aware router: metrics unavailable", exc_info=True)

    # --- Serve hooks ------------------------------------------------------------------------------
    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: Optional[PendingRequest] = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        if pending_request is not None:
            # Every replica is ranked below: once all refuse, back off instead of spinning.
            pending_request.routing_context.should_backoff = True
        if len(candidate_replicas) == 1:
            # The decision would cost a tokenization, a hash chain and a coordinator round trip (up to
            # coordinator_timeout_s) on every request's path to the only replica there is.
            self._note_decision(SINGLE)
            return [candidate_replicas]
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        # A request whose caller left while it waited (backing off from full replicas, say) has its future
        # cancelled; Serve never routes or completes it, so its count would otherwise linger for the TTL.
        self._in_flight.expire(self._pending_ttl_s, lambda pending: pending.future.cancelled())
        try:
            decision, tracked = await self._decide(candidate_replicas, pending_request)
        except Exception:  # routing advice must never fail a request
            logger.exception("cache-aware router: decision failed; using power of two choices")
            decision, tracked = Decision(tuple(power_of_two(self._candidates(candidate_replicas), self._rng)), FALLBACK), None
        if tracked is not None and decision.ranking:
            self._in_flight.choose(pending_request, pending_request.metadata.internal_request_id, tracked, decision.ranking[0])
            # Record the choice now so a burst of the same prefix sticks before Serve confirms it.
            self._index.record(decision.ranking[0], tracked.hashes.get(decision.ranking[0], []))
        self._note_decision(decision.kind)
        return [[by_id[replica_id]] for replica_id in decision.ranking if replica_id in by_id]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult) -> None:
        if len(self.curr_replicas) <= 1 and self._in_flight.chosen(pending_request) is None:
            return  # routed without a decision (the only replica): nothing to learn from it
        tracked = self._in_flight.routed(
            pending_request, pending_request.metadata.internal_request_id, replica_id.unique_id,
            lambda: self._build_sync(pending_request),
        )
        if tracked is not None:
            self._learn(tracked, replica_id.unique_id)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        # With the rejection protocol Serve confirms every accepted request first; without it, never.
        ran = self._in_flight.completed(internal_request_id, replica_id.unique_id, confirms=self._use_replica_queue_len_cache)
        if ran is not None:
            self._learn(ran, replica_id.unique_id)

    def _fulfill_next_pending_request(self, replica: RunningReplica, request_metadata: Optional[RequestMetadata] = None) -> None:
        """Give the replica to the very request it was chosen for.

        Serve's own version finds that request by `internal_request_id`, which the calls one replica
        makes for one request all share (see `deployments.common.serve_calls`): it gives the
        first sibling every replica chosen for the others, and the others wait forever. The routing
        task passes the request's own metadata object, so identity finds the right one.
        """
        if request_metadata is None:
            return
        by_id = self._pending_requests_by_id
        pending = by_id.get(request_metadata.internal_request_id)
        if pending is None or pending.metadata is not request_metadata:
            pending = next((p for p in self._pending_requests_to_fulfill if p.metadata is request_metadata), None)
        if pending is None or pending.future.done():
            return
        self._cancel_routing_task_for_pending_request(pending)
        self._record_queue_wait_time(pending)
        pending.future.set_result(replica)
        if by_id.get(request_metadata.internal_request_id) is pending:
            self._remove_pending_request_from_indices(pending)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        live = {r.replica_id.unique_id for r in replicas}
        self._index.retain(live)
        for replica_id in list(self._shares.snapshot()):
            if replica_id not in live:
                self._shares.forget(replica_id)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._index.forget(replica_id.unique_id)
        self._shares.forget(replica_id.unique_id)

    # --- decision ---------------------------------------------------------------------------------
    async def _decide(
        self, replicas: list[RunningReplica], pending_request: Optional[PendingRequest]
    ) -> tuple[Decision, Optional[Tracked]]:
        layouts = {r.replica_id.unique_id: parse_layout(r.routing_stats or {}, self._model_path) for r in replicas}
        request = request_of(pending_request)
        known = {layout.model_path for layout in layouts.values() if layout is not None}
        if request is None or not known:
            return self._pow2(replicas, FALLBACK), None
        for model_path in known:
            await self._ensure_encoder(model_path)
        tracked = self._in_flight.chosen(pending_request)  # a retry after a rejection keeps its hashes
        if tracked is None:
            tracked = self._build_tracked(request, layouts)
            if tracked is None:
                return self._pow2(replicas, FALLBACK), None
        shard_blocks = await self._coordinator_blocks(layouts, tracked)
        local_blocks = {rid: self._index.match(rid, hashes) for rid, hashes in tracked.hashes.items()}
        shards = {rid: (layouts[rid].shard if layouts.get(rid) else None) for rid in layouts}
        blocks = merge_matches(shards, local_blocks, shard_blocks)
        candidates = []
        for replica in replicas:
            rid = replica.replica_id.unique_id
            layout = layouts[rid]
            matched = prefix_blocks_to_tokens(blocks.get(rid, 0), layout.block_size, tracked.prompt_tokens) if layout else 0
            candidates.append(Candidate(rid, self._load(replica, rid), self._shares.get(rid), matched, self._index.size(rid)))
        decision = rank(candidates, tracked.prompt_tokens, self.policy, self._rng)
        logger.debug("cache-aware router: %s %s costs=%s", decision.kind, decision.ranking, decision.costs)
        return decision, tracked

    def _pow2(self, replicas: list[RunningReplica], kind: str) -> Decision:
        return Decision(tuple(power_of_two(self._candidates(replicas), self._rng)), kind)

    def _candidates(self, replicas: list[RunningReplica]) -> list[Candidate]:
        return [
            Candidate(r.replica_id.unique_id, self._load(r, r.replica_id.unique_id), self._shares.get(r.replica_id.unique_id))
            for r in replicas
        ]

    def _load(self, replica: RunningReplica, replica_id: str) -> float:
        cached = self.replica_queue_len_cache.get(replica.replica_id)
        return float(max(self._in_flight.load(replica_id), cached or 0))

    # --- prompt -> block hashes -------------------------------------------------------------------
    def _build_tracked(self, request: LLMRequest, layouts: Mapping[str, Optional[ReplicaLayout]]) -> Optional[Tracked]:
        try:
            hashed = prompt_hashes(request, layouts, self._encoders.loaded)
        except (ValueError, TypeError, KeyError) as exc:  # the replica will answer the 4xx
            logger.debug("cache-aware router: cannot tokenize request (%s)", exc)
            return None
        if hashed is None:
            return None
        return Tracked(prompt_tokens=hashed.prompt_tokens, hashes=hashed.hashes)

    def _build_sync(self, pending_request: PendingRequest) -> Optional[Tracked]:
        request = request_of(pending_request)
        if request is None:
            return None
        layouts = {r.replica_id.unique_id: parse_layout(r.routing_stats or {}, self._model_path) for r in self._replicas_list}
        return self._build_tracked(request, layouts)

    async def _ensure_encoder(self, model_path: Optional[str]) -> None:
        """Load the tokenizer once per model path, off the routing loop; retry a failure later."""
        encoders = self._encoders
        if model_path in encoders.loaded:
            return
        if time.monotonic() - encoders.failed_at.get(model_path, -_ENCODER_RETRY_S) < _ENCODER_RETRY_S:
            return
        future = encoders.loading.get(model_path)
        if future is None:
            future = encoders.loading[model_path] = asyncio.ensure_future(asyncio.to_thread(PromptEncoder.load, model_path))
        try:
            encoders.loaded[model_path] = await asyncio.shield(future)
        except Exception as exc:
            encoders.failed_at[model_path] = time.monotonic()
            logger.warning("cache-aware router: no tokenizer for %r (%s); routing by load only", model_path, exc)
        finally:
            encoders.loading.pop(model_path, None)

    # --- coordinator ------------------------------------------------------------------------------
    async def _coordinator_blocks(self, layouts: Mapping[str, Optional[ReplicaLayout]], tracked: Tracked) -> dict[str, int]:
        """Prefix blocks per shard, from the coordinator; {} if it is off, absent, slow or failing."""
        if not self._use_coordinator or time.monotonic() < self._coordinator_retry_at:
            return {}
        chains: dict[int, list[BlockHash]] = {}
        for rid, layout in layouts.items():
            hashes = tracked.hashes.get(rid)
            if layout is not None and layout.shard is not None and hashes:
                chains.setdefault(id(hashes), hashes)
        if not chains:
            return {}
        try:
            if self._coordinator is None:
                self._coordinator = await asyncio.to_thread(
                    ray.get_actor, self._coordinator_name, namespace=self._coordinator_namespace
                )
            answers = await asyncio.wait_for(
                asyncio.gather(*(self._coordinator.route.remote(chain) for chain in chains.values())),
                self._coordinator_timeout_s,
            )
        except asyncio.TimeoutError:
            self._note_coordinator("timeout")
            return {}
        except Exception as exc:  # absent, dead or restarting: look it up again later
            self._coordinator = None
            self._coordinator_retry_at = time.monotonic() + self._coordinator_retry_s
            self._note_coordinator("error")
            logger.debug("cache-aware router: coordinator unavailable (%s)", exc)
            return {}
        self._note_coordinator("ok")
        blocks: dict[str, int] = {}
        for answer in answers:
            for shard, held in answer:
                blocks[shard] = max(blocks.get(shard, 0), int(held))
        return blocks

    # --- bookkeeping ------------------------------------------------------------------------------
    def _learn(self, tracked: Tracked, replica_id: str) -> None:
        """The request runs on `replica_id`: its prefix will be cached there, and it counts toward its share."""
        self._shares.record(replica_id)
        self._index.record(replica_id, tracked.hashes.get(replica_id, []))

    def _note_decision(self, kind: str) -> None:
        assert kind in DECISION_KINDS, kind
        self.decisions[kind] += 1
        if self._decision_metric is not None:
            self._decision_metric.inc(tags={"deployment": self._deployment_id.name, "kind": kind})

    def _note_coordinator(self, outcome: str) -> None:
        if self._coordinator_metric is not None:
            self._coordinator_metric.inc(tags={"deployment": self._deployment_id.name, "outcome": outcome})
