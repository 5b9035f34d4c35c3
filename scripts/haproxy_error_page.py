"""HAProxy's own failure answers become our retryable 503 in the uniform JSON body.

Behind HAProxy (`scripts.up_ingress`), when the gateway replica serving a
request dies under it, or no replica is up, HAProxy answers for itself: a
502, 503 or 504 of its own, each mapped by Ray 2.60's config to one page,
``<config dir>/500.http``: ``500 Internal Server Error`` in plain text. Ray
writes that file once when its HAProxy manager starts, and its config has no
setting for it. Behind Serve's proxy the same failure is a 503 with
``Retry-After`` and ``{"error": {"code", "message", "request_id"}}``
(`deployments.common.proxy_failures`), which clients (the OpenAI SDKs
among them) retry.

Ray runs the binary that ``RAY_SERVE_HAPROXY_BINARY_PATH`` names, as
``BINARY -db -f <config> ...``, for every start and every reload. So the
binary we name is a small shell script that copies our page over Ray's,
next to the ``-f`` config, then ``exec``s the real HAProxy with the same
arguments (the same process: Ray's reloads signal its pid). HAProxy reads
an errorfile when it loads its config, so every HAProxy that serves has
our page. Where the copy cannot be made, Ray's page stays and HAProxy runs.

HAProxy serves an errorfile as it is: the request id is ``null`` (the
replica that would have given one is gone).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

RAY_PAGE_NAME = "500.http"
"""The page Ray writes next to its HAProxy config and names for 502, 503 and 504."""
BINARY_VARIABLE = "RAY_SERVE_HAPROXY_BINARY_PATH"
"""The controller's: the HAProxy binary Ray's manager runs (absolute, executable)."""
MESSAGE = "No replica could answer this request (it went away, or none is up yet); retry."


def error_page() -> bytes:
    """The HTTP response HAProxy sends for its own failures: 503, ``Retry-After`` and the uniform body, as
    Serve's proxy answers them (`deployments.common.proxy_failures`)."""
    from deployments.common.proxy_failures import RETRY_AFTER_S, retry_body  # here: `blatam --help` imports us

    body = retry_body(MESSAGE)
    head = ("HTTP/1.1 503 Service Unavailable\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Retry-After: {RETRY_AFTER_S}\r\n"
            "Cache-Control: no-cache\r\n"
            "Connection: close\r\n"
            "\r\n")
    return head.encode("ascii") + body


def wrapper_script(real_binary: str, page: Path) -> str:
    """The shell script Ray runs as HAProxy (see the module docstring)."""
    return f"""#!/bin/sh
# Written by blatam (scripts/haproxy_error_page.py): our 503 page over Ray's {RAY_PAGE_NAME}, then HAProxy itself.
page={shlex.quote(str(page))}
config=
previous=
for argument in "$@"; do
    if [ "$previous" = "-f" ]; then config=$argument; fi
    previous=$argument
done
if [ -n "$config" ]; then
    target="$(dirname -- "$config")/{RAY_PAGE_NAME}"
    if ! (cp -- "$page" "$target.$$" && mv -f -- "$target.$$" "$target") 2>/dev/null; then
        rm -f -- "$target.$$"
    fi
fi
exec {shlex.quote(real_binary)} "$@"
"""


@dataclass(frozen=True)
class Wrapper:
    """What `install_wrapper` wrote: the script to name as the binary, and the page it copies."""

    binary: Path
    page: Path


def default_directory(real_binary: str) -> Path:
    """One directory per user and HAProxy binary: clusters on one machine that run the same binary share the
    same two files (written whole, the same bytes), and one from another install never execs this one's."""
    digest = hashlib.sha256(real_binary.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"blatam-haproxy-{os.getuid()}" / digest


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` whole, so a cluster starting beside this one never runs a half-written file."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _own_private(directory: Path) -> None:
    """Refuse (``PermissionError``) a directory another user could write in: Ray would run our script from it.

    The default one is under the shared temporary directory, where anyone may have made it first.
    """
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise PermissionError(f"{directory} is not a directory of this user's that only it can write")


def install_wrapper(real_binary: str, directory: Path | None = None) -> Wrapper:
    """Write the page and the script that installs it before running ``real_binary``; returns their paths."""
    if directory is None:
        directory = default_directory(real_binary)
        directory.parent.mkdir(mode=0o700, exist_ok=True)
        _own_private(directory.parent)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _own_private(directory)
    page = directory / "error-503.http"
    _write_atomically(page, error_page(), 0o644)
    binary = directory / "haproxy"
    _write_atomically(binary, wrapper_script(real_binary, page).encode(), 0o755)
    return Wrapper(binary, page)
