"""A `Deck` as HTML (Jinja2, autoescaped), Markdown, plain text, and an Export request.

User and model text only ever enters as data: the HTML template autoescapes
every value (``{{ x }}`` typed by a user is output as text, never evaluated:
Jinja renders the template, not the values), the Markdown escapes CommonMark
punctuation with Export's `escape_inline`, so ``<script>`` stays text in the
PDF, PPTX and DOCX that Export renders from it. Charts are embedded as PNG
``data:`` URIs (drawn from the input's numbers, see `charts`).
"""

from __future__ import annotations

import base64
from datetime import datetime
from functools import lru_cache

import jinja2

from business_modules.export import ExportFormat, ExportRequest, RenderedDocument, render_document
from business_modules.export.kinds import DocumentType
from business_modules.export.markdown import escape_inline
from business_modules.export.themes import THEMES
from business_modules.gamma.charts import draw_chart
from business_modules.gamma.kinds import GammaFormat
from business_modules.gamma.models import Card, Deck

EXPORT_FORMATS = ("pdf", "pptx", "docx", "html", "markdown")
_DOCUMENT_TYPES = {GammaFormat.PRESENTATION: DocumentType.PRESENTATION, GammaFormat.DOCUMENT: DocumentType.REPORT,
                   GammaFormat.WEBPAGE: DocumentType.ARTICLE, GammaFormat.SOCIAL: DocumentType.OTHER}


@lru_cache(maxsize=1)
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("business_modules.gamma", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def chart_data_uri(card: Card, theme: str) -> str:
    assert card.chart is not None
    png = draw_chart(card.chart, fmt="png", colour=THEMES[theme].accent)
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(deck: Deck, *, language: str = "en") -> str:
    """A self-contained HTML page of the deck (inline CSS, charts as data URIs; blocking)."""
    charts = {card.index: chart_data_uri(card, deck.theme) for card in deck.cards if card.chart is not None}
    return _templates().get_template("deck.html.jinja").render(
        deck=deck, theme=THEMES[deck.theme], charts=charts, language=language)


def _md(text: str) -> str:
    return escape_inline(" ".join(text.split()))


def card_markdown(card: Card, *, theme: str, with_charts: bool = True) -> str:
    """The body of one card as Markdown (every user/model string escaped)."""
    out: list[str] = []
    if card.subtitle:
        out.append(f"*{_md(card.subtitle)}*")
    out += [escape_inline(p) for p in card.paragraphs]
    if card.bullets:
        out.append("\n".join(f"- {_md(b)}" for b in card.bullets))
    for column in card.columns:
        out.append(f"**{_md(column.heading)}**\n\n" + "\n".join(f"- {_md(i)}" for i in column.items))
    if card.quote:
        out.append(f"> {_md(card.quote)}" + (f"\n>\n> — {_md(card.attribution)}" if card.attribution else ""))
    if card.table is not None and card.table.columns:
        def row(cells: list[str]) -> str:
            return "| " + " | ".join(_md(c).replace("|", "\\|") or " " for c in cells) + " |"
        lines = [row(card.table.columns), "|" + "---|" * len(card.table.columns)]
        lines += [row(r) for r in card.table.rows]
        out.append("\n".join(lines))
    if card.chart is not None:
        if with_charts:
            out.append(f"![Chart of {_md(', '.join(card.chart.labels))}]({chart_data_uri(card, theme)})")
        out.append("Data from the input: " + "; ".join(_md(s) for s in card.chart.source))
    return "\n\n".join(out)


def render_markdown(deck: Deck, *, with_charts: bool = False) -> str:
    parts = [f"# {_md(deck.title)}"]
    for card in deck.cards:
        parts.append(f"## {_md(card.heading)}")
        body = card_markdown(card, theme=deck.theme, with_charts=with_charts)
        if body:
            parts.append(body)
    return "\n\n".join(parts) + "\n"


def render_text(deck: Deck) -> str:
    lines = [deck.title, ""]
    for card in deck.cards:
        lines += [card.heading, *card.texts(), ""]
    return "\n".join(lines)


def export_request(deck: Deck, fmt: str, *, language: str = "en") -> ExportRequest:
    """The Export request that renders the deck as ``fmt`` (one section per card, the deck's theme)."""
    sections = [{"heading": card.heading, "content": card_markdown(card, theme=deck.theme) or " "}
                for card in deck.cards]
    return ExportRequest.model_validate({
        "content": {"title": " ".join(deck.title.split()), "sections": sections},
        "format": fmt,
        "document_type": _DOCUMENT_TYPES[deck.format].value,
        "theme": deck.theme,
        "toc": False,
        "metadata": {"language": language},
    })


def export_deck(deck: Deck, fmt: str, *, now: datetime, language: str = "en") -> RenderedDocument:
    """The deck rendered by Export's renderer (blocking: run it in a thread)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {list(EXPORT_FORMATS)}")
    return render_document(export_request(deck, fmt, language=language), now=now)


__all__ = ["EXPORT_FORMATS", "ExportFormat", "export_deck", "export_request", "render_html", "render_markdown",
           "render_text"]
