"""One settings tree for the services, read from environment variables.

Every field has an environment variable of the same name in upper case
(``DATABASE_URL``, ``REDIS_URL``, ``SECRET_KEY``, ``BLATAM_ENV`` ...); code and
Serve application args may override any of them (``Settings(**overrides)``).
Validated once, at construction: a bad value fails the replica at start, not
the first request.

The built-in `DEFAULT_SECRET_KEY` only signs tokens in development; any
other environment refuses to start with it, as the FastAPI full-stack
template does, because anyone who reads this file could forge tokens.
``BLATAM_ENV`` defaults to production, so a cluster deployed with
``serve deploy`` and no settings refuses to run on that key instead of
accepting forged tokens; `blatam up` (one machine, for trying it) sets
development when the variable is unset.
"""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path
from typing import Any, Literal

import limits
from pydantic import Field, PositiveFloat, PositiveInt, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)

DEFAULT_SECRET_KEY = "changethis-development-only-secret-key"
MIN_SECRET_KEY_CHARS = 32

Environment = Literal["development", "test", "staging", "production"]


def _check_limit(value: str) -> str:
    try:
        limits.parse(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a rate limit such as '100/minute' or '10 per second'") from exc
    return value


class StorageSettings(BaseSettings):
    """Where the data lives: ``BLATAM_DATA_DIR``, ``DATABASE_URL`` and the database budgets.

    Its own class so that storage and the services' runtimes read them without the whole
    tree (whose secret-key check concerns the gateway); `Settings` extends it.
    """

    model_config = SettingsConfigDict(extra="ignore", validate_default=True, case_sensitive=False)

    blatam_data_dir: Path = Field(Path("data"), description="Embedded database and other local files.")
    database_url: str | None = Field(None, description="postgresql://... or sqlite:///path; unset: embedded SQLite.")
    database_schema: str | None = Field(None, description="PostgreSQL schema for all tables (default: search_path).")
    db_command_timeout_s: PositiveFloat = Field(10.0, description="Budget of one SQL statement.")
    db_acquire_timeout_s: PositiveFloat = Field(5.0, description="Budget to get a pooled connection.")
    db_pool_max_size: PositiveInt = Field(10, description="PostgreSQL connections per process.")


class Settings(StorageSettings):
    """Settings of the gateway and the services (see the module docstring); storage's are inherited."""

    model_config = SettingsConfigDict(extra="ignore", validate_default=True, case_sensitive=False)

    blatam_env: Environment = Field(
        "production", description="development, test, staging or production (default: production, so the built-in "
                                  "SECRET_KEY is refused unless development is asked for; `blatam up` asks for it).")

    redis_url: str | None = Field(None, description="redis://host:port/db; unset: per-process rate limits.")
    redis_timeout_s: PositiveFloat = Field(0.25, description="Budget of one Redis call before falling back.")
    redis_retry_after_s: PositiveFloat = Field(5.0, description="After a Redis failure, use memory this long.")
    rate_limit_key_prefix: str = Field("blatam-rl", min_length=1, description="Redis key prefix of rate limits.")

    secret_key: SecretStr = Field(SecretStr(DEFAULT_SECRET_KEY), description="HS256 key that signs access tokens.")
    access_token_expire_minutes: PositiveInt = Field(30, description="Lifetime of an access token.")
    jwt_issuer: str = Field("blatam", min_length=1)
    jwt_audience: str = Field("blatam-api", min_length=1)

    rate_limit_default: str = Field("100/minute", description="Limit per tenant for a service without its own.")
    rate_limits: dict[str, str] = Field(
        default_factory=dict, description='Per service, e.g. RATE_LIMITS=\'{"redundancy": "60/minute"}\'.'
    )
    rate_limit_login: str = Field("10/minute", description="Failed logins per user name and client address.")
    rate_limit_login_per_address: str = Field(
        "100/hour", description="Failed logins per client address, whatever the user names (password spraying).")

    gateway_services: dict[str, str] = Field(
        default_factory=dict,
        description='Services the gateway routes beyond (or instead of) the built-in ones: name -> Serve app, '
                    'e.g. GATEWAY_SERVICES=\'{"redundancy": "redundancy-canary"}\'.',
    )
    gateway_stream_services: list[str] = Field(
        default_factory=lambda: ["llm", "bul", "agents"],
        description="Services whose responses the gateway streams through as they are produced (server-sent "
                    "events); the others are answered whole. E.g. GATEWAY_STREAM_SERVICES='[\"llm\", \"bul\", "
                    "\"agents\"]' (BUL's job events, the agents' run steps).",
    )
    gateway_expected_services: list[str] | None = Field(
        None,
        description="Services /health reports and /docs documents. Unset (the default): the services whose Serve "
                    "application Serve has been asked to deploy (serve_config.yaml's applications, or serve.run), "
                    "whatever their state, so with the shipped config: redundancy, export and llm (the cache). Set, "
                    "e.g. GATEWAY_EXPECTED_SERVICES='[\"redundancy\", \"export\", \"llm\"]': exactly those, and "
                    "one that Serve does not have is not_deployed and degrades /health.",
    )
    gateway_openapi_ttl_s: PositiveFloat = Field(
        60.0, description="How long the gateway reuses a service's OpenAPI schema (merged into its /openapi.json).")
    gateway_openapi_timeout_s: PositiveFloat = Field(
        2.0, description="Budget to fetch one service's OpenAPI schema; a service that misses it adds nothing.")
    max_body_bytes: PositiveInt = Field(10 * 1024 * 1024, description="Larger request bodies get 413.")
    gateway_handle_transport: Literal["grpc", "actor"] = Field(
        "grpc", description="How the gateway reaches services: Serve's gRPC by-value path or Ray actor calls."
    )
    gateway_request_timeout_s: PositiveFloat = Field(60.0, description="Budget of one forwarded service call.")
    gateway_llm_timeout_s: PositiveFloat = Field(
        600.0, description="Budget for the head of an answer of the OpenAI API at /v1: a stream's first event, or a "
                           "whole non-streamed completion (504 after it).")
    health_probe_timeout_s: PositiveFloat = Field(2.0, description="Budget of one health probe.")

    @field_validator("rate_limit_default", "rate_limit_login", "rate_limit_login_per_address")
    @classmethod
    def _valid_limit(cls, value: str) -> str:
        return _check_limit(value)

    @field_validator("rate_limits")
    @classmethod
    def _valid_limits(cls, value: dict[str, str]) -> dict[str, str]:
        return {service: _check_limit(limit) for service, limit in value.items()}

    @model_validator(mode="after")
    def _check_secret(self) -> Settings:
        secret = self.secret_key.get_secret_value()
        if self.blatam_env == "development":
            if secret == DEFAULT_SECRET_KEY:
                warnings.warn(
                    "SECRET_KEY is the built-in development default; set SECRET_KEY before BLATAM_ENV leaves "
                    "development.",
                    stacklevel=2,
                )
            return self
        if secret == DEFAULT_SECRET_KEY:
            raise ValueError(
                f"SECRET_KEY is the built-in default, which is only allowed when BLATAM_ENV=development "
                f"(here {self.blatam_env}); generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        if len(secret) < MIN_SECRET_KEY_CHARS:
            raise ValueError(f"SECRET_KEY must have at least {MIN_SECRET_KEY_CHARS} characters outside development")
        return self

    def rate_limit_for(self, service: str) -> str:
        """The rate limit of `service` (its own or the default)."""
        return self.rate_limits.get(service, self.rate_limit_default)

    @property
    def access_token_ttl_s(self) -> int:
        return self.access_token_expire_minutes * 60


def load_settings(overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from the environment, with `overrides` (e.g. Serve app args) taking precedence."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        settings = Settings(**(overrides or {}))
    for warning in caught:
        logger.warning("%s", warning.message)
    return settings


@functools.cache
def get_settings() -> Settings:
    """Process-wide settings from the environment (read once)."""
    return load_settings()
