"""How a caller reaches `LLMServer`: by value over the replica's gRPC server, unless the request may be too large.

Measured on 2 cores against Ray actor calls (Serve's default, by reference),
interleaved from one driver: a one-token answer 13.3 against 16.7 ms, its
first streamed event 11.9 against 15.1 ms, and 16 streamed answers at once
415 against 377 tok/s; over HTTP, two ingresses over one server taking turns,
34.8 against 38.2 ms and 681 against 617 tok/s. Plain pickle, as the
gateway's calls to the services (`deployments.gateway.services`).

A replica's gRPC server refuses what is over 4 MiB when its runtime
environment does not raise the cap (`deployments.common.grpc_limits`): a
request that may weigh that much goes by actor call, which has no cap, so the
replica still answers it (most often a 400: longer than the model's context).
The OpenAI app (`deployments.llm.openai.over_handle`) and the services' client
(`deployments.common.llm_handle`) both call through `LLMHandles`.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from typing import Any

from deployments.common.grpc_limits import GRPC_REQUEST_MAX_BYTES, by_value

_FIXED_BYTES = 4096
"""Room for everything but the texts: ids, numbers, flags, the pickle's own framing."""


def _field(request: Any, name: str) -> Any:
    return request.get(name) if isinstance(request, Mapping) else getattr(request, name, None)


def wire_bytes_bound(request: Any) -> int:
    """More than ``request`` (an `LLMRequest` or its dict) can weigh pickled.

    4 bytes a character of every text (prompt, messages, stops, ids), 10 a
    token id, the pickled ``response_format``, and `_FIXED_BYTES` for the rest.
    """
    text = sum(len(_field(request, name) or "") for name in ("prompt", "tenant_id", "session_id", "request_id"))
    for message in _field(request, "messages") or ():
        text += sum(len(str(value)) + 16 for value in message.values())
    sampling = _field(request, "sampling")
    stops = (_field(sampling, "stop") if sampling is not None else None) or ()
    text += sum(len(stop) for stop in ([stops] if isinstance(stops, str) else stops))
    size = 4 * text + 10 * len(_field(request, "prompt_token_ids") or ()) + _FIXED_BYTES
    response_format = _field(request, "response_format")
    if response_format is not None:
        size += len(pickle.dumps(response_format))
    return size


class LLMHandles:
    """The `LLMServer` handle to call for one request: by value when it is small enough, else by actor call."""

    def __init__(self, handle: Any) -> None:
        self._whole = {True: by_value(handle), False: handle}  # keyed by "small enough for gRPC"
        self._streamed = {small: h.options(stream=True) for small, h in self._whole.items()}

    def whole(self, request: Any) -> Any:
        """For a call that returns one reply (``generate_events``, ``generate``)."""
        return self._whole[wire_bytes_bound(request) <= GRPC_REQUEST_MAX_BYTES]

    def streamed(self, request: Any) -> Any:
        """For ``generate_stream``."""
        return self._streamed[wire_bytes_bound(request) <= GRPC_REQUEST_MAX_BYTES]
