"""A compiled response format, and the per-sequence state that masks logits with it.

``GrammarSpec`` is shared: it holds a ready llguidance matcher in its start state,
and each sequence gets a deep copy (microseconds, where building a matcher from the
grammar costs about a millisecond). ``TokenConstraint`` is that copy plus what the
decode loop needs: a mask over the model's logits, a checked ``accept`` and the
"grammar complete" signal that ends the sequence with finish_reason "stop".

Steering a random-weight model to an end: the grammar alone guarantees only that
the output *can* still become valid JSON. A trained model closes its strings; a
model with random weights picks one of ~200 allowed bytes at random and rarely
picks `"` (greedy decoding of it can even repeat a few bytes forever). With
``close_after_tokens`` set on the tokenizer grammar, once a sequence has that
many tokens each mask keeps, of the tokens the grammar allows, only the first
non-empty class of: EOS; inside a string, tokens starting with `"`; outside one,
tokens made of `]`/`}`, then tokens starting with `,`, then tokens starting with
`"`. Every kept token is one the grammar allows, so the output stays valid; it
only takes the shortest way out (close the string, close the containers, give
the remaining required fields minimal values). A string whose pattern or format
needs a particular character before it may close (an email's `@`) can still run
on. If ``max_tokens`` cuts an output short, the caller reports finish_reason
"length" and the text is not valid JSON, as with OpenAI.
"""

from __future__ import annotations

import logging
import re

import llguidance
import llguidance.numpy as llg_numpy
import numpy as np
import torch

from cache_actors.engine.structured.tokenizer_grammar import TokenizerGrammar

logger = logging.getLogger(__name__)

_QUOTE, _BACKSLASH = ord('"'), ord("\\")


class GrammarSpec:
    """One compiled response format for one tokenizer; makes a constraint per sequence."""

    def __init__(self, grammar: TokenizerGrammar, prototype: llguidance.LLMatcher, *, description: str) -> None:
        self.grammar = grammar
        self.description = description
        self._prototype = prototype

    @classmethod
    def compile(cls, schema: dict, grammar: TokenizerGrammar, *, description: str) -> "GrammarSpec":
        """Compile a JSON schema; ValueError (a 400 upstream) when it is invalid or unsupported."""
        try:
            # No whitespace between JSON tokens: outputs stay compact and a model cannot
            # emit whitespace forever. Overrides win over the schema's own "x-guidance".
            text = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides={"whitespace_flexible": False})
        except ValueError as exc:
            raise ValueError(f"invalid JSON schema: {exc}") from exc
        return cls.compile_grammar(text, grammar, description=description, what="JSON schema")

    @classmethod
    def compile_lark(cls, lark: str, grammar: TokenizerGrammar, *, description: str) -> "GrammarSpec":
        """Compile llguidance Lark text (tool calls); ValueError when it or an embedded schema is invalid."""
        text = llguidance.LLMatcher.grammar_from_lark(lark)
        return cls.compile_grammar(text, grammar, description=description, what="tool schema")

    @classmethod
    def compile_grammar(cls, text: str, grammar: TokenizerGrammar, *, description: str, what: str) -> "GrammarSpec":
        matcher = llguidance.LLMatcher(grammar.ll_tokenizer, text, log_level=0)
        if matcher.is_error():
            raise ValueError(f"invalid or unsupported {what}: {_without_grammar_listing(matcher.get_error())}")
        for warning in matcher.get_grammar_warnings():
            logger.warning("response format %s: %s", description, warning)
        return cls(grammar, matcher, description=description)

    def new_constraint(self) -> "TokenConstraint":
        """A fresh constraint at the start of the output (one per sequence)."""
        return TokenConstraint(self.grammar, self._prototype.deep_copy())


def _without_grammar_listing(error: str) -> str:
    """llguidance's error without the grammar listing it quotes (whole tool schemas), on one line."""
    kept = [line.strip() for line in error.splitlines()
            if line.strip() and not re.match(r"^\s*\d+ \|", line) and not re.fullmatch(r"\s*\^+\s*", line)]
    return " ".join(kept)[:1000]


