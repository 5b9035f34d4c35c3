"""Eviction policies: one module per policy behind one strategy interface (`base`) and a registry.

``replay`` is what one request does to a block index (shared by the adaptive
policy's shadow caches and the trace simulator); ``simulator`` replays traces,
Belady's optimum included, for ``blatam bench policies``. Pure Python: nothing
here loads torch or Ray.
"""

from cache_actors.policies.adaptive import AdaptivePolicy
from cache_actors.policies.base import EvictionPolicy, PriorityPolicy
from cache_actors.policies.lfu import LFUPolicy
from cache_actors.policies.lru import LRUPolicy
from cache_actors.policies.registry import POLICY_REGISTRY, known_policies, make_policy, register_policy

__all__ = ["POLICY_REGISTRY", "AdaptivePolicy", "EvictionPolicy", "LFUPolicy", "LRUPolicy", "PriorityPolicy", "known_policies", "make_policy", "register_policy"]
