"""What a business service needs from an LLM, as a protocol (no Ray here).

Services receive an `LLMClient` in their constructor; `deployments` passes one
that calls the `llm` application's handle (`deployments.common.llm_handle`),
tests may pass `ScriptedLLM` (fixed answers) when they check assembly rather
than generation.
"""

from business_modules.llm_client.protocol import (
    ChatMessage,
    Generation,
    GenerationUsage,
    LLMClient,
    LLMRequestSpec,
    LLMTimeout,
    LLMUnavailable,
    LLMError,
    StreamEvent,
    ToolCall,
    ToolCallMessage,
    ToolSpec,
)
from business_modules.llm_client.scripted import ScriptedLLM, tool_call

__all__ = [
    "ChatMessage",
    "Generation",
    "GenerationUsage",
    "LLMClient",
    "LLMError",
    "LLMRequestSpec",
    "LLMTimeout",
    "LLMUnavailable",
    "ScriptedLLM",
    "StreamEvent",
    "ToolCall",
    "ToolCallMessage",
    "ToolSpec",
    "tool_call",
]
