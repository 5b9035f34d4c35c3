"""`blatam up` fits the deploy file's CPU reservations to a smaller cluster instead of waiting forever."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

from scripts.up import cpu_notes
from scripts.up_cpus import fit_replica_cpus

CONFIG = Path(__file__).resolve().parents[2] / "serve_config.yaml"


def schema(extra_server_cpus: float | None = None) -> ServeDeploySchema:
    raw = yaml.safe_load(CONFIG.read_text())
    if extra_server_cpus is not None:  # a second deployment that reserves CPUs, 2 replicas of it
        export = next(app for app in raw["applications"] if app["name"] == "export")
        export["deployments"][0].update(num_replicas=2, ray_actor_options={"num_cpus": extra_server_cpus})
    return ServeDeploySchema.model_validate(raw)


def server_cpus(config: ServeDeploySchema) -> float:
    llm = next(app for app in config.applications if app.name == "llm")
    return next(d for d in llm.deployments if d.name == "LLMServer").ray_actor_options.num_cpus


def test_a_cluster_with_enough_cpus_keeps_the_files_numbers() -> None:
    for cpus in (2.0, 16.0):
        config = schema()
        (fitted,) = fit_replica_cpus(config, cpus)
        assert server_cpus(config) == 2.0 and fitted.given == fitted.asked == 2.0
    assert cpu_notes([fitted]) == ["CPUs: llm/LLMServer reserves 2 per replica = torch threads 2 of each model replica"
                                   "; autoscales to at most 4 replicas"]


def max_replicas(config: ServeDeploySchema) -> int:
    llm = next(app for app in config.applications if app.name == "llm")
    return next(d for d in llm.deployments if d.name == "LLMServer").autoscaling_config["max_replicas"]


def test_autoscaling_is_capped_to_the_replicas_the_cluster_could_place() -> None:
    for cpus, fits in ((1.0, 1), (2.0, 1), (5.0, 2), (6.0, 3), (16.0, 4)):
        config = schema()
        (fitted,) = fit_replica_cpus(config, cpus)
        assert max_replicas(config) == fits and fitted.max_replicas == (4, fits), cpus
    assert fitted.scaling_note() == "; autoscales to at most 4 replicas"
    config = schema()
    (fitted,) = fit_replica_cpus(config, 2.0)
    assert fitted.scaling_note() == "; autoscales to at most 1 replica (the deploy file says 4; this cluster fits 1)"


def test_a_smaller_cluster_scales_every_reservation_by_one_factor() -> None:
    config = schema()
    (fitted,) = fit_replica_cpus(config, 1.0)
    assert server_cpus(config) == 1.0 and fitted.asked == 2.0
    assert "the deploy file asks 2; this cluster has fewer" in fitted.describe()

    config = schema(extra_server_cpus=1.0)  # asks 2 + 2 x 1 = 4 of 2: everything halves
    fitted = {f.deployment: f.given for f in fit_replica_cpus(config, 2.0)}
    assert fitted == {"Export": 0.5, "LLMServer": 1.0}
