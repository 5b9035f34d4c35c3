"""Pure checks of `blatam bench quality`: is an answer readable English, is it a loop, is its JSON valid.

Everything here is a function of the text alone (no model, no tokenizer), so a
reader can rerun any verdict on the texts the benchmark's JSON keeps.

What "readable" means, and why these thresholds (``TextThresholds``):

- **not empty**: a blank answer fails with the one reason "empty".
- **clean UTF-8**: no U+FFFD (what a decoder writes for invalid bytes; a
  byte-level model with random weights emits them all the time), no lone
  surrogate, no control character other than tab and newlines.
- **English**: at least ``min_words`` alphabetic words, of which at least
  ``min_common_share`` are among the ~320 most common English words embedded
  below (function words mostly: "the", "to", "your", ...). SmolLM2-135M's
  answers to the benchmark's prompts score 0.4-0.75 (JSON string values
  0.4-0.7: bullets have fewer function words than prose); words of random
  letters score about 0.01-0.05, since letters in random order almost never
  spell one. Then at least ``min_letter_share`` of the non-space characters
  are letters (a cash-flow table's digits and pipes keep about 0.6; random
  bytes far less) and at most ``max_non_ascii_share`` are outside ASCII
  (curly quotes, dashes, a euro sign pass; random bytes decode to mostly
  Latin-1 symbols and U+FFFD).
- **a sentence**: a run that starts with a capital letter and ends with
  ``.``, ``!`` or ``?`` (before a space, a closing quote or the end: "1.5" is
  no end), or a whole line (one a newline ended, so not the line
  ``max_tokens`` cut) that starts with a capital letter; either with at least
  ``min_sentence_words`` words. List markers and ``**`` are ignored.
- **no repetition loop**, over lower-cased word tokens (words and numbers):
  distinct 2-grams / 2-grams >= ``min_distinct_2`` and distinct 3-grams /
  3-grams >= ``min_distinct_3`` (a phrase looped until ``max_tokens`` drives
  both towards 0; fluent answers of ~70 words score 0.75-1.0); no n-gram
  (n <= ``max_loop_n``) repeated ``max_repeats + 1`` times back to back ("the
  the the", "we can help. we can help. we can help."); and no n-gram longer
  than ``max_repeated_ngram`` tokens said twice anywhere (a clause or a
  sentence repeated word for word, the way a small greedy model loops over a
  whole sentence). Measured on SmolLM2-135M's answers of ~100 tokens: the
  longest repeated n-gram of the fluent ones is 1-8 tokens (8: a definition
  of gross then net margin with a parallel clause); the repetitive ones 11-30.
  Longer answers repeat longer spans by chance, so this is tuned for answers
  of about 100 tokens.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

COMMON_ENGLISH_WORDS = frozenset("""
a about above after again against all also always am an and any are as at back be because been before being
below best better between both but by can could day did do does doing done down during each early easy even
every few first for from full get give go good great had has have having he her here hers him his how however
i if in into is it its just keep know last less let like little long made make many may me more most much must
my need never new next no not now of off often on once one only or other our ours out over own part people
per place plan please put rather really right same say see she should show since small so some still such sure
take than thank thanks that the their theirs them then there these they thing things think this those though
three through time to today together too two under until up upon us use used very want was way we week well
were what when where which while who whom why will with within without work would year years yet you your yours
able across add along already although among another around ask based become begin big bring business call
came care case change check clear close come company cost costs customer customers current different does
each easily end enough ensure example far find following form free further given going got help high hold
home idea important include including increase keep key kind know large later lead least level life line
list look lot low main manage means meet money month months must name near needs number offer open order
possible price problem product products provide quality question quite reach ready reason related report
result run sales service services set several share simple social start state step steps support team tell
these through total try turn understand value various want whether whole why word world write yes
""".split())
"""About 320 of the most common English words (function words first, then common business prose)."""

_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_TOKEN = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")
_LIST_MARKER = re.compile(r"^\s*(?:[-*+>#]+|\d+[.)])\s*")
_END = r"[.!?](?=[\s\"')\]]|$)"  # an end mark before a space, a closing quote or bracket, or the end ("1.5" is none)
_SENTENCE = re.compile(rf"[A-Z](?:(?!{_END}).)*{_END}")
_ALLOWED_CONTROL = {"\t", "\n", "\r"}


@dataclass(frozen=True, slots=True)
class TextThresholds:
    """When an answer counts as readable English (see the module docstring for why these values)."""

    min_words: int = 5
    min_common_share: float = 0.2
    min_letter_share: float = 0.5
    max_non_ascii_share: float = 0.1
    min_sentence_words: int = 3
    min_distinct_2: float = 0.5
    min_distinct_3: float = 0.5
    max_repeats: int = 2
    max_loop_n: int = 8
    max_repeated_ngram: int = 9


DEFAULT_THRESHOLDS = TextThresholds()


def words(text: str) -> list[str]:
    """Alphabetic words (with an apostrophe part: "don't"), lower-cased."""
    return [w.lower() for w in _WORD.findall(text)]


def tokens(text: str) -> list[str]:
    """Word tokens for the n-gram measures: alphabetic words and numbers, lower-cased."""
    return [t.lower() for t in _TOKEN.findall(text)]


def is_clean_utf8(text: str) -> bool:
    """True when the text has no replacement character, no lone surrogate and no control character but tab/newlines."""
    if "\ufffd" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return not any(unicodedata.category(c) == "Cc" and c not in _ALLOWED_CONTROL for c in text)


def common_word_share(text: str) -> float:
    """Share of the text's alphabetic words found in `COMMON_ENGLISH_WORDS` (0.0 without any word)."""
    found = words(text)
    return sum(w in COMMON_ENGLISH_WORDS for w in found) / len(found) if found else 0.0


