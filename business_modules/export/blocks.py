"""A small block tree built from the token stream, for the Office writers.

HTML is rendered straight from tokens; DOCX and PPTX need nested structure
(list items holding paragraphs, table cells holding inline runs), which this
module builds once. Raw HTML becomes its plain text (script/style contents
dropped); images survive only as decoded ``data:`` URIs.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
from dataclasses import dataclass, field

from markdown_it.token import Token

from business_modules.export import constants as C
from business_modules.export.sanitize import is_allowed_image_uri


# --- inline -------------------------------------------------------------------
@dataclass(slots=True)
class Span:
    text: str
    bold: bool = False
    italic: bool = False
    code: bool = False
    strike: bool = False
    href: str | None = None


@dataclass(slots=True)
class Image:
    data: bytes
    mime: str
    alt: str


@dataclass(slots=True)
class LineBreak:
    pass


Inline = Span | Image | LineBreak


# --- blocks ---------------------------------------------------------------------
@dataclass(slots=True)
class Heading:
    level: int
    inlines: list[Inline]
    anchor: str | None = None

    @property
    def text(self) -> str:
        return inline_text(self.inlines)


@dataclass(slots=True)
class Paragraph:
    inlines: list[Inline]


@dataclass(slots=True)
class ListBlock:
    ordered: bool
    start: int
    items: list[list[Block]] = field(default_factory=list)


@dataclass(slots=True)
class Table:
    header: list[list[Inline]]
    rows: list[list[list[Inline]]]
    aligns: list[str | None]
    """Per column: "left", "center", "right" or None."""


@dataclass(slots=True)
class CodeBlock:
    text: str
    language: str | None


@dataclass(slots=True)
class Quote:
    blocks: list[Block]


@dataclass(slots=True)
class Rule:
    pass


Block = Heading | Paragraph | ListBlock | Table | CodeBlock | Quote | Rule


def inline_text(inlines: list[Inline]) -> str:
    parts = []
    for item in inlines:
        if isinstance(item, Span):
            parts.append(item.text)
        elif isinstance(item, LineBreak):
            parts.append("\n")
        else:
            parts.append(item.alt)
    return "".join(parts)


# --- building -------------------------------------------------------------------
_DATA_URI = re.compile(r"^data:(image/[a-z+]+);base64,(.*)$", re.S)
_OPEN_SKIP = re.compile(r"^<(script|style|template|iframe|object|noscript|textarea)\b", re.I)
_CLOSE_SKIP = re.compile(r"^</(script|style|template|iframe|object|noscript|textarea)\s*>", re.I)
_TAG = re.compile(r"<[^>]*>")
_ALIGN = re.compile(r"text-align:\s*(left|center|right)")


def decode_image(uri: str) -> tuple[bytes, str] | None:
    """Bytes and MIME type of an allowed ``data:image`` URI, else None."""
    if not is_allowed_image_uri(uri):
        return None
    match = _DATA_URI.match(uri)
    if match is None:
        return None
    try:
        data = base64.b64decode("".join(match.group(2).split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    if not data or len(data) > C.MAX_IMAGE_BYTES:
        return None
    return data, match.group(1)


def build_inlines(token: Token) -> list[Inline]:
    """Flatten an ``inline`` token's children into styled spans."""
    out: list[Inline] = []
    bold = italic = strike = 0
    href: list[str | None] = []
    skipping = 0
    for child in token.children or []:
        kind = child.type
        if kind == "html_inline":
            if _OPEN_SKIP.match(child.content):
                skipping += 1
            elif _CLOSE_SKIP.match(child.content):
                skipping = max(0, skipping - 1)
            elif child.content.lower().startswith("<br"):
                out.append(LineBreak())
            continue
        if skipping:
            continue
        if kind == "text":
            if child.content:
                out.append(Span(child.content, bold > 0, italic > 0, False, strike > 0, _top(href)))
        elif kind == "code_inline":
            out.append(Span(child.content, bold > 0, italic > 0, True, strike > 0, _top(href)))
        elif kind == "softbreak":
            out.append(Span(" ", bold > 0, italic > 0, False, strike > 0, _top(href)))
        elif kind == "hardbreak":
            out.append(LineBreak())
        elif kind == "strong_open":
            bold += 1
        elif kind == "strong_close":
            bold -= 1
        elif kind == "em_open":
            italic += 1
        elif kind == "em_close":
            italic -= 1
        elif kind == "s_open":
            strike += 1
        elif kind == "s_close":
            strike -= 1
        elif kind == "link_open":
            target = str(child.attrGet("href") or "")
            href.append(target if target.lower().startswith(("http://", "https://", "mailto:")) else None)
        elif kind == "link_close":
            if href:
                href.pop()
        elif kind == "image":
            alt = "".join(c.content for c in child.children or [])
            decoded = decode_image(str(child.attrGet("src") or ""))
            if decoded is not None:
                out.append(Image(decoded[0], decoded[1], alt))
            elif alt:
                out.append(Span(f"[{alt}]", italic=True))
    return out


