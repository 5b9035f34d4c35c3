"""Serve application `export`: the original Export IA's HTTP API.

`build_export(args)` builds the application; `create_app(config)` is the
plain FastAPI app (usable without Ray, e.g. under uvicorn or in tests).
"""

from deployments.export.app import create_app
from deployments.export.runtime import ExportAppConfig


def build_export(args: dict | None = None):  # noqa: ANN201 - imports Ray only when called
    """The bound Serve application (see `deployments.export.deployment`)."""
    from deployments.export.deployment import build_export as build

    return build(args)


__all__ = ["ExportAppConfig", "build_export", "create_app"]
