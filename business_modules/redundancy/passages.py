"""Overlapping passages: the word runs two texts share, with character offsets.

difflib's SequenceMatcher only finds matches in the same order in both texts,
so a copied paragraph moved to the top would be missed. This is a greedy
tiling instead (the idea of Wise's Greedy String Tiling, simplified): walk
text A; wherever the next `min_words` words occur in B, take the longest
common run starting there, emit it and jump past it. It is linear in practice
(each start probes the positions of one n-gram) and finds moved passages.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from business_modules.redundancy.text import Token

DEFAULT_MIN_WORDS = 3
DEFAULT_MAX_PASSAGES = 50
# NOTE: an n-gram repeated thousands of times in B (e.g. "a a a a ...") would make
# each probe quadratic; its first occurrences are enough to find the copy.
MAX_PROBES_PER_NGRAM = 32


@dataclass(frozen=True, slots=True)
class Passage:
    """One shared run of words: character spans in A and in B, and A's text of it."""

    a_start: int
    a_end: int
    b_start: int
    b_end: int
    words: int
    text: str


def matching_passages(
    text_a: str,
    tokens_a: list[Token],
    tokens_b: list[Token],
    *,
    min_words: int = DEFAULT_MIN_WORDS,
    max_passages: int = DEFAULT_MAX_PASSAGES,
) -> list[Passage]:
    """Shared word runs of at least `min_words` words, longest first.

    Args:
        text_a: the raw text `tokens_a` came from (passage text is cut from it).
        tokens_a, tokens_b: `text.tokenize` output of the two texts.
        min_words: shortest run reported.
        max_passages: at most this many passages (the longest ones).
    """
    if min_words < 1:
        raise ValueError(f"min_words must be >= 1, got {min_words}")
    wa = [t.word for t in tokens_a]
    wb = [t.word for t in tokens_b]
    starts: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for j in range(len(wb) - min_words + 1):
        starts[tuple(wb[j : j + min_words])].append(j)
    found: list[tuple[int, int, int]] = []  # (length, i, j)
    i = 0
    while i <= len(wa) - min_words:
        best_len, best_j = 0, -1
        for j in starts.get(tuple(wa[i : i + min_words]), ())[:MAX_PROBES_PER_NGRAM]:
            length = min_words
            while i + length < len(wa) and j + length < len(wb) and wa[i + length] == wb[j + length]:
                length += 1
            if length > best_len:
                best_len, best_j = length, j
        if best_len:
            found.append((best_len, i, best_j))
            i += best_len
        else:
            i += 1
    found.sort(key=lambda f: (-f[0], f[1]))
    passages = []
    for length, i, j in found[:max_passages]:
        a0, a1 = tokens_a[i].start, tokens_a[i + length - 1].end
        passages.append(
            Passage(
                a_start=a0,
                a_end=a1,
                b_start=tokens_b[j].start,
                b_end=tokens_b[j + length - 1].end,
                words=length,
                text=text_a[a0:a1],
            )
        )
    return passages
