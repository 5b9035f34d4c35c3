"""Rate limits per tenant and route (moving window, Redis-backed across replicas)."""

from business_modules.ratelimit.limiter import RateLimitDecision, RateLimiter, parse_limit

__all__ = ["RateLimitDecision", "RateLimiter", "parse_limit"]
