"""The 20 fixed prompts of `blatam bench quality`, as data.

Questions a small business would ask an assistant. Three system prompts are
each shared by several prompts, in the order below, so every prompt after the
first of its system prompt can start from cached KV blocks. Each shared system
prompt is a few hundred tokens of a real tokenizer (and ~1 KB of the demo
model's bytes): several 64-token blocks, the default block size, so the cache
hits on a server with default settings too. Five prompts ask for JSON under a
``json_schema`` response format.

Changing a prompt changes every figure of the benchmark: add new ones at the
end under new ids, and keep the ids of the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["chat", "json"]

SYSTEMS: dict[str, str] = {
    "bakery": (
        "You are the business assistant of Crumb & Co., a small neighbourhood bakery and coffee shop in Leeds, "
        "England. The owner, Maya, runs it with four part-time staff. The shop opens from 7am to 4pm, Tuesday to "
        "Sunday. It sells sourdough bread, pastries, celebration cakes to order, and espresso drinks made with "
        "beans from a local roaster. Monthly revenue is about 28,000 pounds, with rent of 2,400 pounds, wages of "
        "9,500 pounds and ingredients of about 7,000 pounds. Most customers are local families and office workers; "
        "weekend mornings are the busiest time and Tuesday afternoons the quietest. Maya wants to grow steadily "
        "without taking on debt. Answer in clear, friendly British English, be concrete and practical, use short "
        "paragraphs or short lists, and keep every answer brief."
    ),
    "plumbing": (
        "You are an operations consultant for Northwind Plumbing, a family-owned plumbing and heating company "
        "with twelve employees: eight field technicians, two office coordinators, one estimator and the owner, "
        "Daniel. The company serves homeowners and small landlords, handles emergency call-outs around the clock, "
        "and installs boilers and bathrooms. Jobs are booked by phone and through a web form, scheduled in a shared "
        "calendar, and invoiced after completion with 30-day payment terms. Margins have fallen over the last year "
        "because material prices rose and some invoices are paid late. Daniel wants simple, low-cost changes that "
        "his team can adopt quickly. Give direct, practical advice in plain English, and keep every answer short."
    ),
    "json": (
        "You are a planning assistant for small businesses. You always answer with a single JSON object that "
        "matches the JSON schema you are given, and nothing else: no introduction, no explanation, no Markdown "
        "code fences. Write every string value as plain English. Keep titles under eight words. Each bullet is "
        "one short, concrete action or point of at most twelve words, written as a sentence fragment that starts "
        "with a capital letter. Prefer three or four bullets. Think about what a busy owner of a small business "
        "with a handful of staff and a tight budget can actually do this month. Never repeat a bullet, and never "
        "leave a string empty."
    ),
}
"""Shared system prompts by id (each used by several prompts; the first use fills the cache)."""

TITLE_BULLETS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 1, "maxLength": 60},
        "bullets": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 80},
                    "minItems": 1, "maxItems": 5},
    },
    "required": ["title", "bullets"],
    "additionalProperties": False,
}

EMAIL: dict[str, Any] = {
    "type": "object",
    "properties": {
        "subject": {"type": "string", "minLength": 1, "maxLength": 80},
        "body": {"type": "string", "minLength": 1, "maxLength": 300},
    },
    "required": ["subject", "body"],
    "additionalProperties": False,
}

SCHEMAS: dict[str, dict[str, Any]] = {"title_bullets": TITLE_BULLETS, "email": EMAIL}
"""JSON schemas by name (the name goes to ``response_format.json_schema.name``)."""

JSON_MAX_TOKENS = 160
"""Output budget of the JSON prompts: a schema's longest answer (~100 tokens) must fit, or "length" cuts valid JSON."""


