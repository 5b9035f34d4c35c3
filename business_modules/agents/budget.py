"""The budgets of a run, and what the next step may spend: which tools it may call and how many tokens.

A run has a step budget (model calls) and a token budget (prompt plus
completion tokens of all its model calls), and every prompt must fit the
model's context. Rather than let a run hit a wall mid-way, the step that
would be its last affordable one is asked for the final answer only
(``tool_choice`` = ``final_answer``): a run ends with a result whenever one
more call fits, and fails with the budget named when none does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from business_modules.agents.config import AgentsSettings
from business_modules.agents.models import Step, StepKind, StepStatus
from business_modules.agents.prompt import NO_CALL_REMINDER, outcome_text
from business_modules.agents.tools import FINAL_ANSWER
from business_modules.llm_client import ToolSpec

MESSAGE_OVERHEAD_TOKENS = 24
"""Tokens the chat template and the tool-response frame add around one message."""
TOOLS_PREAMBLE_TOKENS = 300
"""Tokens of the LLM's own words around the tool list (how to call, the ``<tools>`` block)."""


def result_tokens(name: str, outcome: str) -> int:
    """Tokens of a tool's outcome as the LLM renders it, at most: JSON data (the outcome's JSON text escaped
    again, ``"`` as two characters) with ``<`` as ``\\u003c``, inside ``<tool_response>``, as
    `cache_actors.engine.tool_calls.tool_response_text` writes it (this module may not import it). Its UTF-8
    bytes: exact for the demo model's byte tokens, an overestimate for real tokenizers. Counting the
    outcome's characters instead undercounted (758 characters became 935 tokens) and the LLM refused the
    next prompt as over the context."""
    data = json.dumps({"name": name, "content": outcome}, ensure_ascii=False, separators=(",", ":"))
    return len(data.replace("<", "\\u003c").encode("utf-8")) + len("<tool_response>\n\n</tool_response>")


def call_overhead(name: str) -> int:
    """Tokens around a call's arguments: ``<tool_call>{"name":"NAME","arguments":`` ... ``}</tool_call>`` and EOS."""
    return 48 + len(name)


class BudgetExhausted(Exception):
    """No further model call fits the run's budgets; the message names which one ran out."""


@dataclass(frozen=True, slots=True)
class Budget:
    max_steps: int
    max_tokens: int

    @classmethod
    def of(cls, parameters: Mapping[str, Any], settings: AgentsSettings) -> Budget:
        return cls(max_steps=min(parameters.get("max_steps") or settings.default_max_steps, settings.max_steps_limit),
                   max_tokens=min(parameters.get("max_tokens") or settings.default_token_budget,
                                  settings.token_budget_limit))


@dataclass(frozen=True, slots=True)
class StepPlan:
    """What the next model call offers: ``tool_choice`` and ``max_tokens``."""

    tool_choice: str
    max_tokens: int


def first_prompt_estimate(messages: Sequence[Mapping[str, Any]], tools: Sequence[ToolSpec]) -> int:
    """Tokens of a run's first prompt at most: its characters, the tool list's included (exact for the demo
    model's bytes, an overestimate for real tokenizers, which later steps correct from the LLM's usage)."""
    text = sum(len(str(m.get("content") or "")) for m in messages)
    listing = sum(len(json.dumps(t.openai()["function"], separators=(",", ":"))) + 1 for t in tools)
    return text + listing + TOOLS_PREAMBLE_TOKENS + MESSAGE_OVERHEAD_TOKENS * len(messages)


def next_prompt_estimate(steps: Sequence[Step], *, result_chars: int) -> int | None:
    """Tokens of the next prompt at most: the last call's prompt and answer plus what came back since
    (characters count as tokens: exact for the demo model's bytes, an overestimate for real tokenizers).
    None before the first call."""
    last = next((i for i in range(len(steps) - 1, -1, -1) if steps[i].kind is StepKind.MODEL
                 and steps[i].status in (StepStatus.COMPLETED, StepStatus.INVALID)), None)
    if last is None:
        return None
    model = steps[last]
    total = model.prompt_tokens + model.completion_tokens + MESSAGE_OVERHEAD_TOKENS
    if model.status is StepStatus.INVALID:
        total += len(NO_CALL_REMINDER) + MESSAGE_OVERHEAD_TOKENS
    for step in steps[last + 1:]:
        if step.kind is StepKind.TOOL and step.status.settled:
            total += result_tokens(step.tool_name or "", outcome_text(step, result_chars)) + MESSAGE_OVERHEAD_TOKENS
    return total


def plan_step(*, budget: Budget, steps_used: int, tokens_used: int, prompt_estimate: int | None,
              bounds: Mapping[str, int | None], start_with: str | None, settings: AgentsSettings) -> StepPlan:
    """The next call's plan, or `BudgetExhausted`.

    Args:
        bounds: each offered tool (``final_answer`` included) -> the longest JSON its arguments can be
            (None: unbounded).
        start_with: a tool the run's first call must make (the capability's ``start_with``), if offered.
    """
    if steps_used >= budget.max_steps:
        raise BudgetExhausted(f"the step budget ({budget.max_steps} model calls) ran out before a final answer")
    if tokens_used >= budget.max_tokens:
        raise BudgetExhausted(f"the token budget ({budget.max_tokens} tokens) ran out before a final answer")

    def tokens_for(names: Sequence[str]) -> int:
        sizes = [bounds[n] for n in names]
        if any(size is None for size in sizes):
            return settings.step_max_tokens
        return min(settings.step_max_tokens, max(int(s) + call_overhead(n) for s, n in zip(sizes, names)))

    estimate = prompt_estimate or 0
    free = tokens_for(list(bounds))
    final = tokens_for([FINAL_ANSWER])
    last_step = steps_used == budget.max_steps - 1
    fits_free = (tokens_used + estimate + free <= budget.max_tokens and estimate + free <= settings.context_tokens)
    if last_step or not fits_free:
        if tokens_used + estimate + final > budget.max_tokens:
            raise BudgetExhausted(f"the token budget ({budget.max_tokens} tokens; {tokens_used} used) has no room "
                                  "left for a final answer")
        if estimate + final > settings.context_tokens:
            raise BudgetExhausted(f"the run's history (about {estimate} tokens) no longer leaves room for a final "
                                  f"answer in the model's context ({settings.context_tokens} tokens)")
        return StepPlan(FINAL_ANSWER, final)
    if steps_used == 0 and start_with is not None and start_with in bounds:
        return StepPlan(start_with, tokens_for([start_with]))
    return StepPlan("required", free)
