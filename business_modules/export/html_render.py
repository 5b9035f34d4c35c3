"""HTML output: sanitised body, theme CSS, table of contents and metadata.

The same page feeds WeasyPrint for PDF (`pdf_render`), so the print rules of
the theme (page counters, TOC page numbers) live in the one stylesheet.
"""

from __future__ import annotations

import re
from functools import lru_cache

import jinja2
from markupsafe import Markup

from business_modules.export.markdown import PARSER, ParsedDocument, parse_document
from business_modules.export.outline import toc_entries
from business_modules.export.sanitize import sanitize_html
from business_modules.export.source import SourceDocument

GENERATOR = "Blatam Export"
_OL_START = re.compile(r'<ol start="(\d+)">')
TOC_TITLE = "Contents"


@lru_cache(maxsize=1)
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("business_modules.export", "templates"),
        autoescape=lambda name: bool(name) and name.endswith(".html.jinja"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=False,
    )


def render_css(source: SourceDocument) -> str:
    """The theme stylesheet for this document's options."""
    opts = source.options
    return _templates().get_template("theme.css.jinja").render(
        theme=opts.theme, page_numbers=opts.page_numbers, draft=opts.draft
    )


def render_html(source: SourceDocument, parsed: ParsedDocument | None = None) -> str:
    """A complete, self-contained HTML page (inline CSS, no external resources)."""
    parsed = parsed or parse_document(source.markdown)
    env: dict = {}
    title_html = sanitize_html(PARSER.renderer.render(parsed.tokens[:3], PARSER.options, env))
    body_html = _numbered_lists(sanitize_html(PARSER.renderer.render(parsed.body_tokens, PARSER.options, env)))
    meta = source.metadata
    byline = " · ".join(part for part in (meta.author, meta.created.date().isoformat()) if part)
    return _templates().get_template("document.html.jinja").render(
        meta=meta,
        created=meta.created.isoformat(timespec="seconds"),
        generator=GENERATOR,
        css=Markup(render_css(source)),  # trusted: our template filled with theme constants
        theme=source.options.theme,
        draft=source.options.draft,
        title_html=Markup(title_html),
        body_html=Markup(body_html),
        byline=byline,
        toc=toc_entries(parsed) if source.options.toc else [],
        toc_title=TOC_TITLE,
    )


def _numbered_lists(html: str) -> str:
    """Mirror ``<ol start>`` as a ``list-item`` counter reset: WeasyPrint ignores
    the attribute, browsers honour both the same way. Runs after sanitising, on
    integers the sanitiser already checked."""
    return _OL_START.sub(lambda m: f'<ol start="{m[1]}" style="counter-reset: list-item {int(m[1]) - 1}">', html)
