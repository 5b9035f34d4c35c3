"""The backend streams behind one OpenAI request: one per choice, opened, merged and always closed.

The backend (the engine's ``generate_stream``, through a Serve handle or in
process) yields ``{"type": "delta", "text", "token_ids"}`` events and then one
``{"type": "done", "finish_reason", "prompt_tokens", "completion_tokens",
"cached_tokens"}``. It refuses a request by raising ValueError before the
first event, so `open_choices` waits for every choice's first event before
the HTTP response starts: a refusal is still a clean 400, even when streaming.

Closing matters: the engine frees a request's batch slot when its stream is
closed, so every path out (done, error, client gone, cancellation) ends in
`ChoiceStream.close`: ``aclose()`` on an async generator, ``cancel()`` on a
Serve ``DeploymentResponseGenerator`` (it has no ``aclose``; cancelling only
our local ``await`` would leave the replica generating).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

logger = logging.getLogger(__name__)

StreamFn = Callable[[dict[str, Any]], AsyncIterator[dict[str, Any]]]
"""Starts one backend request; returns its async iterator of events (not awaited)."""

FINISH_REASONS = ("stop", "length")
_QUEUE_EVENTS_PER_CHOICE = 16


class BackendProtocolError(RuntimeError):
    """The backend broke the event protocol (a bug on its side: answered as a 500)."""


def check_event(event: Any) -> dict[str, Any]:
    """`event` if it is a well-formed delta or done event."""
    if not isinstance(event, dict):
        raise BackendProtocolError(f"backend event is {type(event).__name__}, not a dict")
    kind = event.get("type")
    if kind == "delta":
        if not isinstance(event.get("text"), str):
            raise BackendProtocolError("delta event without string 'text'")
        return event
    if kind == "done":
        if event.get("finish_reason") not in FINISH_REASONS:
            raise BackendProtocolError(f"done event with finish_reason {event.get('finish_reason')!r}")
        for key in ("prompt_tokens", "completion_tokens", "cached_tokens"):
            if not isinstance(event.get(key), int):
                raise BackendProtocolError(f"done event without integer {key!r}")
        return event
    raise BackendProtocolError(f"unknown backend event type {kind!r}")


class ChoiceStream:
    """One choice's backend stream: hands out events until ``done``, then nothing."""

    def __init__(self, index: int, iterator: AsyncIterator[dict[str, Any]]) -> None:
        self.index = index
        self._iterator = iterator
        self._buffered: dict[str, Any] | None = None
        self.finished = False  # the done event was received
        self.closed = False

    async def start(self) -> None:
        """Wait for the first event (where a refusal surfaces)."""
        self._buffered = await self._pull()

    async def next(self) -> dict[str, Any] | None:
        """The next event, or None after ``done``."""
        if self.finished:
            return None
        event, self._buffered = (self._buffered, None) if self._buffered is not None else (await self._pull(), None)
        if event["type"] == "done":
            self.finished = True
        return event

    async def _pull(self) -> dict[str, Any]:
        try:
            event = await self._iterator.__anext__()
        except StopAsyncIteration:
            raise BackendProtocolError("backend stream ended without a done event") from None
        return check_event(event)

    async def close(self) -> None:
        """Stop the backend (idempotent); after ``done`` a Serve stream ends by itself."""
        if self.closed:
            return
        self.closed = True
        aclose = getattr(self._iterator, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except RuntimeError:
                logger.warning("backend stream for choice %d could not be closed", self.index, exc_info=True)
        elif not self.finished and hasattr(self._iterator, "cancel"):
            self._iterator.cancel()


async def close_all(streams: Sequence[ChoiceStream]) -> None:
    for stream in streams:
        await stream.close()


async def open_choices(stream_fn: StreamFn, requests: Sequence[dict[str, Any]]) -> list[ChoiceStream]:
    """Start one backend stream per request and wait for each first event.

    Raises what the backend raised (e.g. its ValueError refusal), after closing
    every stream it opened.
    """
    streams: list[ChoiceStream] = []
    try:
        for index, request in enumerate(requests):
            streams.append(ChoiceStream(index, stream_fn(request)))
        if len(streams) == 1:
            await streams[0].start()
        else:
            try:
                async with asyncio.TaskGroup() as group:
                    for stream in streams:
                        group.create_task(stream.start())
            except BaseExceptionGroup as group_error:
                raise _first_error(group_error) from None
    except BaseException:
        await close_all(streams)
        raise
    return streams


def _first_error(group_error: BaseExceptionGroup) -> BaseException:
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group_error]
    while pending:
        error = pending.pop(0)
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        else:
            leaves.append(error)
    return next((e for e in leaves if not isinstance(e, asyncio.CancelledError)), leaves[0])


class MergedEvents:
    """``(choice index, event)`` from all streams as they arrive, until every choice is done.

    An async iterator with ``aclose`` (use it under ``contextlib.aclosing``)
    rather than an async generator: closing it from a response that is being
    torn down must stop the pumps and close the streams now, and a plain
    object has no generator state ("already running") to trip over.
    Several choices are pumped by one task each into a bounded queue, so a
    slow client still slows the backends down.
    """

    def __init__(self, streams: Sequence[ChoiceStream]) -> None:
        self._streams = list(streams)
        self._queue: asyncio.Queue[tuple[int, dict[str, Any] | None, BaseException | None]] = asyncio.Queue(
            maxsize=_QUEUE_EVENTS_PER_CHOICE * len(streams))
        self._tasks: list[asyncio.Task[None]] = []
        self._running = len(streams)
        self._closed = False

    def __aiter__(self) -> MergedEvents:
        return self

    async def __anext__(self) -> tuple[int, dict[str, Any]]:
        if self._closed:
            raise StopAsyncIteration
        if len(self._streams) == 1:  # no task needed for the common case
            event = await self._streams[0].next()
            if event is None:
                await self.aclose()
                raise StopAsyncIteration
            return 0, event
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._pump(stream)) for stream in self._streams]
        while self._running:
            index, event, error = await self._queue.get()
            if error is not None:
                raise error
            if event is not None:
                return index, event
            self._running -= 1
        await self.aclose()
        raise StopAsyncIteration

    async def _pump(self, stream: ChoiceStream) -> None:
        try:
            while (event := await stream.next()) is not None:
                await self._queue.put((stream.index, event, None))
            await self._queue.put((stream.index, None, None))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            await self._queue.put((stream.index, None, exc))

    async def aclose(self) -> None:
        """Stop the pumps, then close every stream (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        # The pumps must have stopped before their streams are closed under them.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await close_all(self._streams)
