"""The original service's three formulas: /analyze, /similarity, /quality.

Field names and formulas follow the original Content Redundancy Detector
(notes/original-system.md); where the original was wrong, the fix is named in
the function's docstring and in docs (README "Content redundancy").
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from difflib import SequenceMatcher

from business_modules.redundancy.text import content_hash, sentence_count, syllable_count, words

MAX_COMMON_WORDS = 50


@dataclass(frozen=True, slots=True)
class Analysis:
    """Result of `analyze`: the original /analyze fields plus `is_redundant`."""

    content_hash: str
    word_count: int
    character_count: int
    unique_words: int
    redundancy_score: float
    is_redundant: bool
    analysis_time: float
    timestamp: str


@dataclass(frozen=True, slots=True)
class Similarity:
    """Result of `similarity`: the original fields plus `common_word_count`."""

    similarity_score: float
    is_similar: bool
    common_words: list[str]
    common_word_count: int


@dataclass(frozen=True, slots=True)
class Quality:
    """Result of `quality`: the original /quality fields plus the inputs of the score."""

    readability_score: float
    complexity_score: float
    quality_rating: str
    suggestions: list[str] = field(default_factory=list)
    word_count: int = 0
    sentence_count: int = 0
    average_sentence_length: float = 0.0
    average_syllables_per_word: float = 0.0


def redundancy_score(word_list: list[str]) -> float:
    """1 − unique/total words (0.0 for no words: the original divided by zero)."""
    if not word_list:
        return 0.0
    return 1.0 - len(set(word_list)) / len(word_list)


def analyze(content: str, *, threshold: float = 0.8, clock: Callable[[], float] = time.perf_counter) -> Analysis:
    """Word statistics and the redundancy score of one text.

    Deviations from the original: `content_hash` is the sha256 of the
    normalised text (the original used md5 of the raw text), so it equals the
    key of the `exact` duplicate method; words are normalised ``\\w+`` runs,
    so "Word," and "word" count as one word. `is_redundant` is new:
    ``redundancy_score >= threshold`` (the original accepted a threshold and
    ignored it).
    """
    started = clock()
    word_list = words(content)
    score = redundancy_score(word_list)
    return Analysis(
        content_hash=content_hash(content),
        word_count=len(word_list),
        character_count=len(content),
        unique_words=len(set(word_list)),
        redundancy_score=score,
        is_redundant=score >= threshold,
        analysis_time=clock() - started,
        timestamp=datetime.now(UTC).isoformat(),
    )


def similarity(text1: str, text2: str, *, threshold: float = 0.8) -> Similarity:
    """How alike two texts are, as difflib's ratio over their word sequences.

    Deviation: the original ran difflib on the lowercased *characters* with
    difflib's default autojunk, which marks frequent characters as junk in any
    text over 200 characters and so scores long texts near 0. Here the ratio
    is taken over normalised words with autojunk off.
    """
    w1, w2 = words(text1), words(text2)
    score = SequenceMatcher(None, w1, w2, autojunk=False).ratio() if (w1 or w2) else 1.0
    counts1, counts2 = Counter(w1), Counter(w2)
    common = sorted(set(counts1) & set(counts2), key=lambda w: (-(counts1[w] + counts2[w]), w))
    return Similarity(
        similarity_score=score,
        is_similar=score >= threshold,
        common_words=common[:MAX_COMMON_WORDS],
        common_word_count=len(common),
    )


def flesch_reading_ease(text: str) -> tuple[float, int, int, float, float]:
    """Flesch reading ease, clamped to 0–100, with its inputs.

    Returns (score, words, sentences, words per sentence, syllables per word).
    Deviation: the original put the mean word length in *characters* where
    Flesch uses syllables per word, which drove every text below 0.
    """
    word_list = words(text)
    if not word_list:
        return 0.0, 0, sentence_count(text), 0.0, 0.0
    sentences = sentence_count(text)
    per_sentence = len(word_list) / sentences
    per_word = sum(syllable_count(w) for w in word_list) / len(word_list)
    raw = 206.835 - 1.015 * per_sentence - 84.6 * per_word
    return min(100.0, max(0.0, raw)), len(word_list), sentences, per_sentence, per_word


def quality_rating(readability: float) -> str:
    """Excellent >= 80, Good >= 60, Fair >= 40, else Needs Improvement (original bands)."""
    if readability >= 80:
        return "Excellent"
    if readability >= 60:
        return "Good"
    if readability >= 40:
        return "Fair"
    return "Needs Improvement"


def quality(content: str) -> Quality:
    """Readability, complexity (= redundancy × 100, as in the original), rating, advice."""
    readability, n_words, n_sentences, per_sentence, per_word = flesch_reading_ease(content)
    complexity = redundancy_score(words(content)) * 100
    suggestions: list[str] = []
    if per_sentence > 20:
        suggestions.append(f"Shorten sentences: {per_sentence:.1f} words on average (aim for 20 or fewer).")
    if per_word > 1.6:
        suggestions.append("Prefer shorter, plainer words: many words have three or more syllables.")
    if complexity > 50:
        suggestions.append("Reduce repetition: more than half of the words are repeats.")
    if 0 < n_words < 50:
        suggestions.append("Add detail: the text has fewer than 50 words.")
    if readability < 40 and not suggestions:
        suggestions.append("Simplify the text: it is hard to read.")
    return Quality(
        readability_score=readability,
        complexity_score=complexity,
        quality_rating=quality_rating(readability),
        suggestions=suggestions,
        word_count=n_words,
        sentence_count=n_sentences,
        average_sentence_length=per_sentence,
        average_syllables_per_word=per_word,
    )
