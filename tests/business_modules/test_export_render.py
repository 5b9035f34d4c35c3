"""Each format rendered from the same content and read back with its own
reader (pypdf, python-docx, python-pptx): structure, text, metadata, theme,
table of contents and sanitising survive."""

from __future__ import annotations

import io
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import docx
import pptx
import pypdf
import pytest
from docx.oxml.ns import qn

from business_modules.export import THEMES, ExportRequest, render_document
from business_modules.export.pdf_render import DataOnlyURLFetcher
from tests.business_modules.export_samples import (
    CREATED,
    PNG_URI,
    SECTION_TITLES,
    UNICODE,
    requires_cjk_font,
    structured_payload,
)


def render(payload: dict):
    return render_document(ExportRequest.model_validate(payload), now=CREATED)


class _CountingHandler(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).hits.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def trap_server():
    """A local HTTP server that records every request: nothing may reach it."""
    _CountingHandler.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CountingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", _CountingHandler.hits
    server.shutdown()
    server.server_close()


# --- HTML ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def html_doc(trap_server):
    return render(structured_payload(fmt="html", remote_host=trap_server[0]))


def test_html_keeps_structure_text_and_metadata(html_doc):
    html = html_doc.data.decode("utf-8")
    assert html_doc.media_type == "text/html; charset=utf-8"
    assert html_doc.filename.endswith(".html")
    assert re.search(r'<h1 id="title">Quarterly report ' + UNICODE, html)
    for title in SECTION_TITLES:
        assert re.search(rf"<h2 id=\"[a-z0-9-]+\">{title}</h2>", html)
    assert '<h3 id="details">Details</h3>' in html
    assert re.search(r"<td[^>]*>Zürich</td>", html) and re.search(r"<td[^>]*>東京</td>", html)
    assert 'style="text-align:right"' in html  # column alignment survives sanitising
    assert "<li>First bullet</li>" in html and "<ol>" in html
    assert '<meta name="author" content="Zoë Ångström">' in html
    assert '<meta name="description" content="Revenue by region">' in html
    assert '<meta name="keywords" content="revenue, regions, 東京">' in html
    assert '<meta name="dcterms.created" content="2026-03-14T09:26:53+00:00">' in html
    assert "<title>Quarterly report " + UNICODE + "</title>" in html


def test_html_table_of_contents_links_to_headings(html_doc):
    html = html_doc.data.decode("utf-8")
    nav = html[html.index('<nav class="toc"'): html.index("</nav>")]
    anchors = re.findall(r'href="#([a-z0-9-]+)">([^<]+)<', nav)
    assert [text for _, text in anchors] == SECTION_TITLES[:2] + ["Details"] + SECTION_TITLES[2:]
    for anchor, _ in anchors:
        assert f'id="{anchor}"' in html


def test_html_is_sanitised(html_doc, trap_server):
    html = html_doc.data.decode("utf-8")
    body = html[html.index("<main>"):]
    assert "<script" not in body and "alert(" not in body.replace("[here](javascript:alert(1))", "")
    assert "javascript:" not in body.replace("[here](javascript:alert(1))", "")
    assert "onerror" not in body
    assert f"http://{trap_server[0]}" not in body  # remote image dropped
    assert f'src="{PNG_URI}"' in body  # data: image kept
    assert "default-src 'none'" in html  # CSP blocks anything that slipped through


def test_html_applies_theme(html_doc):
    html = html_doc.data.decode("utf-8")
    assert THEMES["professional"].primary in html
    modern = render(structured_payload(fmt="html", theme="modern")).data.decode()
    assert THEMES["modern"].primary in modern and THEMES["professional"].primary not in modern


# --- PDF (one render: WeasyPrint takes about a second) ------------------------------
@pytest.fixture(scope="module")
def pdf_doc(trap_server):
    return render(structured_payload(fmt="pdf", remote_host=trap_server[0]))


@requires_cjk_font
def test_pdf_reads_back(pdf_doc, trap_server):
    reader = pypdf.PdfReader(io.BytesIO(pdf_doc.data))
    text = "\n".join(page.extract_text() for page in reader.pages)
    assert pdf_doc.media_type == "application/pdf"
    for title in SECTION_TITLES + ["Details", "Contents"]:
        assert title in text
    assert UNICODE in text
    assert "Zürich" in text and "1200" in text and "東京" in text  # table cells
    assert "First bullet" in text and "Nested bullet" in text and "Ordered two" in text
    assert "3. " in text and "4. " in text  # a list that starts at 3 keeps its numbers
    assert "print('# not a heading')" in text
    assert "alert" not in text.replace("[here](javascript:alert(1))", "")
    assert re.search(r"Page 1 of \d", text)
    assert re.search(r"Introduction \.+ \d", text)  # TOC with page numbers
    meta = reader.metadata
    assert meta.title == f"Quarterly report {UNICODE}"
    assert meta.author == "Zoë Ångström"
    assert meta.subject == "Revenue by region"
    assert meta["/Keywords"] == "revenue, regions, 東京"
    assert meta.creation_date.year == 2026
    outline = [item.title for item in reader.outline if not isinstance(item, list)]
    assert outline[0].startswith("Quarterly report")
    assert trap_server[1] == []  # WeasyPrint fetched nothing


