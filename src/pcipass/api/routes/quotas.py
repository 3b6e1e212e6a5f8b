"""Quotas: how many devices of each alias a project may hold at once."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from pcipass.api.auth import Admin, CloudDep, User
from pcipass.api.schemas import QuotaList, QuotaOut, QuotaSet
from pcipass.api.views import quota_view

router = APIRouter(tags=["quotas"])


@router.put("/quotas/{project}/{alias}", response_model=QuotaOut)
def set_quota(project: str, alias: str, caller: Admin, body: QuotaSet, cloud: CloudDep) -> Any:
    return quota_view(cloud.set_quota(caller, project=project, alias=alias, limit=body.limit))


@router.get("/quotas", response_model=QuotaList)
def list_quotas(caller: User, cloud: CloudDep, project: str | None = None) -> Any:
    """With what each project holds now; a member reads its own project's."""
    quotas = cloud.list_quotas(caller, project=project)
    return {"quotas": [quota_view(q) for q in quotas], "next": None}


@router.delete("/quotas/{project}/{alias}", status_code=204, response_class=Response)
def delete_quota(project: str, alias: str, caller: Admin, cloud: CloudDep) -> Response:
    cloud.delete_quota(caller, project=project, alias=alias)
    return Response(status_code=204)
