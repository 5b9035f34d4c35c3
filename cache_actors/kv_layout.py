"""Moving KV between a model's cache object and fixed-size blocks.

A block holds ``block_size`` tokens of every layer: ``[L, 2, H, bs, D]``. The
model's `DynamicCache` holds, per layer, ``[1, H, T, D]`` keys and values. A
prefix of ``n`` blocks is assembled into one ``[L, 2, H, n*bs, D]`` buffer so
that each layer's keys and values are *views* of it: one copy per hit, the
least a paged cache that hands contiguous KV to stock attention can do.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def blocks_from_cache(cache: DynamicCache, start_block: int, num_blocks: int, block_size: int) -> torch.Tensor:
    """Copy blocks ``start_block .. start_block+num_blocks`` out of ``cache``.

    Returns ``[n, L, 2, H, bs, D]`` (contiguous) for a codec to encode.
    """
    layers = cache.layers
    first = layers[0].keys
    _, heads, _, head_dim = first.shape
    out = torch.empty(
        (num_blocks, len(layers), 2, heads, block_size, head_dim), dtype=first.dtype, device=first.device
    )
    start, stop = start_block * block_size, (start_block + num_blocks) * block_size
    for index, layer in enumerate(layers):
        for kv, tensor in ((0, layer.keys), (1, layer.values)):
            src = tensor[0, :, start:stop].reshape(heads, num_blocks, block_size, head_dim)
            out[:, index, kv].copy_(src.transpose(0, 1))
    return out


def new_prefix_buffer(
    num_layers: int, num_heads: int, num_tokens: int, head_dim: int, dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:
    """Uninitialised ``[L, 2, H, T, D]`` buffer for a prefix of ``T`` tokens."""
    return torch.empty((num_layers, 2, num_heads, num_tokens, head_dim), dtype=dtype, device=device)


def block_views(buffer: torch.Tensor, block_size: int) -> torch.Tensor:
    """``[n, L, 2, H, bs, D]`` view of a prefix buffer, for codecs to decode into."""
    layers, two, heads, tokens, head_dim = buffer.shape
    assert tokens % block_size == 0
    n = tokens // block_size
    return buffer.view(layers, two, heads, n, block_size, head_dim).permute(3, 0, 1, 2, 4, 5)


def cache_from_buffer(buffer: torch.Tensor) -> DynamicCache:
    """A `DynamicCache` whose layers are views of ``buffer`` (no copy)."""
    cache = DynamicCache()
    for layer_index in range(buffer.shape[0]):
        keys = buffer[layer_index, 0].unsqueeze(0)
        values = buffer[layer_index, 1].unsqueeze(0)
        layer = DynamicLayer()
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        cache.layers.append(layer)
    return cache
