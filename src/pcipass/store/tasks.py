"""The task queue between the control plane and its hosts' agents.

    queued ──start──▶ running ──result──▶ done | failed
       └──────────────┴──── deadline ───▶ expired  (spawn only: the boot fails)

Every write is one transaction that locks the task's host row first (the schema's lock
order) and moves the task with a state predicate in the same statement, so a result, a
second agent, the expiry sweep and a delete can race without doing anything twice: the
loser's UPDATE matches no row and it changes nothing (a late result is answered
``accepted: false``).

A destroy task never expires: devices go back only when the host confirms the domain is
gone, however long that takes (an admin may force the server DELETED meanwhile).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select, update

from pcipass.errors import Forbidden, NotFound, TaskNotRunnable
from pcipass.records import ServerRecord, ServerStatus
from pcipass.store import attach as _attach
from pcipass.store import live as _live
from pcipass.store import moves as _moves
from pcipass.store import networks as _networks
from pcipass.store import payloads as _payloads
from pcipass.store.claims import _lock_server, complete_spawn, recount_host, release
from pcipass.store.engine import Transactions
from pcipass.store.events import record_event
from pcipass.store.facts import FactsCache
from pcipass.store.kinds import KindIds
from pcipass.store.schema import devices, hosts, servers, tasks
from pcipass.store.servers import get_server
from pcipass.store.usage import end_usage

OPEN = ("queued", "running")


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: str
    host: str
    kind: str
    server_id: str
    state: str
    payload: dict[str, Any]
    message: str | None
    created_at: datetime
    deadline: datetime | None


def _deadline(row: Any, timeout: float) -> datetime | None:
    if row.deadline is not None:
        return row.deadline  # type: ignore[no-any-return]
    if row.kind != "spawn":
        return None
    return row.created_at + timedelta(seconds=timeout)  # type: ignore[no-any-return]


def _record(row: Any, host: str, timeout: float) -> TaskRecord:
    return TaskRecord(id=str(row.id), host=host, kind=row.kind, server_id=row.server_id,
                      state=row.state, payload=dict(row.payload), message=row.message,
                      created_at=row.created_at, deadline=_deadline(row, timeout))


def _task_id(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise NotFound(f"task {text!r} not found", field="task") from None


def _host_id(conn: Connection, name: str) -> int:
    found = conn.execute(select(hosts.c.id).where(hosts.c.name == name)).scalar()
    if found is None:
        raise NotFound(f"host {name!r} not found", field="host")
    return int(found)


def _lock_task(conn: Connection, task_id: int, host: str | None) -> tuple[Any, str]:
    """The task's row, its host's row locked first; Forbidden when it is not ``host``'s."""
    row = conn.execute(select(tasks.c.host_id).where(tasks.c.id == task_id)).first()
    if row is None:
        raise NotFound(f"task {task_id} not found", field="task")
    # FOR NO KEY UPDATE, like every host lock: a plain FOR UPDATE deadlocks against
    # foreign-key checks of kind-set registrations on PostgreSQL.
    name = conn.execute(select(hosts.c.name).where(hosts.c.id == row.host_id)
                        .with_for_update(key_share=True)).scalar_one()
    if host is not None and name != host:
        raise Forbidden(f"task {task_id} is for host {name!r}, not {host!r}", field="task")
    task = conn.execute(select(tasks).where(tasks.c.id == task_id)).one()
    return task, str(name)


def _move(conn: Connection, task_id: int, to: str, message: str | None,
          now: datetime) -> bool:
    """The task leaves ``queued``/``running`` for ``to``; False when it already had."""
    done = conn.execute(update(tasks).where(tasks.c.id == task_id, tasks.c.state.in_(OPEN))
                        .values(state=to, message=message, updated_at=now))
    return done.rowcount == 1


# --- what the agent does ------------------------------------------------------------------

def poll(tx: Transactions, host: str, now: datetime, timeout: float) -> list[TaskRecord]:
    """The host's open tasks, oldest first; records that its agent was seen."""
    with tx.write() as conn:
        host_id = _host_id(conn, host)
        conn.execute(update(hosts).where(hosts.c.id == host_id).values(last_seen=now,
                                                                          down=False))
        rows = conn.execute(select(tasks).where(tasks.c.host_id == host_id,
                                                tasks.c.state.in_(OPEN))
                            .order_by(tasks.c.id)).all()
    return [_record(r, host, timeout) for r in rows]


