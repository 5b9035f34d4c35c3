"""An `LLMClient` that answers from a script: for tests of assembly, never of generation.

It records every request, so a test can check how prompts were laid out
(fixed parts first) and which tenant was passed.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

from business_modules.llm_client.protocol import Generation, GenerationUsage, LLMRequestSpec, LLMError, StreamEvent

Answer = str | dict[str, Any] | list[Any] | Exception
Script = Callable[[LLMRequestSpec], Answer]


class ScriptedLLM:
    """Answers ``script(spec)``: text, a JSON value (serialized), or an exception to raise."""

    def __init__(self, script: Script) -> None:
        self._script = script
        self.requests: list[LLMRequestSpec] = []

    async def generate(self, spec: LLMRequestSpec) -> Generation:
        self.requests.append(spec)
        answer = self._script(spec)
        if isinstance(answer, Exception):
            raise answer
        text = answer if isinstance(answer, str) else json.dumps(answer)
        words = len(text.split())
        return Generation(text=text, usage=GenerationUsage(prompt_tokens=_prompt_words(spec), completion_tokens=words),
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


__all__ = ["ScriptedLLM", "LLMError"]
