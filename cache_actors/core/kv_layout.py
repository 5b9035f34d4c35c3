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


class PreallocatedLayer(DynamicLayer):
    """A cache layer writing new tokens into spare room of a preallocated buffer.

    `DynamicLayer` concatenates on every update, copying the whole past each
    time (the prefix once per request, then everything once per decoded
    token). Writing in place makes reuse of a prefix cost exactly one copy
    (the cache read) and decoding O(1) per token. Past the buffer's end it
    grows by doubling, so it never fails.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        super().__init__()
        self.lazy_initialization(keys, values)
        self._keys_buf, self._values_buf, self.length = keys, values, length
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):  # noqa: ANN002, ANN003
        end = self.length + key_states.shape[-2]
        if end > self._keys_buf.shape[-2]:
            self._grow(end)
        self._keys_buf[:, :, self.length : end].copy_(key_states)
        self._values_buf[:, :, self.length : end].copy_(value_states)
        self.length = end
        self.keys, self.values = self._keys_buf[:, :, :end], self._values_buf[:, :, :end]
        return self.keys, self.values

    def _grow(self, needed: int) -> None:
        capacity = max(needed, 2 * self._keys_buf.shape[-2])
        for name in ("_keys_buf", "_values_buf"):
            old = getattr(self, name)
            new = old.new_empty((*old.shape[:2], capacity, old.shape[-1]))
            new[:, :, : self.length].copy_(old[:, :, : self.length])
            setattr(self, name, new)


def cache_from_buffer(buffer: torch.Tensor, length: int | None = None) -> DynamicCache:
    """A `DynamicCache` over ``buffer [L, 2, H, capacity, D]`` holding ``length`` tokens.

    The first ``length`` tokens are the reused prefix; the model writes the
    tokens it computes into the rest, in place (see `PreallocatedLayer`).
    """
    used = buffer.shape[3] if length is None else length
    cache = DynamicCache()
    for layer_index in range(buffer.shape[0]):
        keys = buffer[layer_index, 0].unsqueeze(0)
        values = buffer[layer_index, 1].unsqueeze(0)
        cache.layers.append(PreallocatedLayer(keys, values, used))
    return cache
