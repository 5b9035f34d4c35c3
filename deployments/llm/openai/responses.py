"""OpenAI's response and stream-chunk bodies for completions and chat completions.

Pure dict builders, so the shapes are checked in one place: ``id``
(``cmpl-``/``chatcmpl-``), ``object``, ``created``, ``model``, ``choices``
with ``logprobs: null``, and ``usage`` with ``prompt_tokens_details``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cache_actors.engine.tool_calls import (
    ArgumentsDelta,
    CallStart,
    ContentDelta,
    ParsedOutput,
    StreamPiece,
    ToolCallParser,
)
from deployments.llm.openai.logprob_format import chat_logprobs, completion_logprobs

Kind = Literal["completion", "chat"]
ID_PREFIX: dict[Kind, str] = {"completion": "cmpl-", "chat": "chatcmpl-"}


@dataclass(slots=True)
class ChoiceResult:
    """What one choice's backend stream produced so far.

    With ``tool_parser`` (a chat request with tools) the raw text is split
    into content and a tool call as it arrives; ``apply`` returns the pieces
    each event completes, which the stream sends as OpenAI deltas.
    """

    index: int
    parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    tool_parser: ToolCallParser | None = None
    parsed: ParsedOutput | None = None
    logprobs: bool = False  # the client asked for logprobs
    echo: str | None = None  # completions' echo: the prompt text to put before the answer
    entries: list[dict[str, Any]] = field(default_factory=list)  # logprob entries of the generated tokens
    prompt_entries: list[dict[str, Any]] = field(default_factory=list)  # echo with logprobs
    unsent: list[dict[str, Any]] = field(default_factory=list)  # entries no stream chunk has carried yet

    def apply(self, event: dict[str, Any]) -> list[StreamPiece]:
        if event["type"] == "delta":
            self.parts.append(event["text"])
            self.prompt_tokens = event.get("prompt_tokens", self.prompt_tokens)
            self.completion_tokens += len(event.get("token_ids", ()))
            if "prompt_text" in event and self.echo is not None:
                self.echo = event["prompt_text"]
            self.prompt_entries.extend(event.get("prompt_logprobs") or ())
            self.entries.extend(event.get("logprobs") or ())
            self.unsent.extend(event.get("logprobs") or ())
            if self.tool_parser is None:
                # A token whose text the detokenizer holds back (part of a UTF-8 character, a possible stop
                # string) still gets its chunk, with empty text, as vLLM sends it: a client times its first
                # token, and reads that token's logprobs, when the model produced it, not when its text is whole.
                return [ContentDelta(event["text"])] if event["text"] or event.get("token_ids") else []
            return self.tool_parser.feed(event["text"])
        self.prompt_tokens = event["prompt_tokens"]
        self.completion_tokens = event["completion_tokens"]
        self.cached_tokens = event["cached_tokens"]
        self.finish_reason = event["finish_reason"]
        if self.tool_parser is None:
            return []
        pieces, self.parsed = self.tool_parser.finish()
        if self.parsed.calls and self.parsed.calls[0].complete and self.finish_reason == "stop":
            self.finish_reason = "tool_calls"
        return pieces

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def completion_text(self) -> str:
        return (self.echo or "") + self.text

    def shaped_logprobs(self, kind: Kind) -> dict[str, Any] | None:
        """All of the choice's logprobs in the response's shape (None when not asked for)."""
        if not self.logprobs:
            return None
        if kind == "chat":
            return chat_logprobs(self.entries)
        return completion_logprobs([*self.prompt_entries, *self.entries])

    def take_unsent(self, kind: Kind, text_offset: int) -> dict[str, Any] | None:
        """Logprobs of the tokens since the last stream chunk, for the next chunk of this choice."""
        if not self.logprobs or not self.unsent:
            return None
        entries, self.unsent = self.unsent, []
        return chat_logprobs(entries) if kind == "chat" else completion_logprobs(entries, text_offset=text_offset)

    def message(self) -> dict[str, Any]:
        """The chat ``message``: content, and the tool call when the model made one."""
        if self.parsed is None or not self.parsed.calls:
            content = self.text if self.parsed is None else self.parsed.content
            return {"role": "assistant", "content": content, "refusal": None}
        return {"role": "assistant", "content": self.parsed.content.strip() or None, "refusal": None,
                "tool_calls": [{"id": call.id, "type": "function",
                                "function": {"name": call.name, "arguments": call.arguments}}
                               for call in self.parsed.calls]}


def usage(choices: Sequence[ChoiceResult]) -> dict[str, Any]:
    """Usage of all choices: the prompt counts once, completions add up.

    ``cached_tokens`` is the most any choice found cached (choices of one
    request run side by side, so each may find a different share).
    """
    prompt = max((c.prompt_tokens for c in choices), default=0)
    completion = sum(c.completion_tokens for c in choices)
    cached = max((c.cached_tokens for c in choices), default=0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def full_response(kind: Kind, *, response_id: str, created: int, model: str,
                  choices: Sequence[ChoiceResult]) -> dict[str, Any]:
    """The non-streamed body."""
    if kind == "chat":
        shaped = [{"index": c.index, "message": c.message(), "logprobs": c.shaped_logprobs(kind),
                   "finish_reason": c.finish_reason} for c in choices]
        obj = "chat.completion"
    else:
        shaped = [{"index": c.index, "text": c.completion_text(), "logprobs": c.shaped_logprobs(kind),
                   "finish_reason": c.finish_reason} for c in choices]
        obj = "text_completion"
    return {"id": response_id, "object": obj, "created": created, "model": model, "system_fingerprint": None,
            "choices": shaped, "usage": usage(choices)}


@dataclass(frozen=True, slots=True)
class ChunkShaper:
    """Stream chunks of one response (all share id, created and model)."""

    kind: Kind
    response_id: str
    created: int
    model: str
    include_usage: bool = False

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk = {"id": self.response_id, "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
                 "created": self.created, "model": self.model, "system_fingerprint": None, "choices": choices}
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def _choice(self, index: int, content: dict[str, Any] | str, finish_reason: str | None) -> dict[str, Any]:
        key = "delta" if self.kind == "chat" else "text"
        return {"index": index, key: content, "logprobs": None, "finish_reason": finish_reason}

    def role(self, index: int) -> dict[str, Any]:
        """Chat only: the first chunk of a choice."""
        return self._chunk([self._choice(index, {"role": "assistant", "content": ""}, None)])

    def delta(self, index: int, text: str) -> dict[str, Any]:
        return self._chunk([self._choice(index, {"content": text} if self.kind == "chat" else text, None)])

    def piece(self, index: int, piece: StreamPiece) -> dict[str, Any]:
        """A chunk for one parsed piece: content, or a tool call's start or arguments (OpenAI's deltas)."""
        if isinstance(piece, ContentDelta):
            return self.delta(index, piece.text)
        if isinstance(piece, CallStart):
            call = {"index": 0, "id": piece.id, "type": "function", "function": {"name": piece.name, "arguments": ""}}
        else:
            assert isinstance(piece, ArgumentsDelta)
            call = {"index": 0, "function": {"arguments": piece.text}}
        return self._chunk([self._choice(index, {"tool_calls": [call]}, None)])

    def finish(self, index: int, finish_reason: str) -> dict[str, Any]:
        return self._chunk([self._choice(index, {} if self.kind == "chat" else "", finish_reason)])

    def usage(self, choices: Sequence[ChoiceResult]) -> dict[str, Any]:
        """The extra last chunk ``stream_options.include_usage`` asks for: no choices, the usage."""
        chunk = self._chunk([])
        chunk["usage"] = usage(choices)
        return chunk
