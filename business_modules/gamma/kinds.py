"""The closed sets of Gamma: formats, text modes, card splits, layouts, content types, job states."""

from __future__ import annotations

import enum

from business_modules.export.kinds import JobStatus  # noqa: F401 - one job lifecycle for Export and Gamma


class GammaFormat(str, enum.Enum):
    """What is generated (Gamma's ``format``)."""

    PRESENTATION = "presentation"
    DOCUMENT = "document"
    WEBPAGE = "webpage"
    SOCIAL = "social"


class TextMode(str, enum.Enum):
    """``generate`` expands the input, ``condense`` shortens it, ``preserve`` keeps it verbatim (no LLM)."""

    GENERATE = "generate"
    CONDENSE = "condense"
    PRESERVE = "preserve"


class CardSplit(str, enum.Enum):
    """``auto``: the outline (or, in preserve mode, the paragraphs) decide; ``inputTextBreaks``: one card per
    part of the input between lines ``---``."""

    AUTO = "auto"
    INPUT_TEXT_BREAKS = "inputTextBreaks"


class TextAmount(str, enum.Enum):
    BRIEF = "brief"
    MEDIUM = "medium"
    DETAILED = "detailed"
    EXTENSIVE = "extensive"

    @property
    def words_per_card(self) -> int:
        return {"brief": 30, "medium": 60, "detailed": 100, "extensive": 150}[self.value]


class Layout(str, enum.Enum):
    """How one card is laid out. ``text`` holds the user's own paragraphs (preserve mode)."""

    TITLE = "title"
    BULLETS = "bullets"
    TWO_COLUMNS = "two_columns"
    QUOTE = "quote"
    TABLE = "table"
    CHART = "chart"
    TEXT = "text"


LLM_LAYOUTS = (Layout.TITLE, Layout.BULLETS, Layout.TWO_COLUMNS, Layout.QUOTE, Layout.TABLE)
"""Layouts the outline may pick; a chart is only placed where the input has numbers."""


class ContentType(str, enum.Enum):
    """The original ``/content/generate`` content types, each generated as one Gamma format."""

    PRESENTATION = "presentation"
    DOCUMENT = "document"
    WEB_PAGE = "web_page"
    BLOG_POST = "blog_post"
    EMAIL = "email"
    REPORT = "report"
    SOCIAL_POST = "social_post"

    @property
    def format(self) -> GammaFormat:
        return _CONTENT_FORMATS[self]


_CONTENT_FORMATS = {
    ContentType.PRESENTATION: GammaFormat.PRESENTATION,
    ContentType.DOCUMENT: GammaFormat.DOCUMENT,
    ContentType.REPORT: GammaFormat.DOCUMENT,
    ContentType.WEB_PAGE: GammaFormat.WEBPAGE,
    ContentType.BLOG_POST: GammaFormat.WEBPAGE,
    ContentType.EMAIL: GammaFormat.SOCIAL,
    ContentType.SOCIAL_POST: GammaFormat.SOCIAL,
}


class ContentLength(str, enum.Enum):
    SHORT = "short"
    MEDIUM = "medium"
    LONG = "long"

    @property
    def num_cards(self) -> int:
        return {"short": 3, "medium": 5, "long": 8}[self.value]

    @property
    def amount(self) -> TextAmount:
        return {"short": TextAmount.BRIEF, "medium": TextAmount.MEDIUM, "long": TextAmount.DETAILED}[self.value]


class OutputFormat(str, enum.Enum):
    """Form of ``content`` in the original answer."""

    HTML = "html"
    MARKDOWN = "markdown"
    TEXT = "text"
