"""Limits and tunables of Gamma, each with its unit in the name."""

from __future__ import annotations

MAX_INPUT_CHARS = 20_000
"""``inputText`` of one generation (and the composed input of a content request)."""

MAX_DESCRIPTION_CHARS = 10_000
"""``description`` of the original ``/content/generate``."""

MAX_SHORT_FIELD_CHARS = 300
"""``topic``, ``target_audience``, ``style``, ``tone`` and ``textOptions`` strings."""

MAX_KEYWORDS = 10
MAX_KEYWORD_CHARS = 64

MAX_CARDS = 20
"""``numCards`` upper bound (Gamma's Pro plan allows 60; a small model is slow per card)."""

DEFAULT_NUM_CARDS = 5

MAX_CHART_POINTS = 12
"""Data points of one chart; a longer series is cut (its first points are kept)."""

MIN_CHART_POINTS = 2

# JSON-schema bounds given to the LLM: a small model loops until max_tokens without them.
MAX_TITLE_CHARS = 80
MAX_HEADING_CHARS = 60
MAX_BULLET_CHARS = 90
MAX_BULLETS = 4
MAX_QUOTE_CHARS = 200
MAX_TABLE_CELLS_CHARS = 24
MAX_TABLE_COLUMNS = 3
MAX_TABLE_ROWS = 3

OUTLINE_MAX_TOKENS = 2048
CARD_MAX_TOKENS = 512
MAX_COLUMN_ITEM_CHARS = 60
"""Token budgets: the outline's is the most it may get (it gets what its cards need,
`prompts.outline_max_tokens`), a card's is one card's. Both are above the longest JSON
their schemas allow in characters: above the longest JSON their schemas allow in
characters, so a schema-bound ASCII answer is never cut (a byte-level model spends a token per byte)."""

LLM_CALL_TIMEOUT_S = 90.0
"""Bound of one LLM call; a timeout fails the generation with that reason."""

JOB_LEASE_S = 30.0
"""A queued/running generation whose lease is older than this belongs to a dead replica."""

JOB_HEARTBEAT_S = 10.0
"""How often a live replica renews the leases of the generations it runs."""

RESULT_RETENTION_S = 7 * 24 * 3600.0
"""How long a finished generation is kept before it is purged."""

MAX_CONCURRENT_GENERATIONS = 2
"""Generations one replica runs at once (each makes one LLM call at a time)."""

MAX_PENDING_JOBS = 32
"""Unfinished generations one replica accepts before answering busy."""

CONTENT_WAIT_S = 300.0
"""How long the synchronous ``/content/generate`` waits for its generation."""
