"""DOCX output with python-docx.

Headings use Word's built-in "Heading n" styles (top-level sections are
Heading 1, the document title uses "Title"), lists "List Bullet"/"List
Number" (numbering restarts per list), tables "Table Grid" with a repeated,
theme-coloured header row. The table of contents is a real Word TOC field
whose cached result already lists the headings (Word can refresh it for page
numbers); the footer holds PAGE / NUMPAGES fields; core properties carry the
metadata.
"""

from __future__ import annotations

import io
import logging

import docx
from docx.enum.style import WD_STYLE_TYPE
from docx.enum.table import WD_TABLE_ALIGNMENT
from docx.enum.text import WD_ALIGN_PARAGRAPH
from docx.image.exceptions import UnrecognizedImageError
from docx.shared import Cm, Inches, Pt, RGBColor
from docx.text.paragraph import Paragraph as DocxParagraph

from business_modules.export import constants as C
from business_modules.export import docx_xml as X
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
)
from business_modules.export.markdown import ParsedDocument, parse_document
from business_modules.export.outline import toc_entries
from business_modules.export.source import SourceDocument, apply_core_properties
from business_modules.export.themes import Theme

logger = logging.getLogger(__name__)

MONO_FONT = "Consolas"
CODE_STYLE = "Code Block"
MAX_IMAGE_WIDTH = Inches(6.2)
_ALIGN = {"left": WD_ALIGN_PARAGRAPH.LEFT, "center": WD_ALIGN_PARAGRAPH.CENTER, "right": WD_ALIGN_PARAGRAPH.RIGHT}


def render_docx(source: SourceDocument, parsed: ParsedDocument | None = None) -> bytes:
    parsed = parsed or parse_document(source.markdown)
    writer = _DocxWriter(source)
    writer.write(parsed)
    out = io.BytesIO()
    writer.doc.save(out)
    return out.getvalue()


