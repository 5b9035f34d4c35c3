"""Serve's real proxy with our proxy middlewares and a 2-s head deadline, in a private Ray cluster of its own.

Run as ``python -m tests.deployments.proxy_head_probe OUT_DIR``: the head
deadline is read by the proxy at start-up, so it cannot be tried on the
shared test Serve instance (whose proxies keep the default). Writes
``OUT_DIR/result.json`` with what a client saw on each route; the replica
writes ``OUT_DIR/cancelled`` when the request it holds is cancelled.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import httpx

HEAD_TIMEOUT_S = 2.0


def main(out_dir: Path) -> None:
    import ray
    from ray import serve
    from starlette.responses import JSONResponse, StreamingResponse

    from deployments.common.proxy_failures import HEAD_TIMEOUT_ENV
    from deployments.common.request_id import PROXY_ENV
    from scripts.serve_stop import stop_serve
    from tests.deployments.conftest import free_port, run_app

    @serve.deployment(max_ongoing_requests=8)
    class Probe:
        def __init__(self, marker: str):
            self.marker = Path(marker)

        async def __call__(self, request):
            if request.url.path.endswith("/silent"):  # never starts an answer
                try:
                    await asyncio.sleep(120)
                except asyncio.CancelledError:
                    self.marker.write_text(str(time.time()))
                    raise
                return JSONResponse({"late": True})
            if request.url.path.endswith("/stream"):  # head at once, body for twice the deadline
                async def chunks():
                    for i in range(4):
                        yield f"data: {i}\n\n"
                        await asyncio.sleep(HEAD_TIMEOUT_S / 2)
                return StreamingResponse(chunks(), media_type="text/event-stream")
            await asyncio.sleep(1.0)  # /hint: longer than the timeout the client asks for
            return JSONResponse({"ok": True})

    port = free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port},
                    controller_options={"runtime_env": {"env_vars": {**PROXY_ENV, HEAD_TIMEOUT_ENV: str(HEAD_TIMEOUT_S)}}})
        run_app(Probe.bind(str(out_dir / "cancelled")), name="probe", route_prefix="/probe")
        base = f"http://127.0.0.1:{port}/probe"
        result: dict = {}
        started = time.time()
        silent = httpx.get(f"{base}/silent", timeout=60, headers={"x-request-id": "head-probe-1"})
        result["silent"] = {"status": silent.status_code, "seconds": time.time() - started,
                            "retry_after": silent.headers.get("retry-after"), "body": silent.json(),
                            "sent_at": started}
        started = time.time()
        stream = httpx.get(f"{base}/stream", timeout=60)
        result["stream"] = {"status": stream.status_code, "seconds": time.time() - started, "body": stream.text}
        hint = httpx.get(f"{base}/hint", timeout=60, headers={"x-request-timeout-seconds": "0.2",
                                                              "x-request-disconnect-disabled": "?1"})
        result["hint"] = {"status": hint.status_code, "body": hint.text}
        time.sleep(3)  # the cancellation reaches the replica
        (out_dir / "result.json").write_text(json.dumps(result))
    finally:
        try:
            stop_serve()
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
