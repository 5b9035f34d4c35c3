"""The LLM request: one validated model for every way a generation is asked for.

`LLMRequest` is what crosses the Serve handle (`LLMServer.generate` /
``generate_stream``), what the OpenAI ingress builds (one per choice), what
the cache-aware router hashes, and what the engine's ``process_request``
turns its seed dict into. Bad input becomes a clear `ValueError` here (see
`LLMRequest.parse`), before any tokenizer or tensor sees it.

Pure (pydantic only): no torch, transformers or Ray at import, so the router
and the ingress can validate without loading a model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

if TYPE_CHECKING:  # cache_actors.engine.sampling imports torch
    from cache_actors.engine.sampling import SamplingParams

MAX_STOPS = 4
MAX_ID_CHARS = 256
SAMPLING_KEYS = ("max_new_tokens", "temperature", "top_p", "stop", "seed", "ignore_eos", "min_tokens", "logprobs",
                 "prompt_logprobs")
MAX_LOGPROBS = 20
PROMPT_KEYS = ("prompt", "messages", "prompt_token_ids")


def _number(key: str, value: Any, *, integer: bool) -> Any:
    # bool is an int in Python; a flag where a number is expected is a caller bug.
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise ValueError(f"{key!r} must be {'an integer' if integer else 'a number'}, got {type(value).__name__}")
    return value


class Sampling(BaseModel):
    """How to pick tokens; ``max_new_tokens`` None means the server's default (`params`)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    max_new_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None

    @field_validator("logprobs", "prompt_logprobs", mode="before")
    @classmethod
    def _logprobs(cls, value: Any, info: Any) -> int | None:
        if value is not None and not 0 <= _number(info.field_name, value, integer=True) <= MAX_LOGPROBS:
            raise ValueError(f"{info.field_name!r} must be in [0, {MAX_LOGPROBS}], got {value}")
        return value

    @field_validator("ignore_eos", mode="before")
    @classmethod
    def _ignore_eos(cls, value: Any) -> bool:
        if value is None:
            return False
        if not isinstance(value, bool):
            raise ValueError(f"'ignore_eos' must be a boolean, got {type(value).__name__}")
        return value

    @field_validator("min_tokens", mode="before")
    @classmethod
    def _min_tokens(cls, value: Any) -> int:
        if value is None:
            return 0
        if _number("min_tokens", value, integer=True) < 0:
            raise ValueError(f"'min_tokens' must be >= 0, got {value}")
        return value

    @model_validator(mode="after")
    def _min_within_max(self) -> Sampling:
        if self.max_new_tokens is not None and self.min_tokens > self.max_new_tokens:
            raise ValueError(f"'min_tokens' ({self.min_tokens}) must not exceed 'max_new_tokens' ({self.max_new_tokens})")
        return self

    @field_validator("max_new_tokens", mode="before")
    @classmethod
    def _max_new_tokens(cls, value: Any) -> int | None:
        if value is None:
            return None
        if _number("max_new_tokens", value, integer=True) < 1:
            raise ValueError(f"'max_new_tokens' must be >= 1, got {value}")
        return value

    @field_validator("temperature", mode="before")
    @classmethod
    def _temperature(cls, value: Any) -> float:
        if value is None:
            return 0.0
        if not 0.0 <= _number("temperature", value, integer=False) <= 2.0:
            raise ValueError(f"'temperature' must be in [0, 2], got {float(value)}")
        return float(value)

    @field_validator("top_p", mode="before")
    @classmethod
    def _top_p(cls, value: Any) -> float:
        if value is None:
            return 1.0
        if not 0.0 < _number("top_p", value, integer=False) <= 1.0:
            raise ValueError(f"'top_p' must be in (0, 1], got {float(value)}")
        return float(value)

    @field_validator("seed", mode="before")
    @classmethod
    def _seed(cls, value: Any) -> int | None:
        return None if value is None else _number("seed", value, integer=True)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            stops: tuple[str, ...] = (value,)
        elif isinstance(value, (list, tuple)) and all(isinstance(s, str) for s in value):
            stops = tuple(value)
        else:
            raise ValueError("'stop' must be a string or a list of strings")
        if len(stops) > MAX_STOPS or any(not s for s in stops):
            raise ValueError(f"'stop' takes at most {MAX_STOPS} non-empty strings")
        return stops

    def params(self, *, default_max_new_tokens: int) -> SamplingParams:
        """The decode loop's parameters, with this server's default where the caller set no budget."""
        from cache_actors.engine.sampling import SamplingParams

        return SamplingParams(
            max_new_tokens=self.max_new_tokens or default_max_new_tokens,
            temperature=self.temperature, top_p=self.top_p, stop=self.stop, seed=self.seed,
            ignore_eos=self.ignore_eos, min_tokens=self.min_tokens, logprobs=self.logprobs,
            prompt_logprobs=self.prompt_logprobs,
        )


