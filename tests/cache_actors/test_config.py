import pytest
from pydantic import ValidationError

from cache_actors import CacheStrategy, KVCacheConfig


def test_defaults():
    config = KVCacheConfig()
    assert config.cache_strategy is CacheStrategy.ADAPTIVE
    assert config.policy_name() == "adaptive" and config.codec_name() == "native"


def test_environment_variables(monkeypatch):
    monkeypatch.setenv("KV_CACHE_STRATEGY", "LFU")
    monkeypatch.setenv("KV_CACHE_MAX_TOKENS", "1234")
    monkeypatch.setenv("KV_CACHE_BLOCK_SIZE", "32")
    monkeypatch.setenv("KV_CACHE_ENABLE_PERSISTENCE", "true")
    monkeypatch.setenv("KV_CACHE_PERSISTENCE_PATH", "/tmp/somewhere")
    monkeypatch.setenv("KV_CACHE_USE_QUANTIZATION", "1")
    monkeypatch.setenv("KV_CACHE_QUANTIZATION_BITS", "4")
    monkeypatch.setenv("MODEL_PATH", "/models/x")
    config = KVCacheConfig()
    assert config.cache_strategy is CacheStrategy.LFU
    assert (config.max_tokens, config.block_size) == (1234, 32)
    assert config.enable_persistence and str(config.persistence_path) == "/tmp/somewhere"
    assert config.codec_name() == "int4" and config.policy_name() == "lfu"
    assert config.model_path == "/models/x"


def test_explicit_arguments_beat_environment(monkeypatch):
    monkeypatch.setenv("KV_CACHE_MAX_TOKENS", "1234")
    assert KVCacheConfig(max_tokens=99).max_tokens == 99


def test_yaml(tmp_path, monkeypatch):
    monkeypatch.delenv("KV_CACHE_STRATEGY", raising=False)
    path = tmp_path / "kv.yaml"
    path.write_text("kv_cache:\n  cache_strategy: quantized\n  quantization_bits: 8\n  block_size: 128\n  max_memory_mb: 64\n")
    config = KVCacheConfig.from_yaml(path)
    assert config.cache_strategy is CacheStrategy.QUANTIZED and config.codec_name() == "int8"
    assert config.block_size == 128 and config.max_memory_mb == 64
    assert KVCacheConfig.from_yaml(path, block_size=16).block_size == 16


@pytest.mark.parametrize(
    "strategy,policy,codec",
    [("lru", "lru", "native"), ("lfu", "lfu", "native"), ("adaptive", "adaptive", "native"),
     ("paged", "adaptive", "native"), ("compressed", "adaptive", "fp16"), ("quantized", "adaptive", "int8")],
)
def test_strategy_selects_policy_and_codec(strategy, policy, codec):
    config = KVCacheConfig(cache_strategy=strategy)
    assert (config.policy_name(), config.codec_name()) == (policy, codec)


@pytest.mark.parametrize(
    "kwargs",
    [{"block_size": 0}, {"max_tokens": -1}, {"quantization_bits": 3}, {"cache_strategy": "random"},
     {"enable_persistence": True}, {"dtype": "int8"}, {"unknown_field": 1}],
)
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(ValidationError):
        KVCacheConfig(**kwargs)


def test_bad_yaml_is_refused(tmp_path):
    path = tmp_path / "kv.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ValueError):
        KVCacheConfig.from_yaml(path)
