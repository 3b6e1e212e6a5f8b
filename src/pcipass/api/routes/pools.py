"""Pools: interchangeable assignable devices of one host, counted; what the scheduler reads."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from pcipass.api.auth import Caller, StoreDep, require_listing
from pcipass.api.schemas import PoolPage
from pcipass.api.views import pool_view

router = APIRouter(tags=["pools"])


@router.get("/pools", response_model=PoolPage)
def list_pools(
    caller: Caller, store: StoreDep, host: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, marker: str | None = None,
) -> Any:
    require_listing(caller, host)
    page = store.list_pools(host=host, limit=limit, marker=marker)
    return {"pools": [pool_view(p) for p in page.items], "next": page.next}
