"""Build (or reuse this machine's build of) one of the engine's C++ kernels, or None with the reason logged.

Why one place: `attention_kernel` and `pointwise_kernel` run where the same
things hold (float32 on a CPU with AVX2 or AVX-512, a C++ compiler:
`build_blocker`), and compile their sources the same way (``torch.utils.cpp_extension.load``: once per machine,
later loads reuse the build), and both must treat any build failure as
"kernel off", never as a failed model load. The build is keyed on the
source and the flags only, so the digest of the headers the sources include
(``*.h`` beside them) joins the flags: editing a header rebuilds.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch

from cache_actors.engine.fused_pointwise import cpp_compiler

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent


def simd_level() -> str | None:
    """``"avx512"``, ``"avx2"`` or None: which of our builds this CPU runs, as PyTorch reads the CPU."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        return "avx512"
    return "avx2" if capability == "AVX2" else None


def build_blocker(dtype: torch.dtype, device: torch.device) -> str | None:
    """Why no C++ kernel of ours can serve a model of ``dtype`` on ``device`` here, or None."""
    if device.type != "cpu" or dtype != torch.float32:
        return f"float32 on CPU only (this model: {dtype} on {device.type})"
    if simd_level() is None:
        return f"needs AVX2 or AVX-512 (this CPU: {torch.backends.cpu.get_cpu_capability()})"
    if cpp_compiler() is None:
        return "no C++ compiler on PATH"
    return None


def headers_digest() -> str:
    """A digest of the engine's C++ headers (``cache_actors/engine/*.h``)."""
    digest = hashlib.sha256()
    for header in sorted(HERE.glob("*.h")):
        digest.update(header.name.encode() + b"\0" + header.read_bytes())
    return digest.hexdigest()[:16]


def load_extension(name: str, source: Path, cflags: list[str], *, openmp: bool, what: str) -> Any | None:
    """The compiled module ``name`` of ``source``; None (logged as "``what`` off") where the build fails."""
    from torch.utils.cpp_extension import load

    flags = [*cflags, *(["-fopenmp"] if openmp else []), f"-DBLATAM_HEADERS={headers_digest()}"]
    try:
        return load(name, [str(source)], extra_cflags=flags, extra_ldflags=["-fopenmp"] if openmp else [])
    except Exception as exc:  # noqa: BLE001 - any build failure leaves the eager ops on
        logger.warning("%s off: the build of %s failed (%s)", what, source.name,
                       str(exc).splitlines()[0] if str(exc) else exc)
        return None