def has_open(tx: Transactions, host: str) -> bool:
    """Whether the host has a task queued or running (the long-poll's cheap check)."""
    with tx.read() as conn:
        return conn.execute(
            select(tasks.c.id).select_from(tasks.join(hosts, hosts.c.id == tasks.c.host_id))
            .where(hosts.c.name == host, tasks.c.state.in_(OPEN)).limit(1)).first() is not None


def start(tx: Transactions, task_id: str, host: str | None, now: datetime,
          timeout: float) -> TaskRecord:
    """queued or running → running (starting twice is how a restarted agent resumes)."""
    tid = _task_id(task_id)
    with tx.write() as conn:
        task, name = _lock_task(conn, tid, host)
        moved = conn.execute(update(tasks).where(tasks.c.id == tid, tasks.c.state.in_(OPEN))
                             .values(state="running", updated_at=now,
                                     started_at=task.started_at or now))
        if moved.rowcount != 1:
            raise TaskNotRunnable(f"task {tid} is {task.state}: it must not run",
                                  field="task")
        if task.state == "queued":   # not a restarted agent resuming it
            record_event(conn, task.server_id, str(task.kind), "started", None, now,
                         host=name)
        row = conn.execute(select(tasks).where(tasks.c.id == tid)).one()
    return _record(row, name, timeout)


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    message: str | None = None
    domain_xml: str | None = None


def task_state(tx: Transactions, task_id: str, host: str | None) -> str:
    """Where the task stands (``host``: it must be that host's)."""
    tid = _task_id(task_id)
    with tx.read() as conn:
        row = conn.execute(select(tasks.c.state, hosts.c.name).join(
            hosts, hosts.c.id == tasks.c.host_id).where(tasks.c.id == tid)).first()
    if row is None:
        raise NotFound(f"task {tid} not found", field="task")
    if host is not None and row.name != host:
        raise Forbidden(f"task {tid} is for host {row.name!r}, not {host!r}", field="task")
    return str(row.state)


def result(tx: Transactions, task_id: str, host: str | None, outcome: Outcome,
           kind_ids: KindIds, facts: FactsCache, now: datetime) -> bool:
    """Apply what the host reports; False (nothing changed) when the task was no longer
    open: finished already, or expired."""
    tid = _task_id(task_id)
    with tx.write() as conn:
        task, name = _lock_task(conn, tid, host)
        message = outcome.message if not outcome.ok else None
        if not _move(conn, tid, "done" if outcome.ok else "failed", message, now):
            return False
        sid = task.server_id
        if task.kind in ("attach", "detach"):
            # Hot-plug: the server stays ACTIVE whatever the outcome (store.attach).
            finish = _attach.finish_attach if task.kind == "attach" else _attach.finish_detach
            finish(conn, task, outcome.ok, outcome.message, outcome.domain_xml, kind_ids,
                   facts, now)
            return True
        if _live.task_result(conn, task, outcome.ok, outcome.message, outcome.domain_xml,
                             kind_ids, facts, now):
            return True    # a live migration's step (store.live)
        if _moves.task_result(conn, task, outcome.ok, outcome.message, outcome.domain_xml,
                              kind_ids, facts, now):
            return True    # a move's step (store.moves)
        record_event(conn, sid, str(task.kind), "done" if outcome.ok else "failed",
                     outcome.message, now, host=name)
        status = conn.execute(select(servers.c.status).where(servers.c.id == sid)).scalar_one()
        if task.kind == "spawn":
            if outcome.ok and outcome.domain_xml is not None:
                conn.execute(update(servers).where(servers.c.id == sid)
                             .values(domain_xml=outcome.domain_xml))
            if status == ServerStatus.BUILDING.value:
                if outcome.ok:
                    complete_spawn(conn, sid, kind_ids, facts, now)
                else:
                    release(conn, sid, ServerStatus.ERROR,
                            outcome.message or "the host could not start the server",
                            kind_ids, facts, now)
        elif outcome.ok:
            release(conn, sid, ServerStatus.DELETED, None, kind_ids, facts, now)
        else:
            conn.execute(update(servers).where(
                servers.c.id == sid, servers.c.status == ServerStatus.DELETING.value).values(
                fault=outcome.message or "the host could not destroy the server",
                updated_at=now, generation=servers.c.generation + 1))
        return True


# --- expiry -------------------------------------------------------------------------------