@dataclass(frozen=True, slots=True)
class QualityPrompt:
    """One prompt: ``kind`` "json" prompts carry a schema name; ``max_tokens`` None takes the run's default."""

    id: str
    kind: Kind
    user: str
    system_id: str | None = None
    schema_name: str | None = None
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.system_id is not None and self.system_id not in SYSTEMS:
            raise ValueError(f"prompt {self.id!r}: unknown system prompt {self.system_id!r}")
        if (self.kind == "json") != (self.schema_name is not None):
            raise ValueError(f"prompt {self.id!r}: a json prompt needs a schema, a chat prompt none")
        if self.schema_name is not None and self.schema_name not in SCHEMAS:
            raise ValueError(f"prompt {self.id!r}: unknown schema {self.schema_name!r}")

    @property
    def schema(self) -> dict[str, Any] | None:
        return None if self.schema_name is None else SCHEMAS[self.schema_name]

    def messages(self) -> list[dict[str, str]]:
        system = [] if self.system_id is None else [{"role": "system", "content": SYSTEMS[self.system_id]}]
        return [*system, {"role": "user", "content": self.user}]

    def response_format(self) -> dict[str, Any] | None:
        if self.schema_name is None:
            return None
        return {"type": "json_schema", "json_schema": {"name": self.schema_name, "schema": self.schema,
                                                       "strict": True}}


def _json(id_: str, user: str, schema_name: str = "title_bullets") -> QualityPrompt:
    return QualityPrompt(id_, "json", user, system_id="json", schema_name=schema_name, max_tokens=JSON_MAX_TOKENS)


PROMPTS: tuple[QualityPrompt, ...] = (
    QualityPrompt("cash-flow", "chat", "How should I build a simple cash-flow forecast for the next three months?",
                  system_id="bakery"),
    QualityPrompt("barista-ad", "chat", "Write a short job advert for a part-time barista, about 80 words.",
                  system_id="bakery"),
    QualityPrompt("swot-bakery", "chat", "Give me a brief SWOT analysis of the bakery.", system_id="bakery"),
    QualityPrompt("launch-email", "chat", "Write a short email to our customers announcing a new sourdough "
                  "subscription: one loaf a week for 18 pounds a month.", system_id="bakery"),
    QualityPrompt("complaint-reply", "chat", "A customer says her birthday cake arrived an hour late. "
                  "Write a polite reply that apologises and offers something to make up for it.", system_id="bakery"),
    QualityPrompt("meeting-summary", "chat", "Summarise this meeting in three sentences: Daniel said two boilers "
                  "were delayed by the supplier. Priya will call the customers today. Tom asked for a second van; "
                  "Daniel agreed to price one by Friday. Everyone agreed to stop taking jobs without a deposit.",
                  system_id="plumbing"),
    QualityPrompt("late-invoices", "chat", "What can we do about customers who pay their invoices late?",
                  system_id="plumbing"),
    QualityPrompt("pricing", "chat", "Should we raise our call-out fee, and how should we tell customers?",
                  system_id="plumbing"),
    QualityPrompt("safety-talk", "chat", "Write a short introduction for a five-minute safety talk for the "
                  "technicians about working in lofts.", system_id="plumbing"),
    QualityPrompt("margins", "chat", "What is the difference between gross margin and net margin? "
                  "Explain it simply with an example."),
    QualityPrompt("first-hire", "chat", "I run a one-person cleaning business. What should I do before "
                  "hiring my first employee?"),
    QualityPrompt("net-30", "chat", "What does 'net 30' mean on an invoice?"),
    QualityPrompt("refund-policy", "chat", "Write a clear, friendly refund policy for a small online shop "
                  "that sells handmade candles."),
    QualityPrompt("reviews", "chat", "How can a small restaurant politely ask happy customers for online reviews?"),
    QualityPrompt("product-launch", "chat", "Write a short product launch announcement for a new budgeting app "
                  "for freelancers."),
    _json("marketing-ideas", "Give low-cost marketing ideas for a bakery's quiet Tuesday afternoons."),
    _json("cafe-checklist", "Make a checklist for opening a small cafe in the morning."),
    _json("quarterly-agenda", "Draft the agenda of a one-hour quarterly review meeting for a small team."),
    _json("second-location", "List the main risks of opening a second shop location."),
    _json("welcome-email", "Write a welcome email to a new employee starting on Monday.", schema_name="email"),
)
"""The benchmark, in the order it runs (cache hits depend on it)."""


def shares_cached_system(prompts: tuple[QualityPrompt, ...] = PROMPTS) -> dict[str, bool]:
    """Per prompt id: whether an earlier prompt used the same system prompt (so its prefix can be cached)."""
    seen: set[str] = set()
    out = {}
    for prompt in prompts:
        out[prompt.id] = prompt.system_id is not None and prompt.system_id in seen
        if prompt.system_id is not None:
            seen.add(prompt.system_id)
    return out
