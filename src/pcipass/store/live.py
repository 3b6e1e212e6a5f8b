"""Live migration: a move (:mod:`pcipass.store.moves`) whose guest keeps running.

The destination is claimed like a cold migration's (:func:`pcipass.store.moves.claim_move`,
no first task: the devices marked with the move's id, the ports' destination bindings kept
in the move, the server MIGRATING), then three agent steps, each result applied by
:func:`task_result` in the task's own transaction::

    claimed ── "live_prepare" on the destination (program its VFs, bind its switch)
       │ ok                                  │ failed: the destination freed, move failed,
       v                                     │         the server ACTIVE on the source
    moving ── "live_migrate" on the source (unplug the direct NICs, migrate, restore the
       │       source VFs, unbind the source switch)
       │ ok: the server row is the destination's     │ failed: the NICs are plugged back on
       │ side (devices allocated and metered there,  │ the source (ACTIVE there at once);
       │ ports bound there)                          v "destroy" (step "live_abort") on
       v                                      reverting  the destination gives back its
    confirming ── "live_finish" on the destination      VFs; then its devices are freed,
       │          (plug the direct NICs on its VFs)     the move failed
       v ok or not: the source's devices freed, the destination's unmarked, ACTIVE there
    done (a failed finish: the guest runs without its direct NICs, the event says so)

Payloads (parsed on the host by :func:`pcipass.virt.payload.parse_live`)::

    live_prepare, live_finish: {"server", "move", "devices": [{"address", "managed"}],
                                "interfaces": [the ports bound on the destination]}
    live_migrate: {"server", "move", "devices", "interfaces": [bound on the source],
                   "dest_uri", "dest_interfaces": [bound on the destination],
                   "hostdevs": [{"source", "dest"}]}     # migratable functions, paired

``devices`` are the passed-through functions (``<hostdev>`` s), not the ports' VFs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from pcipass.errors import Conflict
from pcipass.pci.address import PciAddress
from pcipass.records import MoveStatus, ServerRecord, ServerStatus
from pcipass.sched.fit import Fit, NoFit
from pcipass.store import moves as _moves
from pcipass.store.claims import Decide, recount_host
from pcipass.store.drain import DrainEntry
from pcipass.store.events import record_event
from pcipass.store.facts import FactsCache
from pcipass.store.kinds import KindIds
from pcipass.store.rows import _address
from pcipass.store.schema import devices, hosts, moves, servers
from pcipass.store.servers import get_server

__all__ = ["ABORT_STEP", "LIVE_KINDS", "begin", "hosts_without_uri", "live_entry",
           "task_result"]

LIVE_KINDS = ("live_prepare", "live_migrate", "live_finish")
ABORT_STEP = "live_abort"       # the destroy that gives the destination's VFs back
ACTION = "live_migrate"


def live_entry(conn: Connection, server_id: str) -> DrainEntry:
    """The server and the device-spec tags of what it holds (what the verdict reads)."""
    server = get_server(conn, server_id)
    tags: dict[PciAddress, dict[str, str]] = {}
    for r in conn.execute(select(devices.c.address, devices.c.tags)
                          .where(devices.c.owner == server_id)):
        tags[_address(r.address)] = {str(k): str(v) for k, v in (r.tags or {}).items()}
    return DrainEntry(server, tags)


def migration_uri(conn: Connection, host_id: int) -> str | None:
    uri = conn.execute(select(hosts.c.migration_uri).where(hosts.c.id == host_id)).scalar()
    return None if uri is None else str(uri)


def hosts_without_uri(conn: Connection) -> frozenset[int]:
    return frozenset(int(i) for i in conn.execute(
        select(hosts.c.id).where(hosts.c.migration_uri.is_(None))).scalars())


def begin(conn: Connection, server_id: str, target: _moves.MoveTarget, host_id: int,
          decide: Decide, kind_ids: KindIds, facts: FactsCache, now: datetime,
          accept: Callable[[Fit], bool] | None = None) -> ServerRecord | Fit | NoFit:
    """Claim the destination on ``host_id`` (a verdict comes back when it does not fit)
    and queue "live_prepare" there. The destination must have reported where it is reached
    for a migration. The caller judged the server first (a device plugged in meanwhile
    that cannot move makes the source's agent refuse the move, and it is undone)."""
    uri = migration_uri(conn, host_id)
    if uri is None:
        name = conn.execute(select(hosts.c.name).where(hosts.c.id == host_id)).scalar()
        raise Conflict(f"host {name} has not reported a migration URI (its agent is older, "
                       "or not running): it cannot take a live migration", field="host",
                       code="no_migration_uri")
    got = _moves.claim_move(conn, server_id, target, host_id, decide, kind_ids, facts, now,
                            accept, first_task=None)
    if not isinstance(got, ServerRecord):
        return got
    move = _moves.open_move(conn, server_id, lock=True)
    assert move is not None   # just claimed, in this transaction
    _queue(conn, move, move.dest_host_id, "live_prepare", _dest_payload(move), now)
    return got


# --- payloads -----------------------------------------------------------------------------

def _dest_payload(move: Any) -> dict[str, Any]:
    """The destination's side, from the spawn the claim prepared there."""
    spawn = move.dest["spawn"]
    return {"server": dict(spawn["server"]), "move": int(move.id),
            "devices": [{"address": d["address"], "managed": d["managed"]}
                        for d in spawn.get("devices") or ()],
            "interfaces": [dict(i) for i in spawn.get("interfaces") or ()]}


def _source_payload(conn: Connection, move: Any) -> dict[str, Any]:
    """The source's side (its ports as bound there, its hostdevs), the destination's
    bindings and URI, and each migratable function paired with the destination's (same
    alias, in address order)."""
    server = conn.execute(select(servers).where(servers.c.id == move.server_id)).one()
    side = _moves.side_payload(conn, server, move, dest=False, move_id=None)
    nics = side["interfaces"]
    vf_ports = {str(i["address"]) for i in nics
                if i.get("address") is not None and i["vnic_type"] != "direct-physical"}
    dest = _dest_payload(move)
    dest_by_alias: dict[str | None, list[str]] = {}
    for d in move.dest["spawn"].get("devices") or ():
        dest_by_alias.setdefault(d.get("alias"), []).append(str(d["address"]))
    pairs = []
    for r in _moves.side_devices(conn, move.server_id, move.source_host_id, None):
        if r.address in vf_ports:
            continue
        match = dest_by_alias.get(r.owner_alias) or []
        if match:
            pairs.append({"source": r.address, "dest": match.pop(0)})
    uri = migration_uri(conn, move.dest_host_id)
    return {"server": side["server"], "move": int(move.id),
            "devices": [d for d in side["devices"] if d["address"] not in vf_ports],
            "interfaces": nics, "dest_uri": uri, "dest_interfaces": dest["interfaces"],
            "hostdevs": pairs}


def _queue(conn: Connection, move: Any, host_id: int, kind: str, payload: Mapping[str, Any],
           now: datetime) -> int:
    return _moves.queue_task(conn, host_id, move.server_id, kind, payload, now)


def _unplugged(payload: Mapping[str, Any]) -> list[str]:
    """The direct ports the guest loses while it moves, in words."""
    return [f"{i['mac']} (port {i['port']})" for i in payload.get("interfaces") or ()
            if i.get("vnic_type") == "direct"]


def _server_status(conn: Connection, server_id: str, status: ServerStatus, now: datetime,
                   **values: Any) -> None:
    conn.execute(update(servers).where(servers.c.id == server_id).values(
        status=status.value, updated_at=now, generation=servers.c.generation + 1, **values))


# --- the steps ----------------------------------------------------------------------------

def task_result(conn: Connection, task: Any, ok: bool, message: str | None,
                domain_xml: str | None, kind_ids: KindIds, facts: FactsCache,
                now: datetime) -> bool:
    """Apply a live-migration task's result (the task already moved); False when the task
    is none of live migration's."""
    payload = task.payload or {}
    kind = str(task.kind)
    abort = kind == "destroy" and payload.get("step") == ABORT_STEP
    if (kind not in LIVE_KINDS and not abort) or payload.get("move") is None:
        return False
    move = _moves.lock_move(conn, int(payload["move"]))
    source, dest = _moves.move_host_names(conn, move)
    host = dest if task.host_id == move.dest_host_id else source
    record_event(conn, move.server_id, "destroy" if abort else kind,
                 "done" if ok else "failed", message, now, host=host,
                 detail={"move": int(move.id)})
    if kind == "live_prepare":
        _prepared(conn, move, ok, message, kind_ids, now)
    elif kind == "live_migrate":
        _migrated(conn, move, ok, message, kind_ids, facts, now)
    elif kind == "live_finish":
        _finished(conn, move, ok, message, domain_xml, kind_ids, now)
    else:
        _aborted(conn, move, ok, kind_ids, now)
    return True


def _prepared(conn: Connection, move: Any, ok: bool, message: str | None,
              kind_ids: KindIds, now: datetime) -> None:
    if move.status != MoveStatus.CLAIMED.value:
        return
    source, dest = _moves.move_host_names(conn, move)
    if not ok:
        # The destination's agent undid its preparation itself: free its devices.
        freed = _moves.free_side(conn, move.server_id, move.dest_host_id, int(move.id),
                                 kind_ids, now)
        fault = message or f"host {dest} could not prepare for the server"
        _moves.set_status(conn, move, MoveStatus.FAILED, now, message=fault)
        _server_status(conn, move.server_id, ServerStatus.ACTIVE, now)
        recount_host(conn, move.dest_host_id)
        record_event(conn, move.server_id, ACTION, "failed",
                     f"{fault}; the server keeps running on host {source}", now, host=dest,
                     detail={"move": int(move.id), "freed": freed})
        return
    _moves.set_status(conn, move, MoveStatus.MOVING, now)
    payload = _source_payload(conn, move)
    task_id = _queue(conn, move, move.source_host_id, "live_migrate", payload, now)
    lost = _unplugged(payload)
    record_event(conn, move.server_id, ACTION, "started",
                 f"moving from host {source} to host {dest}"
                 + (f"; the guest loses {', '.join(lost)} until the move finishes"
                    if lost else ""), now, host=source,
                 detail={"move": int(move.id), "task": task_id, "unplugged": lost})


def _migrated(conn: Connection, move: Any, ok: bool, message: str | None, kind_ids: KindIds,
              facts: FactsCache, now: datetime) -> None:
    if move.status != MoveStatus.MOVING.value:
        return
    source, dest = _moves.move_host_names(conn, move)
    if not ok:
        fault = message or f"host {source} could not migrate the server"
        _moves.set_status(conn, move, MoveStatus.REVERTING, now, message=fault)
        _server_status(conn, move.server_id, ServerStatus.ACTIVE, now)
        payload = {**_dest_payload(move), "step": ABORT_STEP}
        task_id = _queue(conn, move, move.dest_host_id, "destroy", payload, now)
        record_event(conn, move.server_id, ACTION, "failed",
                     f"{fault}; the server keeps running on host {source} with its NICs "
                     f"plugged back; host {dest} gives back what it prepared", now,
                     host=source, detail={"move": int(move.id), "task": task_id})
        return
    server = _moves.server_row(conn, move.server_id)
    _moves.allocate_dest(conn, server, move, kind_ids, facts, now)
    side = {k: v for k, v in move.dest.items() if k != "spawn"}
    _moves.apply_side(conn, server.id, side, move.dest_host_id, now)
    _moves.set_status(conn, move, MoveStatus.CONFIRMING, now, on_dest=True)
    recount_host(conn, move.dest_host_id)
    recount_host(conn, move.source_host_id)
    fresh = conn.execute(select(moves).where(moves.c.id == move.id)).one()
    task_id = _queue(conn, fresh, move.dest_host_id, "live_finish", _dest_payload(fresh), now)
    record_event(conn, move.server_id, ACTION, "started",
                 f"running on host {dest}; plugging its direct NICs there", now, host=dest,
                 detail={"move": int(move.id), "task": task_id})


def _finished(conn: Connection, move: Any, ok: bool, message: str | None,
              domain_xml: str | None, kind_ids: KindIds, now: datetime) -> None:
    if move.status != MoveStatus.CONFIRMING.value or not move.on_dest:
        return
    source, dest = _moves.move_host_names(conn, move)
    # The source's agent restored its VFs when the guest left: its devices go back.
    freed = _moves.free_side(conn, move.server_id, move.source_host_id, None, kind_ids, now)
    conn.execute(update(devices).where(devices.c.owner == move.server_id,
                                       devices.c.move_id == int(move.id)).values(move_id=None))
    fault = None if ok else (message or f"host {dest} could not plug the server's NICs")
    _moves.set_status(conn, move, MoveStatus.DONE, now, message=fault)
    values: dict[str, Any] = {"domain_xml": domain_xml} if domain_xml is not None else {}
    if fault is not None:
        values["fault"] = fault
    _server_status(conn, move.server_id, ServerStatus.ACTIVE, now, **values)
    recount_host(conn, move.source_host_id)
    recount_host(conn, move.dest_host_id)
    record_event(conn, move.server_id, ACTION, "done" if ok else "failed",
                 f"live-migrated from host {source} to host {dest}" if ok else
                 f"running on host {dest} without its direct NICs: {fault}", now, host=dest,
                 detail={"move": int(move.id), "freed": freed})


def _aborted(conn: Connection, move: Any, ok: bool, kind_ids: KindIds, now: datetime) -> None:
    if move.status != MoveStatus.REVERTING.value or move.on_dest or not ok:
        return      # a failed give-back keeps the move open: its devices stay held
    freed = _moves.free_side(conn, move.server_id, move.dest_host_id, int(move.id), kind_ids,
                             now)
    _moves.set_status(conn, move, MoveStatus.FAILED, now)
    recount_host(conn, move.dest_host_id)
    _source, dest = _moves.move_host_names(conn, move)
    record_event(conn, move.server_id, ACTION, "failed",
                 f"host {dest} gave back what it prepared", now, host=dest,
                 detail={"move": int(move.id), "freed": freed})
