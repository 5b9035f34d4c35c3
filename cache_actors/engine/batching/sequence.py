"""One request in the continuous batch: what it asked for and how far it got."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

import torch

from cache_actors.engine.batching.detokenizer import IncrementalText
from cache_actors.engine.logprobs import sampled_entry
from cache_actors.engine.sampling import SamplingParams, make_generator, sample_next

if TYPE_CHECKING:
    from cache_actors.engine.requests import LLMRequest

_ids = itertools.count()


class TokenConstraint(Protocol):
    """Structured output for one sequence (see `cache_actors.engine.structured`)."""

    def mask_logits(self, logits: torch.Tensor) -> None: ...

    def accept(self, token_id: int) -> None: ...

    def forced_tokens(self) -> list[int]: ...

    def is_finished(self) -> bool: ...


@dataclass(slots=True)
class SequenceRequest:
    """A tokenized, validated request for `ContinuousBatcher.stream`."""

    token_ids: list[int]
    sampling: SamplingParams
    tenant_id: str | None = None
    response_format: Mapping[str, Any] | None = None
    request_id: str = ""

    @classmethod
    def from_request(cls, request: LLMRequest, token_ids: list[int], *, default_max_new_tokens: int) -> SequenceRequest:
        """The batcher's view of a validated `LLMRequest` whose prompt is ``token_ids``."""
        return cls(
            token_ids=token_ids,
            sampling=request.sampling.params(default_max_new_tokens=default_max_new_tokens),
            tenant_id=request.tenant_id,
            response_format=request.response_format,
            request_id=request.request_id,
        )


@dataclass(eq=False)
class Sequence:
    """Scheduler-side state; ``emit`` hands events to the caller's event loop (thread-safe)."""

    request: SequenceRequest
    emit: Callable[[dict[str, Any]], None]
    text: IncrementalText
    constraint: TokenConstraint | None = None
    stop_ids: frozenset[int] = frozenset()
    seq_id: int = field(default_factory=lambda: next(_ids))
    generator: torch.Generator | None = None
    generated: list[int] = field(default_factory=list)
    cached_tokens: int = 0
    prompt_hashes: list[bytes] = field(default_factory=list)  # block keys of the prompt's full blocks
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float = 0.0
    cancelled: bool = False
    finish_reason: str | None = None
    token_text: Callable[[int], str] | None = None  # one id decoded alone (logprob entries name tokens)
    _logprob: dict[str, Any] | None = field(default=None, init=False, repr=False)  # sent with its token's delta

    def __post_init__(self) -> None:
        self.generator = make_generator(self.request.sampling)

    @property
    def prompt_ids(self) -> list[int]:
        return self.request.token_ids

    def choose(self, logits: torch.Tensor) -> int:
        """Next token from this sequence's last-position logits (constrained when it has a grammar).

        Before ``min_tokens`` tokens exist, the ids that would end the
        sequence are masked too, unless the grammar allows nothing else.
        """
        sampling = self.request.sampling
        raw = logits
        early = len(self.generated) < sampling.min_tokens and self.stop_ids
        if self.constraint is not None or early:
            logits = logits.clone()
        if self.constraint is not None:
            self.constraint.mask_logits(logits)
        if early:
            enders = torch.tensor(sorted(i for i in self.stop_ids if i < logits.shape[-1]), dtype=torch.long)
            kept = logits.index_select(-1, enders)
            logits.index_fill_(-1, enders, float("-inf"))
            if torch.isinf(logits).all():  # the grammar wants to end: let it
                logits.index_copy_(-1, enders, kept)
        token = sample_next(logits, sampling, self.generator)
        if sampling.logprobs is not None and self.token_text is not None:
            self._logprob = sampled_entry(raw, token, sampling.logprobs, self.token_text)
        return token

    def append(self, token_id: int) -> None:
        """Record a sampled token, stream its text, and decide whether the sequence is done."""
        self.first_token_at = self.first_token_at or time.perf_counter()
        if token_id in self.stop_ids:
            self._finish("stop")
            return
        if self.constraint is not None:
            self.constraint.accept(token_id)
        self.generated.append(token_id)
        delta = self.text.push(token_id)
        if delta or not self.text.stopped:
            event = {"type": "delta", "text": delta, "token_ids": [token_id], "prompt_tokens": len(self.prompt_ids)}
            if self.request.sampling.logprobs is not None:
                event["logprobs"] = [self._logprob] if self._logprob is not None else []
            self.emit(event)
        self._logprob = None
        if self.text.stopped or (self.constraint is not None and self.constraint.is_finished()):
            self._finish("stop")
        elif len(self.generated) >= self.request.sampling.max_new_tokens:
            self._finish("length")

    def jump_forward(self) -> int:
        """Append the tokens the grammar forces next, as if sampled; returns how many were appended.

        Their KV is not computed here: the caller feeds them to the model in
        one forward before the next decode step.
        """
        if self.constraint is None or self.finished:
            return 0
        appended = 0
        for token in self.constraint.forced_tokens():
            self.append(token)
            appended += 1
            if self.finished:
                break
        return appended

    def _finish(self, reason: str) -> None:
        self.finish_reason = reason
        rest = self.text.flush()
        if rest:
            self.emit({"type": "delta", "text": rest, "token_ids": [], "prompt_tokens": len(self.prompt_ids)})

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def fed_ids(self) -> list[int]:
        """Tokens whose KV exists: the prompt and every generated token fed back (all but the last)."""
        return self.prompt_ids + self.generated[:-1] if self.generated else list(self.prompt_ids)

    def done_event(self) -> dict[str, Any]:
        now = time.perf_counter()
        return {
            "type": "done",
            "finish_reason": self.finish_reason,
            "prompt_tokens": len(self.prompt_ids),
            "completion_tokens": len(self.generated),
            "cached_tokens": self.cached_tokens,
            "ttft_ms": (self.first_token_at - self.submitted_at) * 1000 if self.first_token_at else None,
            "latency_ms": (now - self.submitted_at) * 1000,
        }
