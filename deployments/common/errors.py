"""The uniform error body, ``{"error": {"code", "message", "request_id"}}``, for every error.

`install_error_handlers(app, domain_errors)` makes a FastAPI app answer every
failure in that shape: its own domain exceptions (through the table you pass,
the ONE place where a service maps domain errors to HTTP), `ApiError`,
Starlette's 404/405, request validation (422; malformed JSON is 400
``malformed_json``) and anything unexpected (500 ``internal_error``, logged
with its traceback, message without internals)::

    install_error_handlers(app, {
        CorpusNotFound: ErrorSpec(404, "corpus_not_found"),
        InvalidThreshold: ErrorSpec(422, "invalid_threshold"),
    })
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.common.error_codes import code_for_status
from deployments.common.request_id import get_request_id

logger = logging.getLogger(__name__)

def error_body(code: str, message: str, request_id: str | None, **extra: Any) -> dict[str, Any]:
    """The uniform error body (`extra` adds fields next to code/message/request_id)."""
    return {"error": {"code": code, "message": message, "request_id": request_id, **extra}}


def error_response(
    status: int, code: str, message: str, request_id: str | None, *, headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A JSONResponse carrying the uniform error body."""
    return JSONResponse(error_body(code, message, request_id, **extra), status_code=status, headers=dict(headers or {}))


class ApiError(Exception):
    """An error that already knows its HTTP status and code (for adapters' own checks)."""

    def __init__(self, status_code: int, code: str, message: str, *, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class ErrorSpec:
    """How one domain exception becomes an HTTP error.

    ``headers`` may be a mapping or a function of the exception (e.g. Retry-After);
    ``message`` replaces the exception's text when that text is not for clients
    (driver errors, internals).
    """

    status_code: int
    code: str
    headers: Mapping[str, str] | Callable[[BaseException], Mapping[str, str]] = field(default_factory=dict)
    message: str | None = None

    def headers_for(self, exc: BaseException) -> dict[str, str]:
        return dict(self.headers(exc) if callable(self.headers) else self.headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        location = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{location}: {error.get('msg', 'invalid')}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _is_malformed_json(exc: RequestValidationError) -> bool:
    return any(error.get("type") == "json_invalid" for error in exc.errors())


def install_error_handlers(app: FastAPI, domain_errors: Mapping[type[BaseException], ErrorSpec] | None = None) -> None:
    """Make every error of `app` use the uniform body (see the module docstring)."""

    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status_code, exc.code, exc.message, get_request_id(request), headers=exc.headers)

    async def on_http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"No route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            detail = f"Method {request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, code_for_status(exc.status_code), detail, get_request_id(request),
                              headers=getattr(exc, "headers", None))

    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        if _is_malformed_json(exc):
            return error_response(400, "malformed_json", "Request body is not valid JSON", get_request_id(request))
        return error_response(422, "validation_error", _validation_message(exc), get_request_id(request))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("Unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal_error", "Internal error; quote the request id when reporting it",
                              get_request_id(request))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)

    for exc_type, spec in (domain_errors or {}).items():

        async def on_domain_error(request: Request, exc: BaseException, spec: ErrorSpec = spec) -> JSONResponse:
            if spec.status_code >= 500:
                logger.warning("%s on %s %s: %s", spec.code, request.method, request.url.path, exc)
            message = spec.message or str(exc) or spec.code
            return error_response(spec.status_code, spec.code, message, get_request_id(request),
                                  headers=spec.headers_for(exc))

        app.add_exception_handler(exc_type, on_domain_error)
