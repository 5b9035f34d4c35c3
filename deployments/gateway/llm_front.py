"""The LLM's OpenAI API, built inside the gateway over the model replicas' handle.

The gateway serves ``/v1/...`` (and ``/api/v1/llm/...``) itself: after auth
and the rate limit, the request runs through the same FastAPI app the `llm`
application's ingress serves (`deployments.llm.openai.routes`), in the
gateway's process, and that app calls ``LLMServer`` directly. Forwarding to
the ingress instead would add a replica hop (a Serve call, the ingress's
ASGI work) to every request and to every streamed token's path; measured on
this path in the closing note of issue 16.

The app's options (model id, context, limits) come from the llm app's
ingress (``openai_config`` of `LLMServerFront` or of `LLMIngress`): the
gateway does not know the llm app's settings, and the app stays the one
place they are read. They are asked
again every ``refresh_s`` so a redeployed model is picked up; while the
ingress does not answer, the last app keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from starlette.types import ASGIApp

from deployments.common.llm_handle import LLM_DEPLOYMENT
from deployments.gateway.services import ServiceClient, ServiceUnavailable
from deployments.llm.openai.over_handle import openai_app_over

logger = logging.getLogger(__name__)

OPENAI_SERVICE = "llm"
"""The service whose OpenAI API the gateway serves at ``/v1`` (its scope and rate limit apply)."""


class OpenAIFront(Protocol):
    """Where the gateway gets the ASGI app of the OpenAI API (tests give an in-process one)."""

    async def app(self) -> ASGIApp:
        """The app to run the request through; `ServiceUnavailable` when the LLM cannot serve."""
        ...


class ServeOpenAIFront:
    """`OpenAIFront` over the `llm` Serve application's handles."""

    def __init__(self, services: ServiceClient, *, refresh_s: float = 30.0, timeout_s: float = 10.0):
        self._services = services
        self._refresh_s = refresh_s
        self._timeout_s = timeout_s
        self._built: tuple[str, dict[str, Any], ASGIApp] | None = None  # (app name, options, ASGI app)
        self._checked_at = float("-inf")
        self._lock = asyncio.Lock()

    async def app(self) -> ASGIApp:
        name = await self._services.routable_app(OPENAI_SERVICE)
        if (fresh := self._fresh(name)) is not None:
            return fresh
        async with self._lock:
            if (fresh := self._fresh(name)) is not None:  # another request refreshed it meanwhile
                return fresh
            built = self._built
            try:
                options = await self._options(name)
            except Exception as exc:  # noqa: BLE001 - a remote failure of any kind: keep serving, or 503
                if built is not None and built[0] == name:
                    logger.warning("The %s ingress did not give its options (%s); keeping the last ones", name, exc)
                    self._checked_at = time.monotonic()
                    return built[2]
                raise ServiceUnavailable(OPENAI_SERVICE, f"its ingress did not answer ({type(exc).__name__})",
                                         retry_after_s=5) from exc
            self._checked_at = time.monotonic()
            if built is None or built[:2] != (name, options):
                self._built = (name, options, await self._build(name, options))
                logger.info("Serving the OpenAI API of app %r at /v1: model %r", name, options.get("model_id"))
            return self._built[2]

    def _fresh(self, name: str) -> ASGIApp | None:
        built = self._built
        if built is not None and built[0] == name and time.monotonic() - self._checked_at < self._refresh_s:
            return built[2]
        return None

    async def _options(self, name: str) -> dict[str, Any]:
        from ray import serve

        ingress = await asyncio.wait_for(asyncio.to_thread(serve.get_app_handle, name), timeout=self._timeout_s)
        return await asyncio.wait_for(ingress.openai_config.remote(), timeout=self._timeout_s)

    async def _build(self, name: str, options: dict[str, Any]) -> ASGIApp:
        from ray import serve

        server = await asyncio.wait_for(asyncio.to_thread(serve.get_deployment_handle, LLM_DEPLOYMENT, name),
                                        timeout=self._timeout_s)
        # Found by the fault drill: right after the gateway's replica was replaced, the first request through
        # the new handle (a stream, sent before the handle's router had its replica list) never reached the
        # model and hung until its client left, while every later one went through. A bounded first call
        # here takes that place; requests use the handle once it has answered (or after the bound).
        try:
            await asyncio.wait_for(server.get_stats.remote(), timeout=self._timeout_s)
        except Exception as exc:  # noqa: BLE001 - a probe: the requests' own errors and bounds still apply
            logger.warning("The first call through the %s handle of app %r did not answer (%s); serving anyway",
                           LLM_DEPLOYMENT, name, type(exc).__name__)
        return openai_app_over(server, options)
