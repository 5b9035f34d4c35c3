"""`call_asgi` collects streamed responses whole (FileResponse, StreamingResponse)."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from fastapi.responses import FileResponse, StreamingResponse

from deployments.common.forwarding import call_asgi


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
