"""``quality_score`` and ``suggestions`` from measurable properties of the result.

Four components, each in [0, 1], then a weighted mean (weights in `WEIGHTS`):

- **readability** (0.30): Flesch reading ease,
  ``206.835 - 1.015 * words/sentences - 84.6 * syllables/words`` (Flesch 1948),
  with syllables counted by Pyphen's hyphenation dictionary (the one WeasyPrint
  uses; ``textstat`` was tried and needs NLTK's cmudict from the network).
  60 and above (plain English) scores 1; below, ``ease / 60`` (clamped at 0).
- **length** (0.25): words written against the words the request asked for
  (``textOptions.amount`` or ``length`` times the number of cards). A ratio
  ``r`` in [0.75, 1.5] scores 1; below, ``r / 0.75``; above, ``1.5 / r``.
- **structure** (0.25): the share of cards that have both a heading and a
  body, times 1 when there are at least two cards and 0.5 for a single one.
- **keywords** (0.20): the share of the requested keywords found (case-
  insensitive, whole words) in the title and cards. Without keywords the
  component is left out and the other weights are renormalised.

Each component below `SUGGEST_BELOW` gives one suggestion that names the
measured value, so a reader can check it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from business_modules.gamma.models import Card

WEIGHTS = {"readability": 0.30, "length": 0.25, "structure": 0.25, "keywords": 0.20}
SUGGEST_BELOW = 0.7
PLAIN_ENGLISH_EASE = 60.0
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*", re.UNICODE)
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")


@dataclass(frozen=True, slots=True)
class QualityReport:
    score: float
    components: dict[str, float]
    metrics: dict[str, float]
    suggestions: list[str] = field(default_factory=list)


@lru_cache(maxsize=8)
def _hyphenator(language: str):  # noqa: ANN202 - pyphen.Pyphen
    import pyphen

    lang = pyphen.language_fallback(language) or pyphen.language_fallback("en") or "en_US"
    return pyphen.Pyphen(lang=lang)


def syllables(word: str, language: str = "en") -> int:
    return max(1, len(_hyphenator(language).positions(word.lower())) + 1)


def flesch_reading_ease(texts: list[str], language: str = "en") -> tuple[float, float]:
    """Flesch reading ease of ``texts`` (each a sentence at least) and the mean words per sentence."""
    words = [w for text in texts for w in _WORD.findall(text)]
    if not words:
        return 0.0, 0.0
    sentences = sum(max(1, len(_SENTENCE_END.findall(text.strip() + " "))) for text in texts if _WORD.search(text))
    per_sentence = len(words) / sentences
    per_word = sum(syllables(w, language) for w in words) / len(words)
    return 206.835 - 1.015 * per_sentence - 84.6 * per_word, per_sentence


def _length_score(ratio: float) -> float:
    if ratio < 0.75:
        return ratio / 0.75
    if ratio > 1.5:
        return 1.5 / ratio
    return 1.0


def assess(*, title: str, cards: list[Card], target_words: int, keywords: list[str] = (),
           language: str = "en") -> QualityReport:
    """Score a result; see the module docstring for the formula."""
    texts = [text for card in cards for text in card.texts()]
    words = sum(len(_WORD.findall(t)) for t in texts) + sum(len(_WORD.findall(c.heading)) for c in cards)
    ease, per_sentence = flesch_reading_ease(texts, language)
    components: dict[str, float] = {"readability": max(0.0, min(1.0, ease / PLAIN_ENGLISH_EASE))}
    ratio = words / max(1, target_words)
    components["length"] = _length_score(ratio)
    complete = sum(1 for c in cards if c.heading.strip() and c.texts())
    components["structure"] = (complete / len(cards) if cards else 0.0) * (1.0 if len(cards) >= 2 else 0.5)
    missing: list[str] = []
    if keywords:
        haystack = " ".join([title, *(c.heading for c in cards), *texts]).lower()
        missing = [k for k in keywords if not re.search(r"(?<!\w)" + re.escape(k.lower()) + r"(?!\w)", haystack)]
        components["keywords"] = 1 - len(missing) / len(keywords)
    total_weight = sum(WEIGHTS[name] for name in components)
    score = round(sum(WEIGHTS[name] * value for name, value in components.items()) / total_weight, 3)

    suggestions = []
    if components["readability"] < SUGGEST_BELOW:
        suggestions.append(f"Readability: Flesch reading ease is {ease:.0f} (aim for {PLAIN_ENGLISH_EASE:.0f}+) with "
                           f"{per_sentence:.0f} words per sentence; use shorter sentences and simpler words.")
    if components["length"] < SUGGEST_BELOW:
        direction = "Add detail" if ratio < 1 else "Cut text"
        suggestions.append(f"Length: {words} words against about {target_words} requested. {direction} to get closer.")
    if components["structure"] < SUGGEST_BELOW:
        suggestions.append(f"Structure: {complete} of {len(cards)} cards have both a heading and body text; "
                           "give every card a body" + ("" if len(cards) >= 2 else " and split it into sections") + ".")
    if missing:
        suggestions.append("Keywords missing: " + ", ".join(missing) + ".")
    return QualityReport(
        score=score,
        components={k: round(v, 3) for k, v in components.items()},
        metrics={"words": float(words), "target_words": float(target_words), "flesch_reading_ease": round(ease, 1),
                 "words_per_sentence": round(per_sentence, 1), "cards": float(len(cards))},
        suggestions=suggestions,
    )
