"""The FastAPI application: routers under ``/v1``, error mapping, the store and the
:class:`~pcipass.services.Cloud` built on it on ``app.state``.

All state lives in the database, so any number of uvicorn workers can serve the same app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

import pcipass
from pcipass.api.errors import install_error_handlers
from pcipass.api.routes import (
    aliases,
    devices,
    flavors,
    health,
    hosts,
    images,
    moves,
    networks,
    pools,
    ports,
    quotas,
    scheduler,
    servers,
    tasks,
    tokens,
    usage,
)
from pcipass.api.schemas import ErrorOut, InventoryReport
from pcipass.config import Settings
from pcipass.services import Cloud
from pcipass.store import Store

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": text}
    for status, text in ((401, "No token, or an unknown one"),
                         (403, "The token's role may not do this"),
                         (404, "No such resource, or not one the caller may see"),
                         (422, "Invalid input; `field` names it"))
}


def create_app(settings: Settings, store: Store, *, close_store: bool = False) -> FastAPI:
    """``close_store``: the app owns the store and closes it on shutdown (worker processes)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if close_store:
                store.close()

    app = FastAPI(
        title="pcipass",
        version=pcipass.__version__,
        description="PCI passthrough for KVM/libvirt clouds: the control plane's API.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.cloud = Cloud(store, settings)
    install_error_handlers(app)
    app.include_router(health.router, prefix="/v1")
    for module in (tokens, hosts, devices, pools, aliases, flavors, images, networks, ports,
                   servers, moves, scheduler, quotas, usage, tasks):
        app.include_router(module.router, prefix="/v1", responses=_ERRORS)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, body in _report_schemas().items():
                components.setdefault(name, body)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _report_schemas() -> dict[str, Any]:
    """The inventory report is read raw (see ``api.reports``), so FastAPI cannot see its
    model; add it, and the models it nests, to the components by hand."""
    schema = InventoryReport.model_json_schema(ref_template="#/components/schemas/{model}")
    nested: dict[str, Any] = schema.pop("$defs", {})
    return {**nested, "InventoryReport": schema}
