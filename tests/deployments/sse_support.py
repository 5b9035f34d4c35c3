"""Reading a service's server-sent events (``event:`` and ``data:`` lines) in the HTTP tests."""

from __future__ import annotations

import json

import httpx


def read_events(http: httpx.Client, url: str, headers: dict | None = None) -> list[tuple[str, dict]]:
    """``(event name, JSON data)`` of every event until the stream ends."""
    events = []
    with http.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    return events
