"""From a `GenerationPlan` to a `Deck`: the outline, then one LLM call per card.

``preserve`` mode makes no LLM call: the user's text is split into cards
(``inputTextBreaks``: at lines ``---``; ``auto``: blank-line paragraphs
grouped into ``numCards`` cards) and kept verbatim; a card's heading is its
first line when that is a Markdown heading or a one-line paragraph of at most
`MAX_HEADING_CHARS` followed by more text, else ``Part <n>``. The other modes ask the
LLM for an outline (title, heading and layout per card) and then each card's
body under its layout's schema. A chart is placed only where `find_series`
found numbers in the input, and its data always comes from there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from business_modules.gamma import constants as C
from business_modules.gamma import prompts
from business_modules.gamma.charts import find_series
from business_modules.gamma.errors import GenerationOutputError
from business_modules.gamma.kinds import CardSplit, Layout, TextMode
from business_modules.gamma.models import Card, Chart, Column, Deck, GenerationPlan, Table
from business_modules.llm_client import Generation, LLMClient, LLMRequestSpec

_BREAK = re.compile(r"\n[ \t]*---[ \t]*\n")
_BLANK = re.compile(r"\n[ \t]*\n")
_MD_HEADING = re.compile(r"^#{1,6}\s+")


@dataclass(slots=True)
class Usage:
    """Token counts summed over a generation's LLM calls."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def add(self, generation: Generation) -> None:
        self.calls += 1
        self.prompt_tokens += generation.usage.prompt_tokens
        self.completion_tokens += generation.usage.completion_tokens
        self.cached_tokens += generation.usage.cached_tokens


class _OutlineCard(BaseModel):
    heading: str
    layout: Layout


class _Outline(BaseModel):
    title: str
    cards: list[_OutlineCard]


def split_breaks(text: str) -> list[str]:
    """The parts of ``text`` between lines that hold only ``---`` (empty parts dropped)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return [part.strip("\n") for part in _BREAK.split("\n" + text + "\n") if part.strip()]


def _group(paragraphs: list[str], groups: int) -> list[list[str]]:
    """Consecutive paragraphs in at most ``groups`` groups of near-equal count."""
    groups = max(1, min(groups, len(paragraphs)))
    size, extra = divmod(len(paragraphs), groups)
    out, start = [], 0
    for i in range(groups):
        end = start + size + (1 if i < extra else 0)
        out.append(paragraphs[start:end])
        start = end
    return out


def preserve_cards(plan: GenerationPlan, chart: Chart | None) -> list[Card]:
    """Cards that hold the user's text verbatim (no LLM)."""
    text = plan.input_text.replace("\r\n", "\n").replace("\r", "\n")
    if plan.card_split is CardSplit.INPUT_TEXT_BREAKS:
        chunks = [[p for p in _BLANK.split(part) if p.strip()] for part in split_breaks(text)]
    else:
        chunks = _group([p.strip("\n") for p in _BLANK.split(text) if p.strip()], plan.num_cards)
    cards = []
    for index, paragraphs in enumerate(chunks):
        first, _, rest = paragraphs[0].partition("\n")
        if _MD_HEADING.match(first):
            heading, paragraphs = _MD_HEADING.sub("", first).strip(), ([rest] if rest.strip() else []) + paragraphs[1:]
        elif not rest.strip() and len(first) <= C.MAX_HEADING_CHARS and len(paragraphs) > 1:
            heading, paragraphs = first.strip(), paragraphs[1:]  # a short first paragraph of one line
        else:
            heading = f"Part {index + 1}"
        card = Card(index=index, layout=Layout.TEXT, heading=heading or f"Part {index + 1}", paragraphs=paragraphs)
        if chart is not None and any(chart.source[0] in p for p in paragraphs + [first]):
            card = card.model_copy(update={"layout": Layout.CHART, "chart": chart})
            chart = None
        cards.append(card)
    return cards


async def _ask(llm: LLMClient, messages: list, schema: dict[str, Any], *, max_tokens: int, tenant: str | None,
               timeout_s: float, usage: Usage, what: str) -> dict[str, Any]:
    generation = await llm.generate(LLMRequestSpec(
        messages=messages, json_schema=schema, schema_name=what.replace(" ", "_"), max_tokens=max_tokens,
        temperature=0.0, tenant_id=tenant, timeout_s=timeout_s))
    usage.add(generation)
    try:
        answer = generation.json()
    except ValueError as exc:
        reason = "it was cut at max_tokens" if generation.finish_reason == "length" else "it is not JSON"
        raise GenerationOutputError(f"the LLM's answer for the {what} does not match its schema: {reason}") from exc
    if not isinstance(answer, dict):
        raise GenerationOutputError(f"the LLM's answer for the {what} is not a JSON object")
    return answer


