"""How a shell reaches a Ray cluster this process started: the variables Ray's and Serve's CLIs need.

`blatam up` talks to its cluster in process, but an operator's `ray status`,
`ray list actors` or `serve status` runs elsewhere and must be told two things:

- where the cluster is: ``RAY_ADDRESS`` (the GCS, ``host:port``; `ray.init`
  gives a local cluster a free port, so there is no default to fall back on)
  and ``RAY_DASHBOARD_ADDRESS`` (what the `serve` CLI and the state API talk to);
- that it uses token authentication. Ray 2.60 turns it on for a cluster that
  `ray.init()` starts (it sets ``RAY_AUTH_MODE=token`` in the starting process
  and writes ``~/.ray/auth_token`` when missing), but a CLI in another shell
  sends the token only when ``RAY_AUTH_MODE=token`` is set there too; without
  it, it fails with a long "Missing authentication token" traceback.

Nothing here imports Ray: it reads the environment `ray.init` left behind.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path

AUTH_MODE_VAR = "RAY_AUTH_MODE"
TOKEN_VAR = "RAY_AUTH_TOKEN"
TOKEN_PATH_VAR = "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_PATH = Path("~/.ray/auth_token")
"""Where Ray keeps the token unless RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH says otherwise (in that order)."""


def token_auth_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the cluster started by this process requires a token (read after `ray.init`)."""
    return environ.get(AUTH_MODE_VAR, "").strip().lower() == "token"


def token_location(environ: Mapping[str, str] = os.environ) -> str:
    """Where a CLI on this host finds the token, in Ray's order: the variable, the named file, the default file."""
    if environ.get(TOKEN_VAR):
        return f"the {TOKEN_VAR} variable"
    if environ.get(TOKEN_PATH_VAR):
        return str(Path(environ[TOKEN_PATH_VAR]).expanduser())
    return str(DEFAULT_TOKEN_PATH.expanduser())


def cli_env(gcs_address: str, dashboard_url: str | None, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The variables to export in another shell so that `ray ...` and `serve ...` reach this cluster.

    Args:
        gcs_address: ``host:port`` of the GCS (`ray.init(...).address_info["gcs_address"]`).
        dashboard_url: ``http://host:port`` of the dashboard, or None when it is not running.
        environ: this process's environment after `ray.init` (it holds the auth mode Ray chose).

    The token itself is never printed: with the default file or RAY_AUTH_TOKEN_PATH
    the CLI reads it from there; RAY_AUTH_TOKEN has to be set in that shell as well.
    """
    env = {"RAY_ADDRESS": gcs_address}
    if dashboard_url:
        env["RAY_DASHBOARD_ADDRESS"] = dashboard_url
    if token_auth_enabled(environ):
        env[AUTH_MODE_VAR] = "token"
        if environ.get(TOKEN_PATH_VAR) and not environ.get(TOKEN_VAR):
            env[TOKEN_PATH_VAR] = str(Path(environ[TOKEN_PATH_VAR]).expanduser())
    return env


def export_line(env: Mapping[str, str]) -> str:
    """One ``export A=1 B=2`` line a POSIX shell accepts as pasted (values quoted when they need it)."""
    return "export " + " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())


def send_token_when_present(environ: dict[str, str] | None = None) -> bool:
    """Before joining a cluster from a CLI: send the token if this host has one (True when it will).

    A cluster that `blatam up` or `ray.init` started wants the token, and Ray's
    client sends it only with ``RAY_AUTH_MODE=token``; an operator should not
    have to paste that line for every `blatam` verb. An explicit
    ``RAY_AUTH_MODE`` (``disabled`` included) is left as it is.
    """
    env = os.environ if environ is None else environ
    if env.get(AUTH_MODE_VAR):
        return env[AUTH_MODE_VAR].strip().lower() == "token"
    if env.get(TOKEN_VAR) or env.get(TOKEN_PATH_VAR) or DEFAULT_TOKEN_PATH.expanduser().is_file():
        env[AUTH_MODE_VAR] = "token"
        return True
    return False
