"""The per-server action log: one row per step of a server's life.

Each step records its event in the same transaction as the step itself (:func:`record_event`
takes the caller's connection), so the log never claims a step that rolled back nor misses
one that committed. ``server_events.server_id`` is not a foreign key: the log outlives
nothing and constrains nothing, and a step may record before the server row is written.

``action``: "create", "schedule", "spawn", "delete", "destroy", "attach_device",
"detach_device", "attach_interface", "detach_interface", "reserve_host", ...;
``outcome``: "started", "done" or "failed".
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select

from pcipass.records import EventRecord
from pcipass.store.schema import EVENT_OUTCOMES, server_events

MESSAGE_MAX = 4000


def record_event(conn: Connection, server_id: str, action: str, outcome: str,
                 message: str | None, now: datetime, *, host: str | None = None,
                 detail: Mapping[str, Any] | None = None) -> None:
    """Append one event to ``server_id``'s log, in the caller's transaction."""
    if outcome not in EVENT_OUTCOMES:
        raise ValueError(f"event outcome {outcome!r} is not one of {EVENT_OUTCOMES}")
    if message is not None and len(message) > MESSAGE_MAX:
        message = message[:MESSAGE_MAX - 3] + "..."
    conn.execute(insert(server_events).values(
        server_id=server_id, action=action, outcome=outcome, message=message, host=host,
        detail=dict(detail or {}), at=now))


def list_events(conn: Connection, server_id: str) -> tuple[EventRecord, ...]:
    """``server_id``'s events, oldest first (by time, then by insertion)."""
    rows = conn.execute(select(server_events)
                        .where(server_events.c.server_id == server_id)
                        .order_by(server_events.c.at, server_events.c.id)).all()
    return tuple(EventRecord(id=int(r.id), server_id=r.server_id, action=r.action,
                             outcome=r.outcome, message=r.message, host=r.host,
                             detail=dict(r.detail or {}), at=r.at) for r in rows)
