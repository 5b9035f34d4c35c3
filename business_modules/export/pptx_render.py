"""PPTX output with python-pptx: a slide per top-level section.

Slides, in order: a title slide; a "Contents" slide listing the top-level
sections (when the table of contents is on); an "Overview" slide for content
that comes before the first section (only if there is any); then one slide
per top-level section. A section's text (paragraphs, lists, its
subsections' headings) goes into the editable body placeholder, its tables
and images below it as native table and picture shapes. Text that does not
fit is shrunk by PowerPoint (normAutofit), never split across slides, so the
deck keeps exactly one slide per section.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field

import pptx
from lxml import etree
from pptx.dml.color import RGBColor
from pptx.enum.shapes import MSO_SHAPE
from pptx.enum.text import MSO_AUTO_SIZE, PP_ALIGN
from pptx.oxml.ns import qn
from pptx.util import Emu, Inches, Pt

from business_modules.export.blocks import (
    Block,
    CodeBlock,
    Heading,
    Image,
    Inline,
    LineBreak,
    ListBlock,
    Paragraph,
    Quote,
    Rule,
    Span,
    Table,
    build_blocks,
    inline_text,
)
from business_modules.export.markdown import ParsedDocument, parse_document
from business_modules.export.outline import toc_entries
from business_modules.export.source import SourceDocument, apply_core_properties
from business_modules.export.themes import Theme

logger = logging.getLogger(__name__)

SLIDE_W, SLIDE_H = Inches(13.333), Inches(7.5)
MARGIN = Inches(0.6)
TITLE_TOP, TITLE_H = Inches(0.35), Inches(1.0)
BODY_TOP = Inches(1.5)
BODY_BOTTOM = SLIDE_H - Inches(0.7)
MONO_FONT = "Consolas"
LAYOUT_TITLE, LAYOUT_CONTENT = 0, 1
_ALIGN = {"left": PP_ALIGN.LEFT, "center": PP_ALIGN.CENTER, "right": PP_ALIGN.RIGHT}


@dataclass(slots=True)
class _Line:
    """One paragraph of slide text."""

    inlines: list[Inline]
    level: int = 0
    bullet: str | None = None  # None, "bullet" or "number"
    start: int = 1
    heading: bool = False
    code: bool = False
    quote: bool = False


@dataclass(slots=True)
class _SlideContent:
    title: str
    lines: list[_Line] = field(default_factory=list)
    visuals: list[Table | Image] = field(default_factory=list)


def render_pptx(source: SourceDocument, parsed: ParsedDocument | None = None) -> bytes:
    parsed = parsed or parse_document(source.markdown)
    deck = _DeckWriter(source)
    deck.write(parsed)
    out = io.BytesIO()
    deck.prs.save(out)
    return out.getvalue()


def split_sections(parsed: ParsedDocument) -> tuple[list[Block], list[tuple[Heading, list[Block]]]]:
    """Blocks before the first top-level section, and each section's heading and blocks."""
    blocks = build_blocks(parsed.body_tokens)
    top = parsed.section_level
    preamble: list[Block] = []
    sections: list[tuple[Heading, list[Block]]] = []
    for block in blocks:
        if isinstance(block, Heading) and block.level == top:
            sections.append((block, []))
        elif sections:
            sections[-1][1].append(block)
        else:
            preamble.append(block)
    return preamble, sections


