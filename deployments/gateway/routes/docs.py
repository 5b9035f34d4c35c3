"""``/openapi.json``, ``/docs`` (Swagger UI) and ``/redoc``, served without any CDN.

The pages' JavaScript, CSS and icon are the Swagger UI 5 and ReDoc builds of
the fastapi-offline package, served by the gateway itself under
`DOCS_ASSETS_PATH`, so the docs work on a cluster without internet (FastAPI's
defaults load them from a CDN and show a blank page there).

``/openapi.json`` is the gateway's own document plus, under
``/api/v1/<service>/...``, the routes, request bodies and models of every
configured service that runs (`deployments.gateway.configured`,
`deployments.gateway.openapi_merge`), and the LLM's also under ``/v1/...``;
the services' schemas come through the
forwarding protocol, cached (`deployments.gateway.service_schemas`). A
service that is down or slow adds nothing: the document itself always answers.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from deployments.gateway.configured import configured_services
from deployments.gateway.deps import StateDep
from deployments.gateway.llm_front import OPENAI_SERVICE
from deployments.gateway.openapi_merge import merge_service_schemas
from deployments.gateway.routes.openai import OPENAI_PREFIX
from deployments.gateway.service_schemas import ServiceSchemas

DOCS_ASSETS_PATH = "/docs/static"
"""Where the gateway serves the docs pages' assets (the fastapi-offline package's ``static`` folder)."""

OPENAPI_PATH = "/openapi.json"

# Serve application states whose replicas can answer a forwarded call.
_ANSWERING = {"RUNNING", "DEPLOYING"}

router = APIRouter(include_in_schema=False)


def _root(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


@router.get(OPENAPI_PATH)
async def openapi(request: Request, state: StateDep) -> JSONResponse:
    settings = state.settings
    configured = await configured_services(state.services, expected=settings.gateway_expected_services,
                                           timeout_s=settings.gateway_openapi_timeout_s)
    # Serve's status unknown: ask every configured service; each fetch is bounded anyway.
    names = [name for name, app in configured.services
             if configured.app_states is None
             or (app in configured.app_states and configured.app_states[app].status in _ANSWERING)]
    schemas: ServiceSchemas = request.app.state.service_schemas
    fetched = await asyncio.gather(*(schemas.get(name) for name in names))
    also_at = {OPENAI_SERVICE: OPENAI_PREFIX} if state.openai_front is not None else {}
    document = merge_service_schemas(request.app.openapi(),
                                     {name: schema for name, schema in zip(names, fetched) if schema}, also_at)
    root_path = _root(request)
    if root_path and root_path not in {server.get("url") for server in document.get("servers", [])}:
        document["servers"] = [{"url": root_path}, *document.get("servers", [])]
    return JSONResponse(document)


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_swagger_ui_html(
        openapi_url=root + OPENAPI_PATH,
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{DOCS_ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{root}{DOCS_ASSETS_PATH}/favicon.png",
        # NOTE: Swagger UI would otherwise send the document to an online validator.
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_redoc_html(
        openapi_url=root + OPENAPI_PATH,
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{DOCS_ASSETS_PATH}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{DOCS_ASSETS_PATH}/favicon.png",
        with_google_fonts=False,
    )


def install_docs(app: FastAPI, schemas: ServiceSchemas) -> None:
    """Add the docs routes and assets to `app` (built with ``openapi_url=docs_url=redoc_url=None``)."""
    app.state.service_schemas = schemas
    app.include_router(router)
    app.mount(DOCS_ASSETS_PATH, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets")
