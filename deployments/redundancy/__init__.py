"""Serve application `redundancy`: the Content Redundancy Detector's HTTP API.

`build_redundancy(args)` builds the application; `create_app(config)` is the
plain FastAPI app (usable without Ray, e.g. under uvicorn or in tests).
"""

from deployments.redundancy.app import create_app
from deployments.redundancy.runtime import RedundancyAppConfig


def build_redundancy(args: dict | None = None):  # noqa: ANN201 - imports Ray only when called
    """The bound Serve application (see `deployments.redundancy.deployment`)."""
    from deployments.redundancy.deployment import build_redundancy as build

    return build(args)


__all__ = ["RedundancyAppConfig", "build_redundancy", "create_app"]
