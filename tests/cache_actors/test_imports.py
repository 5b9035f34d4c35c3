"""Imports cost what they use: the pure rooms load neither torch, transformers nor Ray."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "ray")


@pytest.mark.parametrize("module", ["cache_actors", "cache_actors.core.hashing", "cache_actors.policies",
                                    "cache_actors.policies.simulator", "cache_actors.engine.requests"])
def test_pure_modules_load_no_heavy_library(module: str) -> None:
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"{module} loaded {done.stdout.strip()}"


def test_the_seed_names_still_resolve() -> None:
    import cache_actors

    assert cache_actors.UltraAdaptiveKVCacheEngine.__name__ == "UltraAdaptiveKVCacheEngine"
    assert {"BaseKVCache", "CacheStrategy", "KVCacheConfig", "UltraAdaptiveKVCacheEngine"} <= set(cache_actors.__all__)
    with pytest.raises(AttributeError):
        cache_actors.NoSuchThing  # noqa: B018