def expire(tx: Transactions, now: datetime, timeout: float, kind_ids: KindIds,
           facts: FactsCache, *, host: str | None = None) -> int:
    """Fail the spawns whose time ran out (one transaction each); how many it failed."""
    cutoff = now - timedelta(seconds=timeout)
    q = (select(tasks.c.id, tasks.c.created_at, tasks.c.deadline).where(
             tasks.c.kind == "spawn", tasks.c.state.in_(OPEN))
         .where((tasks.c.deadline < now) | (tasks.c.deadline.is_(None)
                                            & (tasks.c.created_at < cutoff))))
    if host is not None:
        q = q.where(tasks.c.host_id == select(hosts.c.id).where(hosts.c.name == host)
                    .scalar_subquery())
    with tx.read() as conn:
        due = [r.id for r in conn.execute(q.order_by(tasks.c.id))]
    count = 0
    for tid in due:
        with tx.write() as conn:
            task, name = _lock_task(conn, tid, None)
            fault = f"spawn task timed out after {timeout:g} s on host {name}"
            if not _move(conn, tid, "expired", fault, now):
                continue
            count += 1
            record_event(conn, task.server_id, "spawn", "failed", fault, now, host=name,
                         detail={"expired": True})
            status = conn.execute(select(servers.c.status)
                                  .where(servers.c.id == task.server_id)).scalar_one()
            if status == ServerStatus.BUILDING.value:
                release(conn, task.server_id, ServerStatus.ERROR, fault, kind_ids, facts, now)
            elif (task.payload or {}).get("move") is not None:
                _moves.spawn_expired(conn, task, fault, kind_ids, now)
    return count


# --- delete -------------------------------------------------------------------------------

def _destroy_payload(conn: Connection, server: Any) -> dict[str, Any]:
    """The devices to give back and the ports to undo (VFs restored, switch unbound), as the
    spawn had them."""
    held = conn.execute(select(devices.c.address, devices.c.tags)
                        .where(devices.c.owner == server.id).order_by(devices.c.address)).all()
    managed = {r.address: _payloads.managed(r.tags or {}) for r in held}
    nics = _networks.server_ports(conn, [server.id]).get(server.id, [])
    return {"server": {"id": server.id, "name": server.name, "project": server.project},
            "devices": [{"address": r.address, "managed": managed[r.address]} for r in held],
            "interfaces": [_payloads.interface(p, p.binding is None or managed.get(
                str(p.binding.address), True)) for p in nics]}


def _delete_moving(conn: Connection, server: Any, move: Any, force: bool, now: datetime
                   ) -> ServerRecord:
    """:func:`delete` of a server with an open move: its hosts each destroy their part."""
    record_event(conn, server.id, "delete", "started", None, now,
                 detail={"force": force, "move": int(move.id)})
    queued = _moves.delete_during(conn, server, move, now)
    if force:
        record_event(conn, server.id, "delete", "done", "forced: deleted at once; its "
                     "devices are kept until its hosts confirm its domains are gone", now,
                     detail={"move": int(move.id), "tasks": queued})
        end_usage(conn, server.id, now)
    status = ServerStatus.DELETED if force else ServerStatus.DELETING
    conn.execute(update(servers).where(servers.c.id == server.id).values(
        status=status.value, updated_at=now, generation=servers.c.generation + 1))
    for h in {int(move.source_host_id), int(move.dest_host_id)}:
        recount_host(conn, h)
    return get_server(conn, server.id)


