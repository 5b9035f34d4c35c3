"""Markdown parsing: one markdown-it-py token stream drives every format.

The parser is CommonMark plus GFM tables and strikethrough, with raw HTML
enabled (it is sanitised later, by `sanitize`, not dropped here). Only
headings at block nesting level 0 form the outline: a heading inside a quote
or list item is formatting, not a section.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from markdown_it import MarkdownIt
from markdown_it.token import Token


def make_parser() -> MarkdownIt:
    """CommonMark + tables + strikethrough; raw HTML is kept for the sanitiser."""
    return MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])


PARSER = make_parser()

_MD_PUNCTUATION = re.compile(r"([\\`*_\[\]{}()<>#+\-.!|~&])")


def escape_inline(text: str) -> str:
    """Backslash-escape CommonMark punctuation so plain text stays literal."""
    return _MD_PUNCTUATION.sub(r"\\\1", text)


def normalise_newlines(text: str) -> str:
    """LF line ends, no BOM, exactly one trailing newline."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return text.rstrip() + "\n"


def plain_text(inline: Token) -> str:
    """Readable text of an ``inline`` token: markup dropped, breaks as spaces."""
    parts: list[str] = []
    for child in inline.children or []:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
        elif child.type == "image":
            parts.append("".join(c.content for c in child.children or []))
    return " ".join("".join(parts).split())


def heading_level(token: Token) -> int:
    return int(token.tag[1])


def shift_headings(markdown: str, *, min_level: int) -> str:
    """Demote top-level headings so the highest one lands on ``min_level``.

    Works on the source lines the parser reports (``token.map``), so text in
    code fences is never touched; setext headings become ATX ones. Levels
    past 6 stay at 6.
    """
    tokens = PARSER.parse(markdown)
    opens = [i for i, tok in enumerate(tokens) if tok.type == "heading_open" and tok.level == 0]
    if not opens:
        return markdown
    shift = min_level - min(heading_level(tokens[i]) for i in opens)
    if shift <= 0:
        return markdown
    lines = markdown.splitlines(keepends=True)
    for i in reversed(opens):
        start, end = tokens[i].map  # type: ignore[misc]
        level = min(6, heading_level(tokens[i]) + shift)
        text = " ".join(tokens[i + 1].content.split())
        lines[start:end] = [f"{'#' * level} {text}\n"]
    return "".join(lines)


def slugify(text: str) -> str:
    """ASCII anchor for a heading (``"Café – 東京"`` -> ``"cafe"``); may be empty."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:60]


@dataclass(frozen=True, slots=True)
class HeadingInfo:
    """A heading of the outline (never the title)."""

    level: int
    text: str
    anchor: str
    token_index: int


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    """Tokens of a normalised document whose first block is the ``# title``.

    ``headings`` excludes the title. ``section_level`` is the level of the
    top-level sections (the highest heading level after the title), or None
    when the document has no headings besides the title.
    """

    tokens: list[Token]
    title: str
    headings: list[HeadingInfo]

    @property
    def section_level(self) -> int | None:
        return min((h.level for h in self.headings), default=None)

    @property
    def body_tokens(self) -> list[Token]:
        """Everything after the title heading."""
        return self.tokens[3:]


def parse_document(markdown: str) -> ParsedDocument:
    """Parse normalised Markdown and give every top-level heading a unique anchor."""
    tokens = PARSER.parse(markdown)
    if len(tokens) < 3 or tokens[0].type != "heading_open" or tokens[0].tag != "h1":
        raise ValueError("normalised Markdown must start with the '# title' heading")
    title = plain_text(tokens[1])
    used: set[str] = set()
    headings: list[HeadingInfo] = []
    for i, tok in enumerate(tokens):
        if tok.type != "heading_open" or tok.level != 0:
            continue
        base = "title" if i == 0 else (slugify(plain_text(tokens[i + 1])) or "section")
        anchor, n = base, 1
        while anchor in used:
            n += 1
            anchor = f"{base}-{n}"
        used.add(anchor)
        tok.attrSet("id", anchor)
        if i > 0:
            headings.append(HeadingInfo(heading_level(tok), plain_text(tokens[i + 1]), anchor, i))
    return ParsedDocument(tokens=tokens, title=title, headings=headings)
