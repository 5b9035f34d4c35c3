"""`LLMServerFront`: the model replica that answers the OpenAI API over HTTP itself (``openai_front: replica``).

The `llm` app's default shape: one deployment, the model replicas, and the
ingress of the app. A request reaches the model's process straight from
Serve's proxy (or, with ``--ingress haproxy`` and ``routing: pow2``, from
HAProxy, which forwards to the replica's own HTTP server: Ray 2.60 allows no
custom router on it there), and the handler calls the batcher in the same
event loop (`deployments.llm.openai.in_process`). Its JSON parsing and
server-sent events then share the model's process: the CPU they cost is the
same, one Serve hop's work less. The other shape,
``openai_front: ingress``, puts `deployments.llm.app.LLMIngress` in front:
one Serve hop more on each request and each streamed chunk, but its handle
call goes through the cache-aware router, which an HTTP request through the
proxy or HAProxy does not (they pick a replica without reading the prompt).
With one replica there is nothing to choose; with several behind the
gateway (serve_config.yaml), the gateway's ``/v1`` calls the replicas by
handle, cache-aware, in either shape.

The replica keeps every handle method of `LLMReplica` (services and the
gateway call ``generate_stream`` as before) and, as every service ingress,
``handle_request`` for what the gateway forwards (its OpenAPI schema) and
``openai_config`` for the gateway's own ``/v1``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve

from deployments.common import ServiceIngress
from deployments.llm.openai.in_process import openai_app_in_process
from deployments.llm.openai_options import openai_options
from deployments.llm.server import REPLICA_OPTIONS, LLMReplica

# NOTE: no runtime_env of its own, as the bare replica: one in the code would keep the app's (serve_config.yaml's
# niceness, HAProxy flags, gRPC cap) from a deployment the deploy file does not list. Nothing it calls answers
# over gRPC, and what the gateway sends it by gRPC stays under the default cap (grpc_limits).
@serve.deployment(**REPLICA_OPTIONS)
@serve.ingress()
class LLMServerFront(ServiceIngress, LLMReplica):
    """A model replica serving the OpenAI API in its own process (see the module docstring)."""

    def __serve_build_asgi_app__(self) -> FastAPI:  # Serve's hook, called after __init__
        return openai_app_in_process(self, openai_options(self.settings))

    async def openai_config(self) -> dict[str, Any]:
        """What the gateway needs to serve this app's OpenAI API itself (`deployments.gateway.llm_front`)."""
        return openai_options(self.settings)
