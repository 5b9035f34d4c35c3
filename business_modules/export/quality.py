"""``quality_score``: a structural check of the document, 0..1.

The original API returned a quality score without saying what it measured.
Here it is explicit and deterministic: points for a real title, for having
sections, for sections that are not empty, for a heading hierarchy without
skipped levels, for author and subject metadata and for some body text.
``issues`` says what cost points, so a caller can fix it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from business_modules.export.markdown import ParsedDocument, plain_text
from business_modules.export.source import UNTITLED, ResolvedMetadata

MIN_BODY_CHARS = 200

WEIGHTS = {
    "title": 0.15,
    "sections": 0.15,
    "non_empty_sections": 0.25,
    "heading_hierarchy": 0.15,
    "author": 0.10,
    "subject": 0.10,
    "body_text": 0.10,
}


@dataclass(frozen=True, slots=True)
class QualityReport:
    score: float
    issues: list[str] = field(default_factory=list)


def assess(parsed: ParsedDocument, metadata: ResolvedMetadata) -> QualityReport:
    points = 0.0
    issues: list[str] = []
    if parsed.title and parsed.title != UNTITLED:
        points += WEIGHTS["title"]
    else:
        issues.append("the document has no title")
    headings = parsed.headings
    if headings:
        points += WEIGHTS["sections"]
        empty = _empty_headings(parsed)
        points += WEIGHTS["non_empty_sections"] * (1 - len(empty) / len(headings))
        if empty:
            issues.append(f"{len(empty)} section(s) have no content: " + ", ".join(empty[:5]))
        skipped = [
            h.text for prev, h in zip([None, *headings], headings)
            if h.level > (prev.level if prev else parsed.section_level or 2) + 1
        ]
        if skipped:
            issues.append("headings skip a level: " + ", ".join(skipped[:5]))
        else:
            points += WEIGHTS["heading_hierarchy"]
    else:
        issues.append("the document has no sections")
    if metadata.author:
        points += WEIGHTS["author"]
    else:
        issues.append("no author in the metadata")
    if metadata.subject:
        points += WEIGHTS["subject"]
    else:
        issues.append("no subject in the metadata")
    body_chars = sum(len(plain_text(tok)) for tok in parsed.body_tokens if tok.type == "inline")
    if body_chars >= MIN_BODY_CHARS:
        points += WEIGHTS["body_text"]
    else:
        issues.append(f"little body text ({body_chars} characters)")
    return QualityReport(score=round(points, 2), issues=issues)


def _empty_headings(parsed: ParsedDocument) -> list[str]:
    """Headings directly followed by a heading of the same or a higher level (or the end)."""
    tokens = parsed.tokens
    empty = []
    for n, heading in enumerate(parsed.headings):
        nxt = parsed.headings[n + 1] if n + 1 < len(parsed.headings) else None
        end = nxt.token_index if nxt else len(tokens)
        has_content = end > heading.token_index + 3
        if not has_content and (nxt is None or nxt.level <= heading.level):
            empty.append(heading.text)
    return empty
