"""What ``GET /health`` reports: every service, the cache, the database and Redis.

Each component has its own ``status``; the overall status is ``unhealthy``
(HTTP 503) when the gateway's database is down, ``degraded`` when a deployed
service, the cache or a configured Redis is not healthy, else ``healthy``.
A service that is not deployed is reported (``not_deployed``) without
degrading the whole: not every installation runs every service. When Serve's
status does not answer in time (a busy controller), every service is
``unknown`` and the whole ``degraded``.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from business_modules.storage import StorageError
from deployments.gateway.services import CACHE_APP, AppState, ServiceUnavailable
from deployments.gateway.state import GatewayState

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"


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
        return {"status": HEALTHY, "app": app, "latency_ms": latency_ms}
    if probe.status_code == 404:
        return {"status": HEALTHY, "app": app, "latency_ms": latency_ms, "detail": "running; no /health route"}
    return {"status": UNHEALTHY, "app": app, "detail": f"GET /health answered {probe.status_code}"}


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
    try:
        app_states = await asyncio.wait_for(state.services.app_states(),
                                            timeout=state.settings.health_probe_timeout_s * 2)
    except TimeoutError:  # the controller is busy (e.g. deploying): say so, not "not deployed"
        app_states = {app: _UNKNOWN for _, app in state.services.registry.items()}
    pairs = [(name, app) for name, app in state.services.registry.items() if name != "llm"]
    names = [name for name, _ in pairs]
    cache_app = dict(state.services.registry.items()).get("llm", CACHE_APP)
    results = await asyncio.gather(
        *(_service(state, name, app, app_states.get(app)) for name, app in pairs),
        _service(state, "llm", cache_app, app_states.get(cache_app)),
        _database(state),
        _redis(state),
    )
    services = dict(zip(names, results[: len(names)], strict=True))
    cache, database, redis = results[len(names):]
    if database["status"] != HEALTHY:
        overall = UNHEALTHY
    elif any(c["status"] in (UNHEALTHY, "deploying", "unknown") for c in (*services.values(), cache)) or \
            redis["status"] == UNHEALTHY:
        overall = DEGRADED
    else:
        overall = HEALTHY
    return {"status": overall, "services": services, "cache": cache, "database": database, "redis": redis,
            "timestamp": datetime.now(UTC).isoformat()}
