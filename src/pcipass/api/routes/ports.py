"""Ports: a MAC on a network, and once a server boots with it, the VF (or PF) it is bound to."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from pcipass.api.auth import CloudDep, User
from pcipass.api.schemas import ErrorOut, PortCreate, PortList, PortOut
from pcipass.api.views import port_view

router = APIRouter(tags=["ports"])


@router.post("/ports", response_model=PortOut, status_code=201,
             responses={409: {"model": ErrorOut,
                              "description": "The MAC is taken on the network (mac_in_use)"}})
def create_port(caller: User, body: PortCreate, cloud: CloudDep) -> Any:
    """In the caller's project (an admin's: `project`) on a network it sees; `trusted` is
    for admins only."""
    made = cloud.create_port(
        caller, network=body.network, name=body.name, vnic_type=body.vnic_type, mac=body.mac,
        trusted=body.trusted, spoofchk=body.spoofchk, max_tx_rate_mbps=body.max_tx_rate_mbps,
        min_tx_rate_mbps=body.min_tx_rate_mbps,
        numa_affinity_policy=body.numa_affinity_policy, project=body.project)
    return port_view(made)


@router.get("/ports", response_model=PortList)
def list_ports(caller: User, cloud: CloudDep, network: str | None = None,
               server: str | None = None, project: str | None = None) -> Any:
    """A member sees its own project's ports; `network` and `server` by name or id."""
    found = cloud.list_ports(caller, network=network, server=server, project=project)
    return {"ports": [port_view(x) for x in found], "next": None}


@router.get("/ports/{ref}", response_model=PortOut)
def get_port(ref: str, caller: User, cloud: CloudDep) -> Any:
    return port_view(cloud.get_port(caller, ref))


@router.delete("/ports/{ref}", status_code=204, response_class=Response,
               responses={409: {"model": ErrorOut,
                                "description": "A server holds it (port_in_use)"}})
def delete_port(ref: str, caller: User, cloud: CloudDep) -> Response:
    cloud.delete_port(caller, ref)
    return Response(status_code=204)
