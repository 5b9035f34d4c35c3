"""Normalisation: any accepted content becomes one Markdown document.

Every format is rendered from the same normalised Markdown, whose first
block is ``# <title>`` and whose sections are the headings below it:

- structured content ``{title, sections[]}``: each section becomes a heading
  one level below its parent (top-level sections are ``##``), and headings
  inside a section's Markdown are demoted below that section's heading;
- Markdown content: kept as is when it starts with its only ``#`` heading
  (that heading is the title); otherwise ``# <title>`` is prepended and all
  headings move one level down, so the outline keeps its shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from business_modules.export import constants as C
from business_modules.export.errors import ContentTooLargeError
from business_modules.export.markdown import (
    PARSER,
    escape_inline,
    normalise_newlines,
    plain_text,
    shift_headings,
)
from business_modules.export.models import (
    ExportFormat,
    ExportRequest,
    QualityLevel,
    Section,
    StructuredContent,
)
from business_modules.export.themes import Theme, get_theme

UNTITLED = "Untitled document"


@dataclass(frozen=True, slots=True)
class ResolvedMetadata:
    """Metadata with every default applied; what each format writes."""

    title: str
    author: str | None
    subject: str | None
    keywords: tuple[str, ...]
    created: datetime
    language: str
    category: str


@dataclass(frozen=True, slots=True)
class RenderOptions:
    format: ExportFormat
    theme: Theme
    toc: bool
    page_numbers: bool
    draft: bool


@dataclass(frozen=True, slots=True)
class SourceDocument:
    """The normalised document plus everything a renderer needs."""

    markdown: str
    metadata: ResolvedMetadata
    options: RenderOptions
    filename: str
    """Download name with extension."""


def build_source(request: ExportRequest, *, now: datetime) -> SourceDocument:
    """Normalise ``request`` (``now`` fills a missing ``created``)."""
    if isinstance(request.content, StructuredContent):
        markdown = structured_to_markdown(request.content)
        title = request.content.title
    else:
        markdown, title = markdown_with_title(request.content, request.title or request.metadata.title)
    if len(markdown) > C.MAX_CONTENT_CHARS + C.MAX_SECTIONS * (C.MAX_HEADING_CHARS + 8):
        raise ContentTooLargeError(f"content too long: {len(markdown)} characters after normalisation")
    meta = request.metadata
    metadata = ResolvedMetadata(
        title=meta.title or title,
        author=meta.author,
        subject=meta.subject,
        keywords=tuple(meta.keywords),
        created=meta.created or now,
        language=meta.language,
        category=request.document_type.value,
    )
    draft = request.quality_level is QualityLevel.DRAFT
    options = RenderOptions(
        format=request.format,
        theme=get_theme(request.theme, request.quality_level),
        toc=request.toc if request.toc is not None else not draft,
        page_numbers=request.page_numbers,
        draft=draft,
    )
    filename = f"{safe_filename(request.filename or metadata.title)}.{request.format.extension}"
    return SourceDocument(markdown=markdown, metadata=metadata, options=options, filename=filename)


def structured_to_markdown(content: StructuredContent) -> str:
    parts = [f"# {escape_inline(content.title)}\n"]
    _append_sections(parts, content.sections, depth=1)
    return normalise_newlines("\n".join(parts))


def _append_sections(parts: list[str], sections: list[Section], *, depth: int) -> None:
    level = min(6, depth + 1)
    for section in sections:
        parts.append(f"{'#' * level} {escape_inline(section.heading)}\n")
        body = section.markdown.strip("\n")
        if body.strip():
            parts.append(shift_headings(normalise_newlines(body), min_level=min(6, level + 1)))
        _append_sections(parts, section.subsections, depth=depth + 1)


def markdown_with_title(markdown: str, title: str | None) -> tuple[str, str]:
    """Normalised Markdown whose first block is the title, and that title."""
    markdown = normalise_newlines(markdown)
    tokens = PARSER.parse(markdown)
    h1s = [i for i, tok in enumerate(tokens) if tok.type == "heading_open" and tok.level == 0 and tok.tag == "h1"]
    if h1s == [0]:
        heading = plain_text(tokens[1])
        if heading:
            return markdown, heading
    title = " ".join((title or "").split()) or UNTITLED
    has_headings = any(tok.type == "heading_open" and tok.level == 0 for tok in tokens)
    body = shift_headings(markdown, min_level=2) if has_headings else markdown
    return f"# {escape_inline(title)}\n\n{body}", title


_UNSAFE_FILENAME = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]+')


def safe_filename(name: str) -> str:
    """A download name without path separators or reserved characters."""
    name = _UNSAFE_FILENAME.sub(" ", name)
    name = "-".join(name.split()).strip(".-")[:100]
    return name or "document"

