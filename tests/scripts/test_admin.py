"""`blatam users ...` / `blatam keys ...` on both storage backends."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from business_modules.auth import AuthService
from business_modules.storage import open_database
from scripts.admin import keys_app, users_app
from tests.conftest import TEST_DATABASE_URL
from tests.storage_fixtures import BACKENDS, drop_schema, unique_schema

ROOT = Path(__file__).resolve().parents[2]

cli = typer.Typer()
cli.add_typer(users_app, name="users")
cli.add_typer(keys_app, name="keys")


@pytest.fixture(params=BACKENDS)
def database_env(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Environment that points the CLI at a private database; yields (url, schema)."""
    monkeypatch.setenv("BLATAM_ENV", "development")
    if request.param == "sqlite":
        url, schema = f"sqlite:///{tmp_path / 'admin.db'}", None
        monkeypatch.delenv("DATABASE_SCHEMA", raising=False)
    else:
        url, schema = TEST_DATABASE_URL, unique_schema("adm")
        monkeypatch.setenv("DATABASE_SCHEMA", schema)
    monkeypatch.setenv("DATABASE_URL", url)
    yield url, schema
    if schema:
        asyncio.run(drop_schema(TEST_DATABASE_URL, schema))


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, list(args), input=input)


def test_users_and_keys_lifecycle(database_env) -> None:
    created = run("users", "create", "alice", "--scopes", "redundancy,export", "--tenant", "acme",
                  "--password-stdin", input="a long enough password\n")
    assert created.exit_code == 0, created.output
    assert "Created user alice (tenant acme, scopes export redundancy)" in created.output

    users = json.loads(run("users", "list", "--json").output)
    assert [(u["username"], u["tenant"], u["scopes"], u["active"]) for u in users] == [
        ("alice", "acme", "export redundancy", True)]

    made = run("keys", "create", "--user", "alice", "--name", "ci", "--scopes", "redundancy", "--json")
    assert made.exit_code == 0, made.output
    key = json.loads(made.output.splitlines()[0])
    assert key["api_key"].startswith(f"blt_{key['key_id']}_") and key["scopes"] == ["redundancy"]

    listed = run("keys", "list", "--user", "alice")
    assert key["key_id"] in listed.output and "active" in listed.output and key["api_key"] not in listed.output

    url, schema = database_env

    async def authenticate() -> str:
        db = await open_database(url, schema=schema)
        try:
            auth = AuthService(db, secret_key="x" * 40, token_ttl_s=60)
            return (await auth.authenticate_api_key(key["api_key"])).tenant
        finally:
            await db.close()

    assert asyncio.run(authenticate()) == "acme"

    revoked = run("keys", "revoke", key["key_id"])
    assert revoked.exit_code == 0 and "Revoked" in revoked.output
    assert "revoked" in run("keys", "list").output


def test_cli_errors_exit_non_zero_with_a_message(database_env) -> None:
    assert run("users", "create", "bob", "--scopes", "*", "--password-stdin", input="long password 1\n").exit_code == 0
    duplicate = run("users", "create", "bob", "--scopes", "*", "--password-stdin", input="long password 1\n")
    assert duplicate.exit_code == 1 and "already exists" in duplicate.output
    short = run("users", "create", "carol", "--scopes", "*", "--password-stdin", input="short\n")
    assert short.exit_code == 2 and "Password" in short.output
    assert run("keys", "create", "--user", "nobody", "--name", "x").exit_code == 1
    assert run("keys", "revoke", "0123456789ab").exit_code == 1


def blatam(*args: str, input: str) -> subprocess.CompletedProcess[str]:
    """`blatam ARGS` as a script runs it: its own process with piped stdin and no controlling terminal.

    (`start_new_session`: without a terminal `getpass` falls back to stdin with a GetPassWarning, the reported bug.)
    """
    return subprocess.run([sys.executable, "-m", "scripts.cli", *args], cwd=ROOT, input=input, capture_output=True,
                          text=True, timeout=120, start_new_session=True)


def test_password_stdin_reads_the_pipe_without_warning(database_env) -> None:
    created = blatam("users", "create", "dora", "--scopes", "*", "--password-stdin", input="a long enough password\n")
    assert created.returncode == 0, created.stderr
    assert "Created user dora" in created.stdout
    assert "Warning" not in created.stderr and "echo" not in created.stderr, created.stderr

    url, schema = database_env

    async def login(password: str) -> str:
        db = await open_database(url, schema=schema)
        try:
            auth = AuthService(db, secret_key="x" * 40, token_ttl_s=60)
            return (await auth.login(username="dora", password=password)).access_token
        finally:
            await db.close()

    assert asyncio.run(login("a long enough password"))  # the piped line, without its newline, is the password


def test_piped_password_without_the_flag_fails_with_a_clear_message(database_env) -> None:
    refused = blatam("users", "create", "erin", "--scopes", "*", input="a long enough password\n")
    assert refused.returncode == 2, refused.stderr
    assert "GetPassWarning" not in refused.stderr and "may be echoed" not in refused.stderr, refused.stderr
    assert "--password-stdin" in refused.stderr and "not a terminal" in refused.stderr
    assert "erin" not in run("users", "list").output

    empty = blatam("users", "create", "erin", "--scopes", "*", "--password-stdin", input="")
    assert empty.returncode == 2 and "stdin is empty" in empty.stderr, empty.stderr
