"""Calling a deployment handle several times from one Serve request.

Ray Serve 2.60 gives every handle call made while serving a request the
*same* internal request id (the one its proxy made for the parent request).
Its request router indexes pending requests by that id, and a second pending
call with an id it already holds is never indexed, so it is never assigned a
replica: two concurrent calls from one request to one deployment leave the
second waiting forever (an OpenAI request with ``n: 2`` hung that way, and it
held a slot of the batch until the client gave up). Whenever one request fans
out to the same deployment, make each call with `call_as_own_request`.

The price: Serve cancels a parent's children by that shared id, so children
made this way are not cancelled with their parent automatically. Callers
cancel them themselves (`deployments.llm.openai.choice_streams` closes every stream
on every path out).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def call_as_own_request(call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``call(*args, **kwargs)`` (a ``handle.method.remote``) under a fresh internal request id.

    Only the internal id changes: the request id users and logs see stays the parent's.
    """
    # NOTE: private Serve names; the n >= 2 tests of tests/deployments/test_llm_api.py pin this on real Serve.
    from ray.serve import context
    from ray.serve._private.utils import generate_request_id

    current = context._get_serve_request_context()
    token = context._serve_request_context.set(
        dataclasses.replace(current, _internal_request_id=generate_request_id()))
    try:
        return call(*args, **kwargs)
    finally:
        context._serve_request_context.reset(token)
