"""How a request's events leave the batcher: deltas merged, and at most one per ``interval_s`` after the first.

Why: each streamed item crosses up to three Python processes on the served
path (the model replica's event loop, the ingress or gateway that shapes
it as a server-sent event, Serve's proxy that writes it), about a
millisecond of CPU in each. With 16 streams at once on 2 cores that was
~2 ms per token in the ingress and the proxy alone, 16 times a decode step:
CPU the model's threads needed (16 streamed 128-token answers of the 24M
Llama: 22% of the machine's CPU went to those two). vLLM and SGLang
call the same knob ``stream_interval`` (in tokens); here it is time, so a
lone fast stream and a crowded slow one both get a chunk per interval.

The first delta goes at once (time to first token never waits), as does a
delta the interval has already passed for; the ones after it wait for the
rest of the interval, gathering whatever the model produced meanwhile.
The last delta goes with ``done`` (or ``error``) without waiting. With
``interval_s`` 0 a delta still takes the deltas already queued behind it:
a consumer slower than the decode steps gets what piled up as one item, so
its overhead never throttles the batch.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator


def merge_deltas(pending: dict[str, Any] | None, event: dict[str, Any]) -> dict[str, Any]:
    """Two deltas as one: text, token ids and logprob entries joined, anything else (prompt logprobs) kept."""
    if pending is None:
        return event
    merged = {**pending, **event, "text": pending["text"] + event["text"],
              "token_ids": pending["token_ids"] + event["token_ids"]}
    if "logprobs" in pending or "logprobs" in event:
        merged["logprobs"] = pending.get("logprobs", []) + event.get("logprobs", [])
    return merged


async def paced_events(queue: asyncio.Queue[dict[str, Any]], interval_s: float) -> AsyncIterator[dict[str, Any]]:
    """The events put on ``queue`` (deltas, then one ``done`` or ``error``), paced as the module docstring says."""
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    pending: dict[str, Any] | None = None
    while True:
        if pending is None:
            event = await queue.get()
        elif not queue.empty():
            event = queue.get_nowait()
        else:
            wait = next_at - loop.time()
            if wait <= 0:
                yield pending
                pending = None
                next_at = loop.time() + interval_s
                continue
            try:
                async with asyncio.timeout(wait):
                    event = await queue.get()  # a cancelled get takes nothing off the queue
            except TimeoutError:
                continue
        if event["type"] == "delta":
            pending = merge_deltas(pending, event)
            continue
        if pending is not None:
            yield pending
        yield event
        return
