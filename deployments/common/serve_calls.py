"""Calling a deployment handle several times from one Serve request.

Ray Serve 2.60 gives every handle call made while serving a request the
*same* internal request id (the one its proxy made for the parent request).
Its base request router hands a chosen replica to the pending request with
that id, and a second pending call with an id it already holds is never
indexed, so a router without Serve's FIFO mixin never assigns it a replica: two
concurrent calls from one request to one deployment left the second waiting
forever (an OpenAI request with ``n: 2`` hung that way on the cache-aware
router, and it held a slot of the batch until the client gave up).
`deployments.llm.router.CacheAwareRouter` now matches by the request object
itself, so callers that do not use this helper (a user's own deployment) are
safe too; our own fan-outs still make each call with `call_as_own_request`, so
that ids stay unique for Serve's indexes and for any router that keys on them.

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