class TokenConstraint:
    """Per-sequence grammar state: mask the next logits, then accept the sampled token."""

    def __init__(self, grammar: TokenizerGrammar, matcher: llguidance.LLMatcher) -> None:
        self._grammar = grammar
        self._matcher = matcher
        self._bitmask = llg_numpy.allocate_token_bitmask(1, grammar.ll_tokenizer.vocab_size)
        self._allowed: np.ndarray | None = None  # for the current position; reset by accept()
        self._num_tokens = 0
        self._in_string = False
        self._escaped = False
        self._ended = False  # an EOS was accepted

    # --- masking ----------------------------------------------------------------------
    def mask_logits(self, logits: torch.Tensor) -> None:
        """Set every id the constraint does not allow next to -inf, in place.

        ``logits`` is ``[vocab]`` (or ``[..., vocab]``, one mask for all rows), any float
        dtype, on any device; ids at or past the model's ``vocab_size`` are always masked.
        """
        if logits.ndim == 0 or not logits.is_floating_point():
            raise ValueError(f"logits must be a float tensor of shape [..., vocab], got {tuple(logits.shape)} {logits.dtype}")
        vocab = self._grammar.vocab_size
        if logits.shape[-1] < vocab:
            raise ValueError(f"logits have {logits.shape[-1]} ids, fewer than the model's vocab_size {vocab}")
        blocked = torch.from_numpy(~self._current_allowed())
        if logits.device.type != "cpu":
            blocked = blocked.to(logits.device, non_blocking=True)
        # The runner's logits come out of inference mode; writing them needs it too.
        with torch.inference_mode(logits.is_inference()):
            logits[..., :vocab].masked_fill_(blocked, float("-inf"))
            if logits.shape[-1] > vocab:
                logits[..., vocab:] = float("-inf")

    def allowed_mask(self) -> torch.Tensor:
        """Bool ``[vocab_size]`` on CPU: the ids ``mask_logits`` leaves untouched."""
        return torch.from_numpy(self._current_allowed().copy())

    def allows_eos(self) -> bool:
        """Whether the output may end here (an EOS id is allowed)."""
        return bool(self._current_allowed()[list(self._grammar.eos_token_ids)].any())

    # --- advancing ----------------------------------------------------------------------
    def accept(self, token_id: int) -> None:
        """Advance by one sampled token; ValueError if the grammar did not allow it."""
        token = int(token_id)
        if self._ended:
            raise ValueError(f"token {token} after the output already ended with EOS")
        if not 0 <= token < self._grammar.vocab_size:
            raise ValueError(f"token {token} is outside the vocabulary [0, {self._grammar.vocab_size})")
        if token in self._grammar.eos_token_ids:
            if not (self._matcher.is_accepting() or self._matcher.is_stopped()):
                raise ValueError(f"EOS token {token} before the response format is complete")
            self._ended = True
            self._allowed = None
            return
        if self._matcher.validate_tokens([token]) != 1:
            text = self._grammar.ll_tokenizer.decode_bytes([token])
            raise ValueError(f"token {token} ({text!r}) is not allowed by the response format here")
        if not self._matcher.consume_token(token):  # NOTE: validate_tokens said yes; this is a bug, not input
            raise ValueError(f"llguidance refused token {token} it had validated: {self._matcher.get_error()}")
        self._track_strings(self._grammar.ll_tokenizer.decode_bytes([token]))
        self._num_tokens += 1
        self._allowed = None

    def forced_tokens(self) -> list[int]:
        """Tokens the grammar forces next (a fixed frame such as a tool call's ``","arguments":``).

        The batcher appends them without a decode step each and computes their
        KV in one forward (jump-forward decoding), so a long literal costs one
        step, not one per token. Empty when the grammar leaves a choice or is done.
        """
        if self._ended or self._matcher.is_stopped() or self._matcher.is_error():
            return []
        return [int(token) for token in self._matcher.compute_ff_tokens()]

    def is_finished(self) -> bool:
        """The grammar is complete and only EOS may follow: stop with finish_reason "stop"."""
        return self._ended or (self._matcher.is_stopped() and not self._matcher.is_error())

    @property
    def num_tokens(self) -> int:
        """Tokens accepted so far (EOS excluded)."""
        return self._num_tokens

    # --- internals ----------------------------------------------------------------------
    def _current_allowed(self) -> np.ndarray:
        if self._allowed is None:
            self._allowed = self._compute_allowed()
        return self._allowed

    def _compute_allowed(self) -> np.ndarray:
        vocab = self._grammar.vocab_size
        if self._ended:
            allowed = np.zeros(vocab, dtype=bool)
            allowed[list(self._grammar.eos_token_ids)] = True
            return allowed
        if self._matcher.is_error():
            raise ValueError(f"the response format constraint failed: {self._matcher.get_error()}")
        llg_numpy.fill_next_token_bitmask(self._matcher, self._bitmask)
        # Bit i of 32-bit word w is token 32*w + i; words are little-endian bytes.
        allowed = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")[:vocab].view(bool)
        close_after = self._grammar.close_after_tokens
        if close_after is not None and self._num_tokens >= close_after:
            allowed = self._steer_to_end(allowed)
        return allowed

    def _steer_to_end(self, allowed: np.ndarray) -> np.ndarray:
        tiers = self._grammar.tiers
        for tier in (tiers.eos, *(tiers.in_string if self._in_string else tiers.outside_string)):
            preferred = allowed & tier
            if preferred.any():
                return preferred
        return allowed

    def _track_strings(self, text: bytes) -> None:
        """Follow whether the output is inside a JSON string (for steering only)."""
        for byte in text:
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif byte == _BACKSLASH:
                    self._escaped = True
                elif byte == _QUOTE:
                    self._in_string = False
            elif byte == _QUOTE:
                self._in_string = True