def delete(tx: Transactions, server_id: str, force: bool, kind_ids: KindIds,
           facts: FactsCache, now: datetime) -> ServerRecord:
    """Ask the server's host to destroy it: DELETING, devices kept until it confirms.

    ``force``: DELETED at once (metering stops), the devices still kept until the host
    confirms. A server that never reached a host, or whose boot failed (it holds nothing),
    is DELETED at once. A server mid-move: each of the move's hosts destroys its part
    (:func:`pcipass.store.moves.delete_during`).
    """
    with tx.write() as conn:
        server, host_id, _gen = _lock_server(conn, server_id)
        if server.status == ServerStatus.DELETED.value and host_id is not None:
            return get_server(conn, server_id)
        move = _moves.open_move(conn, server_id, lock=True)
        if move is not None:
            return _delete_moving(conn, server, move, force, now)
        if server.status != ServerStatus.DELETED.value:
            record_event(conn, server_id, "delete", "started", None, now,
                         detail={"force": force})
        if host_id is None:
            if server.status != ServerStatus.DELETED.value:
                record_event(conn, server_id, "delete", "done",
                             "never placed on a host: deleted at once", now)
            return release(conn, server_id, ServerStatus.DELETED, None, kind_ids, facts, now)
        host_name = conn.execute(select(hosts.c.name).where(hosts.c.id == host_id)
                                 ).scalar_one()
        # A spawn the host has not started never will: only a destroy is left to do.
        unstarted = "server deleted before its host started it"
        if conn.execute(update(tasks).where(tasks.c.server_id == server_id,
                                            tasks.c.kind == "spawn", tasks.c.state == "queued")
                        .values(state="failed", message=unstarted, updated_at=now)).rowcount:
            record_event(conn, server_id, "spawn", "failed", unstarted, now, host=host_name)
        pending = conn.execute(select(tasks.c.id).where(
            tasks.c.server_id == server_id, tasks.c.kind == "destroy",
            tasks.c.state.in_(OPEN)).limit(1)).first()
        if pending is not None and not force and (
                server.status == ServerStatus.DELETING.value):
            return get_server(conn, server_id)  # asked again: the host was told already
        if pending is None:
            conn.execute(tasks.insert(), {
                "host_id": host_id, "server_id": server_id, "kind": "destroy",
                "payload": _destroy_payload(conn, server), "state": "queued",
                "created_at": now, "updated_at": now})
        # A failed boot holds nothing and its host cleaned up (the destroy above only makes
        # sure): it need not wait.
        held = conn.execute(select(devices.c.id).where(devices.c.owner == server_id)
                            .limit(1)).first()
        gone = force or (server.status == ServerStatus.ERROR.value and held is None)
        status = ServerStatus.DELETED if gone else ServerStatus.DELETING
        if gone:
            record_event(conn, server_id, "delete", "done",
                         ("forced: deleted at once" if force else "its boot had failed")
                         + ("; its devices are kept until the host confirms the domain is "
                            "gone" if held is not None else ""), now, host=host_name)
        conn.execute(update(servers).where(servers.c.id == server_id).values(
            status=status.value, updated_at=now, generation=servers.c.generation + 1))
        if gone:
            end_usage(conn, server_id, now)
            if held is None:
                # Nothing to wait for on the host (a failed boot, or a forced delete of one
                # without devices): its ports are let go now.
                _networks.free_ports(conn, server_id, detach=True, now=now)
        recount_host(conn, host_id)
        return get_server(conn, server_id)


def domain_xml(tx: Transactions, server_id: str) -> str | None:
    with tx.read() as conn:
        found = conn.execute(select(servers.c.domain_xml)
                             .where(servers.c.id == server_id)).first()
    if found is None:
        raise NotFound(f"server {server_id!r} not found", field="server")
    return None if found.domain_xml is None else str(found.domain_xml)


def open_tasks(tx: Transactions, server_ids: Sequence[str]) -> list[tuple[str, str, str]]:
    """(server id, kind, state) of the servers' open tasks (tests and views)."""
    with tx.read() as conn:
        return [(r.server_id, r.kind, r.state) for r in conn.execute(
            select(tasks.c.server_id, tasks.c.kind, tasks.c.state)
            .where(tasks.c.server_id.in_(list(server_ids)), tasks.c.state.in_(OPEN)))]


class TaskStore:
    """The task queue over a :class:`~pcipass.store.Store`'s database (one method, one
    transaction, as the store's own)."""

    def __init__(self, store: Any, timeout: float) -> None:
        self._store = store
        self.timeout = timeout

    @property
    def _tx(self) -> Transactions:
        tx: Transactions = self._store._tx
        return tx

    @property
    def _kind_ids(self) -> KindIds:
        ids: KindIds = self._store._kind_ids
        return ids

    @property
    def _facts(self) -> FactsCache:
        facts: FactsCache = self._store._facts
        return facts

    def now(self) -> datetime:
        now: datetime = self._store._clock()
        return now

    def poll(self, host: str) -> list[TaskRecord]:
        return poll(self._tx, host, self.now(), self.timeout)

    def has_open(self, host: str) -> bool:
        return has_open(self._tx, host)

    def start(self, task_id: str, *, host: str | None) -> TaskRecord:
        return start(self._tx, task_id, host, self.now(), self.timeout)

    def result(self, task_id: str, outcome: Outcome, *, host: str | None) -> bool:
        return result(self._tx, task_id, host, outcome, self._kind_ids, self._facts,
                      self.now())

    def state(self, task_id: str, *, host: str | None) -> str:
        return task_state(self._tx, task_id, host)

    def expire(self, *, host: str | None = None) -> int:
        return expire(self._tx, self.now(), self.timeout, self._kind_ids, self._facts,
                      host=host)

    def delete(self, server_id: str, *, force: bool) -> ServerRecord:
        return delete(self._tx, server_id, force, self._kind_ids, self._facts, self.now())

    def domain_xml(self, server_id: str) -> str | None:
        return domain_xml(self._tx, server_id)

    def open_tasks(self, server_ids: Sequence[str]) -> list[tuple[str, str, str]]:
        return open_tasks(self._tx, server_ids)
