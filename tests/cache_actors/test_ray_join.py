"""A dead cluster named by Ray's bootstrap file: joining it fails in seconds with the address; no address starts a private one."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _dead_address() -> str:
    with socket.socket() as probe:  # a port nobody listens on once this closes
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def _run(code: str, ray_tmpdir: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(ray_tmpdir)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def stale_tmpdir() -> Iterator[tuple[Path, str]]:
    """A ``RAY_TMPDIR`` whose bootstrap file names a cluster that died uncleanly (short: Ray's socket paths must fit)."""
    address = _dead_address()
    ray_tmp = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text(address)
    yield ray_tmp, address
    shutil.rmtree(ray_tmp, ignore_errors=True)


def test_joining_the_dead_cluster_the_bootstrap_file_names_fails_fast_and_says_where(stale_tmpdir) -> None:
    ray_tmp, address = stale_tmpdir
    started = time.monotonic()
    done = _run("""
        import ray._private.services as services
        from cache_actors.actors.ray_join import RayUnreachableError, join_ray
        # No other cluster on this machine: Ray's "auto" joins any single live one it finds by its processes
        # (legacy), such as another test worker's, before the bootstrap file's.
        services.find_gcs_addresses = lambda: []
        try:
            join_ray("auto", timeout_s=3)
        except RayUnreachableError as exc:
            print("ERROR", exc)
        """, ray_tmp)
    assert time.monotonic() - started < 60
    assert done.returncode == 0, done.stderr[-2000:]
    line = done.stdout.strip()
    assert line.startswith("ERROR no Ray cluster answers at auto (") and f":{address.split(':')[1]})" in line, line
    assert "RAY_ADDRESS" in line and "\n" not in line


def test_the_distributed_cache_client_gives_the_same_error_instead_of_waiting(stale_tmpdir) -> None:
    ray_tmp, address = stale_tmpdir
    done = _run(f"""
        from cache_actors.actors.ray_join import RayUnreachableError
        from cache_actors.actors.client import DistributedKVCache
        from cache_actors.actors.spec import ShardSpec
        spec = ShardSpec(model_id="t", model_dtype="float32", kv_layout="L1H1D8", codec="native", num_layers=1,
                         num_kv_heads=1, head_dim=8, block_size=16, num_blocks=4)
        try:
            DistributedKVCache.connect(spec, ray_address="{address}")  # waits its default 15 s
        except RayUnreachableError as exc:
            print("ERROR", exc)
        """, ray_tmp)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().startswith(f"ERROR no Ray cluster answers at {address} (")


def test_no_address_starts_a_private_cluster_even_with_a_stale_bootstrap_file(stale_tmpdir) -> None:
    ray_tmp, address = stale_tmpdir
    done = _run("""
        import ray
        from cache_actors.actors.ray_join import join_ray
        print(join_ray(None, num_cpus=1, include_dashboard=False, log_to_driver=False))
        print(ray.get_runtime_context().gcs_address)
        ray.shutdown()
        """, ray_tmp, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    outcome, gcs = done.stdout.split()[-2:]
    assert outcome == "started" and gcs != address


def test_a_client_left_after_ray_shuts_down_never_starts_a_new_cluster(tmp_path: Path) -> None:
    """Its writes in flight and its leases are dropped, not sent: any Ray call would auto-start a local cluster,
    and the process's next ``ray.init`` would then fail ("called ray.init twice")."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))
    try:
        done = _run("""
            import ray, torch
            from cache_actors.actors.client import DistributedKVCache
            from cache_actors.actors.spec import ShardSpec
            from cache_actors.core.hashing import CacheNamespace, hash_prompt_blocks
            spec = ShardSpec(model_id="t", model_dtype="float32", kv_layout="L1H1D8", codec="native", num_layers=1,
                             num_kv_heads=1, head_dim=8, block_size=16, num_blocks=8)
            cache = DistributedKVCache.connect(spec)
            hashes = hash_prompt_blocks(CacheNamespace("t", "float32", 16, "L1H1D8").root_hash(), list(range(64)), 16)
            cache.store(hashes, 0, lambda first, count: torch.zeros(count, 1, 2, 1, 16, 8))  # a write in flight
            hit = cache.match(hashes[:1])
            ray.shutdown()
            cache.release(hit)
            cache.flush_writes()
            cache.store(hashes, 0, lambda first, count: torch.zeros(count, 1, 2, 1, 16, 8))
            print("initialized", ray.is_initialized(), dict(cache.fallbacks))
            """, ray_tmp, timeout=180)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("initialized False") and "ray_down" in line, line