def _strings(value: Any, limit: int, max_items: int) -> list[str]:
    if not isinstance(value, list):
        return []
    return [" ".join(str(v).split())[:limit] for v in value if str(v).strip()][:max_items]


def _text(value: Any, limit: int) -> str:
    return " ".join(str(value or "").split())[:limit]


def _fill(card: Card, answer: dict[str, Any]) -> Card:
    """The card with the body the LLM wrote for its layout (bounded, whitespace-normalised)."""
    update: dict[str, Any] = {}
    if card.layout is Layout.TITLE:
        update["subtitle"] = _text(answer.get("subtitle"), C.MAX_BULLET_CHARS)
    elif card.layout is Layout.BULLETS:
        update["bullets"] = _strings(answer.get("bullets"), C.MAX_BULLET_CHARS, C.MAX_BULLETS)
    elif card.layout is Layout.TWO_COLUMNS:
        update["columns"] = [
            Column(heading=_text(answer.get(f"{side}_heading"), 40),
                   items=_strings(answer.get(side), C.MAX_COLUMN_ITEM_CHARS, 3))
            for side in ("left", "right")
        ]
    elif card.layout is Layout.QUOTE:
        update["quote"] = _text(answer.get("quote"), C.MAX_QUOTE_CHARS)
        update["attribution"] = _text(answer.get("attribution"), 60)
    elif card.layout is Layout.TABLE:
        columns = _strings(answer.get("columns"), C.MAX_TABLE_CELLS_CHARS, C.MAX_TABLE_COLUMNS) or ["", ""]
        rows = [(_strings(row, C.MAX_TABLE_CELLS_CHARS, len(columns)) + [""] * len(columns))[: len(columns)]
                for row in (answer.get("rows") or [])[: C.MAX_TABLE_ROWS] if isinstance(row, list)]
        update["table"] = Table(columns=columns, rows=rows)
    elif card.layout is Layout.CHART:
        update["subtitle"] = _text(answer.get("caption"), C.MAX_BULLET_CHARS)
    return card.model_copy(update=update)


async def build_deck(plan: GenerationPlan, *, llm: LLMClient, tenant: str | None,
                     timeout_s: float = C.LLM_CALL_TIMEOUT_S, outline_max_tokens: int = C.OUTLINE_MAX_TOKENS,
                     card_max_tokens: int = C.CARD_MAX_TOKENS) -> tuple[Deck, Usage]:
    """The cards of ``plan``; raises `LLMError` or `GenerationOutputError` when the LLM fails."""
    usage = Usage()
    chart = find_series(plan.input_text)
    if plan.text_mode is TextMode.PRESERVE:
        cards = preserve_cards(plan, chart)
        title = plan.title_hint or cards[0].heading
        return Deck(title=title, format=plan.format, theme=plan.theme, cards=cards), usage

    parts = split_breaks(plan.input_text) if plan.card_split is CardSplit.INPUT_TEXT_BREAKS else []
    num_cards = min(len(parts), C.MAX_CARDS) if parts else plan.num_cards
    raw = await _ask(llm, prompts.outline_messages(plan, num_cards), prompts.outline_schema(num_cards),
                     max_tokens=prompts.outline_max_tokens(num_cards, outline_max_tokens), tenant=tenant, timeout_s=timeout_s, usage=usage, what="outline")
    try:
        outline = _Outline.model_validate(raw)
    except ValidationError as exc:
        raise GenerationOutputError(f"the LLM's outline does not match its schema: {exc.errors()[0]['msg']}") from exc
    entries = outline.cards[:num_cards]
    if len(entries) < num_cards:
        raise GenerationOutputError(f"the LLM's outline has {len(entries)} cards, not {num_cards}")
    headings = [_text(e.heading, C.MAX_HEADING_CHARS) or f"Card {i + 1}" for i, e in enumerate(entries)]
    layouts = [e.layout if e.layout is not Layout.CHART else Layout.BULLETS for e in entries]
    if chart is not None:
        layouts[-1 if num_cards > 1 else 0] = Layout.CHART
    title = plan.title_hint or _text(outline.title, C.MAX_TITLE_CHARS) or headings[0]

    cards = []
    for index, (heading, layout) in enumerate(zip(headings, layouts)):
        card = Card(index=index, layout=layout, heading=heading, chart=chart if layout is Layout.CHART else None)
        answer = await _ask(
            llm,
            prompts.card_messages(plan, title=title, headings=headings, index=index, layout=layout,
                                  source=parts[index] if parts else None),
            prompts.CARD_SCHEMAS[layout], max_tokens=card_max_tokens, tenant=tenant, timeout_s=timeout_s,
            usage=usage, what=f"card {index + 1}")
        cards.append(_fill(card, answer))
    return Deck(title=title, format=plan.format, theme=plan.theme, cards=cards), usage
