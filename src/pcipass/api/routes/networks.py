"""Networks: a physical network and its segmentation (VLAN id or flat), shared or per project."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from pcipass.api.auth import Admin, CloudDep, User
from pcipass.api.schemas import ErrorOut, NetworkCreate, NetworkList, NetworkOut
from pcipass.api.views import network_view

router = APIRouter(tags=["networks"])


@router.post("/networks", response_model=NetworkOut, status_code=201,
             responses={409: {"model": ErrorOut, "description": "The name is taken"}})
def create_network(caller: Admin, body: NetworkCreate, cloud: CloudDep) -> Any:
    """`project` null: shared with every project. A VLAN network needs its id (1-4094)."""
    made = cloud.create_network(caller, name=body.name, physical_network=body.physical_network,
                                segmentation=body.segmentation,
                                segmentation_id=body.segmentation_id, project=body.project)
    return network_view(made)


@router.get("/networks", response_model=NetworkList)
def list_networks(caller: User, cloud: CloudDep) -> Any:
    """A member sees the shared networks and its own project's."""
    return {"networks": [network_view(n) for n in cloud.list_networks(caller)], "next": None}


@router.get("/networks/{ref}", response_model=NetworkOut)
def get_network(ref: str, caller: User, cloud: CloudDep) -> Any:
    return network_view(cloud.get_network(caller, ref))


@router.delete("/networks/{ref}", status_code=204, response_class=Response,
               responses={409: {"model": ErrorOut,
                                "description": "A server holds a port on it (network_in_use)"}})
def delete_network(ref: str, caller: Admin, cloud: CloudDep) -> Response:
    """Its free ports go with it."""
    cloud.delete_network(caller, ref)
    return Response(status_code=204)