def test_fetcher_serves_data_uris_only():
    fetcher = DataOnlyURLFetcher()
    with pytest.raises(ValueError, match="not fetched"):
        fetcher.fetch("http://127.0.0.1:9/x.png")
    with pytest.raises(ValueError):
        fetcher.fetch("file:///etc/passwd")
    response = fetcher.fetch(PNG_URI)
    assert response.read().startswith(b"\x89PNG")


# --- DOCX -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def docx_file():
    rendered = render(structured_payload(fmt="docx"))
    return rendered, docx.Document(io.BytesIO(rendered.data))


def test_docx_headings_lists_and_text(docx_file):
    rendered, document = docx_file
    assert rendered.filename.endswith(".docx")
    paragraphs = [(p.style.name, p.text) for p in document.paragraphs]
    assert ("Title", f"Quarterly report {UNICODE}") in paragraphs
    headings = [text for style, text in paragraphs if style == "Heading 1"]
    assert headings == SECTION_TITLES
    assert ("Heading 2", "Details") in paragraphs
    assert ("List Bullet", "First bullet") in paragraphs
    assert ("List Bullet 2", "Nested bullet") in paragraphs
    assert ("List Number", "Ordered two") in paragraphs
    assert any(UNICODE in text for style, text in paragraphs if style == "Normal")
    assert ("Code Block", "print('# not a heading')") in paragraphs
    assert ("Quote", "A quoted remark.") in paragraphs
    assert all("alert" not in text for _, text in paragraphs if "javascript" not in text)
    assert len(document.inline_shapes) == 1  # the data: PNG; the remote image is alt text


def test_docx_ordered_lists_restart(docx_file):
    _, document = docx_file

    def num_id(text: str) -> str:
        paragraph = next(p for p in document.paragraphs if p.text == text)
        return paragraph._p.pPr.numPr.numId.val

    assert num_id("Ordered one") == num_id("Ordered two")
    assert num_id("Restarted list three") != num_id("Ordered one")
    numbering = document.part.numbering_part.element
    start = numbering.num_having_numId(num_id("Restarted list three")).xpath(".//w:startOverride/@w:val")
    assert start == ["3"]


def test_docx_table(docx_file):
    _, document = docx_file
    (table,) = document.tables
    cells = [[cell.text for cell in row.cells] for row in table.rows]
    assert cells == [["Region", "Revenue", "Note"], ["Zürich", "1200", UNICODE], ["東京", "3400", "up"]]
    assert table.rows[0]._tr.trPr.find(qn("w:tblHeader")) is not None
    assert table.rows[1].cells[1].paragraphs[0].alignment == docx.enum.text.WD_ALIGN_PARAGRAPH.RIGHT


def test_docx_metadata_footer_toc_and_theme(docx_file):
    _, document = docx_file
    props = document.core_properties
    assert props.title == f"Quarterly report {UNICODE}"
    assert props.author == "Zoë Ångström"
    assert props.subject == "Revenue by region"
    assert props.keywords == "revenue, regions, 東京"
    assert props.created.replace(tzinfo=None) == CREATED.replace(tzinfo=None)
    assert props.category == "report"
    footer_xml = document.sections[0].footer.paragraphs[0]._p.xml
    assert re.search(r"<w:instrText[^>]*> PAGE </w:instrText>", footer_xml)
    assert re.search(r"<w:instrText[^>]*> NUMPAGES </w:instrText>", footer_xml)
    body_xml = document.element.body.xml
    assert 'TOC \\o "1-2" \\h \\z \\u' in body_xml
    toc = [p.text for p in document.paragraphs if p.style.name.startswith("toc ")]
    assert toc == SECTION_TITLES[:2] + ["Details"] + SECTION_TITLES[2:]
    primary = THEMES["professional"].primary.lstrip("#")
    assert str(document.styles["Heading 1"].font.color.rgb) == primary


# --- PPTX -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def deck():
    rendered = render(structured_payload(fmt="pptx"))
    return rendered, pptx.Presentation(io.BytesIO(rendered.data))


