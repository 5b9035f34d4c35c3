"""Admission: how waiting prompts get a batch row between two decode steps.

Split from `cache_actors.engine.batching.scheduler` (the loop, streams, decode
steps and retirement); `ContinuousBatcher` mixes this in. Per iteration, up to
``max_prefill_tokens`` of uncached prompt are admitted (``idle_prefill_tokens``
while no sequence decodes: nobody is stalled by a longer prefill):

- each prompt's cached prefix is read into a fresh row, and the rows reserved
  in one iteration are prefilled together in one forward
  (`cache_actors.engine.batching.batched_prefill`), unless a prompt starts
  with blocks a member is about to compute: then that group goes first and
  the prompt reuses them from the cache;
- a prompt longer than the budget is prefilled in chunks in a scratch row
  (`cache_actors.engine.batching.chunked_prefill`) and joins when complete.

The attributes and the `_start` / `_retire` it calls are the batcher's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch

from cache_actors.core.kv_layout import block_views, blocks_from_cache
from cache_actors.engine.batching.batched_prefill import prefill_rows
from cache_actors.engine.batching.chunked_prefill import ChunkedPrefill
from cache_actors.engine.batching.sequence import Sequence

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Reserved:
    """A sequence given a batch row this iteration: the row holds its ``cached`` prefix tokens."""

    seq: Sequence
    row: int
    hashes: list
    known_blocks: int
    cached: int


def _would_share(hashes: list, group: list[_Reserved]) -> bool:
    """Whether a prompt with block ``hashes`` starts with blocks a member of ``group`` is about to compute.

    Prefilled in the same forward, both would compute them (n choices of one
    prompt, requests sharing a new system prompt); after the group, the
    prompt reuses them from the cache.
    """
    pending = {block for member in group for block in member.hashes[member.known_blocks:]}
    return bool(pending) and any(block in pending for block in hashes)


class AdmissionMixin:
    """The admission half of `ContinuousBatcher` (see the module docstring)."""

    def _free_rows(self) -> int:
        """Rows a new sequence may take (the half-prefilled prompt has one promised)."""
        return self.kv.max_rows - self.kv.active - (self._partial is not None)

    def _budget(self) -> int:
        """Prompt tokens this iteration may prefill.

        Chunks bound how long running sequences wait for their next token; with
        none running there is nobody to stall, and a prompt prefilled in one
        forward is faster than in chunks (2,049 tokens of the 24M Llama on 2
        cores: ~850 ms at once, ~950 ms in chunks of 512: each chunk reads every
        weight again and attends with a mask), as is a burst of short prompts
        prefilled in one batch instead of several.
        """
        budget = self.config.max_prefill_tokens
        if self.kv.active == 0 and self.config.idle_prefill_tokens:
            budget = max(budget, self.config.idle_prefill_tokens)
        return budget

    def _admit(self) -> None:
        budget = self._budget()
        if self._partial is not None:
            budget -= self._guard(self._partial.seq, "prefill", lambda: self._continue_partial(budget))
        group: list[_Reserved] = []  # prompts given a row this iteration, prefilled together after the loop
        while budget > 0 and self._free_rows() > 0:
            with self._wake:
                if not self._waiting:
                    break
                seq = self._waiting.popleft()
            if seq.cancelled:
                continue
            if self._partial is not None and len(seq.prompt_ids) > budget:
                with self._wake:  # may not fit now: it waits for the long prompt to finish
                    self._waiting.appendleft(seq)
                break
            hashes = None
            if group and self.runner.supports_prefix_reuse:
                hashes = self.engine.block_hashes(seq.prompt_ids, seq.request.tenant_id)
                if _would_share(hashes, group):
                    self._prefill_group(group)  # then its prefix is cached, not computed twice in one forward
                    group = []
            budget -= self._guard(seq, "prefill", lambda: self._prefill(seq, budget, group, hashes))
        self._prefill_group(group)

    def _guard(self, seq: Sequence, what: str, work: Callable[[], int]) -> int:
        """Run ``work`` for ``seq``; a failure fails that sequence only. Returns the tokens computed."""
        try:
            return work()
        except Exception as exc:
            logger.exception("%s failed", what)
            self._fail(seq, what, exc)
            return 0

    def _fail(self, seq: Sequence, what: str, exc: Exception) -> None:
        if self._partial is not None and self._partial.seq is seq:
            self._partial = None
        seq.finish_reason = "error"
        seq.emit({"type": "error", "message": f"{what} failed: {type(exc).__name__}: {exc}"})

    @torch.inference_mode()
    def _prefill(self, seq: Sequence, budget: int, group: list[_Reserved], hashes: list | None = None) -> int:
        """Give ``seq`` a row holding its cached prefix, to be prefilled with ``group``; over ``budget``, a first chunk.

        ``hashes``: its block hashes, if already computed. Returns the tokens
        computed (or to compute, for the group).
        """
        ids = seq.prompt_ids
        bs = self.block_size
        hashes, hit = self.engine.match_prefix(ids, seq.request.tenant_id, hashes)
        cached = hit.num_blocks * bs
        if len(ids) - cached > budget and self._partial is None:
            try:
                if self._scratch is None:
                    row_shape = self.kv.row_view(0).shape
                    self._scratch = torch.zeros(row_shape, dtype=self.kv.buffer.dtype, device=self.kv.buffer.device)
                if hit.num_blocks:
                    self.cache.read_blocks(hit, block_views(self._scratch, bs)[: hit.num_blocks])
            finally:
                self.cache.release(hit)
            self._partial = ChunkedPrefill(seq, hashes, cached, self._scratch)
            return self._continue_partial(budget)
        row = self.kv.add_row()
        try:
            if hit.num_blocks:
                self.cache.read_blocks(hit, block_views(self.kv.row_view(row), bs)[: hit.num_blocks])
        except BaseException:
            self.kv.remove(row)
            raise
        finally:
            self.cache.release(hit)
        group.append(_Reserved(seq, row, hashes, hit.num_blocks, cached))
        return len(ids) - cached

    @torch.inference_mode()
    def _prefill_group(self, group: list[_Reserved]) -> None:
        """Prefill the rows reserved this iteration, then start their sequences (one alone runs as before).

        The sequences start in row order (a row is its index in ``_running``)
        and only then are finished ones retired, last row first, so retiring
        one never moves a row another is still to start in.
        """
        if not group:
            return
        first = group[0].row
        try:
            if len(group) == 1 or not self.runner.supports_prefix_reuse:
                logits = []
                for reserved in group:
                    out, _ = self.runner.prefill(reserved.seq.prompt_ids, self.kv.row_cache(reserved.row, reserved.cached))
                    self.kv.set_length(reserved.row, len(reserved.seq.prompt_ids))
                    logits.append(out)
            else:
                assert [r.row for r in group] == list(range(first, first + len(group)))
                logits = list(prefill_rows(self.runner.forward, self.kv, first, [r.seq.prompt_ids for r in group],
                                           [r.cached for r in group]))
                self.grouped_prefills += len(group)
        except Exception as exc:
            logger.exception("prefill of %d prompts failed", len(group))
            for reserved in reversed(group):
                self.kv.remove(reserved.row)
                self._fail(reserved.seq, "prefill", exc)
            return
        for reserved, row_logits in zip(group, logits):
            def store(reserved: _Reserved = reserved) -> None:
                length = len(reserved.seq.prompt_ids)
                self._store_prompt(reserved.hashes, reserved.known_blocks, self.kv.row_cache(reserved.row, length),
                                   reserved.seq.request.tenant_id)

            self._start(reserved.seq, reserved.hashes, reserved.cached, row_logits, store=store, retire=False)
        for row in range(first + len(group) - 1, first - 1, -1):
            if self._running[row].finished:
                self._retire(row, store=False)

    @torch.inference_mode()
    def _continue_partial(self, budget: int) -> int:
        """The next chunk of the long prompt; when it is complete, the sequence joins the batch."""
        partial = self._partial
        assert partial is not None
        before = partial.done
        logits = partial.advance(self.runner, budget)
        if logits is None:
            return partial.done - before
        self._partial = None
        row = self.kv.add_row()
        partial.copy_into(self.kv.row_view(row))
        self.kv.set_length(row, partial.done)
        self._start(partial.seq, partial.hashes, partial.cached_tokens, logits,
                    store=lambda: self._store_prompt(partial.hashes, partial.cached_tokens // self.block_size, partial.cache,
                                                     partial.seq.request.tenant_id))
        return partial.done - before

    def _store_prompt(self, hashes: list, known_blocks: int, kv: Any, tenant_id: str | None) -> None:
        if self.runner.supports_prefix_reuse and len(hashes) > known_blocks:
            self.cache.store(hashes, known_blocks, lambda first, count: blocks_from_cache(kv, first, count, self.block_size),
                             tenant=self.engine.tenant_tag(tenant_id))
