"""Everything one gateway replica holds: settings, database, auth, limiters, services."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from business_modules.auth import AuthService
from business_modules.auth import repository as _auth_repository  # noqa: F401  (registers auth migrations)
from business_modules.ratelimit import LoginThrottle, RateLimiter
from business_modules.settings import Settings
from business_modules.storage import Database, open_database
from deployments.gateway.llm_front import OpenAIFront
from deployments.gateway.services import ServiceClient

logger = logging.getLogger(__name__)


@dataclass
class GatewayState:
    """The gateway's collaborators, built once per replica (`open`) and closed with it."""

    settings: Settings
    db: Database
    auth: AuthService
    limiter: RateLimiter
    login_throttle: LoginThrottle
    services: ServiceClient
    openai_front: OpenAIFront | None = None  # serves /v1 (routes/openai.py); None: the LLM only by forwarding

    @classmethod
    async def open(cls, settings: Settings, services: ServiceClient, *,
                   openai_front: OpenAIFront | None = None) -> GatewayState:
        """Open the database (applying migrations) and build auth and the limiter from `settings`."""
        db = await open_database(
            settings.database_url,
            data_dir=settings.blatam_data_dir,
            schema=settings.database_schema,
            command_timeout_s=settings.db_command_timeout_s,
            acquire_timeout_s=settings.db_acquire_timeout_s,
            pool_max_size=settings.db_pool_max_size,
        )
        auth = AuthService(
            db,
            secret_key=settings.secret_key.get_secret_value(),
            token_ttl_s=settings.access_token_ttl_s,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
        limiter = RateLimiter(
            redis_url=settings.redis_url,
            timeout_s=settings.redis_timeout_s,
            retry_after_s=settings.redis_retry_after_s,
            key_prefix=settings.rate_limit_key_prefix,
        )
        login_throttle = LoginThrottle(limiter, per_name_and_address=settings.rate_limit_login,
                                       per_address=settings.rate_limit_login_per_address)
        logger.info("Gateway ready: database %s, rate limits in %s", db.dialect, limiter.backend)
        return cls(settings=settings, db=db, auth=auth, limiter=limiter, login_throttle=login_throttle,
                   services=services, openai_front=openai_front)

    async def close(self) -> None:
        await self.limiter.close()
        await self.db.close()
