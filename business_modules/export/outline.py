"""The table of contents: which headings it lists and how deep each sits."""

from __future__ import annotations

from dataclasses import dataclass

from business_modules.export import constants as C
from business_modules.export.markdown import ParsedDocument


@dataclass(frozen=True, slots=True)
class TocEntry:
    depth: int
    """1 for a top-level section, 2 for its subsections, ..."""
    text: str
    anchor: str


def toc_entries(doc: ParsedDocument, *, max_depth: int = C.TOC_DEPTH) -> list[TocEntry]:
    """Headings below the title, at most ``max_depth`` levels under the top-level sections."""
    top = doc.section_level
    if top is None:
        return []
    entries = []
    for heading in doc.headings:
        depth = heading.level - top + 1
        if depth <= max_depth:
            entries.append(TocEntry(depth=depth, text=heading.text, anchor=heading.anchor))
    return entries
