"""SQL of the auth tables (``auth_users``, ``auth_api_keys``) over `Database`.

Scopes are stored as a space-separated TEXT (portable, and scopes never
contain spaces). Timestamps are epoch seconds (DOUBLE PRECISION).
"""

from __future__ import annotations

from typing import Any

from business_modules.auth.models import ApiKey, User
from business_modules.storage import Database, Migration, register_migrations

register_migrations(
    "auth",
    [
        Migration(
            1,
            "users and api keys",
            """
            CREATE TABLE IF NOT EXISTS auth_users (
                username TEXT PRIMARY KEY,
                password_hash TEXT NOT NULL,
                tenant TEXT NOT NULL,
                scopes TEXT NOT NULL,
                is_active INTEGER NOT NULL DEFAULT 1,
                created_at DOUBLE PRECISION NOT NULL
            );
            CREATE TABLE IF NOT EXISTS auth_api_keys (
                key_id TEXT PRIMARY KEY,
                key_hash TEXT NOT NULL UNIQUE,
                username TEXT NOT NULL REFERENCES auth_users (username) ON DELETE CASCADE,
                name TEXT NOT NULL,
                scopes TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION,
                revoked_at DOUBLE PRECISION
            );
            CREATE INDEX IF NOT EXISTS auth_api_keys_username ON auth_api_keys (username);
            """,
        )
    ],
)

_KEY_COLUMNS = (
    "k.key_id, k.username, u.tenant, k.name, k.scopes, k.created_at, k.expires_at, k.revoked_at"
)


def _scopes(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _user(row: dict[str, Any]) -> User:
    return User(
        username=row["username"],
        tenant=row["tenant"],
        scopes=_scopes(row["scopes"]),
        is_active=bool(row["is_active"]),
        created_at=float(row["created_at"]),
    )


def _key(row: dict[str, Any]) -> ApiKey:
    return ApiKey(
        key_id=row["key_id"],
        username=row["username"],
        tenant=row["tenant"],
        name=row["name"],
        scopes=_scopes(row["scopes"]),
        created_at=float(row["created_at"]),
        expires_at=None if row["expires_at"] is None else float(row["expires_at"]),
        revoked_at=None if row["revoked_at"] is None else float(row["revoked_at"]),
    )


async def insert_user(
    db: Database, *, username: str, password_hash: str, tenant: str, scopes: tuple[str, ...], now: float
) -> User:
    """Insert a user; `IntegrityError` when the name is taken."""
    await db.execute(
        "INSERT INTO auth_users (username, password_hash, tenant, scopes, is_active, created_at)"
        " VALUES (:username, :password_hash, :tenant, :scopes, 1, :now)",
        {"username": username, "password_hash": password_hash, "tenant": tenant, "scopes": " ".join(scopes), "now": now},
    )
    return User(username=username, tenant=tenant, scopes=scopes, is_active=True, created_at=now)


async def get_user(db: Database, username: str) -> User | None:
    """The user without its hash: one primary-key lookup, run for every request with a token."""
    row = await db.fetch_one(
        "SELECT username, tenant, scopes, is_active, created_at FROM auth_users WHERE username = :username",
        {"username": username},
    )
    return None if row is None else _user(row)


async def get_user_with_hash(db: Database, username: str) -> tuple[User, str] | None:
    row = await db.fetch_one("SELECT * FROM auth_users WHERE username = :username", {"username": username})
    return None if row is None else (_user(row), row["password_hash"])


async def list_users(db: Database) -> list[User]:
    return [_user(row) for row in await db.fetch_all("SELECT * FROM auth_users ORDER BY username")]


async def update_password_hash(db: Database, username: str, password_hash: str) -> None:
    await db.execute(
        "UPDATE auth_users SET password_hash = :h WHERE username = :username", {"h": password_hash, "username": username}
    )


async def set_user_active(db: Database, username: str, active: bool) -> int:
    return await db.execute(
        "UPDATE auth_users SET is_active = :a WHERE username = :username", {"a": int(active), "username": username}
    )


async def insert_api_key(
    db: Database,
    *,
    key_id: str,
    key_hash: str,
    username: str,
    name: str,
    scopes: tuple[str, ...],
    now: float,
    expires_at: float | None,
) -> None:
    await db.execute(
        "INSERT INTO auth_api_keys (key_id, key_hash, username, name, scopes, created_at, expires_at, revoked_at)"
        " VALUES (:key_id, :key_hash, :username, :name, :scopes, :now, :expires_at, NULL)",
        {"key_id": key_id, "key_hash": key_hash, "username": username, "name": name, "scopes": " ".join(scopes),
         "now": now, "expires_at": expires_at},
    )


async def get_api_key(db: Database, key_id: str) -> ApiKey | None:
    row = await db.fetch_one(
        f"SELECT {_KEY_COLUMNS} FROM auth_api_keys k JOIN auth_users u ON u.username = k.username"
        " WHERE k.key_id = :key_id",
        {"key_id": key_id},
    )
    return None if row is None else _key(row)


async def find_usable_key_by_hash(
    db: Database, key_hash: str, now: float
) -> tuple[ApiKey, tuple[str, ...]] | None:
    """The key with this hash and its owner's current scopes, if the key is not revoked, not
    expired and its owner is active (one indexed lookup, run for every request with a key)."""
    row = await db.fetch_one(
        f"SELECT {_KEY_COLUMNS}, u.scopes AS owner_scopes FROM auth_api_keys k"
        " JOIN auth_users u ON u.username = k.username"
        " WHERE k.key_hash = :key_hash AND k.revoked_at IS NULL AND u.is_active = 1"
        " AND (k.expires_at IS NULL OR k.expires_at > :now)",
        {"key_hash": key_hash, "now": now},
    )
    return None if row is None else (_key(row), _scopes(row["owner_scopes"]))


async def list_api_keys(db: Database, username: str | None = None) -> list[ApiKey]:
    where = "" if username is None else " WHERE k.username = :username"
    rows = await db.fetch_all(
        f"SELECT {_KEY_COLUMNS} FROM auth_api_keys k JOIN auth_users u ON u.username = k.username{where}"
        " ORDER BY k.created_at, k.key_id",
        {} if username is None else {"username": username},
    )
    return [_key(row) for row in rows]


async def mark_key_revoked(db: Database, key_id: str, now: float) -> int:
    return await db.execute(
        "UPDATE auth_api_keys SET revoked_at = :now WHERE key_id = :key_id AND revoked_at IS NULL",
        {"now": now, "key_id": key_id},
    )
