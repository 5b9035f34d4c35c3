"""Text normalisation, tokens and shingles shared by every detection method.

All methods see text the same way: Unicode NFKC, then casefold, then words as
runs of ``\\w`` characters. Keeping one definition here is what makes the
exact hash, the shingles, the passages and the formulas agree with each other.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

_WORD = re.compile(r"\w+")
_SPACE = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_VOWEL_GROUP = re.compile(r"[aeiouy]+")


def normalize(text: str) -> str:
    """NFKC + casefold + whitespace runs collapsed to one space, trimmed.

    Two texts that differ only in Unicode form, letter case or spacing
    normalise to the same string (and so to the same `content_hash`).
    """
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def content_hash(text: str) -> str:
    """Hex sha256 of the normalised text: the key of the `exact` method."""
    return hashlib.sha256(normalize(text).encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Token:
    """One word: its normalised form and its character span in the original text."""

    word: str
    start: int
    end: int


def tokenize(text: str) -> list[Token]:
    """Words of `text` with offsets into `text` itself (so passages can be highlighted).

    Each word is matched on the raw text and normalised on its own, which keeps
    offsets exact even where NFKC changes the length of a character.
    """
    return [
        Token(unicodedata.normalize("NFKC", m.group()).casefold(), m.start(), m.end())
        for m in _WORD.finditer(text)
    ]


def words(text: str) -> list[str]:
    """Normalised words of `text`, in order."""
    return [token.word for token in tokenize(text)]


def shingles(word_list: list[str], n: int) -> set[str]:
    """The set of word n-grams (joined by a space).

    A text shorter than `n` words gives one shingle of all its words, so short
    texts still compare with each other; an empty text gives the empty set.
    """
    if n < 1:
        raise ValueError(f"shingle size must be >= 1, got {n}")
    if not word_list:
        return set()
    if len(word_list) < n:
        return {" ".join(word_list)}
    return {" ".join(word_list[i : i + n]) for i in range(len(word_list) - n + 1)}


def containment(query: set[str], other: set[str]) -> float:
    """|query ∩ other| / |query|: the share of `query` found in `other` (0 when empty)."""
    return len(query & other) / len(query) if query else 0.0


def jaccard(a: set[str], b: set[str]) -> float:
    """|a ∩ b| / |a ∪ b| (0 when both are empty)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def sentence_count(text: str) -> int:
    """Sentences: pieces between ``.``/``!``/``?`` runs followed by a space or the end,
    counting only pieces that hold a word; at least 1 (so ratios never divide by 0)."""
    return max(1, sum(1 for piece in _SENTENCE_END.split(text) if _WORD.search(piece)))


def syllable_count(word: str) -> int:
    """Heuristic English syllables: vowel groups, minus a silent final 'e'; at least 1.

    Good enough for a Flesch score (textstat uses a similar rule); digits and
    words without vowels count as one syllable.
    """
    w = word.casefold()
    groups = len(_VOWEL_GROUP.findall(w))
    if w.endswith("e") and not w.endswith(("le", "ee", "ye")) and groups > 1:
        groups -= 1
    return max(1, groups)
