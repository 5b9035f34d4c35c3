"""Encoded block parts as numpy arrays, for Ray's zero-copy object store (no Ray).

Ray reads numpy arrays back as read-only views of shared memory but copies
torch tensors, so parts cross process boundaries as numpy. bfloat16 has no
numpy dtype and travels as its raw uint16 bits.
"""

from __future__ import annotations

import warnings
from typing import Mapping

import numpy as np
import torch

from cache_actors.core.pool import PartSpecs


def parts_to_numpy(parts: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """numpy views of CPU part tensors (no copy)."""
    return {name: (t.view(torch.uint16) if t.dtype == torch.bfloat16 else t).numpy() for name, t in parts.items()}


def parts_from_numpy(arrays: Mapping[str, np.ndarray], specs: PartSpecs) -> dict[str, torch.Tensor]:
    """Tensors sharing memory with ``arrays`` (read-only views included), checked against ``specs``.

    Raises:
        ValueError: a part is missing or has the wrong shape or dtype.
    """
    if set(arrays) != set(specs):
        raise ValueError(f"expected parts {sorted(specs)}, got {sorted(arrays)}")
    out = {}
    for name, (shape, dtype) in specs.items():
        array = arrays[name]
        with warnings.catch_warnings():
            # Read-only object-store views: we never write through these tensors.
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(array)
        if dtype == torch.bfloat16 and tensor.dtype == torch.uint16:
            tensor = tensor.view(torch.bfloat16)
        if tensor.dtype != dtype or tuple(tensor.shape[1:]) != tuple(shape):
            raise ValueError(f"part {name!r}: expected [n, {shape}] {dtype}, got {list(tensor.shape)} {tensor.dtype}")
        out[name] = tensor
    return out
