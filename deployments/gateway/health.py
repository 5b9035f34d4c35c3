"""What ``GET /health`` reports: the configured services, the cache, the database and Redis.

Each component has its own ``status``; the overall status is ``unhealthy``
(HTTP 503) when the gateway's database is down, ``degraded`` when a
configured service, the cache or a configured Redis is not healthy, else
``healthy``. Only the services this deployment is configured with are
reported (`deployments.gateway.configured`: by default those Serve has been
asked to deploy; ``services_from`` says which rule applied), so a configured
service that is down always degrades the whole, and a service nobody
deployed is not listed at all. The cache (the ``llm`` service) is
``disabled`` when ``llm`` is not configured. When Serve's status does not
answer in time (a busy controller), every service of the last view (and the
cache) is ``unknown`` and the whole ``degraded``.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

from business_modules.storage import StorageError
from deployments.gateway.configured import FROM_SERVE, FROM_SETTINGS, configured_services
from deployments.gateway.services import AppState, ServiceUnavailable
from deployments.gateway.state import GatewayState

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"

CACHE_SERVICE = "llm"
"""The service that holds the KV cache; reported as ``cache``, not among ``services``."""

# A configured component in one of these states degrades the whole.
_DEGRADING = {UNHEALTHY, "deploying", "unknown", "not_deployed"}


_UNKNOWN = AppState("UNKNOWN", "Serve's status did not answer in time")


async def _service(state: GatewayState, service: str, app: str, app_state: AppState | None) -> dict[str, Any]:
    if app_state is _UNKNOWN:
        return {"status": "unknown", "app": app, "detail": app_state.message}
    if app_state is None:
        return {"status": "not_deployed", "app": app}
    if app_state.status == "DEPLOYING":
        return {"status": "deploying", "app": app}
    if app_state.status != "RUNNING":
        return {"status": UNHEALTHY, "app": app, "detail": f"{app_state.status}: {app_state.message}"[:300]}
    started = time.perf_counter()
    try:
        probe = await state.services.forward(service, method="GET", path="/health", body=b"", query=[], headers={},
                                             caller=None, timeout_s=state.settings.health_probe_timeout_s)
    except ServiceUnavailable as exc:
        return {"status": UNHEALTHY, "app": app, "detail": str(exc)[:300]}
    latency_ms = round((time.perf_counter() - started) * 1000, 2)
    if probe.status_code < 400:
        return {"status": HEALTHY, "app": app, "latency_ms": latency_ms, **_reported_model(probe.body)}
    if probe.status_code == 404:
        return {"status": HEALTHY, "app": app, "latency_ms": latency_ms, "detail": "running; no /health route"}
    return {"status": UNHEALTHY, "app": app, "detail": f"GET /health answered {probe.status_code}"}


_MODEL_KEYS = {"model": "model", "kind": "model_kind", "note": "model_note"}


def _reported_model(body: bytes) -> dict[str, Any]:
    """The model a service says it serves (the llm app's /health: id, demo or not, why), if any."""
    try:
        reported = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(reported, dict):
        return {}
    return {ours: str(reported[theirs])[:500] for theirs, ours in _MODEL_KEYS.items()
            if isinstance(reported.get(theirs), str)}


async def _database(state: GatewayState) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await state.db.ping(timeout_s=state.settings.health_probe_timeout_s)
    except StorageError as exc:
        return {"status": UNHEALTHY, "backend": state.db.dialect, "detail": str(exc)[:300]}
    return {"status": HEALTHY, "backend": state.db.dialect,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


async def _redis(state: GatewayState) -> dict[str, Any]:
    reachable = await state.limiter.check_redis(timeout_s=state.settings.health_probe_timeout_s)
    if reachable is None:
        return {"status": "disabled", "detail": "REDIS_URL not set: rate limits are per process",
                "rate_limits": state.limiter.backend}
    return {"status": HEALTHY if reachable else UNHEALTHY, "rate_limits": state.limiter.backend}


async def collect_health(state: GatewayState) -> dict[str, Any]:
    """The health report (see the module docstring)."""
    configured = await configured_services(state.services, expected=state.settings.gateway_expected_services,
                                           timeout_s=state.settings.health_probe_timeout_s * 2)

    def app_state(app: str) -> AppState | None:
        return _UNKNOWN if configured.app_states is None else configured.app_states.get(app)

    pairs = [(name, app) for name, app in configured.services if name != CACHE_SERVICE]
    cache_app = dict(configured.services).get(CACHE_SERVICE)
    results = await asyncio.gather(
        *(_service(state, name, app, app_state(app)) for name, app in pairs),
        _database(state),
        _redis(state),
        *([] if cache_app is None else [_service(state, CACHE_SERVICE, cache_app, app_state(cache_app))]),
    )
    services = dict(zip([name for name, _ in pairs], results[: len(pairs)], strict=True))
    database, redis, *probed_cache = results[len(pairs):]
    if probed_cache:
        cache = probed_cache[0]
    elif configured.app_states is None and configured.source == FROM_SERVE:  # llm may be deployed: cannot tell
        cache = {"status": "unknown", "detail": _UNKNOWN.message}
    else:
        why = ("llm is not in GATEWAY_EXPECTED_SERVICES" if configured.source == FROM_SETTINGS
               else "no Serve application of the llm service is deployed")
        cache = {"status": "disabled", "detail": why}
    if database["status"] != HEALTHY:
        overall = UNHEALTHY
    elif any(c["status"] in _DEGRADING for c in (*services.values(), cache)) or redis["status"] == UNHEALTHY:
        overall = DEGRADED
    else:
        overall = HEALTHY
    return {"status": overall, "services": services, "cache": cache, "database": database, "redis": redis,
            "services_from": configured.source, "timestamp": datetime.now(UTC).isoformat()}
