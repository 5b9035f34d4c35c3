"""Message size limits of Serve's replica-to-replica gRPC path, and ours.

The gateway calls services by value over the replicas' gRPC servers (faster
than Ray actor calls for small bodies). Serve 2.60 caps what a replica's
gRPC server and a handle's channel *receive* at 4 MiB
(``RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH``, read once when
``ray.serve`` is imported), while the gateway accepts bodies up to
``max_body_bytes`` (10 MiB) and services answer with files larger than that.
Over the cap a call failed with gRPC ``RESOURCE_EXHAUSTED`` (a 500).

Two measures, so that every body the gateway accepts reaches the service:

- requests larger than `GRPC_REQUEST_MAX_BYTES` go by Ray actor call
  (`deployments.gateway.services`), which has no such cap, so a service
  deployed without our settings still gets them;
- our replicas raise the receive cap to `GRPC_MAX_MESSAGE_BYTES` through
  `GRPC_ENV` in their runtime environment, which is how a large answer (an
  export, a long completion) comes back to the gateway.
"""

from __future__ import annotations

from typing import Any

SERVE_DEFAULT_GRPC_MAX_BYTES = 4 * 1024 * 1024
"""What a replica receives over gRPC when nobody raised it (Serve 2.60's default)."""

GRPC_REQUEST_MAX_BYTES = SERVE_DEFAULT_GRPC_MAX_BYTES - 256 * 1024
"""Largest body sent by gRPC: the default cap less room for the call's other arguments (headers, query)."""

GRPC_MAX_MESSAGE_BYTES = 2**31 - 1
"""The receive cap our replicas set: gRPC's own maximum, the value Serve's proxies use."""

GRPC_ENV: dict[str, str] = {"RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(GRPC_MAX_MESSAGE_BYTES)}
"""Environment variables for every replica's ``runtime_env`` (and each app in serve_config.yaml)."""


def by_value(handle: Any) -> Any:
    """``handle`` (a deployment handle) calling its replicas by value over their gRPC servers, in plain pickle.

    What the gateway uses for the services and every caller of `LLMServer`
    (`deployments.common.llm_wire`): measured ~1-1.5 ms less per call than Ray
    actor calls for the services (scripts/bench/gateway.py), ~3 ms for the LLM.
    The request must fit the replica's receive cap: see above.
    """
    return handle.options(_by_reference=False, request_serialization="pickle", response_serialization="pickle")
