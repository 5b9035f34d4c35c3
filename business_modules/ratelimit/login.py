"""Login throttling: failed logins are counted per user name and address, and per address.

Counting every attempt per address (as before) let ten mistakes with one name
lock every user behind that address out, the right password included. Now:

- per user name and address (``per_name_and_address``, e.g. 10/minute): guessing
  one account's password from one place stops there, while another user's
  correct login from the same address still goes through;
- per address (``per_address``, larger, e.g. 100/hour): trying one password
  against many names (password spraying) from one place stops there too.

Only failures spend either budget; both are checked before the password is
hashed, so a refused attempt costs no argon2 work. A check is a read and a
failure a separate count, so concurrent attempts may overshoot by a few.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from business_modules.ratelimit.limiter import RateLimitDecision, RateLimiter

_PREFIX = "login-failures"


@dataclass(frozen=True, slots=True)
class LoginBudget:
    """The budget that decides an attempt: refused when `decision` is not allowed."""

    decision: RateLimitDecision
    what: str
    """What was counted, for the refusal message."""


class LoginThrottle:
    """Failed-login budgets over a `RateLimiter` (shared across replicas through Redis)."""

    def __init__(self, limiter: RateLimiter, *, per_name_and_address: str, per_address: str):
        self._limiter = limiter
        self._per_name_and_address = per_name_and_address
        self._per_address = per_address

    async def check(self, *, username: str, address: str) -> LoginBudget:
        """The binding budget for an attempt: a spent one if any, else the per-name one (for headers)."""
        by_name, by_address = await asyncio.gather(
            self._limiter.peek(_name_key(username, address), self._per_name_and_address),
            self._limiter.peek(_address_key(address), self._per_address),
        )
        if not by_address.allowed:
            return LoginBudget(by_address, "failed logins from this address")
        return LoginBudget(by_name, "failed logins for this user name from this address")

    async def record_failure(self, *, username: str, address: str) -> None:
        """Spend one unit of both budgets."""
        await asyncio.gather(
            self._limiter.hit(_name_key(username, address), self._per_name_and_address),
            self._limiter.hit(_address_key(address), self._per_address),
        )


def _name_key(username: str, address: str) -> str:
    # NOTE: the address comes first and never contains "|" (IPv6 has ":"), so no two pairs share a key.
    return f"{_PREFIX}:name:{address}|{username}"


def _address_key(address: str) -> str:
    return f"{_PREFIX}:address:{address}"
