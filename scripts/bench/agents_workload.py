"""The workload of `blatam bench agents`: runs of mixed capabilities with seeded inputs.

Capabilities are taken round robin across the catalogue's agents (one
capability of each agent in turn, then each agent's next one), so even a
short workload touches every agent and most tools. Inputs are drawn from
each capability's own input schema rather than written per capability: the
catalogue is data, and a capability added to it enters the workload without
a change here. A schema keyword the generator does not know is refused, so
it never produces inputs the service would reject at submission.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from business_modules.agents import catalogue
from business_modules.agents.schemas import validation_errors

WORDS = ("bakery", "logistics", "dental", "studio", "analytics", "cafe", "outdoor", "solar", "pricing", "growth",
         "retention", "launch", "region", "partners", "subscription", "delivery", "quarterly", "customers",
         "wholesale", "online", "premium", "local", "seasonal", "training", "onboarding", "support", "budget",
         "inventory", "suppliers", "brand")
"""Words of generated strings: business-like text a reader of a run's prompt can follow."""

MAX_STRING_CHARS = 48
"""Longest generated string (a schema's maxLength caps it lower), so inputs stay a small part of a prompt."""
MAX_ARRAY_ITEMS = 3
"""Most items of a generated array (a schema's maxItems caps it lower)."""
OPTIONAL_SHARE = 0.5
"""Chance that an optional property is given."""
KNOWN_KEYWORDS = frozenset({"type", "properties", "required", "additionalProperties", "items", "enum", "minLength",
                            "maxLength", "pattern", "minimum", "maximum", "minItems", "maxItems", "description"})
DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
FIRST_DATE = date(2026, 1, 5)


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One run of the workload: which capability, and the body of its ``execute`` request."""

    agent_id: str
    capability: str
    body: dict[str, Any]

    @property
    def path(self) -> str:
        return f"/api/v1/agents/agents/{self.agent_id}/capabilities/{self.capability}/execute"


def capability_order() -> list[tuple[str, str]]:
    """``(agent_id, capability)`` of the catalogue, interleaved across agents: each agent's first capability,
    then each one's second, and so on."""
    agents = list(catalogue().values())
    longest = max(len(a.capabilities) for a in agents)
    return [(a.id, a.capabilities[k].name) for k in range(longest) for a in agents if k < len(a.capabilities)]


def value_for(schema: Mapping[str, Any], rng: random.Random) -> Any:
    """A value valid against ``schema`` (the JSON Schema subset the catalogue's input schemas use)."""
    unknown = set(schema) - KNOWN_KEYWORDS
    if unknown:
        raise ValueError(f"the bench cannot generate values for schema keywords {sorted(unknown)}")
    if "enum" in schema:
        return rng.choice(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        required = set(schema.get("required", ()))
        return {name: value_for(sub, rng) for name, sub in schema.get("properties", {}).items()
                if name in required or rng.random() < OPTIONAL_SHARE}
    if kind == "array":
        low = max(schema.get("minItems", 1), 1)
        high = max(low, min(schema.get("maxItems", MAX_ARRAY_ITEMS), MAX_ARRAY_ITEMS))
        return [value_for(schema.get("items", {"type": "string"}), rng) for _ in range(rng.randint(low, high))]
    if kind == "string":
        return _string(schema, rng)
    if kind == "integer":
        low = int(schema.get("minimum", 1))
        return rng.randint(low, int(schema.get("maximum", low + 999)))
    if kind == "number":
        low, high = float(schema.get("minimum", 0.0)), float(schema.get("maximum", 100_000.0))
        return round(rng.uniform(low, high), 2 if high - low <= 1 else 0)
    if kind == "boolean":
        return rng.random() < 0.5
    raise ValueError(f"the bench cannot generate values of type {kind!r}")


def _string(schema: Mapping[str, Any], rng: random.Random) -> str:
    pattern = schema.get("pattern")
    if pattern == DATE_PATTERN:
        return (FIRST_DATE + timedelta(days=rng.randint(0, 364))).isoformat()
    if pattern is not None:
        raise ValueError(f"the bench cannot generate strings matching {pattern!r}")
    limit = min(schema.get("maxLength", MAX_STRING_CHARS), MAX_STRING_CHARS)
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5)))[:limit].strip()
    return text if len(text) >= schema.get("minLength", 0) else rng.choice(WORDS)[:limit]


def inputs_for(agent_id: str, capability: str, rng: random.Random) -> dict[str, Any]:
    """Inputs of one run of a catalogue capability, checked against its schema (a bug here fails fast)."""
    schema = catalogue()[agent_id].capability(capability).input_schema  # type: ignore[union-attr]
    inputs = value_for(schema, rng)
    errors = validation_errors(schema, inputs)
    if errors:
        raise AssertionError(f"generated inputs of {agent_id}/{capability} do not validate: {errors}")
    return inputs


def workload(runs: int, seed: int, *, max_steps: int) -> list[RunSpec]:
    """``runs`` runs, capabilities round robin (`capability_order`), inputs and sampling seeds from ``seed``.

    Each body asks for the answer at once (``wait_s`` 0: the bench polls), greedy decoding and a per-run seed, so
    the same ``seed`` gives the same requests in both runs of the bench.
    """
    rng = random.Random(seed)
    order = capability_order()
    specs = []
    for i in range(runs):
        agent_id, capability = order[i % len(order)]
        parameters = {"max_steps": max_steps, "wait_s": 0, "temperature": 0.0, "seed": rng.randrange(2**31)}
        specs.append(RunSpec(agent_id, capability, {"inputs": inputs_for(agent_id, capability, rng),
                                                    "parameters": parameters}))
    return specs
