"""Flavors: sizes and the devices that come with them; how an operator permits passthrough."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from pcipass.api.auth import Admin, CloudDep, User
from pcipass.api.schemas import FlavorAccess, FlavorCreate, FlavorList, FlavorOut
from pcipass.api.views import flavor_view

router = APIRouter(tags=["flavors"])


@router.post("/flavors", response_model=FlavorOut, status_code=201)
def create_flavor(caller: Admin, body: FlavorCreate, cloud: CloudDep) -> Any:
    """`extra_specs` naming an undefined alias, or malformed, are refused here, not at boot."""
    made = cloud.create_flavor(
        caller, name=body.name, vcpus=body.vcpus, ram_mb=body.ram_mb, disk_gb=body.disk_gb,
        extra_specs=body.extra_specs, is_public=body.is_public, projects=body.projects)
    return flavor_view(made)


@router.get("/flavors", response_model=FlavorList)
def list_flavors(caller: User, cloud: CloudDep) -> Any:
    """A member sees public flavors and those shared with its project."""
    return {"flavors": [flavor_view(f) for f in cloud.list_flavors(caller)], "next": None}


@router.get("/flavors/{ref}", response_model=FlavorOut)
def get_flavor(ref: str, caller: User, cloud: CloudDep) -> Any:
    return flavor_view(cloud.get_flavor(caller, ref))


@router.delete("/flavors/{ref}", status_code=204, response_class=Response)
def delete_flavor(ref: str, caller: Admin, cloud: CloudDep) -> Response:
    cloud.delete_flavor(caller, ref)
    return Response(status_code=204)


@router.post("/flavors/{ref}/access", response_model=FlavorOut)
def set_flavor_access(ref: str, caller: Admin, body: FlavorAccess, cloud: CloudDep) -> Any:
    """Share a private flavor with projects, or stop sharing it."""
    return flavor_view(cloud.set_flavor_access(caller, ref, add=body.add, remove=body.remove))