def _top(stack: list[str | None]) -> str | None:
    return stack[-1] if stack else None


def html_block_text(content: str) -> str:
    """Visible text of a raw HTML block (tags and script/style bodies removed)."""
    content = re.sub(r"<(script|style|template)\b.*?</\1\s*>", "", content, flags=re.I | re.S)
    return " ".join(html.unescape(_TAG.sub(" ", content)).split())


def build_blocks(tokens: list[Token]) -> list[Block]:
    """Blocks of a token list (as from ``ParsedDocument.body_tokens``)."""
    blocks, _ = _blocks_until(tokens, 0, None)
    return blocks


def _blocks_until(tokens: list[Token], i: int, close: str | None) -> tuple[list[Block], int]:
    blocks: list[Block] = []
    while i < len(tokens):
        tok = tokens[i]
        kind = tok.type
        if close is not None and kind == close:
            return blocks, i + 1
        if kind == "heading_open":
            anchor = tok.attrGet("id")
            blocks.append(Heading(int(tok.tag[1]), build_inlines(tokens[i + 1]), str(anchor) if anchor else None))
            i += 3
        elif kind == "paragraph_open":
            blocks.append(Paragraph(build_inlines(tokens[i + 1])))
            i += 3
        elif kind in ("bullet_list_open", "ordered_list_open"):
            block, i = _list(tokens, i)
            blocks.append(block)
        elif kind == "table_open":
            block, i = _table(tokens, i)
            blocks.append(block)
        elif kind in ("fence", "code_block"):
            info = tok.info.strip().split()[0] if tok.info.strip() else None
            blocks.append(CodeBlock(tok.content.rstrip("\n"), info))
            i += 1
        elif kind == "blockquote_open":
            inner, i = _blocks_until(tokens, i + 1, "blockquote_close")
            blocks.append(Quote(inner))
        elif kind == "hr":
            blocks.append(Rule())
            i += 1
        elif kind == "html_block":
            text = html_block_text(tok.content)
            if text:
                blocks.append(Paragraph([Span(text)]))
            i += 1
        else:
            i += 1
    return blocks, i


def _list(tokens: list[Token], i: int) -> tuple[ListBlock, int]:
    opener = tokens[i]
    ordered = opener.type == "ordered_list_open"
    start = int(opener.attrGet("start") or 1) if ordered else 1
    block = ListBlock(ordered=ordered, start=start)
    close = "ordered_list_close" if ordered else "bullet_list_close"
    i += 1
    while i < len(tokens) and tokens[i].type != close:
        if tokens[i].type == "list_item_open":
            item, i = _blocks_until(tokens, i + 1, "list_item_close")
            block.items.append(item)
        else:
            i += 1
    return block, i + 1


def _table(tokens: list[Token], i: int) -> tuple[Table, int]:
    header: list[list[Inline]] = []
    rows: list[list[list[Inline]]] = []
    aligns: list[str | None] = []
    row: list[list[Inline]] | None = None
    in_head = False
    i += 1
    while i < len(tokens) and tokens[i].type != "table_close":
        tok = tokens[i]
        if tok.type == "thead_open":
            in_head = True
        elif tok.type == "thead_close":
            in_head = False
        elif tok.type == "tr_open":
            row = []
        elif tok.type == "tr_close" and row is not None:
            if in_head:
                header = row
            else:
                rows.append(row)
            row = None
        elif tok.type in ("th_open", "td_open") and row is not None:
            if in_head:
                match = _ALIGN.search(str(tok.attrGet("style") or ""))
                aligns.append(match.group(1) if match else None)
            row.append(build_inlines(tokens[i + 1]))
        i += 1
    return Table(header=header, rows=rows, aligns=aligns), i + 1
