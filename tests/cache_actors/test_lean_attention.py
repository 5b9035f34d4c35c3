"""The grouped prefill bias gives what SDPA gives with the boolean mask, on every mask shape a forward builds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cache_actors.engine.lean_attention import PrefillBias, attend, causal_mask


def _reference(query, keys, values, mask, scale):
    return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale, enable_gqa=True)


@pytest.mark.parametrize("heads,kv_heads", [(9, 3), (8, 4), (4, 4)])
def test_grouped_bias_equals_the_boolean_mask_on_a_cached_prefix(heads: int, kv_heads: int) -> None:
    generator = torch.Generator().manual_seed(heads)
    width, past, dim = 13, 40, 16
    query = torch.randn(1, heads, width, dim, generator=generator)
    keys, values = (torch.randn(1, kv_heads, past + width, dim, generator=generator) for _ in range(2))
    mask, causal = causal_mask(None, width, past, torch.device("cpu"))
    assert mask is not None and not causal
    bias = PrefillBias.build(mask, heads // kv_heads)
    assert bias.bias.shape == (1, 1, heads // kv_heads * width, past + width) and bias.bias.dtype == torch.float32
    got = attend(query, keys, values, mask, causal, scale=dim**-0.5, num_kv_heads=kv_heads, prefill_bias=bias)
    torch.testing.assert_close(got, _reference(query, keys, values, mask, dim**-0.5), rtol=1e-5, atol=1e-6)


def test_ragged_rows_and_a_row_with_nothing_to_attend_match_sdpa() -> None:
    """Rows of a batched prefill have their own lengths; a padded query row attends to nothing at all."""
    generator = torch.Generator().manual_seed(0)
    rows, heads, kv_heads, width, kv, dim = 3, 6, 2, 5, 12, 8
    query = torch.randn(rows, heads, width, dim, generator=generator)
    keys, values = (torch.randn(rows, kv_heads, kv, dim, generator=generator) for _ in range(2))
    mask = torch.zeros(rows, 1, width, kv, dtype=torch.bool)
    for row, (start, count) in enumerate([(0, 5), (4, 3), (7, 5)]):
        for token in range(count):
            mask[row, 0, token, : start + token + 1] = True  # the tail of row 1's queries attends to nothing
    bias = PrefillBias.build(mask, heads // kv_heads)
    got = attend(query, keys, values, mask, False, scale=0.3, num_kv_heads=kv_heads, prefill_bias=bias)
    want = _reference(query, keys, values, mask, 0.3)
    assert torch.equal(got.isnan(), want.isnan())
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), rtol=1e-5, atol=1e-6)
    attended = mask.any(-1)[:, 0]  # [rows, width]
    assert not got.transpose(1, 2)[attended].isnan().any()
