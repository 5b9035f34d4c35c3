"""A tiny routable service for gateway tests: it shows what the gateway forwarded.

NOTE: no `from __future__ import annotations` here: Serve rewrites the
signatures of class-based FastAPI routes and string annotations such as
"Request" then resolve to query parameters.

It follows the forwarding protocol through `ServiceIngress`, uses the uniform
error handlers, and has routes that fail in each way a real service can;
`sick_app` is the same service answering 503 on ``/health``.
"""


import asyncio

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from ray import serve

from deployments.common.errors import install_error_handlers
from deployments.common.forwarding import ServiceIngress, forwarded_caller
from deployments.common.request_id import RequestIdMiddleware, get_request_id

app = FastAPI(title="Echo")
install_error_handlers(app)
app.add_middleware(RequestIdMiddleware, echo_header=False)


class Item(BaseModel):
    name: str = Field(min_length=1)
    count: int = Field(ge=0)


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Echo(ServiceIngress):
    def __init__(self, healthy: bool = True):
        self._healthy = healthy  # False: a service that runs but says it is not well

    @app.get("/health")
    async def health(self) -> JSONResponse:
        if not self._healthy:
            return JSONResponse({"status": "unhealthy"}, status_code=503)
        return JSONResponse({"status": "healthy"})

    @app.api_route("/echo", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def echo(self, request: Request) -> dict:
        caller = forwarded_caller(request)
        return {
            "method": request.method,
            "path": request.url.path,
            "query": list(request.query_params.multi_items()),
            "body": (await request.body()).decode(),
            "content_type": request.headers.get("content-type"),
            "saw_credentials": "authorization" in request.headers or "x-api-key" in request.headers,
            "caller": None if caller is None else caller.to_dict(),
            "request_id": get_request_id(request),
        }

    @app.post("/items")
    async def items(self, item: Item) -> Item:
        return item

    @app.get("/boom")
    async def boom(self) -> dict:
        raise RuntimeError("service bug")

    @app.get("/plain-error")
    async def plain_error(self) -> JSONResponse:
        return JSONResponse({"detail": "teapot refuses"}, status_code=418)

    @app.get("/slow")
    async def slow(self, seconds: float = 3.0) -> dict:
        await asyncio.sleep(seconds)
        return {"slept": seconds}

    @app.get("/binary")
    async def binary(self) -> Response:
        return Response(content=bytes(range(256)), media_type="application/octet-stream")

    @app.get("/bytes")
    async def many_bytes(self, n: int = 1024) -> Response:
        """An answer of `n` bytes (a large file a service sends back)."""
        return Response(content=bytes(range(256)) * (n // 256) + bytes(n % 256), media_type="application/octet-stream")


echo_app = Echo.bind()
sick_app = Echo.bind(healthy=False)
