"""Start or join Ray with a bounded wait: a dead or stale cluster is a one-line error, never a hang.

Why: ``ray.init(address=None)`` attaches to whatever cluster Ray's bootstrap
file (``/tmp/ray/ray_current_cluster``, or ``$RAY_TMPDIR``'s) names. After a
``ray start --head`` cluster on this host died uncleanly the file still named
it, and ``blatam bench ttft --distributed`` sat for 9 minutes at 2% CPU.

So every entry point here says which it wants: no address (or ``local``)
starts a private local cluster; ``auto`` joins the cluster that ``RAY_ADDRESS``
or the bootstrap file names; ``host:port`` joins that one. Joining first checks
that something answers at the address, then gives `ray.init` a deadline.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import ray

logger = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 15.0


class RayUnreachableError(ConnectionError):
    """No Ray cluster answered at the address tried; the message names it and how to point elsewhere."""


def _unreachable(address: str, why: str) -> RayUnreachableError:
    return RayUnreachableError(
        f"no Ray cluster answers at {address} ({why}); start one (`ray start --head --port 6380`, "
        "`blatam up`) or give another address (RAY_ADDRESS, KV_CACHE_RAY_ADDRESS, --address)"
    )


def resolve_address(address: str) -> str:
    """``host:port`` of the cluster ``address`` names (``auto``: from RAY_ADDRESS or Ray's bootstrap file)."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        resolved = canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError) as exc:
        raise _unreachable(address, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
    if resolved is None:
        raise _unreachable(address, "no running cluster found")
    return resolved


def wait_for_gcs(address: str, timeout_s: float, *, shown: str | None = None) -> None:
    """Until a TCP connection to ``host:port`` succeeds; RayUnreachableError (naming ``shown``) after ``timeout_s``."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=min(2.0, timeout_s)):
                return
        except OSError as exc:
            last = exc
            time.sleep(0.2)
    raise _unreachable(shown or address, f"nothing listens after {timeout_s:g} s: {last}")


def join_ray(address: str | None = None, *, timeout_s: float = JOIN_TIMEOUT_S, listen_timeout_s: float | None = None,
             **init_kwargs: Any) -> str:
    """Start (``None``/``local``) or join (``auto``, ``host:port``) Ray unless this process already is in it.

    ``listen_timeout_s`` (default ``timeout_s``) bounds the wait for something to listen at the address: a
    cluster still starting needs the whole wait; an operator's command on a running one needs a few seconds.

    Returns ``"already"``, ``"started"`` or the ``host:port`` joined. Raises
    `RayUnreachableError` when joining fails or takes over ``timeout_s``
    (`ray.init` then runs on in a daemon thread: it cannot be cancelled).
    """
    if ray.is_initialized():
        return "already"
    if address in (None, "", "local"):
        ray.init(address="local", **init_kwargs)
        return "started"
    target = resolve_address(address)
    shown = target if target == address else f"{address} ({target})"
    wait_for_gcs(target, timeout_s if listen_timeout_s is None else listen_timeout_s, shown=shown)
    outcome: dict[str, BaseException | None] = {}

    def connect() -> None:
        try:
            ray.init(address=target, **init_kwargs)
            outcome["error"] = None
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=connect, name="ray-join", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if "error" not in outcome:
        raise _unreachable(shown, f"it accepts connections but ray.init did not finish in {timeout_s:g} s; "
                                  "if it wants a token, set RAY_AUTH_MODE=token")
    if outcome["error"] is not None:
        raise _unreachable(shown, str(outcome["error"]).splitlines()[0]) from outcome["error"]
    logger.info("joined the Ray cluster at %s", target)
    return target
