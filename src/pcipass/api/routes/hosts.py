"""Hosts: what agents report, and what the control plane knows of each host."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from pcipass.api.auth import Admin, CloudDep, HostCaller, StoreDep
from pcipass.api.reports import REPORT_SCHEMA_REF, parse_report, raw_body
from pcipass.api.schemas import DrainOut, ErrorOut, HostOut, HostPage, HostReserveIn, ReportOut
from pcipass.api.views import drain_view, host_view, report_view

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
    whether it could be live-migrated or what prevents it. Live migration itself is not
    yet available."""
    return drain_view(cloud.drain_host(caller, host))


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