def letter_share(text: str) -> float:
    """Share of letters among the non-whitespace characters (0.0 for blank text)."""
    visible = [c for c in text if not c.isspace()]
    return sum(c.isalpha() for c in visible) / len(visible) if visible else 0.0


def non_ascii_share(text: str) -> float:
    """Share of non-ASCII characters among the non-whitespace ones (0.0 for blank text)."""
    visible = [c for c in text if not c.isspace()]
    return sum(not c.isascii() for c in visible) / len(visible) if visible else 0.0


def has_sentence(text: str, *, min_words: int = DEFAULT_THRESHOLDS.min_sentence_words) -> bool:
    """At least one capitalized run ending in . ! ? or one whole capitalized line, with ``min_words`` words."""
    lines = text.splitlines()
    for index, raw in enumerate(lines):
        line = _LIST_MARKER.sub("", raw.replace("**", "")).strip()
        if any(len(words(match.group())) >= min_words for match in _SENTENCE.finditer(line)):
            return True
        ended = index < len(lines) - 1  # the last line may be where max_tokens cut the answer
        if ended and line[:1].isupper() and len(words(line)) >= min_words:
            return True
    return False


def ngrams(items: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(items[i:i + n]) for i in range(len(items) - n + 1)]


def distinct_n(items: Sequence[str], n: int) -> float:
    """Distinct n-grams / n-grams (1.0 when there is no n-gram: nothing repeats)."""
    grams = ngrams(items, n)
    return len(set(grams)) / len(grams) if grams else 1.0


@dataclass(frozen=True, slots=True)
class RepeatRun:
    """The longest run of one n-gram repeated back to back: ``repeats`` copies of ``n`` tokens from ``start``."""

    n: int = 1
    repeats: int = 1
    start: int = 0

    @property
    def tokens(self) -> int:
        return self.n * self.repeats


def longest_repeat_run(items: Sequence[str], *, max_n: int = DEFAULT_THRESHOLDS.max_loop_n) -> RepeatRun:
    """The n-gram (n <= ``max_n``) with the most back-to-back copies; ties go to the run covering more tokens.

    "a b a b a b c" -> n=2, repeats=3. Quadratic in the worst case, which is
    nothing for answers of a few hundred tokens.
    """
    best = RepeatRun()
    for n in range(1, max_n + 1):
        for start in range(len(items) - 2 * n + 1):
            repeats = 1
            while items[start + repeats * n:start + (repeats + 1) * n] == items[start:start + n]:
                repeats += 1
            if (repeats, repeats * n) > (best.repeats, best.tokens):
                best = RepeatRun(n=n, repeats=repeats, start=start)
    return best


