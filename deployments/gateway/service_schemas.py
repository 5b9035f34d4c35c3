"""The services' OpenAPI schemas, fetched through the forwarding protocol and cached.

The gateway asks a service for its schema the way it forwards any call: a
``GET /openapi.json`` through `ServiceClient.forward`, so it reaches every
service it can route, on any node, without knowing their HTTP addresses.

A schema is reused for ``ttl_s``. A fetch is bounded by ``timeout_s``; when
it fails (service down, slow, or without a schema) the last schema fetched
is kept, or there is none, and the next try waits `RETRY_AFTER_FAILURE_S`
(at most ``ttl_s``): documentation must never wait on, or fail with, a
service. One fetch per service runs at a time, however many callers ask.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from deployments.gateway.services import ServiceClient, ServiceUnavailable, UnknownService

logger = logging.getLogger(__name__)

RETRY_AFTER_FAILURE_S = 5.0
"""After a failed fetch, how long the previous answer (a schema or nothing) stands."""


@dataclass(frozen=True, slots=True)
class _Entry:
    schema: dict[str, Any] | None
    expires_at: float


class ServiceSchemas:
    """Per-service cache of OpenAPI documents (see the module docstring).

    Args:
        client: how the gateway reaches services.
        ttl_s: how long a fetched schema is reused.
        timeout_s: budget of one fetch.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, client: ServiceClient, *, ttl_s: float, timeout_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self._client = client
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._fetches: dict[str, asyncio.Task[_Entry]] = {}

    async def get(self, service: str) -> dict[str, Any] | None:
        """The schema of `service`: cached, freshly fetched, the last good one, or None."""
        entry = self._entries.get(service)
        if entry is not None and self._clock() < entry.expires_at:
            return entry.schema
        fetch = self._fetches.get(service)
        if fetch is None or fetch.done():
            fetch = self._fetches[service] = asyncio.ensure_future(self._refresh(service, entry))
        # NOTE: shielded, so a caller that goes away does not cancel the fetch others wait on.
        return (await asyncio.shield(fetch)).schema

    async def _refresh(self, service: str, previous: _Entry | None) -> _Entry:
        try:
            schema = await asyncio.wait_for(self._fetch(service), timeout=self._timeout_s)
        except (ServiceUnavailable, UnknownService, TimeoutError, ValueError) as exc:
            logger.warning("No OpenAPI schema from service %r (%s); /openapi.json goes on with %s", service,
                           str(exc)[:300] or type(exc).__name__,
                           "the last one fetched" if previous and previous.schema else "nothing from it")
            entry = _Entry(previous.schema if previous else None,
                           self._clock() + min(self._ttl_s, RETRY_AFTER_FAILURE_S))
        else:
            entry = _Entry(schema, self._clock() + self._ttl_s)
        self._entries[service] = entry
        return entry

    async def _fetch(self, service: str) -> dict[str, Any]:
        response = await self._client.forward(service, method="GET", path="/openapi.json", body=b"", query=[],
                                              headers={"accept": "application/json"}, caller=None,
                                              timeout_s=self._timeout_s)
        if response.status_code != 200:
            raise ValueError(f"GET /openapi.json answered {response.status_code}")
        schema = json.loads(response.body)
        if not isinstance(schema, dict) or not isinstance(schema.get("paths"), dict):
            raise ValueError("GET /openapi.json is not an OpenAPI document")
        return schema
