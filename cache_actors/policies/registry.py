"""Policies by name: what ``cache_strategy`` / ``policy`` settings and the benchmark refer to."""

from __future__ import annotations

from typing import Callable

from cache_actors.policies.adaptive import AdaptivePolicy
from cache_actors.policies.base import EvictionPolicy
from cache_actors.policies.lfu import LFUPolicy
from cache_actors.policies.lru import LRUPolicy

POLICY_REGISTRY: dict[str, Callable[[], EvictionPolicy]] = {
    LRUPolicy.name: LRUPolicy,
    LFUPolicy.name: LFUPolicy,
    AdaptivePolicy.name: AdaptivePolicy,
}


def register_policy(name: str, factory: Callable[[], EvictionPolicy]) -> None:
    """Make a policy available by name (to the engine config and the benchmark)."""
    POLICY_REGISTRY[name] = factory


def make_policy(name: str) -> EvictionPolicy:
    """A new policy by name; ValueError lists the known ones."""
    try:
        return POLICY_REGISTRY[name]()
    except KeyError:
        raise ValueError(f"unknown eviction policy {name!r}; supported: {sorted(POLICY_REGISTRY)}") from None


def known_policies() -> list[str]:
    """The registered names, sorted."""
    return sorted(POLICY_REGISTRY)
