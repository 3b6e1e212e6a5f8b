"""Servers: boot (schedule and claim devices), look, delete (free the claims)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from pcipass.api.auth import CloudDep, User
from pcipass.api.schemas import (
    DeviceAttachIn,
    ErrorOut,
    EventPage,
    LiveMigrateIn,
    MigrateIn,
    MovePage,
    NicIn,
    ResizeIn,
    ServerCreate,
    ServerOut,
    ServerPage,
)
from pcipass.api.views import event_view, move_view, server_view
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


@router.get("/servers/{ref}/events", response_model=EventPage,
            responses={404: {"model": ErrorOut, "description": "No such server (in the "
                             "caller's project)"}})
def server_events(ref: str, caller: User, cloud: CloudDep) -> Any:
    """The server's action log, oldest first: create, schedule, spawn, delete, destroy..."""
    return {"events": [event_view(e) for e in cloud.server_events(caller, ref)], "next": None}


@router.delete("/servers/{ref}", response_model=ServerOut, status_code=202,
               responses={409: {"model": ErrorOut, "description": "A host is running a step "
                                "of the server's move (move_busy): delete when it ends"}})
def delete_server(ref: str, caller: User, cloud: CloudDep, force: bool = False) -> Any:
    """Frees the server's claims once its host (each of its move's hosts, mid-move)
    destroyed it; the reply is the server as it is left."""
    return server_view(cloud.delete_server(caller, ref, force=force))


# --- hot attach and detach ---------------------------------------------------------------------

_CHANGE_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorOut, "description": "Over quota (quota_exceeded), or not allowed"},
    404: {"model": ErrorOut, "description": "No such server (or not the caller's), alias, "
          "device or port"},
    409: {"model": ErrorOut, "description": "The server is not ACTIVE (server_not_active), "
          "its host has no free device that fits (no_free_device), a port is in use"},
}


@router.post("/servers/{ref}/devices", response_model=ServerOut, status_code=202,
             responses=_CHANGE_ERRORS)
def attach_device(ref: str, caller: User, body: DeviceAttachIn, cloud: CloudDep) -> Any:
    """Claim `count` devices of `alias` on the server's own host and hot-plug them: they show
    `claimed` until its agent confirms (`allocated`); the server stays ACTIVE."""
    return server_view(cloud.attach_device(caller, ref, alias=body.alias, count=body.count))


@router.delete("/servers/{ref}/devices/{address}", response_model=ServerOut, status_code=202,
               responses=_CHANGE_ERRORS)
def detach_device(ref: str, address: str, caller: User, cloud: CloudDep) -> Any:
    """Hot-unplug a device (with its IOMMU unit); freed when the server's agent confirms."""
    return server_view(cloud.detach_device(caller, ref, address=address))


@router.post("/servers/{ref}/interfaces", response_model=ServerOut, status_code=202,
             responses=_CHANGE_ERRORS)
def attach_interface(ref: str, caller: User, body: NicIn, cloud: CloudDep) -> Any:
    """`{"net_id": N, "vnic_type": T}` (a port made for the server, deleted on detach) or
    `{"port_id": P}`: its VF (or PF) claimed on the server's host and hot-plugged."""
    return server_view(cloud.attach_interface(caller, ref, body.given()))


_MOVE_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such server, flavor or host"},
    409: {"model": ErrorOut, "description":
          "No host fits (no_valid_host), the named host is the server's (same_host), the "
          "server is not ACTIVE (server_not_active) or already moving (server_moving)"},
}


@router.post("/servers/{ref}/resize", response_model=ServerOut, status_code=202,
             responses={**_MOVE_ERRORS,
                        400: {"model": ErrorOut, "description": "The server has that flavor"},
                        403: {"model": ErrorOut, "description": "Over quota"}})
