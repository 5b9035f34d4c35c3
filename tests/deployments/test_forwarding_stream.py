"""`call_asgi` collects streamed responses whole (FileResponse, StreamingResponse);
`stream_asgi` passes them on chunk by chunk and tells the app when its consumer leaves."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from fastapi.responses import FileResponse, StreamingResponse

from deployments.common.forwarding import ForwardedResponse, call_asgi, stream_asgi


def test_streamed_and_file_responses_arrive_complete(tmp_path):
    payload = bytes(range(256)) * 4096  # 1 MiB, sent in many chunks by FileResponse
    path = tmp_path / "result.bin"
    path.write_bytes(payload)
    app = FastAPI()

    @app.get("/file")
    async def file() -> FileResponse:
        return FileResponse(path, media_type="application/octet-stream")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def parts():
            for index in range(5):
                await asyncio.sleep(0)
                yield f"part{index};".encode()
        return StreamingResponse(parts(), media_type="text/plain")

    got_file = asyncio.run(call_asgi(app, method="GET", path="/file"))
    got_stream = asyncio.run(call_asgi(app, method="GET", path="/stream"))
    assert got_file.status_code == 200 and got_file.body == payload
    assert got_stream.body == b"part0;part1;part2;part3;part4;"


def _ticker_app(events: list[str]) -> FastAPI:
    app = FastAPI()

    @app.get("/ticks")
    async def ticks(count: int = 3) -> StreamingResponse:
        async def body():
            try:
                for index in range(count):
                    events.append(f"sent{index}")
                    yield f"data: {index}\n\n".encode()
                    await asyncio.sleep(0.01)
            finally:
                events.append("closed")
        return StreamingResponse(body(), media_type="text/event-stream")

    return app


def test_stream_asgi_yields_the_head_then_each_chunk():
    events: list[str] = []

    async def run() -> list:
        return [item async for item in stream_asgi(_ticker_app(events), method="GET", path="/ticks", query=[("count", "3")])]

    items = asyncio.run(run())
    head, chunks = items[0], items[1:]
    assert isinstance(head, ForwardedResponse) and head.status_code == 200 and head.body == b""
    assert head.header("content-type").startswith("text/event-stream")
    assert chunks == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]
    assert events[-1] == "closed"


def test_stream_asgi_consumer_leaving_early_closes_the_app_body():
    events: list[str] = []

    async def run() -> None:
        stream = stream_asgi(_ticker_app(events), method="GET", path="/ticks", query=[("count", "1000")])
        assert isinstance(await stream.__anext__(), ForwardedResponse)
        assert await stream.__anext__() == b"data: 0\n\n"
        await stream.aclose()

    asyncio.run(run())
    assert events[-1] == "closed" and len(events) < 100  # stopped soon after the consumer left


def test_stream_asgi_app_failing_before_answering_is_a_uniform_500():
    async def raw_app(scope, receive, send) -> None:  # no error middleware answers for it
        raise RuntimeError("broken before answering")

    async def run() -> list:
        return [item async for item in stream_asgi(raw_app, method="GET", path="/boom", headers={"x-request-id": "r-1"})]

    head, body = asyncio.run(run())
    assert head.status_code == 500
    assert b'"internal_error"' in body and b'"r-1"' in body
