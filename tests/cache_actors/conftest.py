"""Factories for cache tests: a tiny demo model shared per session, and engines on it."""

from __future__ import annotations

from typing import Any

import pytest

from cache_actors import KVCacheConfig, UltraAdaptiveKVCacheEngine
from cache_actors.engine.demo_model import TINY_SPEC
from cache_actors.engine.model_runner import ModelRunner


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


@pytest.fixture
def batcher(make_engine):
    """Makes `ContinuousBatcher`s over a fresh engine (or the one given); closes them after the test."""
    from cache_actors.engine.batching import BatcherConfig, ContinuousBatcher

    made = []

    def make(engine=None, **config):
        b = ContinuousBatcher(engine or make_engine(), BatcherConfig(**{"max_model_len": 512, **config}))
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()
