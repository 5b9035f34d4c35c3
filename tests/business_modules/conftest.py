"""Fixtures of the business module tests that several modules share."""

# `agents_env`: the Business Agents' services over real Export and Redundancy services on the `database`.
from tests.business_modules.agents_support import agents_env  # noqa: F401
