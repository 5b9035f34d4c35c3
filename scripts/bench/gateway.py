"""`blatam bench gateway`: what the gateway adds to a service call.

Starts a private local Ray + Serve (2 CPUs, free ports, embedded SQLite in a
temporary folder, Redis only with ``--redis-url``) with the ``gateway`` and
``redundancy`` applications, creates a user and an API key, then sends
interleaved requests (the order rotates every round so neither path gets the
warmer cache):

- ``direct``: ``POST /redundancy/analyze`` on the redundancy app's own route;
- ``gateway``: ``POST /api/v1/redundancy/analyze`` with ``X-API-Key`` (auth,
  scope, rate limit, request id, the handle hop, the in-process re-dispatch);
- ``gateway_actor``: the same through a second gateway app (prefix
  ``/gw-actor``) whose handles use Ray actor calls instead of Serve's gRPC
  by-value path (``GATEWAY_HANDLE_TRANSPORT``), to keep that choice measured;
- ``auth_only``: ``GET /api/v1/auth/me`` (the gateway without forwarding), to
  split the overhead into "gateway work" and "the extra hop".

Reports medians and p90s of each and ``overhead_ms`` = median(gateway) -
median(direct) for the default transport, against a goal of 5 ms. Timings are wall-clock HTTP round
trips from this process, on this machine, in this run.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from scripts.bench import bench_app
from scripts.bench.ports import free_loopback_port
from scripts.bench.report import console, print_table, write_json
from scripts.serve_stop import stop_serve

if TYPE_CHECKING:
    import httpx

GOAL_MS = 5.0
TEXT = ("Ray Serve routes each request to a replica. The gateway checks the caller, counts the request "
        "against the tenant's limit and forwards it through a deployment handle. ")


@dataclass(frozen=True, slots=True)
class Stats:
    """Latency summary of one path, in milliseconds."""

    n: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float

    @classmethod
    def of(cls, samples_ms: list[float]) -> Stats:
        ordered = sorted(samples_ms)
        return cls(n=len(ordered), median_ms=statistics.median(ordered),
                   p90_ms=ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
                   mean_ms=statistics.fmean(ordered), min_ms=ordered[0])


def measure(calls: dict[str, Callable[[], httpx.Response]], *, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Latency samples per call name; calls interleave and their order rotates each round.

    Raises:
        RuntimeError: a call answered something other than 200.
    """
    names = list(calls)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for i in range(warmup + rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            response = calls[name]()
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            if response.status_code != 200:
                raise RuntimeError(f"{name}: HTTP {response.status_code}: {response.text[:300]}")
            if i >= warmup:
                samples[name].append(elapsed_ms)
    return samples


async def _create_key(data_dir: Path) -> str:
    from business_modules.auth import AuthService
    from business_modules.auth import repository as _auth_repository  # noqa: F401
    from business_modules.storage import open_database

    db = await open_database(None, data_dir=data_dir, components=["auth"])
    try:
        auth = AuthService(db, secret_key="bench-only-secret-" + "x" * 32, token_ttl_s=600)
        await auth.create_user(username="bench", password="bench-password", scopes="redundancy")
        return (await auth.create_api_key(username="bench", name="bench")).secret
    finally:
        await db.close()


@contextmanager
def local_services(redis_url: str | None) -> Iterator[tuple[str, str, str]]:
    """A private Ray + Serve with gateway and redundancy; yields (base_url, api_key, rate-limit backend)."""
    import ray
    from ray import serve

    from deployments.app_builder import build_gateway
    from deployments.redundancy import build_redundancy

    with tempfile.TemporaryDirectory(prefix="blatam-bench-") as tmp:
        data_dir = Path(tmp)
        os.environ["BLATAM_DATA_DIR"] = str(data_dir)
        os.environ.pop("DATABASE_URL", None)
        api_key = asyncio.run(_create_key(data_dir))
        settings: dict[str, Any] = {"blatam_env": "development", "rate_limits": {"redundancy": "1000000/minute"},
                                    "redis_url": redis_url,
                                    "rate_limit_key_prefix": f"bench-{os.getpid()}"}
        port = free_loopback_port()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(build_redundancy({}), name="redundancy", route_prefix="/redundancy")
            serve.run(build_gateway({"settings": settings}), name="gateway", route_prefix="/")
            serve.run(build_gateway({"settings": {**settings, "gateway_handle_transport": "actor"}}),
                      name="gateway_actor", route_prefix="/gw-actor")
            yield f"http://127.0.0.1:{port}", api_key, "redis" if redis_url else "memory"
        finally:
            try:
                stop_serve()  # not serve.shutdown(): see scripts.serve_stop
            finally:
                ray.shutdown()


@bench_app.command("gateway")
def gateway_bench(
    requests: Annotated[int, typer.Option(help="Measured rounds (one request per path each).", min=10)] = 300,
    warmup: Annotated[int, typer.Option(help="Unmeasured rounds first.", min=0)] = 30,
    words: Annotated[int, typer.Option(help="Words of content per /analyze request.", min=1)] = 200,
    redis_url: Annotated[str | None, typer.Option(help="Count rate limits in this Redis (default: memory).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results here.")] = None,
) -> None:
    """Median latency of redundancy /analyze through the gateway vs directly; overhead_ms."""
    import httpx

    sentence_words = TEXT.split()
    content = " ".join(sentence_words[i % len(sentence_words)] for i in range(words))
    body = {"content": content, "threshold": 0.8}
    console.print(f"Starting Ray + Serve (gateway, redundancy); {warmup} + {requests} rounds ...")
    with ExitStack() as stack:
        with console.status("starting Ray + Serve (gateway, redundancy)"):
            base, api_key, limiter = stack.enter_context(local_services(redis_url))
        http = stack.enter_context(httpx.Client(base_url=base, timeout=60))
        key = {"X-API-Key": api_key}
        calls = {
            "direct": lambda: http.post("/redundancy/analyze", json=body),
            "gateway": lambda: http.post("/api/v1/redundancy/analyze", json=body, headers=key),
            "gateway_actor": lambda: http.post("/gw-actor/api/v1/redundancy/analyze", json=body, headers=key),
            "auth_only": lambda: http.get("/api/v1/auth/me", headers=key),
        }
        stats = {name: Stats.of(samples) for name, samples in measure(calls, rounds=requests, warmup=warmup).items()}
    overhead = stats["gateway"].median_ms - stats["direct"].median_ms
    overhead_actor = stats["gateway_actor"].median_ms - stats["direct"].median_ms
    print_table(
        f"Gateway overhead ({requests} rounds, rate limits in {limiter})",
        ["path", "median ms", "p90 ms", "mean ms", "min ms"],
        [[name, s.median_ms, s.p90_ms, s.mean_ms, s.min_ms] for name, s in stats.items()],
    )
    verdict = "within" if overhead <= GOAL_MS else "ABOVE"
    console.print(f"overhead_ms = {overhead:.3f} (goal <= {GOAL_MS:g} ms: {verdict}); "
                  f"gateway/direct = {stats['gateway'].median_ms / stats['direct'].median_ms:.2f}x; "
                  f"with actor-call handles {overhead_actor:.3f} ms")
    write_json(json_out, {
        "benchmark": "gateway",
        "rounds": requests,
        "warmup": warmup,
        "content_words": words,
        "rate_limits": limiter,
        "database": "sqlite",
        "cpus": os.cpu_count(),
        "paths": {name: asdict(s) for name, s in stats.items()},
        "overhead_ms": overhead,
        "overhead_actor_transport_ms": overhead_actor,
        "gateway_only_ms": stats["auth_only"].median_ms,
        "overhead_ratio": stats["gateway"].median_ms / stats["direct"].median_ms,
        "goal_ms": GOAL_MS,
        "within_goal": overhead <= GOAL_MS,
    })
