"""Usage: device-seconds per project and alias, from allocation to free, for charging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query

from pcipass.api.auth import CloudDep, User
from pcipass.api.schemas import UsageList
from pcipass.api.views import usage_view
from pcipass.errors import InvalidInput

router = APIRouter(tags=["usage"])

DEFAULT_WINDOW = timedelta(days=30)


def _utc(value: datetime) -> datetime:
    """A time without a zone is taken as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@router.get("/usage", response_model=UsageList)
def usage(
    caller: User, cloud: CloudDep, project: str | None = None,
    start: Annotated[datetime | None, Query(description="ISO 8601; default 30 days ago")] = None,
    end: Annotated[datetime | None, Query(description="ISO 8601; default now")] = None,
) -> Any:
    """Only the part of each allocation inside [start, end) counts."""
    until = _utc(end) if end is not None else datetime.now(UTC)
    since = _utc(start) if start is not None else until - DEFAULT_WINDOW
    if since >= until:
        raise InvalidInput(f"start {since.isoformat()} is not before end {until.isoformat()}",
                           field="query.start")
    records = cloud.usage(caller, project=project, start=since, end=until)
    return {"usage": [usage_view(u) for u in records], "next": None}
