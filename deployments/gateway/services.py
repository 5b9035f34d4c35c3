"""Which services the gateway knows, and how it reaches them (Serve handles).

`SERVICES` maps the URL name (``/api/v1/<service>/...``, also the auth scope)
to the Serve application name; `LEGACY_TARGETS` maps the original
Integration System's ``target_system`` names onto the same services.

`ServeServiceClient` resolves ``serve.get_app_handle(app)`` lazily (in a
thread: it blocks on the controller) and caches the handle; it reads the
applications' status from the controller at most once per
``status_ttl_s`` so a service that is not deployed, failed or unhealthy is
answered 503 at once instead of waiting for replicas that will not come.
A request finding the view expired but recent (under `MAX_STALE_TTLS` periods)
does not wait for that read: it is answered from the view while a refresh runs
beside it (`read_app_states` says why). An older view (after an idle spell)
is read afresh first, so a request is never judged on a view from long ago.
Every forwarded call is bounded by a timeout and cancelled on timeout or
client disconnect. `forward_stream` is the streaming variant (the service's
``handle_request_stream``): the head within the timeout, then each chunk
within the same budget of silence.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from deployments.common.forwarding import ForwardedResponse
from deployments.common.grpc_limits import GRPC_REQUEST_MAX_BYTES, by_value

logger = logging.getLogger(__name__)

SERVICES: dict[str, str] = {
    "redundancy": "redundancy",
    "bul": "bul",
    "gamma": "gamma",
    "agents": "agents",
    "export": "export",
    "llm": "llm",
}
"""URL/scope name -> Serve application name."""

SERVICE_ALIASES: dict[str, str] = {"exports": "export"}
"""Other URL names of a service (the original root README's ``POST /api/v1/exports/generate``);
an alias is the service itself: same scope, same rate limit, same routes."""

LEGACY_TARGETS: dict[str, str] = {
    "content_redundancy": "redundancy",
    "bul": "bul",
    "gamma_app": "gamma",
    "business_agents": "agents",
    "export_ia": "export",
}
"""The original ``target_system`` names -> service names."""

# Serve application states that can take requests (DEPLOYING also covers an
# update while the old replicas still serve).
_ROUTABLE = {"RUNNING", "DEPLOYING"}


class ServiceUnavailable(Exception):
    """The service is not deployed, not healthy, or failed to answer (503)."""

    def __init__(self, service: str, reason: str, *, retry_after_s: int | None = None):
        super().__init__(f"Service {service!r} is unavailable: {reason}")
        self.service = service
        self.retry_after_s = retry_after_s


class ServiceTimeout(ServiceUnavailable):
    """The service did not answer within the gateway's time budget (504)."""


class UnknownService(Exception):
    """No service by this name (404)."""


@dataclass(frozen=True, slots=True)
class AppState:
    """Serve's view of one application."""

    status: str  # RUNNING, DEPLOYING, DEPLOY_FAILED, UNHEALTHY, DELETING, NOT_STARTED, or NOT_DEPLOYED
    message: str = ""


class ServiceClient(Protocol):
    """How the gateway reaches services; the Serve implementation is `ServeServiceClient`."""

    registry: ServiceRegistry

    async def app_states(self) -> dict[str, AppState]: ...

    def known_app_states(self) -> dict[str, AppState]:
        """The last view `app_states` read, without asking Serve (empty before the first read)."""
        ...

    async def routable_app(self, service: str) -> str:
        """The Serve app of `service` if it can take requests (`ServiceUnavailable`, `UnknownService` otherwise)."""
        ...

    async def forward(self, service: str, *, method: str, path: str, body: bytes, query: list[tuple[str, str]],
                      headers: dict[str, str], caller: dict[str, Any] | None, timeout_s: float) -> ForwardedResponse: ...

    async def forward_stream(self, service: str, *, method: str, path: str, body: bytes,
                             query: list[tuple[str, str]], headers: dict[str, str], caller: dict[str, Any] | None,
                             timeout_s: float) -> tuple[ForwardedResponse, AsyncIterator[bytes]]: ...


_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class ServiceRegistry:
    """Service name -> Serve application: the built-in `SERVICES` plus configured ones."""

    def __init__(self, extra: Mapping[str, str] | None = None):
        bad = [name for name in (extra or {}) if not _SERVICE_NAME.match(name)]
        if bad:
            raise ValueError(f"Service names must match {_SERVICE_NAME.pattern}: {bad}")
        self._apps = {**SERVICES, **(extra or {})}

    def canonical(self, service: str) -> str:
        """The service a URL name means (`SERVICE_ALIASES`), unless a configured service has that name."""
        return service if service in self._apps else SERVICE_ALIASES.get(service, service)

    def app_for(self, service: str) -> str:
        """The Serve application of `service` (`UnknownService` when there is none)."""
        try:
            return self._apps[service]
        except KeyError:
            raise UnknownService(
                f"No service {service!r}; known services: {', '.join(sorted(self._apps))}") from None

    def items(self) -> list[tuple[str, str]]:
        """(service, app) pairs, in a stable order."""
        return sorted(self._apps.items())


MAX_STALE_TTLS = 5
"""How many status periods old a view may be and still answer a request while it is refreshed."""


def read_app_states() -> dict[str, AppState]:
    """Each Serve application's status and message, as `serve.status()` gives them, for a tenth of its cost.

    `serve.status()` validates the controller's whole answer into pydantic models, which cloudpickles every
    deployment's request router class (the LLM's cache-aware router): ~80 ms of a gateway's CPU per call,
    measured on this machine. The controller's answer itself (a dict) takes ~8 ms and holds what is read
    here. Serve's client API is private, so any change to it falls back to `serve.status()`."""
    from ray import serve

    try:
        from ray.serve.context import _get_global_client

        client = _get_global_client(raise_if_no_controller_running=False)
        if client is not None:
            return {name: AppState(str(getattr(app["status"], "value", app["status"])), app.get("message") or "")
                    for name, app in client.get_serve_details().get("applications", {}).items()}
    except (ImportError, AttributeError, KeyError, TypeError):
        pass
    status = serve.status()
    return {name: AppState(str(getattr(app.status, "value", app.status)), app.message or "")
            for name, app in status.applications.items()}


class ServeServiceClient:
    """`ServiceClient` over Ray Serve application handles."""

    def __init__(self, registry: ServiceRegistry, *, transport: str = "grpc", status_ttl_s: float = 1.0,
                 controller_timeout_s: float = 5.0):
        if transport not in ("grpc", "actor"):
            raise ValueError(f"transport must be 'grpc' or 'actor', got {transport!r}")
        self.registry = registry
        self._transport = transport
        self._status_ttl_s = status_ttl_s
        self._controller_timeout_s = controller_timeout_s
        self._handles: dict[tuple[str, str, bool], Any] = {}  # (app, transport, stream) -> handle
        self._states: dict[str, AppState] = {}
        self._states_at = float("-inf")
        self._refresh: asyncio.Task[dict[str, AppState]] | None = None

    async def app_states(self) -> dict[str, AppState]:
        """Every application's state, read at most once per ``status_ttl_s`` (one refresh at a time).

        Under traffic the view is never older than a few periods, and an expired one is returned at once
        while it is refreshed in the background, so no request pays for the read: measured through the
        gateway, the request that found the view expired (one a second under load) waited ~100 ms for it,
        which doubled a cached prompt's time to first token. A view older than `MAX_STALE_TTLS` periods
        (the first read, or the first request after an idle spell) is awaited: deploying then, running now."""
        age = time.monotonic() - self._states_at
        if age < self._status_ttl_s:
            return self._states
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._load_states())
        if age < self._status_ttl_s * MAX_STALE_TTLS:
            return self._states
        return await asyncio.shield(self._refresh)

    def known_app_states(self) -> dict[str, AppState]:
        """The last view read from the controller (what to go by while it does not answer)."""
        return self._states

    async def _load_states(self) -> dict[str, AppState]:
        try:
            states = await asyncio.wait_for(asyncio.to_thread(read_app_states), timeout=self._controller_timeout_s)
        except Exception as exc:  # noqa: BLE001 - controller unreachable: keep the last view, say why
            logger.warning("Could not read Serve status (%s); keeping the previous view", exc)
            if self._states_at > float("-inf"):  # a view to go by: retry in half a period, not on every request
                self._states_at = max(self._states_at, time.monotonic() - self._status_ttl_s / 2)
            return self._states
        self._states = states
        self._states_at = time.monotonic()
        return self._states

    def transport_for(self, body: bytes) -> str:
        """The configured transport, or Ray actor calls for a body too large for a replica's gRPC server.

        A replica's gRPC server refuses messages over `GRPC_REQUEST_MAX_BYTES` (Serve's default, kept by
        services that do not raise it), while the body limit allows more: such a body goes by reference.
        """
        return "actor" if len(body) > GRPC_REQUEST_MAX_BYTES else self._transport

    async def _handle(self, app: str, transport: str, stream: bool) -> Any:
        key = (app, transport, stream)
        handle = self._handles.get(key)
        if handle is None:
            from ray import serve

            handle = await asyncio.wait_for(asyncio.to_thread(serve.get_app_handle, app),
                                            timeout=self._controller_timeout_s)
            if transport == "grpc":
                handle = by_value(handle)
            if stream:
                handle = handle.options(stream=True)
            self._handles[key] = handle
        return handle

    async def routable_app(self, service: str) -> str:
        """The app of `service`, or `ServiceUnavailable` when Serve says it cannot take requests."""
        app = self.registry.app_for(service)
        state = (await self.app_states()).get(app)
        if state is None and self._states_at > float("-inf"):
            raise ServiceUnavailable(service, "not deployed")
        # NOTE: with no view of Serve yet (the first serve.status() of a process can take
        # longer than its budget on a busy node), try the handle: it fails fast if the app is absent.
        if state is not None and state.status not in _ROUTABLE:
            raise ServiceUnavailable(service, f"application is {state.status}", retry_after_s=5)
        return app

    async def _routable_handle(self, service: str, *, stream: bool, body: bytes) -> tuple[str, Any]:
        """The app of `service` and a handle to it, or `ServiceUnavailable` when it cannot take requests."""
        from ray.serve.exceptions import RayServeException

        app = await self.routable_app(service)
        try:
            handle = await self._handle(app, self.transport_for(body), stream)
        except (RayServeException, TimeoutError) as exc:
            raise ServiceUnavailable(service, f"no handle ({exc})", retry_after_s=5) from exc
        return app, handle

    def _forget(self, app: str) -> None:
        for key in [k for k in self._handles if k[0] == app]:
            del self._handles[key]

    async def _answer(self, service: str, app: str, call: Any, awaitable: Any, timeout_s: float) -> Any:
        """What ``awaitable`` (the call's result or first item) gives within ``timeout_s``; failures as 503/504."""
        import ray.exceptions
        from ray.serve.exceptions import RayServeException

        try:
            return await asyncio.wait_for(awaitable, timeout=timeout_s)
        except TimeoutError as exc:
            call.cancel()
            raise ServiceTimeout(service, f"no answer within {timeout_s:g} s") from exc
        except asyncio.CancelledError:
            call.cancel()
            raise
        except StopAsyncIteration:
            raise ServiceUnavailable(service, "its stream ended before a response") from None
        except (ray.exceptions.RayError, RayServeException) as exc:
            self._forget(app)
            raise ServiceUnavailable(service, _short(exc), retry_after_s=5) from exc

    async def forward(self, service: str, *, method: str, path: str, body: bytes, query: list[tuple[str, str]],
                      headers: dict[str, str], caller: dict[str, Any] | None, timeout_s: float) -> ForwardedResponse:
        app, handle = await self._routable_handle(service, stream=False, body=body)
        response = handle.handle_request.remote(method, path, body, query, headers, caller)
        result = await self._answer(service, app, response, response, timeout_s)
        if not isinstance(result, ForwardedResponse):
            raise ServiceUnavailable(service, "its handle_request does not follow the forwarding protocol")
        return result

    async def forward_stream(self, service: str, *, method: str, path: str, body: bytes,
                             query: list[tuple[str, str]], headers: dict[str, str], caller: dict[str, Any] | None,
                             timeout_s: float) -> tuple[ForwardedResponse, AsyncIterator[bytes]]:
        app, handle = await self._routable_handle(service, stream=True, body=body)
        stream = handle.handle_request_stream.remote(method, path, body, query, headers, caller)
        head = await self._answer(service, app, stream, stream.__anext__(), timeout_s)
        if not isinstance(head, ForwardedResponse):
            stream.cancel()
            raise ServiceUnavailable(service, "its handle_request_stream does not follow the forwarding protocol")
        return head, _chunks(service, stream, timeout_s)


async def _chunks(service: str, stream: Any, idle_timeout_s: float) -> AsyncIterator[bytes]:
    """The body chunks of a streamed response; a silent, failed or abandoned stream is cancelled.

    The status line is already sent when a chunk fails, so a failure can only
    end the body early (logged); the service's own error events, if it sends
    them, arrive like any other chunk.
    """
    import ray.exceptions
    from ray.serve.exceptions import RayServeException

    try:
        while True:
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), timeout=idle_timeout_s)
            except StopAsyncIteration:
                return
            except TimeoutError:
                logger.warning("Stream from %r silent for %g s; ending it", service, idle_timeout_s)
                return
            except (ray.exceptions.RayError, RayServeException) as exc:
                logger.warning("Stream from %r failed: %s", service, _short(exc))
                return
            yield chunk
    finally:
        stream.cancel()


def _short(exc: BaseException) -> str:
    """The first line of a (possibly huge, remote) exception."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]
