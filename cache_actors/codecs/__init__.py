"""Storage formats of KV blocks in the cache's pool (no Ray here).

``make_codec(name, KVShape(...), model_dtype)`` returns a `Codec` whose
`part_specs` tell the pool what to preallocate and whose ``encode`` /
``decode_into`` convert blocks. Codecs: ``native`` (model dtype, exact),
``fp16`` / ``bf16`` (cast), ``int8`` / ``int4`` (KIVI-style asymmetric
quantization: keys per channel, values per token).
"""

from cache_actors.codecs.base import MODEL_DTYPES, Codec, CodecError, KVShape, PartSpecs, compare
from cache_actors.codecs.cast import Bf16Codec, CastCodec, Fp16Codec, NativeCodec
from cache_actors.codecs.quant import AsymmetricQuantCodec, Int4Codec, Int8Codec
from cache_actors.codecs.registry import CODECS, codec_table, make_codec

__all__ = [
    "CODECS",
    "MODEL_DTYPES",
    "AsymmetricQuantCodec",
    "Bf16Codec",
    "CastCodec",
    "Codec",
    "CodecError",
    "Fp16Codec",
    "Int4Codec",
    "Int8Codec",
    "KVShape",
    "NativeCodec",
    "PartSpecs",
    "codec_table",
    "compare",
    "make_codec",
]
