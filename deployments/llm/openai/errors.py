"""OpenAI's error body for every failure of the OpenAI-compatible app, and the FastAPI handlers.

OpenAI clients (the ``openai`` SDK, LangChain, curl scripts) read
``{"error": {"message", "type", "param", "code"}}``; the uniform Blatam body
(`deployments.common.errors`) would reach them as an unparseable error, so
this app answers in OpenAI's shape instead. The gateway wraps non-uniform
bodies it forwards, which keeps both kinds of client happy.

Three sources of errors map here, in one place:

- request validation (pydantic errors: our own parsing, or FastAPI's
  `RequestValidationError`): 400, never FastAPI's 422;
- `OpenAIError` raised by the routes (unknown model, limits);
- exceptions from the backend stream (`from_backend_exception`): a
  ``ValueError`` (also wrapped in Ray's ``RayTaskError``) is the backend
  refusing the request -> 400; Serve overload -> 503; anything else -> 500.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.llm.openai.protocol import OpenAIError

logger = logging.getLogger(__name__)

OVERLOAD_RETRY_AFTER_S = 1
_OWN_CODES = {"invalid_value", "invalid_type", "unsupported_parameter", "unsupported_value"}
_TYPE_ERRORS = {"int_type", "float_type", "string_type", "bool_type", "dict_type", "list_type", "model_type",
                "model_attributes_type", "int_from_float", "finite_number"}
_STATUS_TYPES = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
                 429: "rate_limit_error"}


def param_from_loc(loc: Sequence[str | int]) -> str | None:
    """``("body", "messages", 0, "role")`` -> ``"messages[0].role"`` (OpenAI's ``param`` style)."""
    parts = [p for p in loc if p != "body"] if loc and loc[0] == "body" else list(loc)
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or None


def from_validation_errors(errors: Sequence[Mapping[str, Any]]) -> OpenAIError:
    """A 400 for the first validation error (pydantic's or FastAPI's ``errors()`` list)."""
    if not errors:
        return OpenAIError(400, "Invalid request body.", code="invalid_request")
    error = errors[0]
    kind = str(error.get("type", ""))
    ctx = error.get("ctx") or {}
    param = ctx.get("param") or param_from_loc(error.get("loc", ()))
    message = str(error.get("msg", "invalid"))
    if kind == "json_invalid":
        return OpenAIError(400, "We could not parse the JSON body of your request: send a JSON object "
                                "with Content-Type: application/json.", code="invalid_json")
    if kind == "extra_forbidden":
        return OpenAIError(400, f"Unrecognized request argument supplied: {param}", param=param,
                           code="unknown_parameter")
    if kind == "missing":
        return OpenAIError(400, f"Missing required parameter: '{param}'.", param=param,
                           code="missing_required_parameter")
    if kind in _OWN_CODES:
        return OpenAIError(400, message, param=param, code=kind)
    if kind in _TYPE_ERRORS:
        if param is None:
            return OpenAIError(400, "The request body must be a JSON object.", code="invalid_type")
        return OpenAIError(400, f"Invalid type for '{param}': {message}.", param=param, code="invalid_type")
    return OpenAIError(400, f"Invalid value for '{param}': {message}.", param=param, code="invalid_value")


def root_cause(exc: BaseException) -> BaseException:
    """The exception the backend raised, unwrapping Ray's ``RayTaskError`` (Serve handle calls).

    Through a handle the backend's exception arrives as a RayTaskError (often
    a dual instance that is also a ValueError) whose ``str`` is a whole
    traceback; the message for the client is the original cause's.
    """
    for _ in range(8):  # an ingress -> server -> ... chain wraps once per hop
        if not isinstance(exc, RayTaskError) or exc.cause is None:
            break
        exc = exc.cause
    return exc


def from_backend_exception(exc: BaseException, *,
                           overloaded: tuple[type[BaseException], ...] = ()) -> OpenAIError:
    """How an exception from the backend stream reaches the client.

    ValueError: the backend refused the request (400, with ``param``/``code``
    when it raised `RequestRefused`). Serve's back pressure and the types in
    `overloaded` (e.g. the batcher's full queue): 503 with Retry-After. The
    replica dying or restarting under the request: 503 ``backend_unavailable``
    with Retry-After (nothing of it was stored; a retry is safe).
    Anything else: 500, logged.
    """
    if isinstance(exc, OpenAIError):  # already the client's error (a check on the way to the backend)
        return exc
    cause = root_cause(exc)
    if isinstance(cause, ValueError) and not isinstance(cause, RayTaskError):
        return OpenAIError(400, str(cause) or "The model refused this request.",
                           param=getattr(cause, "param", None), code=getattr(cause, "code", None) or "invalid_request")
    if isinstance(cause, (BackPressureError, DeploymentUnavailableError, *overloaded)):
        return OpenAIError(503, "The model server is overloaded or not ready; retry shortly.", type="server_error",
                           code="overloaded", headers={"Retry-After": str(OVERLOAD_RETRY_AFTER_S)})
    if isinstance(cause, RayActorError):  # the replica died or restarts mid-request (ActorDiedError, ActorUnavailableError)
        logger.warning("The LLM replica serving a request went away: %s", str(cause).splitlines()[0][:200])
        return OpenAIError(503, "The model replica serving this request went away; retry.", type="server_error",
                           code="backend_unavailable", headers={"Retry-After": str(OVERLOAD_RETRY_AFTER_S)})
    logger.error("The LLM backend failed", exc_info=exc)
    return OpenAIError(500, "The model server failed on this request.", type="server_error", code="backend_error")


def openai_error_response(error: OpenAIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)


def install_openai_error_handlers(app: FastAPI) -> None:
    """Make every error of `app` answer with OpenAI's body (validation errors are 400)."""

    async def on_openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return openai_error_response(exc)

    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return openai_error_response(from_validation_errors(exc.errors()))

    async def on_http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}"
        else:
            message = exc.detail if isinstance(exc.detail, str) else "Request failed"
        kind = _STATUS_TYPES.get(exc.status_code, "server_error" if exc.status_code >= 500 else "invalid_request_error")
        error = OpenAIError(exc.status_code, message, type=kind, headers=getattr(exc, "headers", None))
        return openai_error_response(error)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("Unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return openai_error_response(OpenAIError(500, "The server failed on this request.", type="server_error",
                                                  code="internal_error"))

    app.add_exception_handler(OpenAIError, on_openai_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(Exception, on_unexpected)
