"""Pieces every job service's FastAPI app uses the same way (Export, BUL, Gamma).

What a caller is told about a failing database, whose records a request may
see, which path prefix the client used (the gateway's or the app's own), and
how times are written in answers.
"""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import Request

from business_modules.storage import StorageError, StorageTimeoutError, StorageUnavailableError, UnstorableValueError
from deployments.common.errors import ErrorSpec
from deployments.common.forwarding import forwarded_caller

STORAGE_ERRORS: dict[type[BaseException], ErrorSpec] = {
    UnstorableValueError: ErrorSpec(422, "unstorable_value"),
    StorageTimeoutError: ErrorSpec(503, "storage_timeout", {"Retry-After": "1"},
                                   "The database did not answer in time"),
    StorageUnavailableError: ErrorSpec(503, "storage_unavailable", {"Retry-After": "5"}, "The database is unavailable"),
    StorageError: ErrorSpec(503, "storage_error", {"Retry-After": "5"}, "The database failed on this request"),
}
"""A database failure is the service's outage, never the caller's fault: 503 with a stable code and
``Retry-After`` (a client retries when the database is back; tests/faults restarts it under load); but text the
database cannot hold (a NUL character, an integer past 64 bits) is the caller's: 422 ``unstorable_value``."""


def caller_tenant(request: Request) -> str | None:
    """The tenant whose records this request may see (None: called on the app's own route)."""
    caller = forwarded_caller(request)
    return caller.tenant if caller else None


def client_base_path(request: Request, gateway_prefix: str) -> str:
    """The path prefix the client used to reach this app: the gateway's, or the app's own route."""
    if forwarded_caller(request) is not None:
        return gateway_prefix
    return str(request.scope.get("root_path", "")).rstrip("/")


def iso_time(epoch: float | None) -> str | None:
    """An epoch time as ISO 8601 in UTC, to the second."""
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="seconds")
