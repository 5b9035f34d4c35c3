"""The ``export ...`` line `blatam up` prints for Ray's CLI, for each auth setting a user may have.

(That the line works against a real cluster is tests/scripts/test_up.py's job.)
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from scripts.ray_access import cli_env, export_line, token_location


def test_token_mode_adds_the_auth_mode_and_the_default_file() -> None:
    env = cli_env("10.0.0.5:41234", "http://127.0.0.1:8265", {"RAY_AUTH_MODE": "token"})
    assert env == {"RAY_ADDRESS": "10.0.0.5:41234", "RAY_DASHBOARD_ADDRESS": "http://127.0.0.1:8265",
                   "RAY_AUTH_MODE": "token"}
    assert token_location({}) == str(Path("~/.ray/auth_token").expanduser())


def test_disabled_auth_and_no_dashboard_give_the_address_only() -> None:
    assert cli_env("10.0.0.5:41234", None, {"RAY_AUTH_MODE": "disabled"}) == {"RAY_ADDRESS": "10.0.0.5:41234"}


def test_a_custom_token_file_travels_but_a_token_value_never_does() -> None:
    with_path = cli_env("h:1", None, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "/etc/ray token"})
    assert with_path["RAY_AUTH_TOKEN_PATH"] == "/etc/ray token"
    secret = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "s3cret", "RAY_AUTH_TOKEN_PATH": "/etc/ray token"}
    assert "s3cret" not in export_line(cli_env("h:1", None, secret))
    assert token_location(secret) == "the RAY_AUTH_TOKEN variable"  # Ray reads the variable before any file


def test_the_line_means_the_same_to_a_real_shell(tmp_path: Path) -> None:
    env = cli_env("h:1", "http://127.0.0.1:8265", {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "/a b/it's"})
    script = f"{export_line(env)}\n" + "".join(f'printf "%s\\n" "${name}"\n' for name in env)
    shell = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30, env={})
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.splitlines() == list(env.values())
    assert shlex.split(export_line(env))[0] == "export"