def _collect(blocks: list[Block], content: _SlideContent, *, level: int = 0, quote: bool = False) -> None:
    for block in blocks:
        if isinstance(block, Heading):
            content.lines.append(_Line(block.inlines, heading=True))
        elif isinstance(block, Paragraph):
            text_inlines = [i for i in block.inlines if not isinstance(i, Image)]
            content.visuals.extend(i for i in block.inlines if isinstance(i, Image))
            if inline_text(text_inlines).strip():
                content.lines.append(_Line(text_inlines, level=level, quote=quote))
        elif isinstance(block, ListBlock):
            for item in block.items:
                first = True
                for inner in item:
                    if isinstance(inner, Paragraph) and first:
                        kind = "number" if block.ordered else "bullet"
                        content.lines.append(_Line(inner.inlines, level=min(level, 4), bullet=kind,
                                                   start=block.start))
                        first = False
                    elif isinstance(inner, ListBlock):
                        _collect([inner], content, level=level + 1)
                    else:
                        _collect([inner], content, level=level + 1, quote=quote)
        elif isinstance(block, Table):
            content.visuals.append(block)
        elif isinstance(block, CodeBlock):
            for code_line in block.text.split("\n") or [""]:
                content.lines.append(_Line([Span(code_line or " ")], level=level, code=True))
        elif isinstance(block, Quote):
            _collect(block.blocks, content, level=level, quote=True)
        elif isinstance(block, Rule):
            continue