class TextEncoder(Protocol):
    """What turns a prompt or a chat into token ids (`cache_actors.engine.prompt_encoder.PromptEncoder`)."""

    def encode(self, text: str) -> list[int]: ...

    def encode_chat(self, messages: Sequence[Mapping[str, Any]]) -> list[int]: ...


class LLMRequest(BaseModel):
    """One generation: exactly one of ``prompt`` / ``messages`` / ``prompt_token_ids``, and how to sample.

    Sampling keys may also be given at the top level (``{"prompt", "max_new_tokens"}``),
    as handle callers and the engine's seed dict do; ``sampling`` wins when both are.
    ``clamp_max_tokens``: the client set no budget, so the server lowers
    ``max_new_tokens`` to what fits in the context instead of refusing.
    Unknown keys are ignored, as they always were. Picklable and small, so it
    crosses a Serve handle as is.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    prompt_token_ids: list[int] | None = None
    sampling: Sampling = Sampling()
    response_format: dict[str, Any] | None = None
    tenant_id: str | None = None
    session_id: str | None = None
    request_id: str = ""
    clamp_max_tokens: bool = False
    stream_deltas: bool = True  # False: the whole text comes as one delta before done (nobody reads tokens live)

    @model_validator(mode="before")
    @classmethod
    def _top_level_sampling(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("sampling") is None:
            data = {**data, "sampling": {key: data[key] for key in SAMPLING_KEYS if key in data}}
        return data

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value: Any) -> str | None:
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError("'prompt' must be a non-empty string")
        return value

    @field_validator("messages", mode="before")
    @classmethod
    def _messages(cls, value: Any) -> list[dict[str, str]] | None:
        if value is None:
            return None
        if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        ):
            raise ValueError("'messages' must be a non-empty list of {'role': str, 'content': str}")
        return [dict(m) for m in value]

    @field_validator("prompt_token_ids", mode="before")
    @classmethod
    def _prompt_token_ids(cls, value: Any) -> list[int] | None:
        if value is not None and (
            not isinstance(value, (list, tuple)) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value)
        ):
            raise ValueError("'prompt_token_ids' must be a list of integers")
        return None if value is None else list(value)

    @field_validator("sampling", mode="before")
    @classmethod
    def _sampling(cls, value: Any) -> Any:
        if not isinstance(value, (Mapping, Sampling)):
            raise ValueError(f"sampling parameters must be a dict, got {type(value).__name__}")
        return value

    @field_validator("response_format", mode="before")
    @classmethod
    def _response_format(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, Mapping):
            raise ValueError("'response_format' must be an object")
        return None if value is None else dict(value)

    @field_validator("tenant_id", "session_id", mode="before")
    @classmethod
    def _identifier(cls, value: Any, info: Any) -> str | None:
        if value is not None and (not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS):
            raise ValueError(f"{info.field_name!r} must be a non-empty string of at most {MAX_ID_CHARS} characters")
        return value

    @field_validator("request_id", mode="before")
    @classmethod
    def _request_id(cls, value: Any) -> str:
        return str(value or "")

    @model_validator(mode="after")
    def _one_prompt(self) -> LLMRequest:
        if sum(getattr(self, key) is not None for key in PROMPT_KEYS) != 1:
            raise ValueError("an LLM request needs exactly one of 'prompt', 'messages' or 'prompt_token_ids'")
        return self

    @classmethod
    def parse(cls, data: Any) -> LLMRequest:
        """``data`` (a dict, or already a request) validated; ValueError names what is wrong.

        NOTE: pydantic's ValidationError is a ValueError too, but its text spans
        lines with links and it does not survive pickling across a Serve
        handle; the plain ValueError raised here does both.
        """
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise ValueError(f"an LLM request must be a dict, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ValueError(_message(exc)) from None

    def encode(self, encoder: TextEncoder) -> list[int]:
        """The prompt's token ids (a chat through the model's template), as the replica and the router compute them."""
        if self.prompt_token_ids is not None:
            return list(self.prompt_token_ids)
        if self.messages is not None:
            return encoder.encode_chat(self.messages)
        assert self.prompt is not None  # _one_prompt
        return encoder.encode(self.prompt)


def _message(exc: ValidationError) -> str:
    """One line per problem: our validators' own text, else ``'field': what pydantic says``."""
    parts = []
    for error in exc.errors(include_url=False):
        if error["type"] == "value_error":
            parts.append(str(error["ctx"]["error"]) if "error" in error.get("ctx", {}) else error["msg"])
        else:
            where = ".".join(str(part) for part in error["loc"])
            parts.append(f"{where!r}: {error['msg']}" if where else error["msg"])
    return "; ".join(parts)


