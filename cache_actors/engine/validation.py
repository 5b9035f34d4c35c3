"""`validate_configuration`: what in a configuration is wrong or unwise.

Issues make the configuration invalid (the engine cannot do what was asked);
warnings are legal but probably not what the operator wants.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cache_actors.engine.config import KVCacheConfig

if TYPE_CHECKING:
    from cache_actors.core.backend import KVCacheBackend
    from cache_actors.engine.model_runner import ModelRunner


def _writable_dir(path: Path) -> bool:
    probe = path if path.is_dir() else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return os.access(probe, os.W_OK)


def validate_configuration(config: KVCacheConfig, runner: "ModelRunner", cache: "KVCacheBackend") -> dict[str, Any]:
    issues: list[str] = []
    warnings: list[str] = []
    block_size = config.block_size
    capacity_blocks = int(cache.get_stats()["capacity_blocks"])
    if capacity_blocks == 0:
        issues.append(
            f"the pool holds no block: max_tokens={config.max_tokens} / max_memory_mb={config.max_memory_mb} "
            f"is below one block of {block_size} tokens ({cache.codec.bytes_per_block()} bytes)"
        )
    elif capacity_blocks * block_size < runner.max_context:
        warnings.append(
            f"the pool holds {capacity_blocks * block_size} tokens, less than one full context ({runner.max_context}); "
            "long prompts will evict each other"
        )
    if block_size > runner.max_context:
        issues.append(f"block_size {block_size} exceeds the model's context ({runner.max_context}): nothing can be cached")
    if not runner.supports_prefix_reuse:
        warnings.append("the model has sliding-window or heterogeneous KV layers: prefix reuse is disabled")
    if config.enable_persistence:
        path = Path(config.persistence_path) if config.persistence_path else None
        if path is None or not _writable_dir(path):
            issues.append(f"persistence_path {config.persistence_path!s} is not writable")
    if config.model_path is not None:
        from cache_actors.engine.prompt_encoder import hf_model_folder

        try:
            hf_model_folder(config.model_path)
        except ValueError as exc:
            issues.append(str(exc))
    if config.use_quantization and config.codec not in (None, "int8", "int4"):
        warnings.append(f"use_quantization is set but codec={config.codec!r} overrides it")
    if config.enable_prefetch and config.prefetch_size and not config.enable_distributed:
        warnings.append("enable_prefetch acts only in the distributed cache (tiers); a single engine keeps every block in memory")
    if config.num_threads and config.num_threads > (os.cpu_count() or 1):
        warnings.append(f"num_threads={config.num_threads} exceeds the {os.cpu_count()} CPUs: oversubscription slows torch down")
    import torch

    from cache_actors.engine.model_runner import cpu_has_amx

    if runner.dtype != torch.float32 and runner.device.type == "cpu" and not cpu_has_amx():
        warnings.append(f"dtype={str(runner.dtype).removeprefix('torch.')} on CPU: float32 is usually faster on CPUs without native half-precision matmul")
    return {"valid": not issues, "issues": issues, "warnings": warnings}
