"""The continuous batcher: requests join and leave a shared decode batch between steps.

One worker thread owns the model and the batch (model calls release the GIL,
so the replica's event loop stays responsive). Each loop iteration:

1. drops sequences whose client went away (their row is freed at once);
2. prefills at most ``max_prefill_tokens`` of uncached prompt (or
   ``idle_prefill_tokens`` while nothing decodes), so neither a burst of
   prompts nor one long prompt stalls everyone's decoding for long:
   first the next chunk of a prompt too long for one iteration (one at a
   time, see `chunked_prefill`), then waiting sequences while rows are free
   (`admission`). They are prefilled on top of their cached prefixes,
   straight into their rows of the batch buffer, together in one forward
   (`batched_prefill`), and their prompt blocks are stored right after their
   first token so a later request with the same prefix already hits;
3. runs one decode step for every running sequence and retires the finished
   ones, storing the blocks their generated tokens filled.

The caller side is asyncio: `stream` yields event dicts (``delta`` then one
``done``), and closing the iterator cancels the sequence.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Mapping

import torch

from cache_actors.engine.batching.admission import AdmissionMixin
from cache_actors.engine.batching.chunked_prefill import ChunkedPrefill
from cache_actors.engine.compute_thread import ComputeThread
from cache_actors.engine.batching.detokenizer import IncrementalText
from cache_actors.engine.batching.ragged_kv import RaggedKVBuffer
from cache_actors.engine.batching.sequence import Sequence, SequenceRequest, TokenConstraint
from cache_actors.engine.batching.stream_pacing import merge_deltas, paced_events
from cache_actors.core.kv_layout import blocks_from_cache
from cache_actors.engine.heap_trim import DEFAULT_MIN_INTERVAL_S, HeapTrimmer, libc_malloc_trim
from cache_actors.engine.logprobs import prompt_entries
from cache_actors.engine.overload import BatcherOverloaded
from cache_actors.engine.requests import check_context

logger = logging.getLogger(__name__)

#: Compiles a response_format into a factory of per-sequence constraints (None: unconstrained).
CompileFormat = Callable[[Mapping[str, Any]], Callable[[], TokenConstraint] | None]


@dataclass(frozen=True, slots=True)
class BatcherConfig:
    """Limits of one replica's batch."""

    max_batch_size: int = 16
    max_model_len: int | None = None  # None: the model's context, capped at 4096
    max_prefill_tokens: int = 512  # per iteration; a longer prompt is prefilled in chunks
    # Per iteration while no sequence is decoding (nobody to stall); None: max_prefill_tokens.
    idle_prefill_tokens: int | None = None
    max_waiting: int = 1024
    # Give the heap's free pages back to the OS when idle after work, at most this often; 0: never (heap_trim.py).
    heap_trim_interval_s: float = DEFAULT_MIN_INTERVAL_S
    # Idle this long before the cache's writes in flight are finished and the heap trimmed (`_work_within`).
    idle_flush_delay_s: float = 0.05
    # A request's streamed deltas leave at most this often after the first (`stream_pacing`); 0: as they come.
    stream_interval_s: float = 0.0


