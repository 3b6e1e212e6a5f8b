"""Hosts: what agents report, and what the control plane knows of each host."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from pcipass.api.auth import Admin, CloudDep, HostCaller, StoreDep
from pcipass.api.reports import REPORT_SCHEMA_REF, parse_report, raw_body
from pcipass.api.schemas import (
    DrainOut,
    ErrorOut,
    HostDrainIn,
    HostOut,
    HostPage,
    HostReserveIn,
    LiveDrainOut,
    ReportOut,
)
from pcipass.api.views import drain_view, host_view, live_drain_view, report_view
from pcipass.errors import InvalidInput

router = APIRouter(tags=["hosts"])

Limit = Annotated[int, Query(ge=1, le=1000, description="Page size.")]
Marker = Annotated[str | None, Query(description="The previous page's `next`.")]


@router.get("/hosts", response_model=HostPage)
def list_hosts(caller: Admin, store: StoreDep, limit: Limit = 100,
               marker: Marker = None) -> Any:
    page = store.list_hosts(limit=limit, marker=marker)
    return {"hosts": [host_view(h) for h in page.items], "next": page.next}


@router.get("/hosts/{host}", response_model=HostOut)
def get_host(host: str, caller: HostCaller, store: StoreDep) -> Any:
    return host_view(store.get_host(host))


@router.post("/hosts/{host}/reserve", response_model=HostOut,
             responses={404: {"model": ErrorOut, "description": "No such host"}})
def reserve_host(host: str, caller: Admin, cloud: CloudDep,
                 body: HostReserveIn | None = None) -> Any:
    """Drain the host: nothing new is placed there; servers running there keep their
    devices. Optional body `{"reason": "..."}`. Idempotent (a second call updates the
    reason)."""
    reason = body.reason if body is not None else None
    return host_view(cloud.reserve_host(caller, host, True, reason))


@router.post("/hosts/{host}/unreserve", response_model=HostOut,
             responses={404: {"model": ErrorOut, "description": "No such host"}})
def unreserve_host(host: str, caller: Admin, cloud: CloudDep) -> Any:
    """Take the host back into service (the reason is cleared). Idempotent."""
    return host_view(cloud.reserve_host(caller, host, False))


@router.get("/hosts/{host}/drain", response_model=DrainOut,
            responses={404: {"model": ErrorOut, "description": "No such host"}})
def drain_host(host: str, caller: Admin, cloud: CloudDep) -> Any:
    """What still runs on the host (servers with their devices and ports) and, per server,
    whether it could be live-migrated or what prevents it (the verdict a live migration
    applies). `POST` with `{"live_migrate": true}` moves those that can."""
    return drain_view(cloud.drain_host(caller, host))


@router.post("/hosts/{host}/drain", response_model=LiveDrainOut, status_code=202,
             responses={400: {"model": ErrorOut, "description": "live_migrate is not true"},
                        404: {"model": ErrorOut, "description": "No such host"}})
def drain_host_live(host: str, caller: Admin, body: HostDrainIn, cloud: CloudDep) -> Any:
    """`{"live_migrate": true}`: start a live migration of every server on the host that can
    move (each to any host that fits), and list the others with what pins them (devices that
    cannot move live) or why their move could not start. Reserve the host first so nothing
    new lands there."""
    if not body.live_migrate:
        raise InvalidInput("POST drain live-migrates (live_migrate: true); GET lists what "
                           "runs on the host without moving it", field="live_migrate")
    return live_drain_view(cloud.drain_live(caller, host))


@router.put(
    "/hosts/{host}/inventory",
    response_model=ReportOut,
    responses={409: {"model": ErrorOut, "description": "Stale generation"},
               422: {"model": ErrorOut, "description": "Invalid report; nothing changed"}},
    openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": REPORT_SCHEMA_REF}},
    }},
)
def put_inventory(host: str, caller: HostCaller, store: StoreDep,
                  body: Annotated[bytes, Depends(raw_body)]) -> Any:
    """Replace the host's inventory; `generation` must be the host's current one."""
    generation, inventory = parse_report(host, body)
    result = store.report_inventory(host, generation, inventory, now=datetime.now(UTC))
    return report_view(result)
