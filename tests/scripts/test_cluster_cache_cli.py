"""`blatam cache clear` / `blatam cache shutdown` against a cluster of their own, as an operator runs them.

A `ray start --head --block` cluster in its own process group (never the
test session's Ray: only that group is stopped afterwards), KV actors made in
it by a client that then exits (they are detached, as after `serve shutdown`),
then the CLI in another process with ``--address``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deployments.conftest import free_port
from tests.scripts.ray_head import ray_env, ray_head, run_blatam, run_python

pytestmark = [pytest.mark.ray, pytest.mark.slow]

@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, dict[str, str]]]:
    with ray_head("bc") as head:
        yield head


def _make_kv_actors(address: str, env: dict[str, str]) -> None:
    """A cache client that connects (creating its shard and the coordinator), then exits: both stay."""
    done = run_python(f"""
        import time
        from cache_actors.actors.client import DistributedKVCache
        from cache_actors.actors.spec import ShardSpec
        spec = ShardSpec(model_id="t", model_dtype="float32", kv_layout="L1H1D8", codec="native", num_layers=1,
                         num_kv_heads=1, head_dim=8, block_size=16, num_blocks=4)
        deadline = time.monotonic() + 60
        while True:  # the head may still be starting
            try:
                cache = DistributedKVCache.connect(spec, ray_address="{address}")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        print("connected", cache.get_stats())
        """, {**env, "RAY_AUTH_MODE": "token"})
    assert done.returncode == 0, done.stderr[-3000:]


def _kv_actors(address: str, env: dict[str, str]) -> list[str]:
    done = run_python(f"""
        import json, ray
        ray.init(address="{address}", log_to_driver=False)
        print(json.dumps(sorted(e["name"] for e in ray.util.list_named_actors(all_namespaces=True)
                                if e.get("namespace") == "blatam-kv")))
        """, {**env, "RAY_AUTH_MODE": "token"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_clear_then_shutdown_remove_what_serve_shutdown_leaves(cluster) -> None:
    address, env = cluster
    _make_kv_actors(address, env)
    assert len(_kv_actors(address, env)) == 2  # one shard and the coordinator, outliving their client

    cleared = run_blatam(env, "cache", "clear", "--address", address, "--json")  # RAY_AUTH_MODE unset: the CLI sends
    assert cleared.returncode == 0, cleared.stdout + cleared.stderr[-3000:]  # the host's token itself
    assert [o["kind"] for o in json.loads(cleared.stdout.strip().splitlines()[-1])] == ["shard"]

    removed = run_blatam(env, "cache", "shutdown", "--address", address, "--json")
    assert removed.returncode == 0, removed.stdout + removed.stderr[-3000:]
    outcomes = json.loads(removed.stdout.strip().splitlines()[-1])
    assert sorted(o["kind"] for o in outcomes) == ["coordinator", "shard"] and all(o["ok"] for o in outcomes)
    assert _kv_actors(address, env) == []
    again = run_blatam(env, "cache", "shutdown", "--address", address)
    assert again.returncode == 0 and "nothing to shut down" in again.stdout


@pytest.mark.parametrize("args", [("shutdown",), ("clear",), ("clear", "--tenant", "acme"), ("persist", "/tmp/kv-x")])
def test_an_unreachable_cluster_is_one_line_and_exit_2(args: tuple[str, ...], tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = run_blatam(ray_env(tmp_path), "cache", *args, "--address", address)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and address in lines[0] and lines[0].startswith("blatam cache: "), done.stderr
    assert time.monotonic() - started < 60
