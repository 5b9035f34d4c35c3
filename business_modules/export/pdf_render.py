"""PDF output: the themed HTML page laid out by WeasyPrint.

WeasyPrint takes the PDF Title/Author/Subject/Keywords/CreationDate from the
page's ``<title>`` and ``<meta>`` elements, bookmarks from the headings, page
numbers from the theme's ``@page`` counters and TOC page numbers from
``target-counter()``. It is given a fetcher that serves ``data:`` URIs only, so
no URL in user content is ever fetched (and rendering never waits on one).
"""

from __future__ import annotations

import logging

import weasyprint
from weasyprint.urls import URLFetcher

from business_modules.export.errors import RenderError
from business_modules.export.markdown import ParsedDocument
from business_modules.export.html_render import render_html
from business_modules.export.source import SourceDocument

# WeasyPrint logs every refused fetch and unsupported CSS property at WARNING;
# those are expected for untrusted content, not operational problems.
logging.getLogger("weasyprint").setLevel(logging.ERROR)


class DataOnlyURLFetcher(URLFetcher):
    """Serves ``data:`` URIs; refuses every other scheme without touching the network."""

    def __init__(self) -> None:
        super().__init__(timeout=1, allowed_protocols={"data"}, allow_redirects=False, fail_on_errors=False)
        self.refused: list[str] = []

    def fetch(self, url: str, headers: dict | None = None):  # type: ignore[override]
        if not url.lower().startswith("data:"):
            self.refused.append(url[:200])
            raise ValueError(f"external resources are not fetched: {url[:80]}")
        return super().fetch(url, headers)


def render_pdf(source: SourceDocument, parsed: ParsedDocument | None = None) -> bytes:
    """PDF bytes of the document."""
    html = render_html(source, parsed)
    fetcher = DataOnlyURLFetcher()
    try:
        return weasyprint.HTML(string=html, base_url=None, url_fetcher=fetcher).write_pdf()
    except (ValueError, TypeError, OSError, AssertionError) as exc:
        raise RenderError(f"PDF rendering failed: {exc}") from exc