class _DocxWriter:
    def __init__(self, source: SourceDocument) -> None:
        self.source = source
        self.theme: Theme = source.options.theme
        self.doc = docx.Document()
        self.top_level: int = 2

    # --- document frame ----------------------------------------------------------
    def write(self, parsed: ParsedDocument) -> None:
        self.top_level = parsed.section_level or 2
        self._page_setup()
        self._styles()
        self._core_properties()
        self._title(parsed)
        if self.source.options.toc:
            self._toc(parsed)
        for block in build_blocks(parsed.body_tokens):
            self._block(block, list_depth=0)

    def _page_setup(self) -> None:
        section = self.doc.sections[0]
        section.page_width, section.page_height = Cm(21.0), Cm(29.7)
        section.left_margin = section.right_margin = Cm(2.0)
        section.top_margin, section.bottom_margin = Cm(2.2), Cm(2.4)
        opts = self.source.options
        if opts.page_numbers:
            footer = section.footer.paragraphs[0]
            footer.alignment = WD_ALIGN_PARAGRAPH.CENTER
            footer.add_run("Page ")
            X.add_field(footer, "PAGE")
            footer.add_run(" of ")
            X.add_field(footer, "NUMPAGES")
        if opts.draft:
            header = section.header.paragraphs[0]
            header.alignment = WD_ALIGN_PARAGRAPH.RIGHT
            run = header.add_run("DRAFT")
            run.bold = True
            run.font.color.rgb = RGBColor.from_string(self.theme.hex(self.theme.accent))

    def _styles(self) -> None:
        styles, theme = self.doc.styles, self.theme
        normal = styles["Normal"]
        normal.font.name = theme.office_body_font
        normal.font.size = Pt(11)
        normal.font.color.rgb = RGBColor.from_string(theme.hex(theme.text))
        primary = RGBColor.from_string(theme.hex(theme.primary))
        for name in ["Title"] + [f"Heading {n}" for n in range(1, 7)]:
            style = styles[name]
            style.font.name = theme.office_heading_font
            style.font.color.rgb = primary
        code = styles.add_style(CODE_STYLE, WD_STYLE_TYPE.PARAGRAPH)
        code.base_style = normal
        code.font.name = MONO_FONT
        code.font.size = Pt(9)
        code.paragraph_format.space_after = Pt(6)
        X.shade_properties(code.element.get_or_add_pPr(), "F2F4F7")
        for depth in (1, 2, 3):
            toc = styles.add_style(f"toc {depth}", WD_STYLE_TYPE.PARAGRAPH)
            toc.base_style = normal
            toc.paragraph_format.left_indent = Cm(0.6 * (depth - 1))
            toc.paragraph_format.space_after = Pt(2)

    def _core_properties(self) -> None:
        apply_core_properties(self.doc.core_properties, self.source.metadata)

    def _title(self, parsed: ParsedDocument) -> None:
        title = self.doc.add_paragraph(style="Title")
        self._inlines(title, build_blocks(parsed.tokens[:3])[0].inlines)  # type: ignore[union-attr]
        meta = self.source.metadata
        byline = " · ".join(p for p in (meta.author, meta.created.date().isoformat()) if p)
        if byline:
            self.doc.add_paragraph(byline, style="Subtitle")
        if meta.subject:
            self.doc.add_paragraph(meta.subject, style="Subtitle")

    def _toc(self, parsed: ParsedDocument) -> None:
        entries = toc_entries(parsed)
        if not entries:
            return
        self.doc.add_paragraph("Contents", style="TOC Heading")
        last = len(entries) - 1
        for i, entry in enumerate(entries):
            paragraph = self.doc.add_paragraph(style=f"toc {entry.depth}")
            if i == 0:
                X.begin_field(paragraph, f'TOC \\o "1-{C.TOC_DEPTH}" \\h \\z \\u')
            X.add_hyperlink(paragraph, entry.text, anchor=entry.anchor)
            if i == last:
                X.end_field(paragraph)

    # --- blocks ------------------------------------------------------------------
    def _block(self, block: Block, *, list_depth: int, quote: bool = False) -> None:
        if isinstance(block, Heading):
            level = max(1, min(9, block.level - self.top_level + 1))
            paragraph = self.doc.add_paragraph(style=f"Heading {level}")
            self._inlines(paragraph, block.inlines)
            if block.anchor:
                X.add_bookmark(paragraph, block.anchor)
        elif isinstance(block, Paragraph):
            paragraph = self.doc.add_paragraph(style="Quote" if quote else None)
            self._inlines(paragraph, block.inlines)
        elif isinstance(block, ListBlock):
            self._list(block, list_depth)
        elif isinstance(block, Table):
            self._table(block)
        elif isinstance(block, CodeBlock):
            self.doc.add_paragraph(style=CODE_STYLE).add_run(block.text)
        elif isinstance(block, Quote):
            for inner in block.blocks:
                self._block(inner, list_depth=list_depth, quote=True)
        elif isinstance(block, Rule):
            X.bottom_border(self.doc.add_paragraph(), self.theme.hex(self.theme.muted))

    def _list(self, block: ListBlock, depth: int) -> None:
        kind = "List Number" if block.ordered else "List Bullet"
        style = kind if depth == 0 else f"{kind} {min(depth + 1, 3)}"
        num_id: int | None = None
        for item in block.items:
            first = True
            for inner in item:
                if isinstance(inner, Paragraph):
                    paragraph = self.doc.add_paragraph(style=style if first else "List Continue")
                    if first and block.ordered:
                        if num_id is None:
                            num_id = X.restart_numbering(self.doc, paragraph, style, block.start)
                        else:
                            X.set_num_id(paragraph, num_id)
                    self._inlines(paragraph, inner.inlines)
                    first = False
                elif isinstance(inner, ListBlock):
                    self._list(inner, depth + 1)
                else:
                    self._block(inner, list_depth=depth + 1)

    def _table(self, block: Table) -> None:
        columns = max([len(block.header)] + [len(r) for r in block.rows])
        if columns == 0:
            return
        table = self.doc.add_table(rows=1 + len(block.rows), cols=columns)
        table.style = self.doc.styles["Table Grid"]
        table.alignment = WD_TABLE_ALIGNMENT.CENTER
        header_row = table.rows[0]
        X.repeat_as_header(header_row)
        white = RGBColor(0xFF, 0xFF, 0xFF)
        for col, cell_inlines in enumerate(block.header):
            cell = header_row.cells[col]
            X.shade(cell, self.theme.hex(self.theme.primary))
            self._cell(cell, cell_inlines, block.aligns, col, bold=True, colour=white)
        for r, row in enumerate(block.rows, start=1):
            for col, cell_inlines in enumerate(row[:columns]):
                cell = table.rows[r].cells[col]
                if r % 2 == 0:
                    X.shade(cell, self.theme.hex(self.theme.stripe))
                self._cell(cell, cell_inlines, block.aligns, col)
        self.doc.add_paragraph()

    def _cell(self, cell, inlines: list[Inline], aligns: list[str | None], col: int, *, bold: bool = False,
              colour: RGBColor | None = None) -> None:
        paragraph = cell.paragraphs[0]
        align = aligns[col] if col < len(aligns) else None
        if align:
            paragraph.alignment = _ALIGN[align]
        for run in self._inlines(paragraph, inlines):
            if bold:
                run.bold = True
            if colour is not None:
                run.font.color.rgb = colour

    # --- inline ------------------------------------------------------------------
    def _inlines(self, paragraph: DocxParagraph, inlines: list[Inline]) -> list:
        runs = []
        for item in inlines:
            if isinstance(item, Span):
                if item.href:
                    run = X.add_hyperlink(paragraph, item.text, url=item.href, colour=self.theme.hex(self.theme.accent))
                else:
                    run = paragraph.add_run(item.text)
                run.bold = item.bold or None
                run.italic = item.italic or None
                if item.strike:
                    run.font.strike = True
                if item.code:
                    run.font.name = MONO_FONT
                runs.append(run)
            elif isinstance(item, LineBreak):
                paragraph.add_run().add_break()
            elif isinstance(item, Image):
                runs.append(self._image(paragraph, item))
        return runs

    def _image(self, paragraph: DocxParagraph, image: Image):
        run = paragraph.add_run()
        try:
            shape = run.add_picture(io.BytesIO(image.data))
        except (UnrecognizedImageError, ValueError, OSError, ZeroDivisionError) as exc:
            logger.info("image left out of DOCX (%s): %s", image.mime, exc)
            run.text = f"[{image.alt}]" if image.alt else ""
            run.italic = True
            return run
        if shape.width > MAX_IMAGE_WIDTH:
            shape.height = int(shape.height * MAX_IMAGE_WIDTH / shape.width)
            shape.width = MAX_IMAGE_WIDTH
        return run
