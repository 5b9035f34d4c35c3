"""Pieces every Serve deployment with an HTTP ingress shares: the uniform error
body, request ids, the body size limit, and the gateway forwarding protocol
(`deployments.common.forwarding`)."""

from deployments.common.body_limit import BodySizeLimitMiddleware
from deployments.common.errors import ApiError, ErrorSpec, error_body, error_response, install_error_handlers
from deployments.common.forwarding import Caller, ForwardedResponse, ServiceIngress, call_asgi, forwarded_caller
from deployments.common.inline_body import InlineBodyMiddleware
from deployments.common.request_id import RequestIdMiddleware, get_request_id

__all__ = [
    "ApiError",
    "BodySizeLimitMiddleware",
    "Caller",
    "ErrorSpec",
    "ForwardedResponse",
    "InlineBodyMiddleware",
    "RequestIdMiddleware",
    "ServiceIngress",
    "call_asgi",
    "error_body",
    "error_response",
    "forwarded_caller",
    "get_request_id",
    "install_error_handlers",
]
