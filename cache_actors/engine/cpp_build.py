"""Build (or reuse this machine's build of) one of the engine's C++ kernels, or None with the reason logged.

Why one place: `attention_kernel` and `pointwise_kernel` compile their
sources the same way (``torch.utils.cpp_extension.load``: once per machine,
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

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent


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
