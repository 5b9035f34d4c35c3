"""Application builders named by serve_config.yaml (``import_path: deployments.app_builder:build_gateway``).

Serve calls a builder with the application's ``args`` from the config file;
each builder validates them here, so a bad config fails ``serve deploy`` /
``blatam up`` at once instead of failing every replica.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from business_modules.settings import load_settings
from deployments.gateway.configured import check_expected
from deployments.gateway.deployment import Gateway
from deployments.gateway.services import ServiceRegistry


class GatewayArgs(BaseModel):
    """``args`` of the gateway application."""

    model_config = ConfigDict(extra="forbid")

    settings: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of business_modules.settings.Settings (env vars otherwise)."
    )


def build_gateway(args: dict[str, Any] | None = None) -> Application:
    """The ``gateway`` application (FastAPI ingress at route prefix ``/``)."""
    parsed = GatewayArgs.model_validate(args or {})
    settings = load_settings(parsed.settings)
    check_expected(ServiceRegistry(settings.gateway_services), settings.gateway_expected_services)
    return Gateway.bind(parsed.settings)