async def collect(events: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    """A stream of events as one result: ``{"text", "token_ids", **done event}`` (RuntimeError on an error event)."""
    parts: list[str] = []
    token_ids: list[int] = []
    async for event in events:
        if event["type"] == "delta":
            parts.append(event["text"])
            token_ids.extend(event["token_ids"])
        elif event["type"] == "error":
            raise RuntimeError(event["message"])
        else:
            return {"text": "".join(parts), "token_ids": token_ids, **event}
    raise RuntimeError("the stream ended without a result")


class ContinuousBatcher(AdmissionMixin):
    """Serves generation requests for one engine (its runner and KV cache) with continuous batching."""

    def __init__(
        self,
        engine: Any,
        config: BatcherConfig = BatcherConfig(),
        *,
        compile_format: CompileFormat | None = None,
    ) -> None:
        self.engine = engine
        self.runner = engine.runner
        self.cache = engine.cache
        self.config = config
        self.block_size = engine.config.block_size
        model_len = config.max_model_len or min(self.runner.max_context, 4096)
        self.max_model_len = min(model_len, self.runner.max_context)
        geometry = self.runner.geometry
        rounded = -(-self.max_model_len // self.block_size) * self.block_size
        # The engine's one torch thread: the loop runs there, and the buffer is filled there (see compute_thread).
        # A second batcher on the same engine (a benchmark comparing settings) gets a thread of its own.
        self._own_compute = engine.compute.has_loop
        self.compute: ComputeThread = ComputeThread("continuous-batcher") if self._own_compute else engine.compute
        self.kv = self.compute.call(
            RaggedKVBuffer, num_layers=geometry.num_layers, num_kv_heads=geometry.num_kv_heads,
            head_dim=geometry.head_dim, max_rows=config.max_batch_size, max_len=rounded, dtype=geometry.dtype,
            device=self.runner.device,
        )
        self._compile_format = compile_format
        self._stop_ids = frozenset(self.runner.eos_token_ids)
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._running: list[Sequence] = []  # index == row in self.kv
        self._partial: ChunkedPrefill | None = None  # a long prompt being prefilled chunk by chunk
        self._scratch: torch.Tensor | None = None  # its KV until it joins the batch (allocated on first use)
        self._wake = threading.Condition()
        self._closed = False
        self.steps = 0
        self.step_rows = 0  # sum of batch sizes over steps (mean batch = step_rows / steps)
        self.steps_during_chunked_prefill = 0  # decode steps that ran while a long prompt was half prefilled
        self.jumped_tokens = 0  # grammar-forced tokens computed by jump-forward instead of decode steps
        self.grouped_prefills = 0  # prompts prefilled together with others in one forward (batched_prefill)
        self._torch_threads: int | None = None
        self._worker_started = threading.Event()
        self.heap = HeapTrimmer(config.heap_trim_interval_s, libc_malloc_trim())
        self._loop_done = self.compute.start_loop(self._loop, wake=self._notify)

    # --- caller side -----------------------------------------------------------------
    def check(self, request: SequenceRequest) -> Callable[[], TokenConstraint] | None:
        """Refuse what can never run (ValueError); returns the request's constraint factory."""
        if not request.token_ids:
            raise ValueError("the prompt has no tokens")
        vocab = self.runner.vocab_size
        bad = next((token for token in request.token_ids if not 0 <= token < vocab), None)
        if bad is not None:
            raise ValueError(f"prompt token id {bad} is outside this model's vocabulary [0, {vocab})")
        check_context(len(request.token_ids), request.sampling.max_new_tokens, self.max_model_len, max_name="max_tokens")
        if self._compile_format is not None and request.response_format is not None:
            return self._compile_format(request.response_format)
        if request.response_format not in (None, {"type": "text"}):
            raise ValueError("structured output is not available on this server")
        return None

    async def stream(self, request: SequenceRequest, *, whole: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Events for one request: ``{"type": "delta", "text", "token_ids"}``..., then ``{"type": "done", ...}``.

        ``whole``: the caller reads only the whole answer, so the deltas come
        as one, just before ``done``: the model's thread keeps them instead of
        waking the caller's event loop once per token (on 2 cores, 16 answers
        woke it 16 times a step, taking turns at the GIL with the model).
        Raises ValueError (bad request) or `BatcherOverloaded` before the first event.
        Closing the iterator early cancels the request and frees its batch row.
        """
        if request.response_format is None:
            factory = self.check(request)
        else:  # compiling a schema can take a while: not on the event loop
            factory = await asyncio.to_thread(self.check, request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        held: dict[str, Any] | None = None

        def emit(event: dict[str, Any]) -> None:
            nonlocal held
            if whole and event["type"] == "delta":
                held = merge_deltas(held, event)
                return
            if held is not None:
                loop.call_soon_threadsafe(queue.put_nowait, held)
                held = None
            loop.call_soon_threadsafe(queue.put_nowait, event)

        seq = Sequence(
            request=request,
            emit=emit,
            text=IncrementalText(self.runner.decode, request.sampling.stop),
            token_text=self._token_text,
            constraint=factory() if factory else None,
            stop_ids=(frozenset() if request.sampling.ignore_eos else self._stop_ids)
            | frozenset(request.sampling.stop_token_ids),
        )
        with self._wake:
            if self._closed:
                raise BatcherOverloaded("the batcher is shut down")
            if len(self._waiting) >= self.config.max_waiting:
                raise BatcherOverloaded(f"{len(self._waiting)} requests are waiting; retry later")
            self._waiting.append(seq)
            self._wake.notify()
        try:
            async with aclosing(paced_events(queue, self.config.stream_interval_s)) as events:
                async for event in events:
                    yield event
        finally:
            if not seq.finished:
                seq.cancelled = True
                with self._wake:
                    self._wake.notify()

    async def generate(self, request: SequenceRequest) -> dict[str, Any]:
        """The whole result at once: ``{"text", "token_ids", **done event}``."""
        return await collect(self.stream(request))

    @property
    def alive(self) -> bool:
        """Whether the loop still runs (a replica whose batcher died must be restarted)."""
        return not self._loop_done.done()

    def worker_torch_threads(self, timeout_s: float = 10.0) -> int | None:
        """The torch threads the worker thread runs the model with, as torch reports them there.

        The number a log line or a health probe shows should be the one the
        model work uses, not the caller's thread's (an OpenMP setting is per
        thread). None if the worker has not started within ``timeout_s``.
        """
        self._worker_started.wait(timeout_s)
        return self._torch_threads

    def load(self) -> dict[str, int]:
        return {"running": len(self._running), "waiting": len(self._waiting), "max_batch_size": self.config.max_batch_size}

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if not self.compute.on_thread():
            try:
                self._loop_done.result(timeout=10)
            except Exception:  # noqa: BLE001 - a loop that died is closed too
                logger.exception("the continuous batcher's loop ended with an error")
        if self._own_compute:
            self.compute.close()

    def _notify(self) -> None:
        """A call is queued on the compute thread: leave the idle wait to serve it."""
        with self._wake:
            self._wake.notify()

    # --- worker side -------------------------------------------------------------------
    def _loop(self) -> None:
        self._torch_threads = torch.get_num_threads()
        self._worker_started.set()
        while True:
            if self._idle() and not self._work_within(self.config.idle_flush_delay_s):
                self._flush_writes()
                self.heap.maybe_trim()
            with self._wake:
                while self._idle():
                    self._wake.wait()
                if self._closed:
                    break
            self.heap.note_work()
            try:
                self.compute.run_pending()  # the engine's persist/load/clear, between iterations
                self._drop_cancelled()
                self._admit()
                if self._running:
                    self.steps_during_chunked_prefill += self._partial is not None
                    self._step()
            except Exception as exc:  # a bug must fail the requests in flight, not hang them
                logger.exception("continuous batcher step failed")
                self._fail_running(f"generation failed: {type(exc).__name__}: {exc}")
        self._flush_writes()  # a close within the quiet moment still hands the cache its blocks
        for seq in [*self._running, *self._waiting, *([self._partial.seq] if self._partial else [])]:
            seq.emit({"type": "error", "message": "the server is shutting down"})

    def _work_within(self, seconds: float) -> bool:
        """Whether work comes within ``seconds`` (waits for it). Why: a client's next request usually follows its
        last answer by a few ms; the write-behind the idle flush finishes (a 2,048-token prompt is 128 blocks to
        copy into the shard) then ran in front of it. Flushed after a quiet moment, it runs when nobody waits."""
        if seconds <= 0:
            return False
        with self._wake:
            return self._wake.wait_for(lambda: not self._idle(), timeout=seconds)

    def _idle(self) -> bool:
        return (not self._closed and not self._waiting and not self._running and self._partial is None
                and not self.compute.has_pending())

    def _flush_writes(self) -> None:
        """Before waiting for work: blocks whose cache write is still in flight are written now, not at the next request."""
        try:
            self.cache.flush_writes()
        except Exception:  # caching is an optimisation: a failed write costs later hits, never the loop
            logger.exception("finishing the cache writes in flight failed")

    def _drop_cancelled(self) -> None:
        with self._wake:
            if any(s.cancelled for s in self._waiting):
                self._waiting = collections.deque(s for s in self._waiting if not s.cancelled)
        for row in range(len(self._running) - 1, -1, -1):
            if self._running[row].cancelled:
                self._retire(row, store=False)
        if self._partial is not None and self._partial.seq.cancelled:
            self._partial = None

    def _token_text(self, token_id: int) -> str:
        return self.runner.decode([token_id])

    def _start(self, seq: Sequence, hashes: list, cached: int, logits: torch.Tensor,
               store: Callable[[], None] | None = None, retire: bool = True) -> None:
        """``seq`` holds the last row, prefilled: it runs from its first token on.

        ``store`` writes the prompt's new blocks to the cache. It runs after the
        first token is sent (the client should not wait for a cache write: a
        2,048-token prompt is 128 blocks) and before the row can be retired.
        A failed write costs later requests a hit, not this one its answer.
        """
        seq.cached_tokens = cached
        seq.prompt_hashes = hashes
        top = seq.request.sampling.prompt_logprobs
        if top is not None:  # echo with logprobs: every prompt position, computed apart from the cache
            entries = prompt_entries(self.runner.forward, seq.prompt_ids, top, self._token_text, self.runner.device)
            seq.emit({"type": "delta", "text": "", "token_ids": [], "prompt_tokens": len(seq.prompt_ids),
                      "prompt_logprobs": entries, "prompt_text": self.runner.decode(seq.prompt_ids)})
        self._running.append(seq)
        seq.append(seq.choose(logits))
        if store is not None:
            try:
                store()
            except Exception:  # noqa: BLE001 - see the docstring
                logger.exception("storing the prompt's blocks failed")
        self._jump_forward(len(self._running) - 1)
        if retire and seq.finished:
            self._retire(len(self._running) - 1, store=False)

    @torch.inference_mode()
    def _step(self) -> None:
        rows = len(self._running)
        last = torch.tensor([[s.generated[-1]] for s in self._running], dtype=torch.long, device=self.runner.device)
        cache, positions, mask = self.kv.decode_inputs()
        out = self.runner.forward(
            input_ids=last, cache=cache, position_ids=positions, attention_mask=mask, use_cache=True, logits_to_keep=1
        )
        self.kv.advance()
        self.steps += 1
        self.step_rows += rows
        logits = out.logits[:, -1]
        for row, seq in enumerate(self._running):
            if not seq.cancelled:
                seq.append(seq.choose(logits[row]))
                self._jump_forward(row)
        for row in range(rows - 1, -1, -1):
            seq = self._running[row]
            if seq.finished or seq.cancelled:
                self._retire(row, store=seq.finished)

    def _jump_forward(self, row: int) -> int:
        """Append the tokens ``row``'s grammar forces and compute their KV in one forward of that row alone.

        The last forced token stays unfed, like any sampled token: the next
        decode step feeds it with the rest of the batch.
        """
        seq = self._running[row]
        if seq.request.sampling.logprobs is not None:
            return 0  # every token's logprob needs its own step's logits
        if seq.jump_forward() == 0 or seq.finished:  # nothing forced, or the forced tokens ended it
            return 0
        fed = seq.fed_ids()
        length = self.kv.lengths[row]
        self.runner.prefill(fed, self.kv.row_cache(row, length))
        self.kv.set_length(row, len(fed))
        self.jumped_tokens += len(fed) - length
        return len(fed) - length

    def _retire(self, row: int, *, store: bool) -> None:
        """Free ``row``; a finished sequence stores the blocks its output filled and gets its done event."""
        seq = self._running[row]
        if store and self.runner.supports_prefix_reuse:
            self._store_generated(row, seq)
        moved = self.kv.remove(row)
        if moved is not None:
            self._running[row] = self._running[moved]
        self._running.pop()
        if seq.finished:
            done = seq.done_event()
            self.engine.stats.record(
                prompt_tokens=done["prompt_tokens"], cached_tokens=seq.cached_tokens,
                completion_tokens=done["completion_tokens"], latency_ms=done["latency_ms"],
                ttft_ms=done["ttft_ms"] or done["latency_ms"],
            )
            seq.emit(done)

    def _store_generated(self, row: int, seq: Sequence) -> None:
        fed = seq.fed_ids()[: self.kv.lengths[row]]
        known = len(seq.prompt_hashes)
        if len(fed) // self.block_size <= known:
            return
        try:
            chain = self.engine.extend_hashes(seq.prompt_hashes, fed, seq.request.tenant_id)
            kv = self.kv.row_cache(row, self.kv.lengths[row])
            self.cache.store(chain, known, lambda first, count: blocks_from_cache(kv, first, count, self.block_size),
                             tenant=self.engine.tenant_tag(seq.request.tenant_id))
        except Exception:  # caching is an optimisation: the answer is already complete
            logger.exception("storing generated blocks failed")

    def _fail_running(self, message: str) -> None:
        if self._partial is not None:
            self._partial.seq.finish_reason = "error"
            self._partial.seq.emit({"type": "error", "message": message})
            self._partial = None
        for seq in self._running:
            seq.finish_reason = "error"
            seq.emit({"type": "error", "message": message})
        while self._running:
            self.kv.remove(len(self._running) - 1)
            self._running.pop()
