"""Password hashing with argon2 (pwdlib), the hash format stored in auth_users."""

from __future__ import annotations

import functools

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher


@functools.cache
def _hasher() -> PasswordHash:
    return PasswordHash((Argon2Hasher(),))


def hash_password(password: str) -> str:
    """An argon2id hash of `password` (salted; a new one each call)."""
    return _hasher().hash(password)


def verify_password(password: str, password_hash: str) -> tuple[bool, str | None]:
    """Whether `password` matches; the second item is a re-hash when parameters changed."""
    return _hasher().verify_and_update(password, password_hash)


@functools.cache
def dummy_hash() -> str:
    """A hash to verify against when the user does not exist, so timing does not reveal names."""
    return hash_password("not-a-real-password-but-same-cost")
