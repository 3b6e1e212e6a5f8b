"""Agent tasks: a host's agent long-polls its queue, starts each task, reports its outcome;
and the admin's view of the domain a spawn defined."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from pcipass.api.auth import Caller, CloudDep
from pcipass.api.schemas import ErrorOut
from pcipass.store.tasks import TaskRecord

router = APIRouter(tags=["tasks"])

MAX_WAIT_S = 30.0
POLL_EVERY_S = 0.25


class TaskOut(BaseModel):
    id: str
    kind: str
    server_id: str
    state: str
    payload: dict[str, Any]
    created_at: datetime
    deadline: datetime | None


class TaskPage(BaseModel):
    tasks: list[TaskOut]
    next: str | None = None


class TaskResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ok: bool
    message: str | None = None
    domain_xml: str | None = None


class ResultOut(BaseModel):
    accepted: bool = Field(description="False: the task had already finished or expired; "
                                       "nothing changed")
    state: str = Field(description="The task's state now: done or failed as reported, or, "
                                   "when refused, what it had become (a spawn refused as "
                                   "expired or failed must be undone by the host)")


def task_view(t: TaskRecord) -> dict[str, Any]:
    return {"id": t.id, "kind": t.kind, "server_id": t.server_id, "state": t.state,
            "payload": t.payload, "created_at": t.created_at, "deadline": t.deadline}


@router.get("/hosts/{host}/tasks", response_model=TaskPage)
async def poll_tasks(
    host: str, caller: Caller, cloud: CloudDep,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S,
                                 description="Seconds to wait for a task (long-poll).")] = 0,
) -> Any:
    """The host's queued and running tasks, oldest first; waits up to `wait` seconds for one."""
    found = await run_in_threadpool(cloud.tasks.poll, caller, host)
    until = time.monotonic() + wait
    while not found and time.monotonic() < until:
        await asyncio.sleep(min(POLL_EVERY_S, max(0.0, until - time.monotonic())))
        if await run_in_threadpool(cloud.tasks.has_open, caller, host):
            found = await run_in_threadpool(cloud.tasks.poll, caller, host)
    return {"tasks": [task_view(t) for t in found], "next": None}


@router.post("/tasks/{task_id}/start", response_model=TaskOut,
             responses={409: {"model": ErrorOut,
                              "description": "Done, failed or expired: do not run it"}})
def start_task(task_id: str, caller: Caller, cloud: CloudDep) -> Any:
    """The agent is about to run the task (again, after a restart: it resumes)."""
    return task_view(cloud.tasks.start(caller, task_id))


@router.post("/tasks/{task_id}/result", response_model=ResultOut)
def task_result(task_id: str, body: TaskResult, caller: Caller, cloud: CloudDep) -> Any:
    """What the host did; a result for a task no longer open is ignored."""
    accepted = cloud.tasks.result(caller, task_id, ok=body.ok, message=body.message,
                                  domain_xml=body.domain_xml)
    # A task that is no longer open never changes again: reading its state now is exact.
    return {"accepted": accepted, "state": cloud.tasks.state(caller, task_id)}


@router.get("/servers/{ref}/domain-xml", response_class=Response,
            responses={200: {"content": {"application/xml": {}}}})
def domain_xml(ref: str, caller: Caller, cloud: CloudDep) -> Response:
    """The libvirt XML the server's host defined (admins)."""
    return Response(cloud.tasks.domain_xml(caller, ref), media_type="application/xml")
