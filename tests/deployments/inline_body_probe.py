"""A service that says how its request body reached it (`deployments.common.inline_body`), for test_inline_body.

NOTE: no `from __future__ import annotations` (Serve rewrites route signatures).
"""

import asyncio

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from ray import serve

from deployments.common.inline_body import SCOPE_KEY, InlineBodyMiddleware


def _app(inline_side: bool) -> FastAPI:
    app = FastAPI()

    @app.post("/body")
    async def body(request: Request) -> dict:
        data = await request.body()
        return {"inline": isinstance(request.scope.get(SCOPE_KEY), bytes), "length": len(data),
                "head": data[:16].decode("latin-1")}

    @app.post("/stream")
    async def stream(request: Request) -> StreamingResponse:
        data = await request.body()

        async def chunks():
            for index in range(200):  # ~20 s unless the client leaves
                yield f"{index}:{len(data)}\n".encode()
                await asyncio.sleep(0.1)
        return StreamingResponse(chunks(), media_type="text/plain")

    if inline_side:
        app.add_middleware(InlineBodyMiddleware)
    return app


inline_app = _app(True)
plain_app = _app(False)


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(inline_app)
class InlineProbe:
    pass


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(plain_app)
class PlainProbe:
    pass
