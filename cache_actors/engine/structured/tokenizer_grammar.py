"""The llguidance view of one model's tokenizer, built once per model.

Building it walks the whole vocabulary (llguidance's token trie, plus our own
classes of "closing" tokens), so a deployment makes one per model and shares it
between requests. It also owns the LRU of compiled response formats, because a
compiled grammar is only valid for the tokenizer it was compiled against.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import llguidance
import llguidance.hf
import numpy as np

if TYPE_CHECKING:
    from cache_actors.engine.structured.constraint import GrammarSpec

#: Compiled response formats kept per tokenizer (a compiled grammar is a few KiB to a few MiB).
SPEC_CACHE_ENTRIES = 64

#: ``close_after_tokens`` for a model with random weights (the demo model): a small schema
#: then ends in about 40-130 tokens (measured on the demo model, greedy and sampled).
RANDOM_WEIGHTS_CLOSE_AFTER_TOKENS = 32

_CLOSERS = re.compile(rb"[\]}]+")  # a token made only of `]` and `}`


@dataclass(frozen=True, slots=True)
class ClosingTiers:
    """Token classes, tried in order, that steer an over-long output to its shortest end.

    Each is a bool array over the model's vocabulary. They are preferences applied
    on top of the grammar's mask (never instead of it): see ``TokenConstraint``.
    """

    eos: np.ndarray
    in_string: tuple[np.ndarray, ...]
    outside_string: tuple[np.ndarray, ...]


class TokenizerGrammar:
    """Built once per model (expensive): the llguidance view of the tokenizer."""

    def __init__(
        self,
        ll_tokenizer: llguidance.LLTokenizer,
        *,
        vocab_size: int,
        eos_token_ids: tuple[int, ...],
        tiers: ClosingTiers,
        close_after_tokens: int | None,
    ) -> None:
        self.ll_tokenizer = ll_tokenizer
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self.tiers = tiers
        self.close_after_tokens = close_after_tokens
        self._specs: OrderedDict[str, GrammarSpec] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: Any,
        *,
        vocab_size: int,
        eos_token_ids: Sequence[int],
        close_after_tokens: int | None = None,
    ) -> "TokenizerGrammar":
        """Wrap a Hugging Face fast tokenizer.

        Args:
            tokenizer: a ``PreTrainedTokenizerFast`` (llguidance reads its Rust tokenizer).
            vocab_size: the model's logits width; ids the tokenizer lacks are never allowed,
                and ids the tokenizer has beyond it are never allowed either.
            eos_token_ids: the ids that end a sequence (allowed once the grammar may end).
            close_after_tokens: after this many tokens of one output, each step prefers
                the tokens that end the JSON soonest (see ``TokenConstraint``). ``None``
                (the default) never steers: right for a trained model. Set it for a model
                with random weights, which would otherwise rarely close a string.
        """
        if vocab_size <= 0:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        eos = tuple(int(token) for token in eos_token_ids)
        if not eos:
            raise ValueError("structured output needs at least one EOS token id")
        if any(not 0 <= token < vocab_size for token in eos):
            raise ValueError(f"EOS ids {eos} must lie in [0, vocab_size={vocab_size})")
        if close_after_tokens is not None and close_after_tokens < 0:
            raise ValueError(f"close_after_tokens must be >= 0 or None, got {close_after_tokens}")
        # llguidance needs room for every tokenizer id; ids >= vocab_size are cut from masks.
        n_vocab = max(vocab_size, len(tokenizer))
        try:
            ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=n_vocab, eos_token=list(eos))
        except ValueError as exc:  # a slow (pure Python) tokenizer, or an unreadable one
            raise ValueError(f"structured output needs a Hugging Face fast tokenizer: {exc}") from exc
        tiers = _closing_tiers(ll_tokenizer, vocab_size=vocab_size, eos_token_ids=eos)
        return cls(ll_tokenizer, vocab_size=vocab_size, eos_token_ids=eos, tiers=tiers,
                   close_after_tokens=close_after_tokens)

    # --- compiled response formats (LRU) ------------------------------------------------
    def cached_spec(self, key: str) -> "GrammarSpec | None":
        with self._lock:
            spec = self._specs.get(key)
            if spec is not None:
                self._specs.move_to_end(key)
            return spec

    def store_spec(self, key: str, spec: "GrammarSpec") -> None:
        with self._lock:
            self._specs[key] = spec
            self._specs.move_to_end(key)
            while len(self._specs) > SPEC_CACHE_ENTRIES:
                self._specs.popitem(last=False)

    def cached_spec_count(self) -> int:
        with self._lock:
            return len(self._specs)


def _closing_tiers(ll_tokenizer: llguidance.LLTokenizer, *, vocab_size: int, eos_token_ids: tuple[int, ...]) -> ClosingTiers:
    """Classify every token by the bytes it emits (special tokens emit none here)."""
    closers = np.zeros(vocab_size, dtype=bool)  # `]`, `}`, `]}`...: end an array or object
    comma = np.zeros(vocab_size, dtype=bool)    # `,` first: end a number or a value, go on to what is required
    quote = np.zeros(vocab_size, dtype=bool)    # `"` first: close a string, or open the shortest value
    limit = min(vocab_size, ll_tokenizer.vocab_size)
    for token in range(limit):
        if ll_tokenizer.is_special_token(token):
            continue
        text = ll_tokenizer.decode_bytes([token])
        if not text:
            continue
        if _CLOSERS.fullmatch(text):
            closers[token] = True
        elif text[:1] == b",":
            comma[token] = True
        elif text[:1] == b'"':
            quote[token] = True
    eos = np.zeros(vocab_size, dtype=bool)
    eos[list(eos_token_ids)] = True
    return ClosingTiers(eos=eos, in_string=(quote,), outside_string=(closers, comma, quote))
