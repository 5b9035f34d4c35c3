"""The in-place model cache gives the same numbers as transformers' own, and grows when full."""

from __future__ import annotations

import torch

from cache_actors.core.kv_layout import cache_from_buffer, new_prefix_buffer


def test_preallocated_cache_matches_dynamic_cache_through_prefill_and_decode(tiny_runner):
    ids = tiny_runner.encode("In-place KV must equal concatenated KV. " * 3)
    geometry = tiny_runner.geometry
    # Room for only 8 more tokens than the prompt: decoding 20 forces the buffer to grow.
    buffer = new_prefix_buffer(geometry.num_layers, geometry.num_kv_heads, len(ids) + 8, geometry.head_dim,
                               geometry.dtype, "cpu")
    ours_logits, ours = tiny_runner.prefill(ids, cache_from_buffer(buffer, 0))
    ref_logits, ref = tiny_runner.prefill(ids)
    torch.testing.assert_close(ours_logits, ref_logits)
    for _ in range(20):
        token = int(torch.argmax(ref_logits))
        assert token == int(torch.argmax(ours_logits))
        ours_logits = tiny_runner.step(token, ours)
        ref_logits = tiny_runner.step(token, ref)
        torch.testing.assert_close(ours_logits, ref_logits)
    assert ours.get_seq_length() == ref.get_seq_length() == len(ids) + 20
    torch.testing.assert_close(ours.layers[0].keys, ref.layers[0].keys)
