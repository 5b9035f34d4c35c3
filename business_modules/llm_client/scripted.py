"""An `LLMClient` that answers from a script: for tests of assembly and of loops, never of generation.

It records every request, so a test can check how prompts were laid out
(fixed parts first), which tenant was passed and which tools were offered.
A script may answer with tool calls, the one behaviour of a model an agent
loop must be tested against deterministically (the demo model's choices are
random).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

from business_modules.llm_client.protocol import (
    Generation,
    GenerationUsage,
    LLMError,
    LLMRequestSpec,
    StreamEvent,
    ToolCall,
)

Answer = str | dict[str, Any] | list[Any] | ToolCall | tuple[ToolCall, ...] | Generation | Exception
Script = Callable[[LLMRequestSpec], Answer]


def tool_call(name: str, arguments: dict[str, Any] | str, *, call_id: str | None = None) -> ToolCall:
    """A `ToolCall` for a script to answer with (arguments as a dict or as raw JSON text)."""
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ToolCall(id=call_id or f"call_scripted_{next(_ids)}", name=name, arguments=text)


_ids = itertools.count(1)


class ScriptedLLM:
    """Answers ``script(spec)``: text, a JSON value (serialized), tool call(s), a `Generation`, or an exception."""

    def __init__(self, script: Script) -> None:
        self._script = script
        self.requests: list[LLMRequestSpec] = []

    async def generate(self, spec: LLMRequestSpec) -> Generation:
        self.requests.append(spec)
        answer = self._script(spec)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, Generation):
            return answer
        prompt_tokens = _prompt_words(spec)
        if isinstance(answer, ToolCall) or (isinstance(answer, tuple) and answer and isinstance(answer[0], ToolCall)):
            calls = (answer,) if isinstance(answer, ToolCall) else tuple(answer)
            words = sum(len(call.arguments.split()) + 1 for call in calls)
            return Generation(text="", usage=GenerationUsage(prompt_tokens=prompt_tokens, completion_tokens=words),
                              finish_reason="tool_calls", model="scripted", tool_calls=calls)
        text = answer if isinstance(answer, str) else json.dumps(answer)
        words = len(text.split())
        return Generation(text=text, usage=GenerationUsage(prompt_tokens=prompt_tokens, completion_tokens=words),
                          finish_reason="stop", model="scripted")

    async def stream(self, spec: LLMRequestSpec) -> AsyncIterator[StreamEvent]:
        result = await self.generate(spec)
        for piece in re.findall(r"\S+\s*|\s+", result.text):
            yield StreamEvent(delta=piece)
        yield StreamEvent(done=result)


def _prompt_words(spec: LLMRequestSpec) -> int:
    if spec.prompt is not None:
        return len(spec.prompt.split())
    return sum(len(m["content"].split()) for m in spec.messages or ())


__all__ = ["ScriptedLLM", "LLMError", "tool_call"]
