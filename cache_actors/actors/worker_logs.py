"""Where this project's log lines go inside a Ray worker: Serve's replica log, or the worker's stderr.

Ray configures only its own loggers. In a Serve replica, Serve's handlers (the
replica's file under ``logs/serve`` and, by default, stderr) sit on the
``ray.serve`` logger, which does not propagate; a line logged on
``logging.getLogger(__name__)`` in ``deployments`` or ``cache_actors`` had no
handler at all there. Its INFO lines were dropped and its errors (a backend's
traceback) reached only the worker's ``.err`` file through Python's
last-resort handler, never the replica log an operator reads in the
dashboard. In a plain actor (a KV shard, the coordinator) there is no Serve
logger: its lines go to stderr, which Ray writes to the worker's log file and
shows on the driver.

`route_package_logs` gives the project's package loggers one handler that
decides per record, so it is right whether Serve configured itself before or
after the call, and calling it again changes nothing. Outside a Ray actor (a
test building a replica class in its own process, Serve's local testing mode)
it does nothing: that process's logging is its owner's.
"""

from __future__ import annotations

import logging
import sys

import ray

PACKAGES: tuple[str, ...] = ("cache_actors", "deployments", "business_modules")
"""The project's top-level packages: every module logs on ``getLogger(__name__)`` below one of them."""

SERVE_LOGGER = "ray.serve"
_FORMAT = "%(levelname)s %(asctime)s %(name)s %(filename)s:%(lineno)d -- %(message)s"


class ServeOrStderr(logging.Handler):
    """Hands a record to Serve's replica handlers when this process has them, else writes it to stderr."""

    def __init__(self) -> None:
        super().__init__()
        self._stderr = logging.StreamHandler(sys.stderr)
        self._stderr.setFormatter(logging.Formatter(_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        serve_logger = logging.getLogger(SERVE_LOGGER)
        if serve_logger.handlers:
            # Serve's own handlers carry its filters and formatter (replica id, request id, JSON or text).
            serve_logger.handle(record)
        else:
            self._stderr.handle(record)


def route_package_logs(level: int = logging.INFO) -> None:
    """Give each project package logger the `ServeOrStderr` handler (once) and ``level`` if it has none.

    Call it first thing in a replica's or actor's constructor. A logger the
    operator configured (a level set, or handlers of its own) keeps them.
    """
    if not (ray.is_initialized() and ray.get_runtime_context().get_actor_id()):
        return
    for name in PACKAGES:
        package_logger = logging.getLogger(name)
        if package_logger.handlers:
            continue  # routed by an earlier call, or configured by someone else: theirs to route
        package_logger.addHandler(ServeOrStderr())
        package_logger.propagate = False  # the root logger's handlers (if any) would print it twice
        if package_logger.level == logging.NOTSET:
            package_logger.setLevel(level)
