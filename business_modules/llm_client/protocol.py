"""The LLM protocol of business services: generate text or schema-valid JSON, stream it, report usage.

Why a protocol: `business_modules` stays plain Python (no Ray), so a service
can be unit-tested with a scripted client and run in Serve with the real one.
Every call carries the tenant, because the KV cache salts its block keys per
tenant (tenants never share KV), and a timeout, because a service must turn
an unavailable LLM into a failed job, never a hang.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, Protocol, TypedDict


class ToolCallMessage(TypedDict):
    """One call in an assistant message, as OpenAI lays it out."""

    id: str
    type: Literal["function"]
    function: dict[str, str]  # {"name": ..., "arguments": <JSON text>}


class ChatMessage(TypedDict):
    """A chat turn. An assistant turn that called tools has ``tool_calls`` (its content may be "");
    a ``tool`` turn answers one call, named by ``tool_call_id``."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: NotRequired[list[ToolCallMessage]]
    tool_call_id: NotRequired[str]


class LLMError(RuntimeError):
    """The LLM could not answer; the message is one line a job can store as its reason."""


class LLMUnavailable(LLMError):
    """No LLM to call (not deployed, replica dead, overloaded)."""


class LLMTimeout(LLMError):
    """The LLM did not finish within the call's timeout."""


@dataclass(frozen=True, slots=True)
class GenerationUsage:
    """Token counts of one call; ``cached_tokens`` of the prompt were served from the KV cache."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the model may call: ``parameters`` is the JSON Schema its arguments must satisfy
    (the server enforces it with a grammar, so a call's arguments always validate)."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def openai(self) -> dict[str, Any]:
        """The tool as OpenAI's ``tools`` entry."""
        function: dict[str, Any] = {"name": self.name, "parameters": dict(self.parameters)}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model chose: ``arguments`` is the JSON text it wrote."""

    id: str
    name: str
    arguments: str

    def parsed_arguments(self) -> Any:
        """The arguments as JSON; ValueError if they are not JSON (a call cut by max_tokens)."""
        import json

        return json.loads(self.arguments)

    def message(self) -> ToolCallMessage:
        """The call as an entry of an assistant message's ``tool_calls``."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True, slots=True)
class Generation:
    """One finished call. With ``tool_calls`` the model called tools (finish_reason "tool_calls")."""

    text: str
    usage: GenerationUsage = GenerationUsage()
    finish_reason: str = "stop"
    ttft_ms: float | None = None
    latency_ms: float | None = None
    model: str = ""
    tool_calls: tuple[ToolCall, ...] = ()

    def json(self) -> Any:
        """The text parsed as JSON (for calls made with a schema); ValueError if it is not JSON."""
        import json

        return json.loads(self.text)


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """A piece of a streamed call: ``delta`` text, or the last event with the whole `Generation`."""

    delta: str = ""
    done: Generation | None = None


@dataclass(frozen=True, slots=True)
class LLMRequestSpec:
    """What to generate. Exactly one of ``prompt`` / ``messages``.

    ``json_schema``: the answer must validate against it (grammar-enforced by
    the server). ``temperature`` 0 is greedy (deterministic). Lay ``messages``
    out with the fixed parts first (system instructions, shared inputs) so
    successive calls share a cached prefix.

    ``tools`` (chat only): functions the model may call; ``tool_choice`` is
    ``"auto"`` (text or one call), ``"required"`` (one call), ``"none"`` (text)
    or a tool's name (a call of that tool). The server answers at most one call
    per turn.
    """

    prompt: str | None = None
    messages: Sequence[ChatMessage] | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    json_schema: Mapping[str, Any] | None = None
    schema_name: str = "answer"
    tenant_id: str | None = None
    timeout_s: float = 120.0
    metadata: Mapping[str, str] = field(default_factory=dict)
    tools: Sequence[ToolSpec] = ()
    tool_choice: str = "auto"

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("an LLM request needs exactly one of prompt or messages")
        if self.tools and self.messages is None:
            raise ValueError("tools need a chat (messages), not a prompt")
        names = [tool.name for tool in self.tools]
        if len(set(names)) != len(names):
            raise ValueError("tool names must be unique")
        if self.tool_choice not in ("auto", "required", "none") and self.tool_choice not in names:
            raise ValueError(f"tool_choice {self.tool_choice!r} is neither auto, required, none nor a tool's name")
        if self.tools and self.json_schema is not None and self.tool_choice != "none":
            raise ValueError("a request takes tools or a json_schema, not both")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be positive")

    def response_format(self) -> dict[str, Any] | None:
        """OpenAI's ``response_format`` for this request."""
        if self.json_schema is None:
            return None
        return {"type": "json_schema", "json_schema": {"name": self.schema_name, "schema": dict(self.json_schema)}}

    def openai_tool_choice(self) -> str | dict[str, Any]:
        """``tool_choice`` as OpenAI spells it (a tool's name becomes ``{"type": "function", ...}``)."""
        if self.tool_choice in ("auto", "required", "none"):
            return self.tool_choice
        return {"type": "function", "function": {"name": self.tool_choice}}


class LLMClient(Protocol):
    """Generates for business services. Implementations bound every call by ``spec.timeout_s``.

    Raises:
        LLMTimeout: the call did not finish in time (the generation is cancelled).
        LLMUnavailable: no LLM could take the call.
        LLMError: the LLM refused the request (e.g. the prompt exceeds the context).
    """

    async def generate(self, spec: LLMRequestSpec) -> Generation: ...

    def stream(self, spec: LLMRequestSpec) -> AsyncIterator[StreamEvent]: ...
