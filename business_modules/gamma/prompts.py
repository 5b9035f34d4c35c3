"""Prompts and answer schemas, laid out for KV-cache reuse.

Every call of one generation is ``[system: INSTRUCTIONS] [user: shared part + ask]``:
the fixed instructions first (the same for every call of every tenant), then
the shared part (format, tone, audience, the user's input, and for card calls
the outline), then the call's own ask. All card calls of a generation share
everything up to their ask, so after the first card only the ask is prefilled.

Schemas bound every string (``maxLength``) and array (``maxItems``): output is
grammar-enforced, and a small model that is never told to stop writes until
``max_tokens``.
"""

from __future__ import annotations

from typing import Any

from business_modules.gamma import constants as C
from business_modules.gamma.kinds import LLM_LAYOUTS, Layout, TextMode
from business_modules.gamma.models import GenerationPlan
from business_modules.llm_client import ChatMessage

INSTRUCTIONS = (
    "You write the cards of presentations, documents, web pages and social posts for businesses. "
    "Each card has one short heading and a little body text in the layout it is given. "
    "Write plain text: no Markdown, no HTML, no code. Use only facts from the user's input; "
    "never invent figures, names or dates. Answer with JSON matching the schema."
)

_MODE_ASK = {
    TextMode.GENERATE: "Expand the input into clear, complete cards.",
    TextMode.CONDENSE: "Condense the input: keep its key points, drop the rest.",
}


def _string(max_length: int) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_length}


def _list(max_length: int, max_items: int, min_items: int = 1) -> dict[str, Any]:
    return {"type": "array", "items": _string(max_length), "minItems": min_items, "maxItems": max_items}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def outline_schema(num_cards: int) -> dict[str, Any]:
    card = _object({"heading": _string(C.MAX_HEADING_CHARS),
                    "layout": {"type": "string", "enum": [layout.value for layout in LLM_LAYOUTS]}})
    return _object({"title": _string(C.MAX_TITLE_CHARS),
                    "cards": {"type": "array", "items": card, "minItems": num_cards, "maxItems": num_cards}})


def outline_max_tokens(num_cards: int, limit: int) -> int:
    """Tokens the outline of ``num_cards`` may need: its longest JSON in characters, at most ``limit``."""
    return min(limit, 32 + C.MAX_TITLE_CHARS + num_cards * (C.MAX_HEADING_CHARS + 40))


CARD_SCHEMAS: dict[Layout, dict[str, Any]] = {
    Layout.TITLE: _object({"subtitle": _string(C.MAX_BULLET_CHARS)}),
    Layout.BULLETS: _object({"bullets": _list(C.MAX_BULLET_CHARS, C.MAX_BULLETS, 2)}),
    Layout.TWO_COLUMNS: _object({"left_heading": _string(40), "left": _list(C.MAX_COLUMN_ITEM_CHARS, 3),
                                 "right_heading": _string(40), "right": _list(C.MAX_COLUMN_ITEM_CHARS, 3)}),
    Layout.QUOTE: _object({"quote": _string(C.MAX_QUOTE_CHARS), "attribution": _string(60)}),
    Layout.TABLE: _object({"columns": _list(C.MAX_TABLE_CELLS_CHARS, C.MAX_TABLE_COLUMNS, 2),
                           "rows": {"type": "array", "items": _list(C.MAX_TABLE_CELLS_CHARS, C.MAX_TABLE_COLUMNS, 2),
                                    "minItems": 1, "maxItems": C.MAX_TABLE_ROWS}}),
    Layout.CHART: _object({"caption": _string(C.MAX_BULLET_CHARS)}),
}

_LAYOUT_ASK = {
    Layout.TITLE: "a subtitle of one sentence",
    Layout.BULLETS: f"two to {C.MAX_BULLETS} bullet points",
    Layout.TWO_COLUMNS: "two columns, each with a heading and up to three points",
    Layout.QUOTE: "one quotable sentence from the input and who said it (or 'the team')",
    Layout.TABLE: "a small table: column names and up to three rows of short cells",
    Layout.CHART: "a one-sentence caption for a chart of the input's numbers (the numbers are drawn for you)",
}


def shared_part(plan: GenerationPlan) -> str:
    """What every call of this generation repeats after the instructions, in a fixed order."""
    lines = [
        f"Format: {plan.format.value}. Language: {plan.language}. Amount of text: {plan.amount.value}.",
        f"Tone: {plan.tone or 'neutral'}. Audience: {plan.audience or 'general business readers'}.",
        _MODE_ASK.get(plan.text_mode, ""),
        "",
        "Input:",
        plan.input_text,
    ]
    return "\n".join(lines)


def outline_messages(plan: GenerationPlan, num_cards: int) -> list[ChatMessage]:
    ask = (f"\n\nTask: give the {plan.format.value} a title and exactly {num_cards} cards, "
           "each with a heading and a layout.")
    return [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": shared_part(plan) + ask}]


def card_messages(plan: GenerationPlan, *, title: str, headings: list[str], index: int, layout: Layout,
                  source: str | None = None) -> list[ChatMessage]:
    outline = "\n".join(f"{i + 1}. {heading}" for i, heading in enumerate(headings))
    ask = f"\n\nTitle: {title}\nCards:\n{outline}\n\nTask: write card {index + 1} ({headings[index]}): "
    ask += _LAYOUT_ASK[layout] + "."
    if source:
        ask += f"\nThis card covers this part of the input:\n{source}"
    return [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": shared_part(plan) + ask}]
