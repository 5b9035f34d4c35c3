"""Serve application `gamma`: presentations, documents, web pages and posts written by the LLM.

`build_gamma(args)` builds the application; `create_app(config)` is the
plain FastAPI app (usable without Ray, e.g. under uvicorn or in tests with a
scripted LLM).
"""

from deployments.gamma.app import create_app
from deployments.gamma.runtime import GammaAppConfig


def build_gamma(args: dict | None = None):  # noqa: ANN201 - imports Ray only when called
    """The bound Serve application (see `deployments.gamma.deployment`)."""
    from deployments.gamma.deployment import build_gamma as build

    return build(args)


__all__ = ["GammaAppConfig", "build_gamma", "create_app"]
