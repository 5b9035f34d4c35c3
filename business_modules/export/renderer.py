"""One entry point from a validated request to the bytes of the file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from business_modules.export.docx_render import render_docx
from business_modules.export.errors import RenderError
from business_modules.export.html_render import render_html
from business_modules.export.markdown import ParsedDocument, parse_document
from business_modules.export.kinds import ExportFormat
from business_modules.export.models import ExportRequest
from business_modules.export.pdf_render import render_pdf
from business_modules.export.pptx_render import render_pptx
from business_modules.export.quality import QualityReport, assess
from business_modules.export.render_cycles import collect_render_cycles
from business_modules.export.source import SourceDocument, build_source


@dataclass(frozen=True, slots=True)
class RenderedDocument:
    data: bytes
    media_type: str
    filename: str
    quality: QualityReport


def _markdown(source: SourceDocument, parsed: ParsedDocument) -> bytes:
    # Passthrough: the normalised source, raw HTML included (it is the
    # caller's own Markdown; HTML and PDF are where it gets sanitised).
    return source.markdown.encode("utf-8")


def _html(source: SourceDocument, parsed: ParsedDocument) -> bytes:
    return render_html(source, parsed).encode("utf-8")


RENDERERS: dict[ExportFormat, Callable[[SourceDocument, ParsedDocument], bytes]] = {
    ExportFormat.PDF: render_pdf,
    ExportFormat.DOCX: render_docx,
    ExportFormat.PPTX: render_pptx,
    ExportFormat.HTML: _html,
    ExportFormat.MARKDOWN: _markdown,
}


def render_document(request: ExportRequest, *, now: datetime) -> RenderedDocument:
    """Render ``request`` in its format (blocking: run it in a worker thread).

    ``now`` fills a missing ``metadata.created``. Raises `RenderError` when a
    renderer fails on validated content.
    """
    source = build_source(request, now=now)
    parsed = parse_document(source.markdown)
    renderer = RENDERERS[source.options.format]
    try:
        data = renderer(source, parsed)
    except RenderError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OSError) as exc:
        raise RenderError(f"{source.options.format.value} rendering failed: {type(exc).__name__}: {exc}") from exc
    finally:
        collect_render_cycles(source.options.format)
    return RenderedDocument(
        data=data,
        media_type=source.options.format.media_type,
        filename=source.filename,
        quality=assess(parsed, source.metadata),
    )


@dataclass(frozen=True, slots=True)
class DocumentPreview:
    """What rendering a request would produce, without rendering it."""

    title: str
    sections: list[str]
    filename: str
    theme: str
    toc: bool
    quality: QualityReport


def preview_document(request: ExportRequest, *, now: datetime) -> DocumentPreview:
    """Normalise and assess ``request`` (cheap: no layout, no file)."""
    source = build_source(request, now=now)
    parsed = parse_document(source.markdown)
    top = parsed.section_level
    return DocumentPreview(
        title=source.metadata.title,
        sections=[h.text for h in parsed.headings if h.level == top],
        filename=source.filename,
        theme=source.options.theme.name,
        toc=source.options.toc,
        quality=assess(parsed, source.metadata),
    )