class _DeckWriter:
    def __init__(self, source: SourceDocument) -> None:
        self.source = source
        self.theme: Theme = source.options.theme
        self.prs = pptx.Presentation()
        self.prs.slide_width, self.prs.slide_height = SLIDE_W, SLIDE_H

    def write(self, parsed: ParsedDocument) -> None:
        self._core_properties()
        self._title_slide(parsed.title)
        preamble, sections = split_sections(parsed)
        if self.source.options.toc and sections:
            contents = _SlideContent("Contents")
            for entry in toc_entries(parsed, max_depth=1):
                contents.lines.append(_Line([Span(entry.text)], bullet="bullet"))
            self._content_slide(contents)
        if preamble:
            overview = _SlideContent("Overview")
            _collect(preamble, overview)
            if overview.lines or overview.visuals:
                self._content_slide(overview)
        for heading, blocks in sections:
            content = _SlideContent(heading.text)
            _collect(blocks, content)
            self._content_slide(content)

    def _core_properties(self) -> None:
        apply_core_properties(self.prs.core_properties, self.source.metadata)

    # --- slides --------------------------------------------------------------------
    def _title_slide(self, title: str) -> None:
        slide = self.prs.slides.add_slide(self.prs.slide_layouts[LAYOUT_TITLE])
        self._accent_bar(slide)
        title_shape, subtitle = slide.shapes.title, slide.placeholders[1]
        title_shape.left, title_shape.top = MARGIN, Inches(2.2)
        title_shape.width, title_shape.height = SLIDE_W - 2 * MARGIN, Inches(1.6)
        title_shape.text_frame.text = title
        self._style_title(title_shape, size=Pt(40))
        subtitle.left, subtitle.top = MARGIN, Inches(4.0)
        subtitle.width, subtitle.height = SLIDE_W - 2 * MARGIN, Inches(1.6)
        meta = self.source.metadata
        lines = [meta.subject] if meta.subject else []
        lines.append(" · ".join(p for p in (meta.author, meta.created.date().isoformat()) if p))
        if self.source.options.draft:
            lines.append("DRAFT")
        subtitle.text_frame.text = "\n".join(lines)
        for paragraph in subtitle.text_frame.paragraphs:
            for run in paragraph.runs:
                run.font.color.rgb = RGBColor.from_string(self.theme.hex(self.theme.muted))
                run.font.name = self.theme.office_body_font
        self._slide_number(slide)

    def _content_slide(self, content: _SlideContent) -> None:
        slide = self.prs.slides.add_slide(self.prs.slide_layouts[LAYOUT_CONTENT])
        self._accent_bar(slide)
        title = slide.shapes.title
        title.left, title.top, title.width, title.height = MARGIN, TITLE_TOP, SLIDE_W - 2 * MARGIN, TITLE_H
        title.text_frame.text = content.title
        title.text_frame.word_wrap = True
        self._style_title(title, size=Pt(30))
        body = slide.placeholders[1]
        body_h = BODY_BOTTOM - BODY_TOP
        text_h = body_h if not content.visuals else (
            Emu(int(body_h * 0.45)) if content.lines else Emu(0))
        if content.lines:
            body.left, body.top, body.width, body.height = MARGIN, BODY_TOP, SLIDE_W - 2 * MARGIN, text_h
            self._fill_text(body.text_frame, content.lines)
        else:
            body._element.getparent().remove(body._element)
        if content.visuals:
            gap = Inches(0.15)
            top = BODY_TOP + text_h + (gap if content.lines else 0)
            slot = Emu(int((BODY_BOTTOM - top - gap * (len(content.visuals) - 1)) / len(content.visuals)))
            for visual in content.visuals:
                if isinstance(visual, Table):
                    self._table(slide, visual, top, slot)
                else:
                    self._picture(slide, visual, top, slot)
                top += slot + gap
        self._slide_number(slide)

    # --- text ----------------------------------------------------------------------
    def _fill_text(self, frame, lines: list[_Line]) -> None:
        frame.word_wrap = True
        frame.auto_size = MSO_AUTO_SIZE.TEXT_TO_FIT_SHAPE
        size = Pt(22) if len(lines) <= 6 else Pt(18) if len(lines) <= 10 else Pt(14) if len(lines) <= 16 else Pt(11)
        primary = RGBColor.from_string(self.theme.hex(self.theme.primary))
        for i, line in enumerate(lines):
            paragraph = frame.paragraphs[0] if i == 0 else frame.add_paragraph()
            paragraph.level = line.level
            _set_bullet(paragraph, line.bullet, line.start)
            for run in self._runs(paragraph, line.inlines):
                run.font.size = Pt(max(10, size.pt - 2 * line.level)) if not line.heading else size
                if line.heading:
                    run.font.bold = True
                    run.font.color.rgb = primary
                if line.code:
                    run.font.name = MONO_FONT
                if line.quote:
                    run.font.italic = True

    def _runs(self, paragraph, inlines: list[Inline]) -> list:
        runs = []
        for item in inlines:
            if isinstance(item, LineBreak):
                paragraph.add_line_break()
                continue
            if not isinstance(item, Span):
                continue
            run = paragraph.add_run()
            run.text = item.text
            run.font.name = MONO_FONT if item.code else self.theme.office_body_font
            if item.bold:
                run.font.bold = True
            if item.italic:
                run.font.italic = True
            if item.strike:
                run.font._rPr.set("strike", "sngStrike")
            if item.href:
                run.hyperlink.address = item.href
            runs.append(run)
        return runs

    def _style_title(self, shape, *, size: Pt) -> None:
        colour = RGBColor.from_string(self.theme.hex(self.theme.primary))
        for paragraph in shape.text_frame.paragraphs:
            paragraph.alignment = PP_ALIGN.LEFT
            for run in paragraph.runs:
                run.font.color.rgb = colour
                run.font.name = self.theme.office_heading_font
                run.font.size = size
                run.font.bold = True

    # --- shapes --------------------------------------------------------------------
    def _table(self, slide, table: Table, top: int, height: int) -> None:
        columns = max([len(table.header)] + [len(r) for r in table.rows])
        if columns == 0:
            return
        rows = [table.header] + table.rows if table.header else table.rows
        shape = slide.shapes.add_table(len(rows), columns, MARGIN, top, SLIDE_W - 2 * MARGIN, height)
        grid = shape.table
        grid.first_row = bool(table.header)
        size = Pt(14) if len(rows) <= 6 else Pt(11) if len(rows) <= 12 else Pt(9)
        for r, row in enumerate(rows):
            grid.rows[r].height = Emu(int(height / len(rows)))
            for c in range(columns):
                cell = grid.cell(r, c)
                frame = cell.text_frame
                frame.word_wrap = True
                paragraph = frame.paragraphs[0]
                align = table.aligns[c] if c < len(table.aligns) else None
                if align:
                    paragraph.alignment = _ALIGN[align]
                runs = self._runs(paragraph, row[c]) if c < len(row) else []
                header = r == 0 and bool(table.header)
                if header:
                    cell.fill.solid()
                    cell.fill.fore_color.rgb = RGBColor.from_string(self.theme.hex(self.theme.primary))
                elif r % 2 == 0:
                    cell.fill.solid()
                    cell.fill.fore_color.rgb = RGBColor.from_string(self.theme.hex(self.theme.stripe))
                else:
                    cell.fill.solid()
                    cell.fill.fore_color.rgb = RGBColor(0xFF, 0xFF, 0xFF)
                for run in runs:
                    run.font.size = size
                    run.font.color.rgb = (RGBColor(0xFF, 0xFF, 0xFF) if header
                                          else RGBColor.from_string(self.theme.hex(self.theme.text)))
                    if header:
                        run.font.bold = True

    def _picture(self, slide, image: Image, top: int, height: int) -> None:
        try:
            picture = slide.shapes.add_picture(io.BytesIO(image.data), MARGIN, top)
        except (ValueError, OSError, KeyError, AttributeError, ZeroDivisionError) as exc:
            logger.info("image left out of PPTX (%s): %s", image.mime, exc)
            return
        max_w = SLIDE_W - 2 * MARGIN
        scale = min(max_w / picture.width, height / picture.height, 1.0 if picture.height >= Inches(1) else 8.0)
        picture.width, picture.height = int(picture.width * scale), int(picture.height * scale)
        picture.left = int((SLIDE_W - picture.width) / 2)
        if image.alt:
            picture._element.nvPicPr.cNvPr.set("descr", image.alt)

    def _accent_bar(self, slide) -> None:
        bar = slide.shapes.add_shape(MSO_SHAPE.RECTANGLE, 0, 0, SLIDE_W, Inches(0.12))
        bar.fill.solid()
        bar.fill.fore_color.rgb = RGBColor.from_string(self.theme.hex(self.theme.accent))
        bar.line.fill.background()
        bar.name = "Accent Bar"

    def _slide_number(self, slide) -> None:
        if not self.source.options.page_numbers:
            return
        box = slide.shapes.add_textbox(SLIDE_W - Inches(1.6), SLIDE_H - Inches(0.55), Inches(1.0), Inches(0.35))
        box.name = "Slide Number"
        paragraph = box.text_frame.paragraphs[0]
        paragraph.alignment = PP_ALIGN.RIGHT
        number = len(self.prs.slides._sldIdLst)
        fld = etree.SubElement(paragraph._p, qn("a:fld"), id="{B6F15528-21DE-4FAA-801E-634DDDAF4B2B}",
                               type="slidenum")
        r_pr = etree.SubElement(fld, qn("a:rPr"), lang="en-US", sz="1200")
        fill = etree.SubElement(r_pr, qn("a:solidFill"))
        etree.SubElement(fill, qn("a:srgbClr"), val=self.theme.hex(self.theme.muted))
        etree.SubElement(fld, qn("a:t")).text = str(number)


def _set_bullet(paragraph, kind: str | None, start: int) -> None:
    """Bullet, auto-number (from ``start``) or none on a body paragraph."""
    p_pr = paragraph._p.get_or_add_pPr()
    for tag in ("a:buNone", "a:buAutoNum", "a:buChar"):
        for old in p_pr.findall(qn(tag)):
            p_pr.remove(old)
    if kind == "number":
        etree.SubElement(p_pr, qn("a:buAutoNum"), type="arabicPeriod", startAt=str(start))
    elif kind is None:
        etree.SubElement(p_pr, qn("a:buNone"))
        p_pr.set("indent", "0")
        p_pr.set("marL", str(int(Inches(0.35) * paragraph.level)))
