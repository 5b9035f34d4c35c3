"""Typed input and output of Gamma: what callers send (validated once at the edge) and the cards made.

`GenerationRequest` mirrors Gamma's public generations API (camelCase names);
`ContentRequest` is the original ``/content/generate`` body. Both become one
`GenerationPlan`, which is what a job runs.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from business_modules.export.themes import THEMES
from business_modules.gamma import constants as C
from business_modules.gamma.kinds import (
    CardSplit,
    ContentLength,
    ContentType,
    GammaFormat,
    Layout,
    OutputFormat,
    TextAmount,
    TextMode,
)

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _strip_controls(value: str) -> str:
    return _CONTROL_CHARS.sub("", value)


CleanStr = Annotated[str, AfterValidator(_strip_controls)]
ShortStr = Annotated[CleanStr, Field(max_length=C.MAX_SHORT_FIELD_CHARS)]
LANGUAGE_PATTERN = r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$"


def _known_theme(value: str | None) -> str | None:
    if value is None:
        return None
    name = value.strip().lower()
    if name not in THEMES:
        raise ValueError(f"unknown theme {value!r}; choose one of {sorted(THEMES)} (GET /themes)")
    return name


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


ThemeName = Annotated[str | None, AfterValidator(_known_theme)]


class TextOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: TextAmount = TextAmount.MEDIUM
    tone: ShortStr | None = None
    audience: ShortStr | None = None
    language: str = Field("en", pattern=LANGUAGE_PATTERN)


class GenerationRequest(BaseModel):
    """``POST /generations``: Gamma's public API shape."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    input_text: Annotated[CleanStr, AfterValidator(_not_blank)] = Field(
        alias="inputText", min_length=1, max_length=C.MAX_INPUT_CHARS)
    format: GammaFormat = GammaFormat.PRESENTATION
    text_mode: TextMode = Field(TextMode.GENERATE, alias="textMode")
    num_cards: int = Field(C.DEFAULT_NUM_CARDS, alias="numCards", ge=1, le=C.MAX_CARDS, strict=True)
    card_split: CardSplit = Field(CardSplit.AUTO, alias="cardSplit")
    text_options: TextOptions = Field(default_factory=TextOptions, alias="textOptions")
    theme_id: ThemeName = Field(None, alias="themeId")
    export_as: str | None = Field(None, alias="exportAs", pattern="^(pdf|pptx)$")


class ContentRequest(BaseModel):
    """``POST /content/generate``: the original Gamma App body."""

    model_config = ConfigDict(extra="forbid")

    content_type: ContentType
    topic: Annotated[ShortStr, AfterValidator(_not_blank)] = Field(min_length=1)
    description: Annotated[CleanStr, AfterValidator(_not_blank)] = Field(
        min_length=1, max_length=C.MAX_DESCRIPTION_CHARS)
    target_audience: Annotated[ShortStr, AfterValidator(_not_blank)] = Field(min_length=1)
    length: ContentLength = ContentLength.MEDIUM
    style: ShortStr | None = "professional"
    output_format: OutputFormat = OutputFormat.HTML
    tone: ShortStr | None = None
    keywords: list[Annotated[CleanStr, Field(min_length=1, max_length=C.MAX_KEYWORD_CHARS)]] = Field(
        default_factory=list, max_length=C.MAX_KEYWORDS)
    theme: ThemeName = None
    language: str = Field("en", pattern=LANGUAGE_PATTERN)

    @field_validator("keywords")
    @classmethod
    def _dedupe(cls, value: list[str]) -> list[str]:
        seen: dict[str, None] = {}
        for keyword in value:
            keyword = " ".join(keyword.split())
            if keyword:
                seen.setdefault(keyword, None)
        return list(seen)


class GenerationPlan(BaseModel):
    """What one job generates; both request shapes map onto it."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="'generation' or 'content'")
    input_text: str
    format: GammaFormat
    text_mode: TextMode
    num_cards: int
    card_split: CardSplit
    amount: TextAmount
    tone: str | None = None
    audience: str | None = None
    language: str = "en"
    theme: str = "professional"
    export_as: str | None = None
    title_hint: str | None = None
    keywords: list[str] = Field(default_factory=list)
    target_words: int = Field(description="Words the whole result should have (length score).")
    content_type: ContentType | None = None
    output_format: OutputFormat = OutputFormat.HTML

    @classmethod
    def from_generation(cls, request: GenerationRequest) -> GenerationPlan:
        opts = request.text_options
        return cls(kind="generation", input_text=request.input_text, format=request.format,
                   text_mode=request.text_mode, num_cards=request.num_cards, card_split=request.card_split,
                   amount=opts.amount, tone=opts.tone, audience=opts.audience, language=opts.language,
                   theme=request.theme_id or "professional", export_as=request.export_as,
                   target_words=request.num_cards * opts.amount.words_per_card)

    @classmethod
    def from_content(cls, request: ContentRequest) -> GenerationPlan:
        lines = [f"Topic: {request.topic}", f"Audience: {request.target_audience}"]
        if request.keywords:
            lines.append("Keywords: " + ", ".join(request.keywords))
        lines += ["", request.description]
        amount = request.length.amount
        num_cards = request.length.num_cards
        return cls(kind="content", input_text="\n".join(lines), format=request.content_type.format,
                   text_mode=TextMode.GENERATE, num_cards=num_cards, card_split=CardSplit.AUTO, amount=amount,
                   tone=" ".join(p for p in (request.style, request.tone) if p) or None,
                   audience=request.target_audience, language=request.language,
                   theme=request.theme or "professional", title_hint=request.topic, keywords=request.keywords,
                   target_words=num_cards * amount.words_per_card, content_type=request.content_type,
                   output_format=request.output_format)


class Column(BaseModel):
    heading: str
    items: list[str]


class Table(BaseModel):
    columns: list[str]
    rows: list[list[str]]


class Chart(BaseModel):
    """A bar chart of numbers found in the user's input (never the model's)."""

    labels: list[str]
    values: list[float]
    unit: str = ""
    source: list[str] = Field(description="The input lines the points were read from, verbatim.")


class Card(BaseModel):
    """One card (slide, document section, web page block, social post)."""

    index: int
    layout: Layout
    heading: str
    subtitle: str | None = None
    bullets: list[str] = Field(default_factory=list)
    paragraphs: list[str] = Field(default_factory=list)
    columns: list[Column] = Field(default_factory=list)
    quote: str | None = None
    attribution: str | None = None
    table: Table | None = None
    chart: Chart | None = None

    def texts(self) -> list[str]:
        """Every piece of body text of the card (for scoring and plain text)."""
        out = [t for t in (self.subtitle, self.quote, self.attribution) if t]
        out += self.bullets + self.paragraphs
        for column in self.columns:
            out += [column.heading, *column.items]
        if self.table is not None:
            out += self.table.columns + [cell for row in self.table.rows for cell in row]
        if self.chart is not None:
            out += self.chart.source
        return out


class Deck(BaseModel):
    """The cards of a finished generation."""

    title: str
    format: GammaFormat
    theme: str
    cards: list[Card]
