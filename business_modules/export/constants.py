"""Limits and tunables of the export module, each with its unit in the name.

Limits keep one request from tying up a replica: WeasyPrint lays out every
character, so the content bound is what bounds render time (about 1 s for a
few pages, tens of seconds near the limit).
"""

from __future__ import annotations

MAX_CONTENT_CHARS = 200_000
"""Markdown characters of one document after normalisation (all sections together)."""

MAX_SECTIONS = 200
"""Sections of a structured document, nested ones included."""

MAX_SECTION_DEPTH = 3
"""Nesting depth of ``subsections`` (a top-level section is depth 1)."""

MAX_TITLE_CHARS = 300
MAX_HEADING_CHARS = 300
MAX_AUTHOR_CHARS = 200
MAX_SUBJECT_CHARS = 1_000
MAX_KEYWORDS = 32
MAX_KEYWORD_CHARS = 64
MAX_FILENAME_CHARS = 120

MAX_IMAGE_BYTES = 5 * 1024 * 1024
"""Decoded size of one embedded ``data:`` image; larger ones are dropped (alt text kept)."""

TOC_DEPTH = 2
"""Outline levels listed in a table of contents: top-level sections and their subsections."""

RENDER_TIMEOUT_S = 120.0
"""Wall-clock bound of one render; past it the job is failed and its output discarded."""

JOB_LEASE_S = 30.0
"""A queued/running job whose lease is older than this belongs to a dead replica."""

JOB_HEARTBEAT_S = 10.0
"""How often a live replica renews the leases of the jobs it owns."""

RESULT_RETENTION_S = 24 * 3600.0
"""How long a finished job and its file are kept before they are purged."""

MAX_CONCURRENT_RENDERS = 1
"""Renders running at once in one replica (WeasyPrint is CPU-bound; Pango is not thread-safe)."""