def _texts(slide) -> list[str]:
    return [shape.text_frame.text for shape in slide.shapes if shape.has_text_frame]


def test_pptx_one_slide_per_top_level_section(deck):
    rendered, presentation = deck
    assert rendered.filename.endswith(".pptx")
    titles = [slide.shapes.title.text for slide in presentation.slides]
    assert titles == [f"Quarterly report {UNICODE}", "Contents", *SECTION_TITLES]
    contents = presentation.slides[1].placeholders[1].text_frame.text.split("\n")
    assert contents == SECTION_TITLES


def test_pptx_bullets_table_and_picture(deck):
    _, presentation = deck
    intro, results = presentation.slides[2], presentation.slides[3]
    body = intro.placeholders[1].text_frame
    lines = [p.text for p in body.paragraphs]
    assert "First bullet" in lines and "Nested bullet" in lines
    assert next(p for p in body.paragraphs if p.text == "Nested bullet").level == 1
    assert any(UNICODE in line for line in lines)
    assert not any("alert" in line for line in lines if "javascript" not in line)
    assert sum(1 for shape in intro.shapes if shape.shape_type == 13) == 1  # picture
    (table,) = [shape.table for shape in results.shapes if shape.has_table]
    assert [[c.text for c in row.cells] for row in table.rows] == [
        ["Region", "Revenue", "Note"], ["Zürich", "1200", UNICODE], ["東京", "3400", "up"]]
    assert "Details" in results.placeholders[1].text_frame.text  # subsection stays on its section's slide


def test_pptx_metadata_theme_and_slide_numbers(deck):
    _, presentation = deck
    props = presentation.core_properties
    assert (props.title, props.author, props.subject) == (
        f"Quarterly report {UNICODE}", "Zoë Ångström", "Revenue by region")
    assert props.keywords == "revenue, regions, 東京"
    title_run = presentation.slides[2].shapes.title.text_frame.paragraphs[0].runs[0]
    assert str(title_run.font.color.rgb) == THEMES["professional"].primary.lstrip("#")
    numbers = [next(s for s in slide.shapes if s.name == "Slide Number") for slide in presentation.slides]
    assert all('type="slidenum"' in shape._element.xml for shape in numbers)


# --- Markdown and options ---------------------------------------------------------------
def test_markdown_output_is_normalised_source():
    rendered = render(structured_payload(fmt="md"))
    text = rendered.data.decode()
    assert rendered.media_type.startswith("text/markdown") and rendered.filename.endswith(".md")
    assert text.startswith(f"# Quarterly report {UNICODE}\n")
    assert "\n## Introduction\n" in text and "\n### Details\n" in text
    assert "print('# not a heading')" in text


def test_markdown_content_gets_a_title_and_keeps_its_outline():
    payload = {"content": "# One\n\ntext\n\n# Two\n\n## Two a\n", "format": "markdown", "title": "Doc"}
    text = render(payload).data.decode()
    assert text.startswith("# Doc\n") and "\n## One\n" in text and "\n### Two a\n" in text
    lone = render({"content": "Title line\n=====\n\n## A\n\nbody", "format": "markdown"}).data.decode()
    assert lone.startswith("Title line\n=====")


def test_draft_has_no_toc_and_is_marked():
    html = render(structured_payload(fmt="html", quality_level="draft")).data.decode()
    assert '<nav class="toc"' not in html and 'class="theme-minimal draft"' in html
    forced = render(structured_payload(fmt="html", quality_level="draft", toc=True)).data.decode()
    assert '<nav class="toc"' in forced


def test_quality_score_reflects_structure():
    good = render(structured_payload(fmt="markdown")).quality
    weak = render({"content": {"title": "T", "sections": [{"heading": "Empty"}, {"heading": "Also empty"}]},
                   "format": "markdown"}).quality
    assert 0 < weak.score < good.score <= 1
    assert any("no content" in issue for issue in weak.issues)


@pytest.mark.parametrize("fmt", ["pdf", "docx", "pptx", "html", "markdown"])
def test_a_render_leaves_no_cycles_for_a_later_collection(fmt: str) -> None:
    """DOCX/PPTX/PDF graphs are cycles holding native memory: a served replica grew 290 -> 480 MiB over 500
    DOCX renders until the renderer collected them itself (business_modules/export/render_cycles.py)."""
    import gc

    payload = {"content": {"title": "Cycles", "sections": [{"heading": "S", "content": "- a\n- b\n\n| x | y |\n|--|--|\n| 1 | 2 |\n"}]},
               "format": fmt, "document_type": "report"}
    render(payload)
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()  # only the renderer's own collection may free its garbage
    try:
        render(payload)
        assert gc.collect() == 0
    finally:
        if enabled:
            gc.enable()
