"""`blatam up` waits for a healthy /health before it says it is up (`scripts.up_health`), on a real HTTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from scripts.up_health import HealthWait, unhealthy_parts, wait_healthy

DEGRADED = {"status": "degraded", "services": {"bul": {"status": "unhealthy", "detail": "no answer within 2 s"},
                                               "export": {"status": "healthy"}},
            "cache": {"status": "healthy"}, "database": {"status": "healthy"}, "redis": {"status": "disabled"}}
HEALTHY = {**DEGRADED, "status": "healthy", "services": {"bul": {"status": "healthy"}, "export": {"status": "healthy"}}}


@contextmanager
def health_server(answers: list[tuple[int, bytes]]) -> Iterator[tuple[str, list[str]]]:
    """A server answering GET /health with ``answers`` in turn (the last one repeated); yields its URL and the paths asked."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            asked.append(self.path)
            status, body = answers[min(len(asked), len(answers)) - 1]
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


def test_waits_through_degraded_answers_until_healthy() -> None:
    answers = [(200, json.dumps(DEGRADED).encode())] * 2 + [(200, json.dumps(HEALTHY).encode())]
    with health_server(answers) as (url, asked):
        result = wait_healthy(url, timeout_s=30, poll_s=0.05)
    assert result.status == "healthy" and result.note() is None
    assert asked == ["/health"] * 3


def test_gives_up_after_the_timeout_and_says_what_was_not_healthy() -> None:
    with health_server([(200, json.dumps(DEGRADED).encode())]) as (url, asked):
        result = wait_healthy(url, timeout_s=0.3, poll_s=0.05)
    assert result.status == "degraded" and result.not_healthy == ("services.bul",)
    assert result.note() is not None and "degraded" in result.note() and "services.bul" in result.note()
    assert len(asked) >= 2


def test_an_answer_that_is_not_json_counts_as_unanswered() -> None:
    with health_server([(502, b"<html>bad gateway</html>")]) as (url, _):
        result = wait_healthy(url, timeout_s=0.2, poll_s=0.05)
    assert result.status == "unanswered"


def test_no_server_at_all_ends_at_the_timeout() -> None:
    with health_server([]) as (url, _):
        pass  # closed: nothing listens there any more
    assert wait_healthy(url, timeout_s=0.3, poll_s=0.05).status == "unanswered"


def test_a_server_without_health_has_nothing_to_warm() -> None:
    with health_server([(404, b"{}")]) as (url, asked):
        assert wait_healthy(url, timeout_s=30, poll_s=0.05).status == "healthy"
    assert len(asked) == 1


def test_stop_ends_the_wait() -> None:
    stop = threading.Event()
    stop.set()
    with health_server([(200, json.dumps(DEGRADED).encode())]) as (url, asked):
        assert wait_healthy(url, timeout_s=30, stop=stop, poll_s=0.05).status == "degraded"
    assert len(asked) == 1


def test_disabled_parts_are_not_unhealthy() -> None:
    assert unhealthy_parts(HEALTHY) == ()
    assert unhealthy_parts({"cache": {"status": "unknown"}, "redis": {"status": "unhealthy"}}) == ("cache", "redis")
    assert HealthWait("healthy", 1.0).note() is None
