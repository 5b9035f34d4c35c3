"""The proxy's own plain-text 500 (a replica died under the request) becomes a retryable 503; nothing else changes."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from deployments.common.proxy_failures import ProxyFailureMiddleware


def _app() -> ProxyFailureMiddleware:
    async def died(request):  # what Serve's proxy sends when the replica is gone
        return PlainTextResponse("Internal Server Error", status_code=500, headers={"x-request-id": "r-1"})

    async def ours(request):  # an app's own 500 has the uniform JSON body: left as it is
        return JSONResponse({"error": {"code": "internal_error", "message": "m", "request_id": "r-2"}}, 500)

    async def fine(request):
        return PlainTextResponse("ok")

    return ProxyFailureMiddleware(Starlette(routes=[Route("/died", died), Route("/ours", ours), Route("/fine", fine)]))


async def test_a_plain_text_500_becomes_a_503_with_retry_after_and_the_uniform_body() -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app()), base_url="http://proxy") as http:
        died = await http.get("/died")
        assert died.status_code == 503 and died.headers["retry-after"] == "1"
        assert died.json() == {"error": {"code": "service_unavailable", "request_id": "r-1",
                                         "message": "The service replica serving this request went away; retry."}}
        ours = await http.get("/ours")
        assert ours.status_code == 500 and ours.json()["error"]["code"] == "internal_error"
        fine = await http.get("/fine")
        assert fine.status_code == 200 and fine.text == "ok"
