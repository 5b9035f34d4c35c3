"""Text normalisation and the original /analyze, /similarity, /quality formulas,
checked against values computed by hand."""

from __future__ import annotations

import hashlib

import pytest

from business_modules.redundancy.analysis import analyze, flesch_reading_ease, quality, quality_rating, similarity
from business_modules.redundancy.text import (
    containment,
    content_hash,
    jaccard,
    normalize,
    sentence_count,
    shingles,
    syllable_count,
    tokenize,
    words,
)


def test_normalize_nfkc_casefold_and_spaces() -> None:
    # "ﬁ" (U+FB01) is NFKC "fi"; "Straße" casefolds to "strasse"; runs of whitespace collapse.
    assert normalize("  The ﬁle\t\nof  STRASSE Straße ") == "the file of strasse strasse"


def test_content_hash_is_sha256_of_normalised_text() -> None:
    expected = hashlib.sha256(b"hello world").hexdigest()
    assert content_hash("Hello   WORLD") == expected
    assert content_hash("hello world!") != expected


def test_tokenize_keeps_offsets_into_the_raw_text() -> None:
    text = "Hi, ﬁne World!"
    tokens = tokenize(text)
    assert [t.word for t in tokens] == ["hi", "fine", "world"]
    assert [text[t.start : t.end] for t in tokens] == ["Hi", "ﬁne", "World"]


def test_shingles_and_set_scores() -> None:
    w = words("a b c d")
    assert shingles(w, 3) == {"a b c", "b c d"}
    assert shingles(["a", "b"], 3) == {"a b"}
    assert shingles([], 3) == set()
    with pytest.raises(ValueError):
        shingles(w, 0)
    assert containment({"x", "y"}, {"x", "z"}) == 0.5
    assert containment(set(), {"x"}) == 0.0
    assert jaccard({"x", "y"}, {"x", "z"}) == pytest.approx(1 / 3)
    assert jaccard(set(), set()) == 0.0


@pytest.mark.parametrize(
    ("text", "count"),
    [("One. Two! Three?", 3), ("No end mark", 1), ("", 1), ("Pi is 3.14 here. Done.", 2), ("...", 1)],
)
def test_sentence_count(text: str, count: int) -> None:
    assert sentence_count(text) == count


@pytest.mark.parametrize(("word", "count"), [("cat", 1), ("table", 2), ("make", 1), ("readability", 5), ("rhythm", 1)])
def test_syllable_count(word: str, count: int) -> None:
    assert syllable_count(word) == count


def test_analyze_hand_computed() -> None:
    result = analyze("The cat and the hat. The end!", threshold=0.3)
    # words: the cat and the hat the end -> 7 words, 5 unique -> 1 - 5/7
    assert result.word_count == 7
    assert result.unique_words == 5
    assert result.character_count == 29
    assert result.redundancy_score == pytest.approx(2 / 7)
    assert result.is_redundant is False  # 0.2857 < 0.3
    assert result.content_hash == content_hash("The cat and the hat. The end!")
    assert result.analysis_time >= 0
    assert result.timestamp.endswith("+00:00")


def test_analyze_without_words_does_not_divide_by_zero() -> None:
    result = analyze("!!! ...")
    assert (result.word_count, result.unique_words, result.redundancy_score) == (0, 0, 0.0)


def test_similarity_word_ratio_and_common_words() -> None:
    result = similarity("the cat sat", "The cat sat down", threshold=0.8)
    # difflib ratio over words: 2*3 matches / (3+4) words
    assert result.similarity_score == pytest.approx(6 / 7)
    assert result.is_similar is True
    assert result.common_words == ["cat", "sat", "the"]
    assert result.common_word_count == 3


def test_similarity_of_long_texts_is_not_zeroed_by_autojunk() -> None:
    text = " ".join(f"word{i % 50} filler" for i in range(400))
    assert similarity(text, text + " extra").similarity_score > 0.99


def test_flesch_hand_computed() -> None:
    # "The cat sat. The dog ran." -> 6 words, 2 sentences, 6 syllables:
    # 206.835 - 1.015*3 - 84.6*1 = 119.19 -> clamped to 100
    score, n_words, n_sentences, per_sentence, per_word = flesch_reading_ease("The cat sat. The dog ran.")
    assert (score, n_words, n_sentences, per_sentence, per_word) == (100.0, 6, 2, 3.0, 1.0)
    # "Readability determines comprehension." -> 3 words, 1 sentence, 5+4+4 = 13 vowel groups:
    # 206.835 - 1.015*3 - 84.6*13/3 = -163.8 -> clamped to 0
    assert flesch_reading_ease("Readability determines comprehension.")[0] == 0.0
    # twelve words of two syllables in one sentence: 206.835 - 1.015*12 - 84.6*2 = 25.455
    assert flesch_reading_ease(" ".join(["table"] * 12) + ".")[0] == pytest.approx(25.455)


@pytest.mark.parametrize(
    ("score", "rating"),
    [(100, "Excellent"), (80, "Excellent"), (79.9, "Good"), (60, "Good"), (40, "Fair"), (39.9, "Needs Improvement")],
)
def test_quality_rating_bands(score: float, rating: str) -> None:
    assert quality_rating(score) == rating


def test_quality_fields_and_suggestions() -> None:
    result = quality(" ".join(["table"] * 12) + ".")
    assert result.readability_score == pytest.approx(25.455)
    assert result.complexity_score == pytest.approx((1 - 1 / 12) * 100)
    assert result.quality_rating == "Needs Improvement"
    assert any("repetition" in s for s in result.suggestions)
    assert any("detail" in s for s in result.suggestions)
    long_sentence = quality(" ".join(f"w{i}" for i in range(30)) + ".")
    assert any("Shorten sentences" in s for s in long_sentence.suggestions)
