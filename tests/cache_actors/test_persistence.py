"""persist/load: hits survive a restart; every bad file is refused and nothing is half-loaded."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import pytest
from safetensors.torch import save_file

from cache_actors import KVCacheConfig, PersistenceError, UltraAdaptiveKVCacheEngine
from cache_actors.engine.demo_model import TINY_SPEC
from cache_actors.engine.model_runner import ModelRunner
from cache_actors.core.persistence import MANIFEST, TENSORS

PROMPTS = [f"Customer {i} asks about invoices, refunds and delivery times. " * 3 for i in range(3)]


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def saved(make_engine, tmp_path) -> tuple[Path, list[dict]]:
    engine = make_engine()
    first = [run(engine.process_request({"text": p, "max_new_tokens": 4})) for p in PROMPTS]
    path = tmp_path / "kv"
    assert engine.persist(path)
    return path, first


def test_persist_then_load_into_a_fresh_engine_gives_hits(make_engine, saved):
    path, first = saved
    fresh = make_engine()
    assert fresh.load(path)
    again = [run(fresh.process_request({"text": p, "max_new_tokens": 4})) for p in PROMPTS]
    assert all(a["cache_hit"] for a in again)
    assert [a["result"] for a in again] == [f["result"] for f in first]
    assert fresh.get_stats()["blocks"] > 0


def test_files_are_safetensors_and_json_not_pickle(saved):
    path, _ = saved
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["format_version"] == 1 and manifest["namespace"]["block_size"] == 16
    assert all(len(block["sha256"]) == 64 for block in manifest["blocks"])
    assert (path / TENSORS).read_bytes()[8:9] == b"{"  # safetensors: u64 header length, then JSON


def test_persistence_flag_loads_at_start_and_saves_on_close(tiny_runner, tmp_path):
    config = KVCacheConfig(block_size=16, max_tokens=4096, enable_persistence=True, persistence_path=tmp_path / "kv", cache_strategy="lru")
    engine = UltraAdaptiveKVCacheEngine(config, runner=tiny_runner)
    run(engine.process_request({"text": PROMPTS[0], "max_new_tokens": 2}))
    engine.close()
    restarted = UltraAdaptiveKVCacheEngine(config, runner=tiny_runner)
    assert run(restarted.process_request({"text": PROMPTS[0], "max_new_tokens": 2}))["cache_hit"]


def test_persist_replaces_an_older_save_atomically(make_engine, saved):
    path, _ = saved
    engine = make_engine()
    run(engine.process_request({"text": "Only one prompt now. " * 4, "max_new_tokens": 2}))
    engine.persist(path)
    fresh = make_engine()
    fresh.load(path)
    assert fresh.get_stats()["blocks"] == engine.get_stats()["blocks"]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "no staging leftovers"


def _refused(make_engine, path, match, **engine_overrides):
    engine = make_engine(**engine_overrides)
    run(engine.process_request({"text": "Unrelated warm content. " * 4, "max_new_tokens": 2}))
    before = engine.get_stats()["blocks"]
    with pytest.raises(PersistenceError, match=match):
        engine.load(path)
    assert engine.get_stats()["blocks"] == before, "a refused file must not change the cache"


def test_truncated_file_is_refused(make_engine, saved):
    path, _ = saved
    data = (path / TENSORS).read_bytes()
    (path / TENSORS).write_bytes(data[: len(data) // 2])
    _refused(make_engine, path, "truncated")


def test_corrupted_byte_is_refused(make_engine, saved):
    path, _ = saved
    data = bytearray((path / TENSORS).read_bytes())
    data[-100] ^= 0xFF
    (path / TENSORS).write_bytes(bytes(data))
    _refused(make_engine, path, "checksum")


def test_forged_file_with_matching_file_checksum_fails_block_checksum(make_engine, saved):
    """Someone rewrites the tensors and fixes the file hash: the per-block sums still catch it."""
    import hashlib

    from safetensors.torch import load_file

    path, _ = saved
    tensors = load_file(str(path / TENSORS))
    for tensor in tensors.values():
        tensor[0].fill_(0.5)
    save_file(tensors, str(path / TENSORS))
    manifest = json.loads((path / MANIFEST).read_text())
    blob = (path / TENSORS).read_bytes()
    manifest["file"] = {"name": TENSORS, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    (path / MANIFEST).write_text(json.dumps(manifest))
    _refused(make_engine, path, "fails its checksum")


@pytest.mark.parametrize("overrides,match", [({"block_size": 32}, "block_size"), ({"cache_strategy": "quantized"}, "codec")])
def test_foreign_layout_is_refused(make_engine, saved, overrides, match):
    path, _ = saved
    _refused(make_engine, path, match, **overrides)


def test_other_model_is_refused(saved, tmp_path):
    path, _ = saved
    other_runner = ModelRunner.load(None, demo_spec=replace(TINY_SPEC, seed=1))
    engine = UltraAdaptiveKVCacheEngine(KVCacheConfig(block_size=16, max_tokens=4096, cache_strategy="lru"), runner=other_runner)
    with pytest.raises(PersistenceError, match="model_id"):
        engine.load(path)
    assert engine.get_stats()["blocks"] == 0


def test_other_dtype_is_refused(saved, tiny_runner):
    from cache_actors.engine.demo_model import build_demo_model, build_demo_tokenizer
    import torch

    runner = ModelRunner(build_demo_model(TINY_SPEC, torch.bfloat16), build_demo_tokenizer(), model_id=tiny_runner.model_id)
    engine = UltraAdaptiveKVCacheEngine(KVCacheConfig(block_size=16, max_tokens=4096, cache_strategy="lru", dtype="bfloat16"), runner=runner)
    path, _ = saved
    with pytest.raises(PersistenceError, match="dtype"):
        engine.load(path)


@pytest.mark.parametrize(
    "damage,match",
    [("no_manifest", "no manifest.json"), ("bad_json", "unreadable manifest"), ("wrong_format", "not a blatam-kv-cache"),
     ("future_version", "format version 99"), ("no_tensors", "missing"), ("malformed_entry", "malformed block entry")],
)
def test_broken_manifest_is_refused(make_engine, saved, damage, match):
    path, _ = saved
    manifest_path = path / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    if damage == "no_manifest":
        manifest_path.unlink()
    elif damage == "bad_json":
        manifest_path.write_text("{not json")
    elif damage == "wrong_format":
        manifest_path.write_text(json.dumps({**manifest, "format": "pickle"}))
    elif damage == "future_version":
        manifest_path.write_text(json.dumps({**manifest, "format_version": 99}))
    elif damage == "no_tensors":
        (path / TENSORS).unlink()
    elif damage == "malformed_entry":
        manifest["blocks"][0]["hash"] = "zz"
        manifest_path.write_text(json.dumps(manifest))
    _refused(make_engine, path, match)


def test_file_that_does_not_fit_is_refused_whole(make_engine, saved):
    path, _ = saved
    _refused(make_engine, path, "do not fit", max_tokens=64)


def test_missing_directory_is_refused(make_engine, tmp_path):
    with pytest.raises(PersistenceError):
        make_engine().load(tmp_path / "nothing-here")


def test_tenant_tags_of_chain_roots_survive_save_and_load(make_engine, tmp_path):
    engine = make_engine()
    for tenant in ("acme", "globex"):
        run(engine.process_request({"text": PROMPTS[0], "max_new_tokens": 2, "tenant_id": tenant}))
    stored = engine.get_stats()["blocks"]
    assert stored >= 4
    assert engine.persist(tmp_path / "tagged")
    text = (tmp_path / "tagged" / MANIFEST).read_text()
    tags = [b.get("tenant") for b in json.loads(text)["blocks"] if b["parent"] is None]
    assert sorted(tags) == sorted([engine.tenant_tag("acme"), engine.tenant_tag("globex")])
    assert "acme" not in text and "globex" not in text  # digests, never the tenant ids themselves

    fresh = make_engine()
    assert fresh.load(tmp_path / "tagged")
    assert fresh.cache.clear_tenant(fresh.tenant_tag("nobody")) == (0, 0)
    assert fresh.cache.clear_tenant(fresh.tenant_tag("acme")) == (stored // 2, 0)
    again = run(fresh.process_request({"text": PROMPTS[0], "max_new_tokens": 2, "tenant_id": "globex"}))
    assert again["cache_hit"]
    gone = run(fresh.process_request({"text": PROMPTS[0], "max_new_tokens": 2, "tenant_id": "acme"}))
    assert not gone["cache_hit"]


def test_a_malformed_tenant_tag_is_refused(make_engine, saved):
    path, _ = saved
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["blocks"][0]["tenant"] = {"not": "a tag"}
    (path / MANIFEST).write_text(json.dumps(manifest))
    _refused(make_engine, path, "malformed tenant tag")
