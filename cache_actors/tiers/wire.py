"""Serialized form of one encoded KV block, for Redis and disk.

Layout: ``b"BKV1"``, a little-endian u32 header length, a JSON header (codec,
parts with shapes and dtypes, compression, raw length, checksum), then the
parts' bytes in sorted part order, compressed with lz4 or zstd (or not). The
checksum is the block's XXH3-128 (`block_checksum`: hashing the parts in
sorted order is hashing their concatenation), so the digest the writer
computed travels unchanged from pool to tier and back.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Mapping

import lz4.frame
import numpy as np
import zstandard

from cache_actors.core.block_checksum import bytes_checksum

MAGIC = b"BKV1"
COMPRESSIONS = ("none", "lz4", "zstd")
_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16, "int8": np.int8, "uint8": np.uint8}


class WireError(ValueError):
    """A serialized block that must not be used (corrupt, truncated, foreign layout)."""


def _compress(data: bytes, compression: str) -> bytes:
    if compression == "lz4":
        return lz4.frame.compress(data)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=1).compress(data)
    return data


def _decompress(data: bytes, compression: str, raw_len: int) -> bytes:
    if compression == "lz4":
        return lz4.frame.decompress(data)
    if compression == "zstd":
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=raw_len)
    return data


def encode_block(
    parts: Mapping[str, np.ndarray], *, codec: str, dtypes: Mapping[str, str], checksum: bytes, compression: str = "lz4"
) -> bytes:
    """Serialize one block (each part ``[1, *shape]``, as a pool row)."""
    if any(array.shape[:1] != (1,) for array in parts.values()):
        raise ValueError("encode_block takes one block: every part must be [1, *shape]")
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; supported: {COMPRESSIONS}")
    names = sorted(parts)
    raw = b"".join(np.ascontiguousarray(parts[name]).tobytes() for name in names)
    header = {
        "codec": codec,
        "parts": [[name, list(parts[name].shape[1:]), dtypes[name]] for name in names],
        "compression": compression,
        "raw_len": len(raw),
        "checksum": checksum.hex(),
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<I", len(head)) + head + _compress(raw, compression)


def decode_block(
    blob: bytes, *, codec: str, specs: Mapping[str, tuple[tuple[int, ...], str]], checksum: bytes | None = None
) -> tuple[dict[str, np.ndarray], bytes]:
    """Parts (each ``[1, *shape]``) and checksum of a serialized block, verified.

    ``specs`` maps part name to (per-block shape, dtype name) expected by the
    reader; ``checksum`` (if given) must match too.

    Raises:
        WireError: bad magic, foreign codec or layout, truncated or corrupted bytes.
    """
    if len(blob) < 8 or blob[:4] != MAGIC:
        raise WireError("not a serialized KV block")
    (head_len,) = struct.unpack("<I", blob[4:8])
    try:
        header = json.loads(blob[8 : 8 + head_len])
        expected = sorted([name, list(shape), dtype] for name, (shape, dtype) in specs.items())
        if header["codec"] != codec or header["parts"] != expected:
            raise WireError(f"block has codec {header.get('codec')!r} with other parts than this cache's {codec!r}")
        stored_sum = bytes.fromhex(header["checksum"])
        raw = _decompress(blob[8 + head_len :], header["compression"], int(header["raw_len"]))
    except WireError:
        raise
    except (ValueError, KeyError, TypeError, RuntimeError, zstandard.ZstdError) as exc:
        raise WireError(f"unreadable KV block: {exc}") from None
    if len(raw) != header["raw_len"] or bytes_checksum(raw) != stored_sum or (checksum is not None and stored_sum != checksum):
        raise WireError("KV block fails its checksum")
    parts: dict[str, np.ndarray] = {}
    offset = 0
    for name, shape, dtype in header["parts"]:
        np_dtype = np.dtype(_NUMPY_DTYPES[dtype])
        size = math.prod(shape) * np_dtype.itemsize
        parts[name] = np.frombuffer(raw, dtype=np_dtype, count=math.prod(shape), offset=offset).reshape(1, *shape)
        offset += size
    return parts, stored_sum
