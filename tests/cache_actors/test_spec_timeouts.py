"""Every bound of the distributed path is a setting (field or `KV_CACHE_*` variable) that reaches the
shards' spec: an operator on a slow network widens them without editing code."""

from __future__ import annotations

import pytest

from cache_actors import KVCacheConfig
from cache_actors.actors.spec import Timeouts, spec_from_config
from cache_actors.engine.demo_model import TINY_SPEC
from cache_actors.engine.model_runner import ModelRunner


@pytest.fixture(scope="module")
def runner() -> ModelRunner:
    return ModelRunner.load(None, demo_spec=TINY_SPEC)


def test_defaults_are_the_shipped_bounds(runner: ModelRunner) -> None:
    timeouts = spec_from_config(KVCacheConfig(), runner, num_blocks=8).timeouts
    assert (timeouts.lookup_s, timeouts.remote_fetch_s, timeouts.locate_s, timeouts.prefetch_s) == (1.0, 0.25, 0.1, 0.5)
    assert timeouts.locate_s == Timeouts().locate_s


def test_each_bound_comes_from_its_environment_variable(runner: ModelRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"LOOKUP": "3", "REMOTE_FETCH": "4", "LOCATE": "2.5", "PREFETCH": "6"}.items():
        monkeypatch.setenv(f"KV_CACHE_{name}_TIMEOUT_S", value)
    monkeypatch.setenv("KV_CACHE_REDIS_TIMEOUT_MS", "120")
    timeouts = spec_from_config(KVCacheConfig(), runner, num_blocks=8).timeouts
    assert (timeouts.lookup_s, timeouts.remote_fetch_s, timeouts.locate_s, timeouts.prefetch_s) == (3.0, 4.0, 2.5, 6.0)
    assert timeouts.tier_op_s == pytest.approx(0.12)


@pytest.mark.parametrize("value", [0, -1, 31, "soon"])
def test_a_bad_locate_bound_is_refused(value: object) -> None:
    with pytest.raises(ValueError):
        KVCacheConfig(locate_timeout_s=value)
