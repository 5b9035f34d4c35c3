"""Serve application `bul`: business documents written by the LLM (the original BUL's HTTP API).

`build_bul(args)` builds the application; `create_app(config)` is the plain
FastAPI app (usable without Ray, with a scripted LLM client in tests).
"""

from deployments.bul.app import create_app
from deployments.bul.runtime import BulAppConfig


def build_bul(args: dict | None = None):  # noqa: ANN201 - imports Ray only when called
    """The bound Serve application (see `deployments.bul.deployment`)."""
    from deployments.bul.deployment import build_bul as build

    return build(args)


__all__ = ["BulAppConfig", "build_bul", "create_app"]
