"""Merge the services' OpenAPI schemas into the gateway's, under the gateway's paths.

Pure functions over OpenAPI dicts (no I/O). A service route ``/analyze`` is
documented at ``/api/v1/<service>/analyze`` with the service's own request
body and responses, so ``/docs`` shows what a caller of the gateway really
sends instead of only the generic ``/api/v1/{service}/{path}``.

- Every component (``#/components/<section>/<Name>``) of a service becomes
  ``<service>.<Name>`` and every ``$ref`` to it is rewritten, so two services'
  ``Error`` or ``HTTPValidationError`` models do not overwrite each other.
- The services' own security schemes are dropped (their routes do not
  authenticate); each operation gets the gateway's: any one of its schemes
  (bearer token or ``X-API-Key``) admits the call.
- Operation ids get the service as a prefix, and any id still repeated
  (FastAPI gives a route with several methods one id) the method as a
  suffix: OpenAPI wants them unique. Operations are grouped under one tag
  per service.
- The gateway's own paths win over a service path that collides with them.
- A service the gateway also serves under a prefix of its own (the LLM at
  ``/v1``) is documented there as well.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

API_PREFIX = "/api/v1"

_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
_REF_PREFIX = "#/components/"


def gateway_path(service: str, path: str) -> str:
    """Where the gateway serves a service's route `path` (``/analyze`` -> ``/api/v1/<service>/analyze``)."""
    return f"{API_PREFIX}/{service}{path if path.startswith('/') else '/' + path}"


def gateway_security(spec: Mapping[str, Any]) -> list[dict[str, list[str]]]:
    """The gateway's security requirement: any one of its security schemes."""
    schemes = spec.get("components", {}).get("securitySchemes", {})
    return [{name: []} for name in sorted(schemes)]


def _namespaced_ref(ref: str, service: str) -> str:
    if not ref.startswith(_REF_PREFIX):
        return ref
    section, _, name = ref[len(_REF_PREFIX):].partition("/")
    return f"{_REF_PREFIX}{section}/{service}.{name}" if name else ref


def _rewrite_refs(node: Any, service: str) -> Any:
    """A copy of `node` with every local component ``$ref`` pointing at the namespaced name."""
    if isinstance(node, dict):
        return {key: _namespaced_ref(value, service) if key == "$ref" and isinstance(value, str)
                else _rewrite_refs(value, service) for key, value in node.items()}
    if isinstance(node, list):
        return [_rewrite_refs(item, service) for item in node]
    return node


def _add_service(merged: dict[str, Any], service: str, spec: Mapping[str, Any],
                 security: list[dict[str, list[str]]], prefix: str | None = None) -> None:
    spec = _rewrite_refs(spec, service)  # a fresh copy: changed below without touching the cached original
    components = merged.setdefault("components", {})
    for section, entries in spec.get("components", {}).items():
        if section == "securitySchemes" or not isinstance(entries, dict):
            continue
        target = components.setdefault(section, {})
        for name, entry in entries.items():
            target[f"{service}.{name}"] = entry
    paths = merged.setdefault("paths", {})
    for path, item in spec.get("paths", {}).items():
        where = gateway_path(service, path) if prefix is None else prefix + (path if path.startswith("/") else "/" + path)
        if where in paths or not isinstance(item, dict):
            continue
        for method, operation in item.items():
            if method not in _METHODS or not isinstance(operation, dict):
                continue
            if "operationId" in operation:
                operation["operationId"] = f"{service if prefix is None else prefix.strip('/')}_{operation['operationId']}"
            operation["tags"] = [service]
            if security:
                operation["security"] = copy.deepcopy(security)
        paths[where] = item


def _unique_operation_ids(document: dict[str, Any]) -> None:
    """Suffix repeated operation ids with the method (FastAPI repeats one id for a route with several methods)."""
    seen: dict[str, int] = {}
    operations = [(method, operation) for item in document.get("paths", {}).values() if isinstance(item, dict)
                  for method, operation in item.items() if method in _METHODS and isinstance(operation, dict)]
    for _, operation in operations:
        if "operationId" in operation:
            seen[operation["operationId"]] = seen.get(operation["operationId"], 0) + 1
    for method, operation in operations:
        if seen.get(operation.get("operationId", ""), 0) > 1:
            operation["operationId"] = f"{operation['operationId']}_{method}"


def merge_service_schemas(gateway: Mapping[str, Any], services: Mapping[str, Mapping[str, Any]],
                          also_at: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A new document: `gateway` plus each service's paths and components (see the module docstring).

    Args:
        gateway: the gateway's own OpenAPI document (left unchanged).
        services: service name -> that service's OpenAPI document (left unchanged).
        also_at: service name -> another prefix the gateway serves it under (the LLM's ``/v1``);
            its operations there get that prefix's name before their ids.
    """
    merged = copy.deepcopy(dict(gateway))
    security = gateway_security(gateway)
    for service in sorted(services):
        _add_service(merged, service, services[service], security)
        if service in (also_at or {}):
            _add_service(merged, service, services[service], security, prefix=also_at[service])
    _unique_operation_ids(merged)
    return merged
