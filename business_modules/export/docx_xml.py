"""WordprocessingML pieces python-docx has no API for: fields, bookmarks,
hyperlinks, shading, borders, header-row repeat and list restarts."""

from __future__ import annotations

import itertools

from docx.document import Document as DocxDocument
from docx.opc.constants import RELATIONSHIP_TYPE as RT
from docx.oxml import OxmlElement
from docx.oxml.ns import qn
from docx.shared import RGBColor
from docx.table import _Cell, _Row
from docx.text.paragraph import Paragraph
from docx.text.run import Run

_bookmark_ids = itertools.count(1)


def add_field(paragraph: Paragraph, instruction: str, placeholder: str = "1") -> None:
    """A complex field (``PAGE``, ``NUMPAGES``...) Word evaluates on open/print."""
    _fld_char(paragraph.add_run(), "begin")
    instr = OxmlElement("w:instrText")
    instr.set(qn("xml:space"), "preserve")
    instr.text = f" {instruction} "
    paragraph.add_run()._r.append(instr)
    _fld_char(paragraph.add_run(), "separate")
    paragraph.add_run(placeholder)
    _fld_char(paragraph.add_run(), "end")


def begin_field(paragraph: Paragraph, instruction: str) -> None:
    """Open a field whose cached result follows (possibly over several paragraphs)."""
    _fld_char(paragraph.add_run(), "begin")
    instr = OxmlElement("w:instrText")
    instr.set(qn("xml:space"), "preserve")
    instr.text = f" {instruction} "
    paragraph.add_run()._r.append(instr)
    _fld_char(paragraph.add_run(), "separate")


def end_field(paragraph: Paragraph) -> None:
    _fld_char(paragraph.add_run(), "end")


def _fld_char(run: Run, kind: str) -> None:
    fld = OxmlElement("w:fldChar")
    fld.set(qn("w:fldCharType"), kind)
    run._r.append(fld)


def add_bookmark(paragraph: Paragraph, name: str) -> None:
    """Wrap the paragraph's content in a bookmark (target of internal links)."""
    bid = str(next(_bookmark_ids))
    start = OxmlElement("w:bookmarkStart")
    start.set(qn("w:id"), bid)
    start.set(qn("w:name"), name[:40])
    end = OxmlElement("w:bookmarkEnd")
    end.set(qn("w:id"), bid)
    p = paragraph._p
    p_pr = p.pPr
    if p_pr is not None:
        p_pr.addnext(start)
    else:
        p.insert(0, start)
    p.append(end)


def add_hyperlink(paragraph: Paragraph, text: str, *, url: str | None = None, anchor: str | None = None,
                  colour: str | None = None) -> Run:
    """A clickable run: external ``url`` or internal bookmark ``anchor``."""
    link = OxmlElement("w:hyperlink")
    if url is not None:
        r_id = paragraph.part.relate_to(url, RT.HYPERLINK, is_external=True)
        link.set(qn("r:id"), r_id)
    if anchor is not None:
        link.set(qn("w:anchor"), anchor[:40])
    run = paragraph.add_run(text)
    if colour is not None:
        run.font.color.rgb = RGBColor.from_string(colour)
        run.font.underline = True
    paragraph._p.append(link)
    link.append(run._r)
    return run


def shade(cell: _Cell, fill_hex: str) -> None:
    """Background colour of a table cell."""
    tc_pr = cell._tc.get_or_add_tcPr()
    shd = OxmlElement("w:shd")
    shd.set(qn("w:val"), "clear")
    shd.set(qn("w:color"), "auto")
    shd.set(qn("w:fill"), fill_hex)
    tc_pr.append(shd)


def shade_properties(p_pr, fill_hex: str) -> None:
    """Background colour on a paragraph-properties element (of a paragraph or a style)."""
    shd = OxmlElement("w:shd")
    shd.set(qn("w:val"), "clear")
    shd.set(qn("w:color"), "auto")
    shd.set(qn("w:fill"), fill_hex)
    p_pr.append(shd)


def bottom_border(paragraph: Paragraph, colour_hex: str, size_eighths: int = 6) -> None:
    """A horizontal rule under the paragraph."""
    p_pr = paragraph._p.get_or_add_pPr()
    borders = OxmlElement("w:pBdr")
    bottom = OxmlElement("w:bottom")
    bottom.set(qn("w:val"), "single")
    bottom.set(qn("w:sz"), str(size_eighths))
    bottom.set(qn("w:space"), "1")
    bottom.set(qn("w:color"), colour_hex)
    borders.append(bottom)
    p_pr.append(borders)


def repeat_as_header(row: _Row) -> None:
    """Repeat this table row at the top of every page the table spans."""
    tr_pr = row._tr.get_or_add_trPr()
    header = OxmlElement("w:tblHeader")
    header.set(qn("w:val"), "true")
    tr_pr.append(header)


def restart_numbering(document: DocxDocument, paragraph: Paragraph, style_name: str, start: int) -> int | None:
    """Give ``paragraph`` a fresh numbering instance of ``style_name`` starting at ``start``.

    Without this every "List Number" list in a document continues the
    previous one's count. Returns the new numId (reuse it for the list's
    other items), or None when the style has no numbering.
    """
    style = document.styles[style_name]
    p_pr = style.element.pPr
    if p_pr is None or p_pr.numPr is None or p_pr.numPr.numId is None:
        return None
    numbering = document.part.numbering_part.element
    base = numbering.num_having_numId(p_pr.numPr.numId.val)
    num = numbering.add_num(base.abstractNumId.val)
    override = num.add_lvlOverride(ilvl=0)
    override.add_startOverride(start)
    set_num_id(paragraph, num.numId)
    return num.numId


def set_num_id(paragraph: Paragraph, num_id: int) -> None:
    num_pr = paragraph._p.get_or_add_pPr().get_or_add_numPr()
    num_pr.get_or_add_ilvl().val = 0
    num_pr.get_or_add_numId().val = num_id
