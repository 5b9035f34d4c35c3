"""Text prompts of an exact token count, fresh on every run, for `blatam bench peers`.

Both servers take text through ``/v1/completions`` (what a user of either
sends; `blatam bench ttft --served` sends token ids instead), so the prompt is
text that the served model's tokenizer turns into the wanted number of tokens,
BOS included, as the server counts them.
The counting is done here with the model's own tokenizer (the servers report
what they saw in ``usage.prompt_tokens``, which the benchmark checks).

Words are drawn at random from `WORDS` with a seed that is new on every run,
so a peer that stays up between runs never sees a prompt again: its prefix
cache could otherwise serve an "uncached" prompt from an earlier run.

For the cached measure, request A and request B share a prefix of
``cached + PREFIX_MARGIN`` tokens and then differ. The margin keeps the
shared tokens past the last full block even if a BPE tokenizer merges a token
across the point where the two texts part, so both servers can reuse exactly
``cached`` tokens when ``cached`` is a multiple of their block sizes (16
here, 64 in vLLM) and the margin is smaller than the smallest of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

PREFIX_MARGIN = 4
"""Shared tokens past ``cached`` (smaller than any block size in use: ours 16, vLLM's 64)."""

WORDS = (
    "account action advice agent amount answer april area article audit balance bank basis benefit board "
    "bonus brand budget cash change channel charge claim client closing cost credit customer data date deal "
    "debt delivery demand design detail digital discount draft earnings effort email energy entry equity "
    "estimate event expense export factor feature field figure filing finance firm focus forecast format "
    "freight fund goal growth guide health hiring income index input invoice item journal label launch lead "
    "ledger level license limit loan margin market measure meeting member method metric model money month "
    "network notice number offer office order outcome output owner packet partner payment period plan "
    "policy price process product profit project proposal quality quarter quote rate record region report "
    "request result retail return revenue review risk salary sales sample schedule sector segment service "
    "share signal source staff stock store strategy supply survey system target task tax team term total "
    "trade training trend unit update value vendor volume wage week worker yield"
).split()


def run_seed() -> int:
    """A seed no earlier run used (in all likelihood): 63 random bits from the OS."""
    return random.SystemRandom().getrandbits(63)


@dataclass(frozen=True, slots=True)
class CachedPrompts:
    """Request A fills the cache with the shared prefix; request B, timed, reuses it."""

    fill: str
    timed: str
    shared_tokens: int


class PromptMaker:
    """Makes texts of an exact length in tokens of one tokenizer, from a seeded stream of random words."""

    def __init__(self, tokenizer: Any, seed: int) -> None:
        self.tokenizer = tokenizer
        self.rng = random.Random(seed)

    def count(self, text: str) -> int:
        """Tokens of ``text`` as a server counts a prompt (with BOS)."""
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def _words(self, tokens: int) -> str:
        """Random words, comfortably more than ``tokens`` tokens' worth (a word is at least one token)."""
        return " ".join(self.rng.choice(WORDS) for _ in range(tokens + 8))

    def extend(self, base: str, tokens: int) -> str:
        """``base`` followed by random words, cut so that the whole is ``tokens`` tokens long (or one more).

        The cut is at a token boundary of the whole; re-tokenizing a cut text
        can move that boundary by a token, so the cut is corrected from the
        count until it holds (a BPE tokenizer may offer no exact cut: then
        the text is one token long).
        """
        if self.count(base) >= tokens:
            raise ValueError(f"the base text already has {self.count(base)} tokens, wanted more than that: {tokens}")
        full = (base + " " if base else "") + self._words(tokens)
        # ``full`` is longer than the model's context on purpose (it is cut below): verbose=False keeps
        # Transformers from warning that it is ("Token indices sequence length is longer...") in every run.
        offsets = self.tokenizer(full, add_special_tokens=True, return_offsets_mapping=True,
                                 verbose=False)["offset_mapping"]
        index = tokens - 1  # the last token to keep
        best = full
        for _ in range(8):
            text = full[: offsets[index][1]]
            found = self.count(text)
            if found == tokens:
                return text
            if found == tokens + 1:
                best = text
            index += 1 if found < tokens else -1
        if self.count(best) > tokens + 1:
            raise ValueError(f"could not cut a text of {tokens} tokens")
        return best

    def fresh(self, tokens: int) -> str:
        """A new text of ``tokens`` tokens."""
        return self.extend("", tokens)

    def cached_pair(self, *, cached: int, total: int) -> CachedPrompts:
        """Two texts of ``total`` tokens that share their first ``cached + PREFIX_MARGIN`` tokens."""
        shared = cached + PREFIX_MARGIN
        if shared >= total:
            raise ValueError(f"cached tokens {cached} + margin {PREFIX_MARGIN} leave nothing new of {total}")
        prefix = self.fresh(shared)
        return CachedPrompts(fill=self.extend(prefix, total), timed=self.extend(prefix, total), shared_tokens=shared)
