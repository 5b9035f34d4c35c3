"""How the gateway reads Serve's application states: cheaply, and never on a request's path once it has a view.

On the session's real Serve instance (a local Ray cluster): `read_app_states`
agrees with `serve.status()`, and `ServeServiceClient.app_states` answers an
expired view at once while one refresh runs beside it.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from deployments.gateway.services import MAX_STALE_TTLS, ServeServiceClient, ServiceRegistry, read_app_states

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def an_app(serve_instance):
    from ray import serve

    from tests.deployments.conftest import run_app

    @serve.deployment(num_replicas=1)
    class Hello:
        def __call__(self, request) -> str:
            return "hello"

    run_app(Hello.bind(), name="states-probe", route_prefix="/states-probe")
    yield "states-probe"
    serve.delete("states-probe")


def test_read_app_states_agrees_with_serve_status(an_app) -> None:
    from ray import serve

    ours = read_app_states()
    theirs = {name: (str(getattr(app.status, "value", app.status)), app.message or "")
              for name, app in serve.status().applications.items()}
    assert {name: (s.status, s.message) for name, s in ours.items()} == theirs
    assert ours[an_app].status == "RUNNING"


async def test_an_expired_view_is_answered_at_once_and_refreshed_beside_the_request(an_app) -> None:
    client = ServeServiceClient(ServiceRegistry(), status_ttl_s=60.0)
    first = await client.app_states()  # no view yet: this one waits for the controller
    assert first[an_app].status == "RUNNING"
    read_at = client._states_at
    client._states_at -= 120  # expired
    started = time.perf_counter()
    again = await client.app_states()
    waited_ms = (time.perf_counter() - started) * 1000
    assert again is first and waited_ms < 5, waited_ms  # the old view, without waiting for the controller
    assert client._refresh is not None
    await asyncio.wait_for(asyncio.shield(client._refresh), timeout=30)
    assert client._states_at > read_at  # the refresh beside it landed


async def test_a_view_from_long_ago_is_read_afresh_before_it_answers(an_app) -> None:
    """After an idle spell the view may say an app was deploying minutes ago: the request waits for a new one."""
    client = ServeServiceClient(ServiceRegistry(), status_ttl_s=1.0)
    first = await client.app_states()
    client._states_at -= 1 + MAX_STALE_TTLS  # older than the view may be and still answer
    client._states = {}  # what it said then (here: nothing at all)
    again = await client.app_states()
    assert again is not first and again[an_app].status == "RUNNING"
    assert time.monotonic() - client._states_at < 30