def resize_server(ref: str, caller: User, body: ResizeIn, cloud: CloudDep) -> Any:
    """Move the server to another flavor: its devices claimed on the same host when they fit
    there (and `[scheduler] resize_same_host` allows it), else on another. RESIZE while its
    host stops it and the destination builds it, then VERIFY_RESIZE: confirm to keep it
    (the old devices are freed), revert to go back (the new ones are freed)."""
    return server_view(cloud.resize_server(caller, ref, flavor=body.flavor))


@router.post("/servers/{ref}/migrate", response_model=ServerOut, status_code=202,
             responses={**_MOVE_ERRORS, 403: {"model": ErrorOut, "description": "Not an admin"}})
def migrate_server(ref: str, caller: User, cloud: CloudDep,
                   body: MigrateIn | None = None) -> Any:
    """Admins: cold-migrate the server to another host (`{"host": H}`, or any that fits):
    MIGRATING, then VERIFY_RESIZE (confirm or revert, as a resize) unless `auto_confirm`."""
    got = body if body is not None else MigrateIn()
    return server_view(cloud.migrate_server(caller, ref, host=got.host,
                                            auto_confirm=got.auto_confirm))


@router.post("/servers/{ref}/resize/confirm", response_model=ServerOut, status_code=202,
             responses={409: {"model": ErrorOut, "description":
                              "No move waits in VERIFY_RESIZE (not_verifying)"}})
def confirm_resize(ref: str, caller: User, cloud: CloudDep) -> Any:
    """Keep the destination: ACTIVE there; the source's devices are freed once its host has
    destroyed what it kept."""
    return server_view(cloud.confirm_resize(caller, ref))


@router.post("/servers/{ref}/resize/revert", response_model=ServerOut, status_code=202,
             responses={409: {"model": ErrorOut, "description":
                              "Nothing to revert (not_verifying), or a host is running the "
                              "move's step (move_busy)"}})
def revert_resize(ref: str, caller: User, cloud: CloudDep) -> Any:
    """Go back to the source: the destination's devices are freed and the server restarted
    on its source with the old flavor."""
    return server_view(cloud.revert_resize(caller, ref))


@router.get("/servers/{ref}/moves", response_model=MovePage,
            responses={404: {"model": ErrorOut, "description": "No such server"}})
def server_moves(ref: str, caller: User, cloud: CloudDep) -> Any:
    """The server's resizes and migrations, oldest first."""
    return {"moves": [move_view(m) for m in cloud.server_moves(caller, ref)]}


@router.post("/servers/{ref}/live-migrate", response_model=ServerOut, status_code=202,
             responses={
                 403: {"model": ErrorOut, "description": "Not an admin"},
                 404: {"model": ErrorOut, "description": "No such server or host"},
                 409: {"model": ErrorOut, "description":
                       "A device cannot move live (not_live_migratable, naming each), no "
                       "host fits (no_valid_host), the named host is the server's "
                       "(same_host) or reported no migration URI (no_migration_uri), the "
                       "server is not ACTIVE (server_not_active) or already moving "
                       "(server_moving)"}})
def live_migrate_server(ref: str, caller: User, cloud: CloudDep,
                        body: LiveMigrateIn | None = None) -> Any:
    """Admins: move the running server to another host (`{"host": H}`, or any that fits).
    MIGRATING while the destination prepares its VFs, the source unplugs the server's
    `direct` NICs (the guest loses them until the move finishes) and migrates it, and the
    destination plugs them again; then ACTIVE on the destination. A failure before the
    guest left: ACTIVE on the source, NICs plugged back. Steps in `.../events`."""
    host = body.host if body is not None else None
    return server_view(cloud.live_migrate_server(caller, ref, host=host))


@router.delete("/servers/{ref}/interfaces/{port}", response_model=ServerOut, status_code=202,
               responses=_CHANGE_ERRORS)
def detach_interface(ref: str, port: str, caller: User, cloud: CloudDep) -> Any:
    """Hot-unplug a port; its VF is restored and freed when the server's agent confirms."""
    return server_view(cloud.detach_interface(caller, ref, port=port))
