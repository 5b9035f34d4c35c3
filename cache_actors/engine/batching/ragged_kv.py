"""A batch KV buffer where every row has its own length.

Left-padded batching (what `generate()` does) aligns every sequence on a
common last column, so a sequence longer than the current column joins only
after everyone else's KV is shifted. Here each row keeps its tokens at
columns ``0..len``; a decode step writes row i's new key at column
``len_i`` (one scatter), and a 4D boolean mask hides each row's unused tail.
Joining costs nothing beyond the new row's own prefill (written in place into
its row), leaving costs at most one row copy (to keep active rows dense).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from cache_actors.core.kv_layout import cache_from_buffer


class RaggedLayer(DynamicLayer):
    """One layer's view of some rows; `update` writes each new token's key and value at its buffer row in ``slots``
    (`flat_slots`: row i's tokens at its own columns)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, slots: torch.Tensor, kv_len: int) -> None:
        super().__init__()
        self.lazy_initialization(keys[:, :, :1], values[:, :, :1])
        self._keys_buf, self._values_buf = keys, values
        self._slots, self._kv_len = slots, kv_len
        self.keys, self.values = keys[:, :, : kv_len - 1], values[:, :, : kv_len - 1]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):  # noqa: ANN002, ANN003
        # key_states [rows, H, T, D]: (row, head, token) goes to the buffer's row of D values `slots[row, head, token]`.
        # Why index_copy_ over flat rows, not `buf[rows, :, cols] = ...`: that advanced-index write took ~200 us
        # per call inside a real 16-row decode step (twice a layer: 11% of the step); this is a row memcpy.
        head_dim = key_states.shape[-1]
        self._keys_buf.view(-1, head_dim).index_copy_(0, self._slots, key_states.reshape(-1, head_dim))
        self._values_buf.view(-1, head_dim).index_copy_(0, self._slots, value_states.reshape(-1, head_dim))
        self.keys, self.values = self._keys_buf[:, :, : self._kv_len], self._values_buf[:, :, : self._kv_len]
        return self.keys, self.values


def flat_slots(cols: torch.Tensor, num_heads: int, max_len: int) -> torch.Tensor:
    """Flat row index in a ``[rows, heads, max_len, D]`` buffer of (row i, head h, token t) at column ``cols[i, t]``.

    Ordered as ``[rows, heads, T]``, the order of a ``[rows, heads, T, D]`` key tensor's rows of D.
    """
    rows, width = cols.shape
    row_base = torch.arange(rows * num_heads, device=cols.device).view(rows, num_heads)  # i * heads + h
    return (row_base[:, :, None] * max_len + cols[:, None, :]).reshape(rows * num_heads * width)


class RaggedKVBuffer:
    """``[layers, 2, max_rows, kv_heads, max_len, head_dim]`` of KV, one row per running sequence.

    Rows ``0..active`` are in use, in the order the caller keeps its
    sequences; `remove` moves the last row into the hole so the active rows
    stay a prefix (the model runs on ``active`` rows, not ``max_rows``).
    """

    def __init__(
        self, *, num_layers: int, num_kv_heads: int, head_dim: int, max_rows: int, max_len: int,
        dtype: torch.dtype, device: torch.device | str = "cpu",
    ) -> None:
        self.max_rows, self.max_len = max_rows, max_len
        self.buffer = torch.zeros(
            (num_layers, 2, max_rows, num_kv_heads, max_len, head_dim), dtype=dtype, device=device
        )
        self.lengths: list[int] = []  # tokens held by each active row

    @property
    def active(self) -> int:
        return len(self.lengths)

    def row_view(self, row: int) -> torch.Tensor:
        """Row ``row`` as ``[L, 2, H, max_len, D]`` (a view: writes land in the buffer)."""
        return self.buffer[:, :, row]

    def add_row(self) -> int:
        """Claim the next free row (its length starts at 0); the caller fills it with `row_cache`."""
        if self.active >= self.max_rows:
            raise RuntimeError("no free row in the batch KV buffer")
        self.lengths.append(0)
        return self.active - 1

    def row_cache(self, row: int, cached_tokens: int) -> DynamicCache:
        """A single-sequence model cache writing into ``row`` in place (for its prefill)."""
        return cache_from_buffer(self.row_view(row), cached_tokens)

    def set_length(self, row: int, length: int) -> None:
        if length > self.max_len:
            raise ValueError(f"row length {length} exceeds the buffer's {self.max_len}")
        self.lengths[row] = length

    def remove(self, row: int) -> int | None:
        """Free ``row``; returns the index of the row moved into its place (None if none moved)."""
        last = self.active - 1
        moved = None
        if row != last:
            length = self.lengths[last]
            self.buffer[:, :, row, :, :length].copy_(self.buffer[:, :, last, :, :length])
            self.lengths[row] = length
            moved = last
        self.lengths.pop()
        return moved

    def decode_inputs(self) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
        """``(cache, position_ids [n, 1], attention_mask [n, 1, 1, kv_len])`` for one step of every active row.

        Each row's new token goes at column ``length`` (its position), and
        may attend to columns ``0..length`` of its own row only.
        """
        n = self.active
        if n == 0:
            raise RuntimeError("no active rows to decode")
        device = self.buffer.device
        lengths = torch.tensor(self.lengths, dtype=torch.long, device=device)
        if int(lengths.max()) >= self.max_len:
            raise RuntimeError("a row is full; the scheduler must retire it before this step")
        kv_len = int(lengths.max()) + 1
        cache = self._layers(0, n, lengths[:, None], kv_len)
        mask = torch.arange(kv_len, device=device)[None, :] <= lengths[:, None]
        return cache, lengths[:, None], mask[:, None, None, :]

    def extend_inputs(self, first_row: int, starts: list[int], counts: list[int]) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
        """``(cache, position_ids [n, T], attention_mask [n, 1, T, kv_len])`` to feed ``counts[i]`` tokens to row
        ``first_row + i`` after its first ``starts[i]`` (its cached prefix), all rows in one forward.

        Inputs are right-padded to ``T = max(counts)``: a padding position
        writes its key past its row's tokens (never read before a later token
        overwrites it) and no real token attends to it.
        """
        n, width = len(starts), max(counts)
        if first_row < 0 or first_row + n > self.active:
            raise ValueError("extend_inputs needs active rows")
        device = self.buffer.device
        start = torch.tensor(starts, dtype=torch.long, device=device)
        positions = start[:, None] + torch.arange(width, device=device)[None, :]
        kv_len = max(s + c for s, c in zip(starts, counts))
        if kv_len > self.max_len:
            raise ValueError(f"row length {kv_len} exceeds the buffer's {self.max_len}")
        cache = self._layers(first_row, n, positions.clamp(max=self.max_len - 1), kv_len)
        mask = torch.arange(kv_len, device=device)[None, None, :] <= positions[:, :, None]
        return cache, positions, mask[:, None]

    def _layers(self, first_row: int, n: int, cols: torch.Tensor, kv_len: int) -> DynamicCache:
        """A cache over rows ``first_row..+n`` whose row i's new tokens go to columns ``cols[i]`` ([n, T])."""
        slots = flat_slots(cols, self.buffer.shape[3], self.max_len)  # the same for every layer
        cache = DynamicCache()
        for layer in range(self.buffer.shape[0]):
            keys = self.buffer[layer, 0, first_row : first_row + n]
            values = self.buffer[layer, 1, first_row : first_row + n]
            cache.layers.append(RaggedLayer(keys, values, slots, kv_len))
        return cache

    def advance(self) -> None:
        """Every active row gained the token of the step just run."""
        self.lengths = [length + 1 for length in self.lengths]
