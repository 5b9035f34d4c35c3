"""cluster.yaml is a launch file `ray up` accepts, checked offline (`ray up` has no dry run).

What `ray up` itself would check first: Ray's own schema (which also refuses
unknown keys, e.g. a ``setup_comands`` typo that `validate_config` lets
through), then Ray's `prepare_config` / `validate_config` / bootstrap. On top
of that, what makes a Blatam cluster work: the GCS off Redis's port, workers
pointed at the head's port, the auth token shipped, shell commands that parse.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "cluster.yaml"


@pytest.fixture
def cluster() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def _ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_cluster_yaml_follows_rays_schema_and_refuses_typos(cluster) -> None:
    schema = _ray_schema()
    jsonschema.validate(cluster, schema)
    typo = copy.deepcopy(cluster)
    typo["setup_comands"] = typo.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError, match="setup_comands"):
        jsonschema.validate(typo, schema)


def test_ray_bootstraps_the_local_provider_config(cluster, tmp_path, monkeypatch) -> None:
    from ray.autoscaler._private import commands
    from ray.autoscaler._private.util import prepare_config, validate_config

    monkeypatch.setenv("HOME", str(tmp_path))  # nothing of this machine's ~ is needed to plan
    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    booted = commands._bootstrap_config(prepared, no_config_cache=True)
    node_type = booted["available_node_types"][booted["head_node_type"]]
    assert booted["provider"]["type"] == "local" and node_type is not None
    assert booted["max_workers"] == len(cluster["provider"]["worker_ips"])


def test_blatam_specifics_of_the_launch_file(cluster) -> None:
    head = " ".join(cluster["head_start_ray_commands"])
    worker = " ".join(cluster["worker_start_ray_commands"])
    port = int(re.search(r"ray start --head --port=(\d+)", head).group(1))
    assert port != 6379  # Redis's port: the cache's Redis tier and the rate limits may run on the head
    assert f"--address=$RAY_HEAD_IP:{port}" in worker
    assert "--metrics-export-port=8080" in head and "--metrics-export-port=8080" in worker
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in worker
    assert cluster["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # `ray up` does not carry tokens
    assert cluster["file_mounts"]["~/blatam"] == "."
    setup = " ".join(cluster["setup_commands"])
    assert "torch==2.13.0" in setup and "pip install -q -e ~/blatam" in setup  # CPU torch first, as README says
    assert "torch==2.13.0" in (ROOT / "README.md").read_text()
    for command in [*cluster["setup_commands"], *cluster["head_start_ray_commands"], *cluster["worker_start_ray_commands"]]:
        parsed = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True, timeout=10)
        assert parsed.returncode == 0, (command, parsed.stderr)
