"""serve_config.yaml is a valid Serve deploy file whose applications exist in the repo."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

CONFIG = Path(__file__).resolve().parents[2] / "serve_config.yaml"


def test_serve_config_is_a_valid_deploy_schema() -> None:
    schema = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    names = [app.name for app in schema.applications]
    assert names[0] == "gateway" and len(set(names)) == len(names)
    # Secure by default: only the gateway has an HTTP route; it reaches every other app by handle.
    assert schema.applications[0].route_prefix == "/"
    assert [app.name for app in schema.applications if app.route_prefix is not None] == ["gateway"]


def test_every_import_path_builds_its_application(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.serve import Application

    monkeypatch.setenv("BLATAM_ENV", "development")  # what `blatam up` sets; production refuses the built-in key

    schema = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    for app in schema.applications:
        module_name, _, attr = app.import_path.partition(":")
        assert module_name.startswith("deployments."), app.import_path
        builder = getattr(importlib.import_module(module_name), attr)
        assert isinstance(builder(app.args), Application), app.import_path


def test_deployed_as_shipped_without_settings_the_gateway_refuses_the_builtin_secret(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve deploy serve_config.yaml` on a cluster with no BLATAM_ENV and no SECRET_KEY: production, refused."""
    for name in ("BLATAM_ENV", "SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    schema = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    gateway = schema.applications[0]
    module_name, _, attr = gateway.import_path.partition(":")
    with pytest.raises(ValueError, match="SECRET_KEY is the built-in default.*here production"):
        getattr(importlib.import_module(module_name), attr)(gateway.args)
    monkeypatch.setenv("SECRET_KEY", "a-real-secret-" + "k" * 40)
    getattr(importlib.import_module(module_name), attr)(gateway.args)  # a key of its own: it builds


def test_every_application_keeps_its_replica_environment() -> None:
    """A deployment's ray_actor_options in the file replace the code's (runtime_env included), so the
    environment the code sets must also be in the file, at the application level, where Serve merges it."""
    from deployments.common.grpc_limits import GRPC_ENV
    from deployments.gateway.deployment import REPLICA_ENV

    schema = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    for app in schema.applications:
        env_vars = (app.runtime_env or {}).get("env_vars", {})
        expected = REPLICA_ENV if app.name == "gateway" else GRPC_ENV
        assert env_vars.items() >= expected.items(), (app.name, env_vars)


def test_the_proxies_get_the_request_id_callback() -> None:
    """Serve's proxy echoes X-Request-ID itself; only its callback middleware can make an unsafe one safe."""
    from deployments.common.request_id import PROXY_ENV, proxy_middlewares

    schema = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    env_vars = schema.controller_options.runtime_env["env_vars"]
    assert {name: env_vars.get(name) for name in PROXY_ENV} == PROXY_ENV
    module_name, _, attr = PROXY_ENV["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"].partition(":")
    assert getattr(importlib.import_module(module_name), attr) is proxy_middlewares


def test_the_proxies_bound_a_responses_head_not_its_length() -> None:
    """Serve's request_timeout_s cuts a response of any length (a long stream gets a 408 mid-way); the proxies'
    head deadline only answers a request nothing started to answer, and waits longer than the gateway would."""
    from business_modules.settings import Settings
    from deployments.common.proxy_failures import HEAD_TIMEOUT_ENV

    raw = yaml.safe_load(CONFIG.read_text())
    assert "request_timeout_s" not in raw.get("http_options", {})
    head_timeout_s = float(raw["controller_options"]["runtime_env"]["env_vars"][HEAD_TIMEOUT_ENV])
    defaults = Settings.model_fields
    assert head_timeout_s > max(defaults["gateway_llm_timeout_s"].default, defaults["gateway_request_timeout_s"].default)


def test_only_the_model_replicas_reserve_cpus_and_the_file_fits_two_cores() -> None:
    """LLMServer's torch threads are its num_cpus (deployments/llm/threads.py): both cores of a 2-core machine,
    while every other replica reserves none, so `blatam up` there deploys everything."""
    from scripts.up_cpus import fit_replica_cpus

    schema = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    (reservation,) = fit_replica_cpus(schema, 2.0)
    assert (reservation.app, reservation.deployment, reservation.given, reservation.replicas) == ("llm", "LLMServer", 2.0, 1)
