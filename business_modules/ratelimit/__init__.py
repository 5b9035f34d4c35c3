"""Rate limits per tenant and route (moving window, Redis-backed across replicas),
and failed-login budgets per user name and address (`LoginThrottle`)."""

from business_modules.ratelimit.limiter import RateLimitDecision, RateLimiter, parse_limit
from business_modules.ratelimit.login import LoginBudget, LoginThrottle

__all__ = ["LoginBudget", "LoginThrottle", "RateLimitDecision", "RateLimiter", "parse_limit"]
