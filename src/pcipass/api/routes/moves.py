"""A cold move's boot disk in flight (:mod:`pcipass.services.move_disks`): the source host's
agent uploads it, the destination host's agent downloads it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from pcipass.api.auth import Caller, CloudDep
from pcipass.api.schemas import ErrorOut
from pcipass.config import Settings
from pcipass.services.move_disks import MOVE_DISKS_DIR, MoveDisks

router = APIRouter(tags=["moves"])

_DISK_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorOut, "description": "Not the agent of the move's host on that side"},
    409: {"model": ErrorOut, "description": "The move hands no disk over (live, or on one "
          "host: no_disk_handoff) or is not at that step (move_not_ready)"},
}


def _disks(request: Request) -> MoveDisks:
    settings: Settings = request.app.state.settings
    return MoveDisks(settings.state_dir / MOVE_DISKS_DIR)


@router.put("/moves/{move_id}/disk", status_code=204, responses=_DISK_ERRORS)
async def upload_disk(move_id: str, request: Request, caller: Caller,
                      cloud: CloudDep) -> Response:
    """The source's agent hands the stopped server's disk over (the raw qcow2 overlay, as
    the body); a later upload replaces it."""
    await run_in_threadpool(cloud.move_disk, caller, move_id, upload=True)
    await _disks(request).receive(move_id, request.stream())
    return Response(status_code=204)


@router.get("/moves/{move_id}/disk", response_class=FileResponse,
            responses={**_DISK_ERRORS, 200: {"content": {"application/octet-stream": {}}}})
def download_disk(move_id: str, request: Request, caller: Caller,
                  cloud: CloudDep) -> FileResponse:
    """The destination's agent takes the disk the source handed over (404 until then)."""
    cloud.move_disk(caller, move_id, upload=False)
    return FileResponse(_disks(request).stored(move_id), media_type="application/octet-stream")
