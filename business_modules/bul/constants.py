"""Limits and tunables of BUL, each with its unit in the name.

The input limits bound the prompt (the demo model's tokenizer is one byte per
token, so characters are a fair upper bound of tokens) and keep one request
from filling the database.
"""

from __future__ import annotations

MAX_QUERY_CHARS = 2_000
"""Characters of the free-text request."""

MAX_INPUTS_CHARS = 8_000
"""Characters of the typed inputs, serialised as JSON (all fields together)."""

MAX_FIELD_CHARS = 200
"""Characters of one short input field (a name, a figure, a date)."""

MAX_NOTES_CHARS = 2_000
"""Characters of an input's free notes."""

MAX_LIST_ITEMS = 20
"""Items of a list input (figures, attendees, channels, ...)."""

MAX_TITLE_CHARS = 200
MAX_GUIDANCE_CHARS = 500
"""Characters of the extra guidance a regeneration may add to a section's ask."""

OUTLINE_NOTE_CHARS = 40
"""maxLength of one outline note (the grammar stops a small model there, not at max_tokens)."""

SECTION_MAX_TOKENS = {"short": 96, "medium": 192, "long": 384}
"""Tokens of one section's text by requested length (SmolLM2 wrote ~2 sentences in 64 tokens, cut mid-word;
a sentence the budget cuts is dropped: `assembly.section_body`)."""

LLM_TIMEOUT_S = 120.0
"""Bound of one LLM call; past it the job fails with that reason."""

JOB_LEASE_S = 30.0
"""A queued/running task whose lease is older than this belongs to a dead replica."""

JOB_HEARTBEAT_S = 10.0
"""How often a live replica renews the leases of the tasks it owns."""

MAX_RUNNING_PER_TENANT = 2
"""Tasks of one tenant generating at once in one replica; the others wait queued."""

MAX_PENDING_PER_TENANT = 32
"""Unfinished tasks of one tenant one replica accepts before 429."""

RENDER_TIMEOUT_S = 60.0
"""Bound of one download render (PDF, DOCX through the Export renderers)."""
