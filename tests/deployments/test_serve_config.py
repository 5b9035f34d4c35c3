"""serve_config.yaml is a valid Serve deploy file whose applications exist in the repo."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

CONFIG = Path(__file__).resolve().parents[2] / "serve_config.yaml"


def test_serve_config_is_a_valid_deploy_schema() -> None:
    schema = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    names = [app.name for app in schema.applications]
    assert names[0] == "gateway" and len(set(names)) == len(names)
    assert schema.applications[0].route_prefix == "/"
    prefixes = [app.route_prefix for app in schema.applications]
    assert len(set(prefixes)) == len(prefixes)


def test_every_import_path_builds_its_application() -> None:
    from ray.serve import Application

    schema = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    for app in schema.applications:
        module_name, _, attr = app.import_path.partition(":")
        assert module_name.startswith("deployments."), app.import_path
        builder = getattr(importlib.import_module(module_name), attr)
        assert isinstance(builder(app.args), Application), app.import_path
