"""The `llm` app's two shapes (``openai_front``), each on a real Serve instance over HTTP.

``replica`` (the default) is one deployment whose replicas answer HTTP
themselves; ``ingress`` puts `LLMIngress` in front. Both must answer the same
greedy completion with the same tokens, whole and streamed, and still serve
the handle methods that services call.
"""

from __future__ import annotations

import json

import httpx
import pytest

from deployments.llm import build_llm
from tests.deployments.conftest import ServeInstance, run_app


SHAPES = ("replica", "ingress")  # explicit: `auto` is `ingress` where the test session runs HAProxy
BODY = {"prompt": "The cache keeps", "max_tokens": 12, "temperature": 0, "logprobs": 1}


@pytest.mark.parametrize(("front", "routing", "haproxy", "shape"), [
    ("auto", "affinity", False, "replica"),
    ("auto", "pow2", True, "replica"),
    ("auto", "affinity", True, "ingress"),  # Ray 2.60 refuses a custom router on an HTTP ingress under HAProxy
    ("ingress", "pow2", False, "ingress"),
    ("replica", "pow2", True, "replica"),
])
def test_the_shape_each_setting_gives(front: str, routing: str, haproxy: bool, shape: str) -> None:
    from deployments.llm.app import openai_front
    from deployments.llm.settings import LLMSettings

    assert openai_front(LLMSettings(openai_front=front, routing=routing), haproxy=haproxy) == shape


def test_the_replica_front_with_the_cache_aware_router_under_haproxy_is_refused_by_name() -> None:
    from deployments.llm.app import openai_front
    from deployments.llm.settings import LLMSettings

    with pytest.raises(ValueError, match="openai_front: auto or ingress, or routing: pow2"):
        openai_front(LLMSettings(openai_front="replica", routing="affinity"), haproxy=True)


def test_an_app_without_a_route_learns_that_the_controller_runs_haproxy(monkeypatch: pytest.MonkeyPatch) -> None:
    from deployments.llm.app import openai_front
    from deployments.llm.settings import CONTROLLER_HAPROXY_ENV, HAPROXY_ENV, LLMSettings

    # What `blatam up --ingress haproxy` gives an app without a route (scripts/up_ingress.py): found when the
    # replica shape built there and the controller refused the deploy.
    monkeypatch.setenv(HAPROXY_ENV, "0")
    monkeypatch.setenv(CONTROLLER_HAPROXY_ENV, "1")
    assert openai_front(LLMSettings(routing="affinity")) == "ingress"
    monkeypatch.delenv(CONTROLLER_HAPROXY_ENV)
    assert openai_front(LLMSettings(routing="affinity")) == "replica"


def test_the_ingress_brings_the_grpc_cap_only_where_the_apps_environment_lacks_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from deployments.common.grpc_limits import GRPC_ENV
    from deployments.llm.app import ingress_env

    # A runtime_env of its own would hide the app's (serve_config.yaml's HAProxy flags and niceness): found when
    # the ingress behind HAProxy opened an HTTP port of its own in tests/scripts/test_ops_cli.py.
    for name, value in GRPC_ENV.items():
        monkeypatch.setenv(name, value)
    assert ingress_env() == {}
    for name in GRPC_ENV:
        monkeypatch.delenv(name)
    assert ingress_env()["ray_actor_options"]["runtime_env"] == {"env_vars": GRPC_ENV}


@pytest.fixture(scope="module")
def apps(serve_instance: ServeInstance):
    from ray import serve

    args = {"max_batch_size": 4, "max_model_len": 256, "cache": {"enable_distributed": False}}
    for shape in SHAPES:
        run_app(build_llm({**args, "openai_front": shape}), name=f"front-{shape}", route_prefix=f"/front-{shape}/v1")
    yield {shape: f"{serve_instance.base_url}/front-{shape}/v1" for shape in SHAPES}
    for shape in SHAPES:
        serve.delete(f"front-{shape}")


def _deployments(app: str) -> set[str]:
    from ray import serve

    return set(serve.status().applications[app].deployments)


def _streamed(http: httpx.Client, url: str, body: dict) -> tuple[str, list[int]]:
    text, chunks = "", 0
    with http.stream("POST", f"{url}/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choice = json.loads(line[6:])["choices"]
                if choice:
                    text += choice[0]["text"]
                    chunks += 1
    return text, chunks


@pytest.mark.ray
def test_each_shape_has_its_deployments_and_answers_alike(apps: dict[str, str]) -> None:
    assert _deployments("front-replica") == {"LLMServer"}
    assert _deployments("front-ingress") == {"LLMIngress", "LLMServer"}
    answers = {}
    with httpx.Client(timeout=120) as http:
        for shape, url in apps.items():
            model = http.get(f"{url}/models").json()["data"][0]["id"]
            whole = http.post(f"{url}/completions", json={**BODY, "model": model})
            assert whole.status_code == 200, whole.text
            choice = whole.json()["choices"][0]
            streamed, chunks = _streamed(http, url, {**BODY, "model": model})
            assert streamed == choice["text"] and chunks >= 2, (shape, streamed, chunks)
            answers[shape] = (choice["text"], choice["logprobs"]["tokens"])
            tokens = http.post(f"{url}/tokenize", json={"model": model, "prompt": "abc"}).json()
            assert tokens["count"] == len(tokens["tokens"]) >= 3, tokens
            refused = http.post(f"{url}/completions", json={**BODY, "model": model, "max_tokens": "many"})
            assert refused.status_code == 400 and refused.json()["error"]["param"], refused.text
    assert answers["replica"] == answers["ingress"]  # greedy: the same tokens through either front


@pytest.mark.ray
def test_the_replica_front_still_serves_the_handle_methods(apps: dict[str, str]) -> None:
    from ray import serve

    handle = serve.get_deployment_handle("LLMServer", app_name="front-replica")
    result = handle.generate.remote({"prompt": "The cache keeps", "max_new_tokens": 12}).result(timeout_s=120)
    with httpx.Client(timeout=120) as http:
        model = http.get(f"{apps['replica']}/models").json()["data"][0]["id"]
        served = http.post(f"{apps['replica']}/completions", json={**BODY, "model": model}).json()
    assert result["text"] == served["choices"][0]["text"] and result["completion_tokens"] == 12
    config = serve.get_app_handle("front-replica").openai_config.remote().result(timeout_s=60)
    assert config["model_id"] == model and config["max_context"] == 256
