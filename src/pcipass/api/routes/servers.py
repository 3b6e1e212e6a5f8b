"""Servers: boot (schedule and claim devices), look, delete (free the claims)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from pcipass.api.auth import CloudDep, User
from pcipass.api.schemas import ErrorOut, ServerCreate, ServerOut, ServerPage
from pcipass.api.views import server_view
from pcipass.records import ServerStatus

router = APIRouter(tags=["servers"])


@router.post(
    "/servers", response_model=ServerOut, status_code=202,
    responses={400: {"model": ErrorOut, "description": "The image cannot drive an alias"},
               403: {"model": ErrorOut, "description": "Over quota, or not allowed"},
               409: {"model": ErrorOut, "description": "A port is in use (port_in_use)"}},
)
def create_server(caller: User, body: ServerCreate, cloud: CloudDep) -> Any:
    """BUILDING with a host and claimed devices, or ERROR with a fault saying why no host fits.
    `nics`: `{"net_id": N, "vnic_type": "direct"}` or `{"port_id": P}`, each a port."""
    made = cloud.create_server(caller, name=body.name, flavor=body.flavor, image=body.image,
                               project=body.project, nics=[n.given() for n in body.nics])
    return server_view(made)


@router.get("/servers", response_model=ServerPage)
def list_servers(
    caller: User, cloud: CloudDep, host: str | None = None, status: ServerStatus | None = None,
    project: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    marker: str | None = None,
) -> Any:
    """A member sees its own project's servers only."""
    page = cloud.list_servers(caller, host=host, status=status, project=project, limit=limit,
                              marker=marker)
    return {"servers": [server_view(s) for s in page.items], "next": page.next}


@router.get("/servers/{ref}", response_model=ServerOut)
def get_server(ref: str, caller: User, cloud: CloudDep) -> Any:
    return server_view(cloud.get_server(caller, ref))


@router.delete("/servers/{ref}", response_model=ServerOut, status_code=202)
def delete_server(ref: str, caller: User, cloud: CloudDep, force: bool = False) -> Any:
    """Frees the server's claims; the reply is the server as it is left."""
    return server_view(cloud.delete_server(caller, ref, force=force))
