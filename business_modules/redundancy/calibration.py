"""Thresholds chosen without the labels of the set they are scored on.

`synthetic_set` builds a labelled reuse set from prose that has nothing to do
with any benchmark: the reference documentation bundled with Python itself
(`pydoc_data.topics`). Source passages are cut from one topic; a reused text
is derived from its source by a fixed, stated edit model; a "non" text is
another passage of the same topic (same subject, written independently).
`calibrate` picks, per method, the threshold with the best F1 on that set.

The edit model (fixed before any benchmark was scored):

- cut: a contiguous 60–100 % of the source's sentences, copied verbatim,
  sometimes with one sentence of the writer's own.
- light: a contiguous 70–100 % of the sentences, each word edited with
  probability 0.15 (deleted, replaced by another word of the topic, or
  swapped with its neighbour).
- heavy: half of the sentences, shuffled, each word edited with probability
  0.30, plus the writer's own sentences for about a third of the length.
- non: a different passage of the same topic (two per source, like the
  1:1:1:2 class balance of the Clough & Stevenson corpus).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from business_modules.redundancy.detector import Detector
from business_modules.redundancy.models import Method

# Best-F1 thresholds of `calibrate(seed=7)` on CPython 3.11's pydoc topics, per
# method, for "reused or not". The benchmark scores with these by default;
# tests re-run the lexical calibration to keep them honest.
CALIBRATED_THRESHOLDS: dict[Method, float] = {
    Method.EXACT: 1.0,
    Method.NEAR: 0.04,
    Method.CONTAINMENT: 0.07,
    Method.SEMANTIC: 0.56,
}

_SENTENCE = re.compile(r"(?<=[.!?])\s+")
PASSAGE_WORDS = (90, 220)
REUSED = ("cut", "light", "heavy")


@dataclass(frozen=True, slots=True)
class LabelledText:
    """A text to compare with one source: its category and whether it reuses it."""

    key: str
    source: str
    category: str
    text: str

    @property
    def reused(self) -> bool:
        """True for cut, light and heavy."""
        return self.category in REUSED


def _prose_paragraphs(topic: str) -> list[str]:
    """Plain prose paragraphs of a pydoc topic (no code, grammar or headings)."""
    out = []
    for para in re.split(r"\n\s*\n", topic):
        lines = [line for line in para.split("\n") if line.strip()]
        if not lines or any(line.startswith(" ") for line in lines) or "::=" in para:
            continue
        text = " ".join(line.strip() for line in lines)
        if len(text.split()) >= 15:
            out.append(text)
    return out


def _passages(paragraphs: list[str]) -> list[list[str]]:
    """Consecutive sentences grouped into passages of PASSAGE_WORDS words."""
    sentences = [s for p in paragraphs for s in _SENTENCE.split(p) if len(s.split()) >= 4]
    passages, current, size = [], [], 0
    for sentence in sentences:
        current.append(sentence)
        size += len(sentence.split())
        if size >= PASSAGE_WORDS[0]:
            if size <= PASSAGE_WORDS[1]:
                passages.append(current)
            current, size = [], 0
    return passages


def _edit(sentences: list[str], rate: float, vocabulary: list[str], rng: random.Random) -> list[str]:
    out = []
    for sentence in sentences:
        tokens = sentence.split()
        edited: list[str] = []
        i = 0
        while i < len(tokens):
            if rng.random() < rate:
                kind = rng.randrange(3)
                if kind == 1:
                    edited.append(rng.choice(vocabulary))
                elif kind == 2 and i + 1 < len(tokens):
                    edited.extend([tokens[i + 1], tokens[i]])
                    i += 1
            else:
                edited.append(tokens[i])
            i += 1
        out.append(" ".join(edited))
    return out


def synthetic_set(seed: int = 7) -> tuple[dict[str, str], list[LabelledText]]:
    """(sources by key, labelled texts) built from Python's bundled documentation."""
    from pydoc_data.topics import topics  # stdlib: the `help()` reference texts

    rng = random.Random(seed)
    by_topic = {name: _passages(_prose_paragraphs(text)) for name, text in sorted(topics.items())}
    by_topic = {name: p for name, p in by_topic.items() if len(p) >= 3}
    all_sentences = [s for ps in by_topic.values() for p in ps for s in p]
    sources: dict[str, str] = {}
    items: list[LabelledText] = []
    for name, passages in by_topic.items():
        vocabulary = sorted({w for p in passages for s in p for w in s.split()})
        for index, source in enumerate(passages):
            key = f"{name}#{index}"
            sources[key] = " ".join(source)
            own = [s for s in rng.sample(all_sentences, 6) if s not in source]
            n = len(source)
            start = rng.randrange(0, max(1, n - int(0.6 * n)) + 1)
            cut = source[start : start + max(1, int(rng.uniform(0.6, 1.0) * n))]
            if rng.random() < 0.5:
                cut = [*cut, own[0]]
            light_start = rng.randrange(0, max(1, n - int(0.7 * n)) + 1)
            light = _edit(source[light_start : light_start + max(1, int(rng.uniform(0.7, 1.0) * n))], 0.15, vocabulary, rng)
            kept = rng.sample(source, max(1, n // 2))
            heavy = _edit(kept, 0.30, vocabulary, rng) + own[1 : 1 + max(1, len(kept) // 2)]
            rng.shuffle(heavy)
            others = [p for j, p in enumerate(passages) if j != index]
            for category, sentences in (("cut", cut), ("light", light), ("heavy", heavy)):
                items.append(LabelledText(f"{key}/{category}", key, category, " ".join(sentences)))
            for k, other in enumerate(rng.sample(others, min(2, len(others)))):
                items.append(LabelledText(f"{key}/non{k}", key, "non", " ".join(other)))
    return sources, items


def scores_against_source(
    detector: Detector, sources: dict[str, str], items: Sequence[LabelledText], method: Method
) -> list[float]:
    """Each item's score against its own source, through the detector's query path.

    The sources form one index; each item is searched with a near-zero
    threshold and the score of its own source is read (0 when not returned).
    """
    index = detector.new_index()
    for seq, (key, text) in enumerate(sources.items()):
        index.add(detector.indexed(doc_id=key, seq=seq, text=text))
    floor = 1.0 if method is Method.EXACT else 0.01
    scores = []
    for item in items:
        matches = detector.search(index, item.text, method, floor, top_k=None, passages=False)
        scores.append(next((m.score for m in matches if m.doc_id == item.source), 0.0))
    return scores


def f1_at(scores: Sequence[float], labels: Sequence[bool], threshold: float) -> tuple[float, float, float]:
    """(precision, recall, F1) of `score >= threshold` against `labels` (0 when undefined)."""
    tp = sum(1 for s, y in zip(scores, labels, strict=True) if s >= threshold and y)
    fp = sum(1 for s, y in zip(scores, labels, strict=True) if s >= threshold and not y)
    fn = sum(1 for s, y in zip(scores, labels, strict=True) if s < threshold and y)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def best_threshold(scores: Sequence[float], labels: Sequence[bool], *, step: float = 0.01) -> float:
    """The threshold with the best F1 on a grid; among ties, the middle of the widest run.

    Taking the middle of the best plateau leaves the largest margin on both
    sides, which is what carries over to another set.
    """
    grid = [round(step * i, 4) for i in range(1, int(round(1 / step)) + 1)]
    f1s = [f1_at(scores, labels, t)[2] for t in grid]
    top = max(f1s)
    runs: list[list[float]] = []
    for t, f in zip(grid, f1s, strict=True):
        if abs(f - top) < 1e-12:
            if runs and abs(runs[-1][-1] + step - t) < 1e-9:
                runs[-1].append(t)
            else:
                runs.append([t])
    widest = max(runs, key=len)
    return round(widest[len(widest) // 2], 2)


def calibrate(detector: Detector, methods: Sequence[Method], *, seed: int = 7) -> dict[Method, float]:
    """Best-F1 threshold per method on the synthetic set (exact is always 1.0)."""
    sources, items = synthetic_set(seed)
    labels = [item.reused for item in items]
    out: dict[Method, float] = {}
    for method in methods:
        if method is Method.EXACT:
            out[method] = 1.0
            continue
        out[method] = best_threshold(scores_against_source(detector, sources, items, method), labels)
    return out