def parse_request(payload: Any, *, default_max_new_tokens: int | None = None) -> LLMRequest:
    """The engine's seed dict (``text`` and the README's fields) as an `LLMRequest`.

    ``text`` becomes ``prompt`` as is (no chat template). With
    ``default_max_new_tokens`` the budget is filled in when the caller left it out.
    """
    if not isinstance(payload, Mapping):
        raise ValueError(f"a request must be a dict, got {type(payload).__name__}")
    if "text" not in payload:
        raise ValueError("request is missing 'text'")
    text = payload["text"]
    if not isinstance(text, str):
        raise ValueError(f"'text' must be a string, got {type(text).__name__}")
    if not text:
        raise ValueError("'text' must not be empty")
    fields = {key: payload.get(key) for key in (*SAMPLING_KEYS, "session_id", "tenant_id")}
    if fields["max_new_tokens"] is None:
        fields["max_new_tokens"] = default_max_new_tokens
    return LLMRequest.parse({"prompt": text, **fields})


class ContextLengthExceeded(ValueError):
    """The request does not fit the model's context.

    A ValueError like every refusal; its ``code`` is the one OpenAI clients
    branch on, and ``param`` names the budget that overflowed (None when the
    prompt alone is too long). Both survive pickling across a Serve handle.
    """

    code = "context_length_exceeded"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def check_context(prompt_tokens: int, max_new_tokens: int, limit: int, *, max_name: str = "max_new_tokens") -> None:
    """`ContextLengthExceeded` unless the prompt leaves at least one token of context and the whole request fits.

    ``max_name`` is what the caller calls the new-token budget (``max_tokens`` in the OpenAI API).
    """
    if prompt_tokens >= limit:
        raise ContextLengthExceeded(f"the prompt has {prompt_tokens} tokens; this model's context is {limit}")
    if prompt_tokens + max_new_tokens > limit:
        raise ContextLengthExceeded(
            f"the prompt ({prompt_tokens} tokens) + {max_name} ({max_new_tokens}) exceeds this model's context of {limit} tokens",
            param=max_name,
        )
