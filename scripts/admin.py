"""`blatam users ...` and `blatam keys ...`: manage who may call the gateway.

They work on the same database as the services (DATABASE_URL, or the
embedded SQLite file under BLATAM_DATA_DIR), so they can run while `blatam up`
is serving. An API key is printed once, at creation; only its sha256 is stored.

The business modules (settings, storage drivers) are imported when a command
runs, not when the CLI loads, so `blatam --help` stays fast.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from business_modules.auth import AuthService

T = TypeVar("T")

users_app = typer.Typer(help="Users: create, list, disable, enable.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)

DatabaseOpt = Annotated[str | None, typer.Option("--database-url", help="Default: DATABASE_URL or embedded SQLite.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _run(database_url: str | None, action: Callable[[AuthService], Awaitable[T]]) -> T:
    """Open the database, run `action` with an AuthService, close; map errors to exit codes."""
    from business_modules.auth import (
        ApiKeyNotFound,
        AuthError,
        AuthService,
        InvalidAuthInput,
        UnknownUser,
        UserExists,
    )
    from business_modules.auth import repository as _auth_repository  # noqa: F401  (registers auth migrations)
    from business_modules.settings import load_settings
    from business_modules.storage import StorageError, open_database

    async def main() -> T:
        # These commands sign no tokens, so the secret's check does not concern them: unless BLATAM_ENV says
        # otherwise they run as development, so `blatam users create` works beside `blatam up` with no settings.
        overrides = {"blatam_env": os.environ.get("BLATAM_ENV") or "development"}
        settings = load_settings({**overrides, "database_url": database_url} if database_url else overrides)
        db = await open_database(settings.database_url, data_dir=settings.blatam_data_dir,
                                 schema=settings.database_schema, components=["auth"],
                                 command_timeout_s=settings.db_command_timeout_s,
                                 acquire_timeout_s=settings.db_acquire_timeout_s)
        try:
            auth = AuthService(db, secret_key=settings.secret_key.get_secret_value(),
                               token_ttl_s=settings.access_token_ttl_s)
            return await action(auth)
        finally:
            await db.close()

    try:
        return asyncio.run(main())
    except InvalidAuthInput as exc:
        _fail(str(exc), 2)
    except (UserExists, UnknownUser, ApiKeyNotFound, AuthError) as exc:
        _fail(str(exc), 1)
    except (StorageError, ValueError) as exc:
        _fail(f"{type(exc).__name__}: {exc}", 1)
    raise AssertionError("unreachable")


def _fail(message: str, code: int) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        print("(none)")
        return
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns))


def read_password(password_stdin: bool) -> str:
    """The password: the first line of stdin with ``--password-stdin``, else asked twice on the terminal.

    Without a terminal, `getpass` would read the piped text anyway, after a
    GetPassWarning that it may echo it; a script must say ``--password-stdin``
    instead, so this fails (exit 2) and tells it so.
    """
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            _fail("--password-stdin: stdin is empty; send the password as its first line", 2)
        return password
    if not sys.stdin.isatty():
        _fail("stdin is not a terminal, so the password cannot be asked for; pipe it in and add --password-stdin "
              "(e.g. printf '%s\\n' \"$PASSWORD\" | blatam users create NAME --scopes ... --password-stdin)", 2)
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


@users_app.command("create")
def users_create(
    username: Annotated[str, typer.Argument(help="Login name.")],
    scopes: Annotated[str, typer.Option(help="Services this user may call, comma separated, or '*'.")],
    tenant: Annotated[str | None, typer.Option(help="Tenant (default: the username).")] = None,
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="Read the password from the first line of stdin (for scripts; no prompt).")] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Create a user (the password is asked for on the terminal, or read from stdin with --password-stdin)."""
    password = read_password(password_stdin)
    user = _run(database_url, lambda auth: auth.create_user(username=username, password=password, scopes=scopes,
                                                            tenant=tenant))
    print(f"Created user {user.username} (tenant {user.tenant}, scopes {' '.join(user.scopes)})")


@users_app.command("list")
def users_list(as_json: JsonOpt = False, database_url: DatabaseOpt = None) -> None:
    """List users."""
    users = _run(database_url, lambda auth: auth.list_users())
    rows = [{"username": u.username, "tenant": u.tenant, "scopes": " ".join(u.scopes),
             "active": u.is_active, "created": _when(u.created_at)} for u in users]
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        _table(rows, ["username", "tenant", "scopes", "active", "created"])


@users_app.command("disable")
def users_disable(username: str, database_url: DatabaseOpt = None) -> None:
    """Disable a user: no login, and its tokens and API keys are refused from their next request on."""
    _run(database_url, lambda auth: auth.set_user_active(username, False))
    print(f"Disabled user {username}")


@users_app.command("enable")
def users_enable(username: str, database_url: DatabaseOpt = None) -> None:
    """Enable a disabled user again."""
    _run(database_url, lambda auth: auth.set_user_active(username, True))
    print(f"Enabled user {username}")


@keys_app.command("create")
def keys_create(
    user: Annotated[str, typer.Option("--user", "-u", help="Owner of the key.")],
    name: Annotated[str, typer.Option(help="What the key is for (shown in lists).")],
    scopes: Annotated[str | None, typer.Option(help="Services, comma separated (default: the user's).")] = None,
    expires_days: Annotated[float | None, typer.Option(help="Lifetime in days (default: no expiry).")] = None,
    as_json: JsonOpt = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Create an API key; it is printed once and never stored in clear."""
    new = _run(database_url, lambda auth: auth.create_api_key(username=user, name=name, scopes=scopes,
                                                              expires_in_days=expires_days))
    if as_json:
        print(json.dumps({"key_id": new.key.key_id, "api_key": new.secret, "user": user,
                          "scopes": list(new.key.scopes), "expires_at": new.key.expires_at}))
        return
    print(f"API key {new.key.key_id} for {user} (scopes {' '.join(new.key.scopes)}, "
          f"expires {_when(new.key.expires_at)}):")
    print(new.secret)
    print("Store it now: it cannot be shown again. Send it as the X-API-Key header or as Authorization: Bearer "
          "(an OpenAI client's api_key).", file=sys.stderr)


@keys_app.command("list")
def keys_list(
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user's keys.")] = None,
    as_json: JsonOpt = False,
    database_url: DatabaseOpt = None,
) -> None:
    """List API keys (ids and metadata, never the keys)."""
    keys = _run(database_url, lambda auth: auth.list_api_keys(user))
    now = time.time()
    rows = [{"key_id": k.key_id, "user": k.username, "name": k.name, "scopes": " ".join(k.scopes),
             "state": k.state(now), "created": _when(k.created_at), "expires": _when(k.expires_at)} for k in keys]
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        _table(rows, ["key_id", "user", "name", "scopes", "state", "created", "expires"])


@keys_app.command("revoke")
def keys_revoke(key_id: str, database_url: DatabaseOpt = None) -> None:
    """Revoke an API key (every replica refuses it from its next request on)."""
    key = _run(database_url, lambda auth: auth.revoke_api_key(key_id))
    print(f"Revoked API key {key.key_id} of {key.username}")