def longest_repeated_ngram(items: Sequence[str]) -> int:
    """Length of the longest n-gram found at least twice (occurrences may overlap); 0 when no token repeats.

    If an n-gram repeats so does its prefix, so the lengths that repeat are
    1..L: a binary search finds L with O(log) passes over the text.
    """
    def repeats(n: int) -> bool:
        seen: set[tuple[str, ...]] = set()
        for gram in ngrams(items, n):
            if gram in seen:
                return True
            seen.add(gram)
        return False

    low, high = 0, max(len(items) - 1, 0)  # repeats(low) holds (trivially for 0); the answer is <= high
    while low < high:
        mid = (low + high + 1) // 2
        if repeats(mid):
            low = mid
        else:
            high = mid - 1
    return low


@dataclass(frozen=True, slots=True)
class TextQuality:
    """Every measure of one text, and which checks it failed (``reasons``; empty when ``ok``)."""

    clean_utf8: bool
    words: int
    common_word_share: float
    letter_share: float
    non_ascii_share: float
    english: bool
    has_sentence: bool
    distinct_2: float
    distinct_3: float
    repeat_run: RepeatRun
    longest_repeated_ngram: int
    loop: bool
    reasons: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.reasons

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "reasons": list(self.reasons), "ok": self.ok}


def text_quality(text: str, thresholds: TextThresholds = DEFAULT_THRESHOLDS) -> TextQuality:
    """Measure ``text`` and judge it against ``thresholds``."""
    t = thresholds
    found = words(text)
    common, letters, non_ascii = common_word_share(text), letter_share(text), non_ascii_share(text)
    english = (len(found) >= t.min_words and common >= t.min_common_share and letters >= t.min_letter_share
               and non_ascii <= t.max_non_ascii_share)
    items = tokens(text)
    d2, d3 = distinct_n(items, 2), distinct_n(items, 3)
    run = longest_repeat_run(items, max_n=t.max_loop_n)
    repeated = longest_repeated_ngram(items)
    loop = (d2 < t.min_distinct_2 or d3 < t.min_distinct_3 or run.repeats > t.max_repeats
            or repeated > t.max_repeated_ngram)
    clean = is_clean_utf8(text)
    sentence = has_sentence(text, min_words=t.min_sentence_words)
    if not text.strip():
        reasons: tuple[str, ...] = ("empty",)  # the other checks would only repeat it
    else:
        reasons = tuple(name for name, failed in (("utf8", not clean), ("english", not english),
                                                  ("sentence", not sentence), ("loop", loop)) if failed)
    return TextQuality(clean_utf8=clean, words=len(found), common_word_share=common, letter_share=letters,
                       non_ascii_share=non_ascii, english=english, has_sentence=sentence, distinct_2=d2,
                       distinct_3=d3, repeat_run=run, longest_repeated_ngram=repeated, loop=loop,
                       reasons=reasons)


@dataclass(frozen=True, slots=True)
class JsonCheck:
    """Whether a text parses as JSON and validates against a schema; ``error`` says the first problem."""

    parses: bool
    valid: bool
    value: Any = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"parses": self.parses, "valid": self.valid, "error": self.error}


def check_json(text: str, schema: dict[str, Any]) -> JsonCheck:
    """Parse ``text`` and validate it with `jsonschema` (the schema's own draft, 2020-12 by default).

    Raises `jsonschema.SchemaError` for a broken schema: that is the
    benchmark's bug, not the answer's.
    """
    import jsonschema  # ~0.1 s of imports; only the commands that check JSON pay it

    try:
        value = json.loads(text)
    except ValueError as exc:
        return JsonCheck(parses=False, valid=False, error=f"not JSON: {exc}")
    validator_cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator_cls.check_schema(schema)
    error = jsonschema.exceptions.best_match(validator_cls(schema).iter_errors(value))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return JsonCheck(parses=True, valid=False, value=value, error=f"{where}: {error.message}")
    return JsonCheck(parses=True, valid=True, value=value)


def json_strings(value: Any) -> list[str]:
    """The string values of a parsed JSON document, depth first (keys left out)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in json_strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in json_strings(item)]
    return []
