"""`iter_block_checksums` (parts viewed as bytes once) gives `block_checksum`'s digests for every layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cache_actors.core.block_checksum import block_checksum, block_checksums, iter_block_checksums


def _layouts() -> dict[str, dict[str, torch.Tensor | np.ndarray]]:
    generator = torch.Generator().manual_seed(0)
    kv = torch.randn(6, 2, 3, 4, 5, generator=generator)
    return {
        "contiguous float32": {"kv": kv},
        "bfloat16 and a scale part": {"kv": kv.to(torch.bfloat16), "scale": torch.rand(6, 2, generator=generator)},
        "numpy int8": {"q": (kv * 20).to(torch.int8).numpy()},
        "strided (every other row)": {"kv": torch.randn(12, 2, 3, generator=generator)[::2]},
        "transposed rows": {"kv": torch.randn(4, 6, generator=generator).t()},
        "numpy strided": {"kv": np.arange(72, dtype=np.float32).reshape(12, 6)[::2]},
    }


@pytest.mark.parametrize("layout", list(_layouts()))
def test_same_digests_as_row_by_row(layout: str) -> None:
    parts = _layouts()[layout]
    rows = [5, 0, 3, 3]
    expected = [block_checksum(parts, row) for row in rows]
    assert list(iter_block_checksums(parts, rows)) == expected
    assert block_checksums(parts, rows) == expected


def test_a_changed_byte_changes_only_its_block() -> None:
    kv = torch.zeros(4, 8)
    before = block_checksums({"kv": kv}, range(4))
    kv[2, 7] = 1e-30
    after = block_checksums({"kv": kv}, range(4))
    assert [a == b for a, b in zip(before, after)] == [True, True, False, True]


def test_empty_parts_and_rows() -> None:
    assert block_checksums({"kv": torch.zeros(0, 3)}, []) == []
    assert list(iter_block_checksums({"kv": torch.zeros(2, 0)}, [1])) == [block_checksum({"kv": torch.zeros(2, 0)}, 1)]
