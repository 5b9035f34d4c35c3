"""API key format and hashing.

A key reads ``blt_<key_id>_<secret>``: the 12-hex ``key_id`` is public (listed,
used to revoke), the secret is 43 url-safe characters (256 bits). Only
``sha256(key)`` is stored; a random 256-bit secret needs no slow hash, and
sha256 lets a request find its key with one indexed lookup.
"""

from __future__ import annotations

import hashlib
import re
import secrets

PREFIX = "blt"
KEY_RE = re.compile(r"^blt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


def generate_api_key() -> tuple[str, str]:
    """A new ``(key_id, full_key)``."""
    key_id = secrets.token_hex(6)
    return key_id, f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


def hash_api_key(key: str) -> str:
    """Hex sha256 of the whole key, as stored."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_key_id(key: str) -> str | None:
    """The key id of a well-formed key, or None for anything else."""
    match = KEY_RE.match(key)
    return match.group(1) if match else None
