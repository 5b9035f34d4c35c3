"""Free the reference cycles a PDF, DOCX or PPTX render leaves, as soon as it ends.

WeasyPrint's layout objects and python-docx's and python-pptx's package/part
graphs are reference cycles, and the DOCX and PPTX ones hold lxml trees in
native memory (~0.4 MiB per DOCX render of the soak's small report). Only
CPython's cyclic collector frees them, and in a long-lived server it rarely
runs a full collection: it waits until the objects promoted since the last one
reach a quarter of all long-lived objects, and a Serve replica holds ~300,000
of those after its imports. Measured: a deployed export replica grew from 290
to 480 MiB over 500 DOCX renders (the CI soak failed on it), and ~90 MiB
in a plain process, falling back only when a full collection finally ran;
with a collection after each render it stays flat.

A full collection walks every tracked object: ~115 ms in such a process,
~1.5 ms once the replica froze its startup objects (`gc.freeze`, see
`deployments.common.heap.freeze_startup_heap`), so the render pays ~1 ms.
"""

from __future__ import annotations

import gc

from business_modules.export.kinds import ExportFormat

CYCLIC_FORMATS = frozenset({ExportFormat.PDF, ExportFormat.DOCX, ExportFormat.PPTX})
"""Formats whose renderer leaves cycles (measured: markdown and HTML leave none)."""


def collect_render_cycles(fmt: ExportFormat) -> int:
    """Run a full collection after a render in ``fmt`` if it leaves cycles; the number of objects freed."""
    return gc.collect() if fmt in CYCLIC_FORMATS else 0
