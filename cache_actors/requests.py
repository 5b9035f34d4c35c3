"""Validation of engine requests: bad input becomes a clear `ValueError` here,
before any tokenizer or tensor sees it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from cache_actors.sampling import SamplingParams

_MAX_STOPS = 4
_MAX_ID_CHARS = 256


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A validated request to `UltraAdaptiveKVCacheEngine.process_request`."""

    text: str
    sampling: SamplingParams
    session_id: str | None = None
    tenant_id: str | None = None


def _number(payload: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = payload.get(key, default)
    if value is None:
        return default
    # bool is an int in Python; a flag where a number is expected is a caller bug.
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise ValueError(f"{key!r} must be {'a number' if kind is float else 'an integer'}, got {type(value).__name__}")
    return kind(value)


def _optional_str(payload: Mapping[str, Any], key: str) -> str | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > _MAX_ID_CHARS:
        raise ValueError(f"{key!r} must be a non-empty string of at most {_MAX_ID_CHARS} characters")
    return value


def parse_request(payload: Any, *, default_max_new_tokens: int) -> GenerationRequest:
    """Check a request dict and turn it into a `GenerationRequest`."""
    if not isinstance(payload, Mapping):
        raise ValueError(f"a request must be a dict, got {type(payload).__name__}")
    if "text" not in payload:
        raise ValueError("request is missing 'text'")
    text = payload["text"]
    if not isinstance(text, str):
        raise ValueError(f"'text' must be a string, got {type(text).__name__}")
    if not text:
        raise ValueError("'text' must not be empty")
    return GenerationRequest(
        text=text,
        sampling=parse_sampling(payload, default_max_new_tokens=default_max_new_tokens),
        session_id=_optional_str(payload, "session_id"),
        tenant_id=_optional_str(payload, "tenant_id"),
    )


def parse_sampling(payload: Mapping[str, Any], *, default_max_new_tokens: int) -> SamplingParams:
    """Check ``max_new_tokens``, ``temperature``, ``top_p``, ``seed`` and ``stop`` of a request."""
    if not isinstance(payload, Mapping):
        raise ValueError(f"sampling parameters must be a dict, got {type(payload).__name__}")
    max_new_tokens = _number(payload, "max_new_tokens", int, default_max_new_tokens)
    if max_new_tokens < 1:
        raise ValueError(f"'max_new_tokens' must be >= 1, got {max_new_tokens}")
    temperature = _number(payload, "temperature", float, 0.0)
    if not 0.0 <= temperature <= 2.0:
        raise ValueError(f"'temperature' must be in [0, 2], got {temperature}")
    top_p = _number(payload, "top_p", float, 1.0)
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"'top_p' must be in (0, 1], got {top_p}")
    seed = _number(payload, "seed", int, None)
    stop = payload.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, (list, tuple)) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise ValueError("'stop' must be a string or a list of strings")
    if len(stops) > _MAX_STOPS or any(not s for s in stops):
        raise ValueError(f"'stop' takes at most {_MAX_STOPS} non-empty strings")
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=stops, seed=seed)


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
