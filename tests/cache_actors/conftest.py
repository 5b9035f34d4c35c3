"""Factories for cache tests: a tiny demo model shared per session, and engines on it."""

from __future__ import annotations

from typing import Any

import pytest

from cache_actors import KVCacheConfig, UltraAdaptiveKVCacheEngine
from cache_actors.demo_model import TINY_SPEC
from cache_actors.model_runner import ModelRunner


@pytest.fixture(scope="session")
def tiny_runner() -> ModelRunner:
    return ModelRunner.load(None, demo_spec=TINY_SPEC)


@pytest.fixture
def make_engine(tiny_runner: ModelRunner):
    def make(**overrides: Any) -> UltraAdaptiveKVCacheEngine:
        settings: dict[str, Any] = {"block_size": 16, "max_tokens": 4096, "cache_strategy": "lru"}
        settings.update(overrides)
        cache_cls = settings.pop("cache_cls", None)
        kwargs = {"cache_cls": cache_cls} if cache_cls else {}
        return UltraAdaptiveKVCacheEngine(KVCacheConfig(**settings), runner=tiny_runner, **kwargs)

    return make
