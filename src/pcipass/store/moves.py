"""Moving a server: resize and cold migration here, and the model live migration builds on.

A move is a row in ``moves`` and devices on two sides. The server owns both sides while it
moves; they are told apart by ``devices.move_id``, not by host, so a resize on the same host
works like any other:

- the **destination** side is claimed (:func:`claim_move`, the boot's claim transaction,
  :func:`pcipass.store.claims.take_fit`) with ``move_id`` = the move, its ports' bindings
  kept in the move (``dest.ports``) until the server gets there;
- the **source** side is what the server held (``move_id`` NULL) until the move is
  confirmed: then the two swap (the destination's ``move_id`` cleared, the source's set),
  and the source's are freed when its host confirms the domain is gone.

So at every moment every device the server owns is owned once, by it; a move that ends
leaves one side. The move's ``source`` and ``dest`` JSON hold each side's server values
(flavor, vCPUs, RAM, NUMA cells, requests, soft requests not granted, domain XML, port
bindings) so the server row can take either; ``on_dest`` says which it holds.

States (``moves.status``; the server's status in brackets)::

    claim ──▶ claimed [RESIZE|MIGRATING]   "migrate_out" queued on the source
                 │ ok                  │ failed (or revert before it started)
                 v                     v
               moving                reverting ──▶ "restart" on the source
                 │ "spawn" (move) on the destination
                 │ ok                 │ failed / expired: destination freed
                 v                    v
               verify [VERIFY_RESIZE] reverting (message) ─▶ restart ok ─▶ failed [ACTIVE]
                 │ confirm (or auto_confirm)     │ revert
                 v                               v
               confirming [ACTIVE]             reverting [RESIZE|MIGRATING]: "destroy" (move)
                 │ "destroy" (move) on the       on the destination; ok: destination freed,
                 │  source ok: source freed      the server row back to the source side,
                 v                               "restart" on the source; ok:
               done                            reverted [ACTIVE]

A restart that fails leaves the server ERROR on the source, holding nothing (as a boot that
failed: deleting it destroys what the host kept) and the move ``failed``. A confirm's or a
revert's destroy that fails leaves the move waiting: confirming (or reverting) again queues
the step again. While a move is open the server cannot be moved again, or have devices
attached or detached (409 ``server_moving``); nor can a server move while a device change
is pending (409 ``device_busy``).

Deleting a server mid-move (:func:`delete_during`, any open move, live ones included) needs
no host to finish the move first, so a tenant need not confirm a resize to delete it and a
move stuck on a host that stopped answering does not pin the server::

    any open move ── delete ──▶ deleting: the queued steps cancelled, one "destroy" (step
                                "delete") on each of the two hosts, listing all it holds
                                there of both sides (devices, ports as bound there)
       each host's ok: its devices freed ─▶ the last: failed ("deleted during the move"),
                                             the server DELETED (ports freed)

A step a host is running is let finish (409 ``move_busy``): its domain could otherwise come
back after the destroy. The other side's vCPUs and RAM go at once; its devices stay held
until its host confirms. A host's destroy that fails keeps them held (the server stays
DELETING with the fault); deleting again re-queues it.

Every step is one transaction that locks the task's host row (the tasks module), then the
move row, and moves the move with a state predicate (``UPDATE moves ... WHERE id = ? AND
status = ?``): a late or repeated result changes nothing.

Usage metering follows the devices: the destination's records start when its spawn
succeeds, the source's end when they are freed.

Payloads (parsed on the host by :mod:`pcipass.virt.payload`)::

    migrate_out: {"server", "move", "devices": [{"address", "managed"}], "interfaces": [...]}
    spawn:       a boot's spawn payload plus "move"
    destroy:     a delete's destroy payload plus "move" and "step": "confirm" | "revert"
    restart:     {"server", "move", "devices", "interfaces", "domain_xml"}
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, case, insert, select, update

from pcipass.errors import Conflict, NotFound
from pcipass.records import (
    FlavorRecord,
    ImageRecord,
    MoveKind,
    MoveRecord,
    MoveStatus,
    PortBinding,
    PortRecord,
    ServerRecord,
    ServerStatus,
)
from pcipass.sched.fit import Fit, NoFit
from pcipass.store import catalog as _catalog
from pcipass.store import networks as _networks
from pcipass.store import payloads as _payloads
from pcipass.store import usage as _usage
from pcipass.store.claims import (
    Decide,
    Taken,
    _lock_server,
    allocate,
    free_devices,
    recount_host,
    release,
    spawn_payload,
    take_fit,
)
from pcipass.store.derive import load_rows
from pcipass.store.events import record_event
from pcipass.store.facts import FactsCache
from pcipass.store.kinds import KindIds
from pcipass.store.rows import _address
from pcipass.store.schema import devices, hosts, moves, servers, tasks, usage_records
from pcipass.store.servers import find_server, get_server

OPEN = tuple(s.value for s in MoveStatus if s.open)
OPEN_TASKS = ("queued", "running")
DELETE_STEP = "delete"      # the destroy of each host's part of a server deleted mid-move
DELETED_MID_MOVE = "the server was deleted during the move"


@dataclass(frozen=True, slots=True)
class MoveTarget:
    """What the server is to become on the destination (a migration: what it is)."""

    kind: MoveKind
    flavor_id: str | None
    flavor_name: str
    vcpus: int
    ram_mb: int
    requests: tuple[tuple[str, int, bool], ...]     # (alias, count, soft), ports' included
    not_granted: tuple[str, ...] = ()               # soft requests given up beforehand
    flavor: Mapping[str, Any] = field(default_factory=dict)   # the spawn's "flavor"
    image: Mapping[str, Any] = field(default_factory=dict)    # the spawn's "image"
    auto_confirm: bool = False
    quotas: bool = True


# --- reading ------------------------------------------------------------------------------

def _host_names(conn: Connection, ids: Iterable[int]) -> dict[int, str]:
    wanted = list(set(ids))
    return {int(i): str(n) for i, n in conn.execute(
        select(hosts.c.id, hosts.c.name).where(hosts.c.id.in_(wanted)))}


def to_move(row: Any, names: Mapping[int, str]) -> MoveRecord:
    return MoveRecord(
        id=str(row.id), server_id=row.server_id, kind=MoveKind(row.kind),
        status=MoveStatus(row.status), source=names[row.source_host_id],
        dest=names[row.dest_host_id], old_flavor=str(row.source.get("flavor_name", "")),
        new_flavor=str(row.dest.get("flavor_name", "")), auto_confirm=bool(row.auto_confirm),
        on_dest=bool(row.on_dest), message=row.message, created_at=row.created_at,
        updated_at=row.updated_at, generation=int(row.generation))


def _records(conn: Connection, rows: Sequence[Any]) -> list[MoveRecord]:
    names = _host_names(conn, [h for r in rows for h in (r.source_host_id, r.dest_host_id)])
    return [to_move(r, names) for r in rows]


def get_move(conn: Connection, move_id: int) -> MoveRecord:
    row = conn.execute(select(moves).where(moves.c.id == move_id)).first()
    if row is None:
        raise NotFound(f"move {move_id} not found", field="move")
    return _records(conn, [row])[0]


def list_moves(conn: Connection, server_id: str) -> tuple[MoveRecord, ...]:
    """The server's moves, oldest first."""
    rows = conn.execute(select(moves).where(moves.c.server_id == server_id)
                        .order_by(moves.c.id)).all()
    return tuple(_records(conn, rows))


def closed_move_ids(conn: Connection, ids: Collection[int]) -> set[int]:
    """Which of ``ids`` are moves that are over (or were never: a stray id)."""
    still = {int(i) for i in conn.execute(select(moves.c.id).where(
        moves.c.id.in_(list(ids)), moves.c.status.in_(OPEN))).scalars()}
    return set(ids) - still


def open_move(conn: Connection, server_id: str, *, lock: bool = False) -> Any | None:
    """The server's open move row (at most one), locked when asked."""
    q = select(moves).where(moves.c.server_id == server_id, moves.c.status.in_(OPEN))
    if lock:
        q = q.with_for_update()
    return conn.execute(q.order_by(moves.c.id.desc()).limit(1)).first()


def refuse_while_moving(conn: Connection, server_id: str, what: str) -> None:
    """Conflict ``server_moving`` while the server has an open move."""
    row = open_move(conn, server_id)
    if row is not None:
        raise Conflict(f"server {server_id} is being moved (move {row.id}, {row.kind}, "
                       f"{row.status}): it cannot {what} until the move ends",
                       field="server", code="server_moving")


# --- sides --------------------------------------------------------------------------------

def binding_json(b: PortBinding) -> dict[str, Any]:
    return {"host": b.host, "address": str(b.address), "pf": b.pf_netdev,
            "vf_index": b.vf_index, "vf_netdev": b.vf_netdev}


def binding_of(d: Mapping[str, Any]) -> PortBinding:
    return PortBinding(host=str(d["host"]), address=_address(str(d["address"])),
                       pf_netdev=d.get("pf"), vf_index=d.get("vf_index"),
                       vf_netdev=d.get("vf_netdev"))


def _server_side(server: Any, nics: Sequence[PortRecord]) -> dict[str, Any]:
    """The server row's values as a move's side."""
    return {"flavor_id": server.flavor_id, "flavor_name": server.flavor_name,
            "vcpus": int(server.vcpus), "ram_mb": int(server.ram_mb),
            "numa_cells": [int(c) for c in server.numa_cells or ()],
            "requests": [list(r) for r in server.requests or ()],
            "not_granted": list(server.not_granted or ()), "domain_xml": server.domain_xml,
            "ports": {p.id: binding_json(p.binding) for p in nics if p.binding is not None}}


def apply_side(conn: Connection, server_id: str, side: Mapping[str, Any], host_id: int,
                now: datetime, status: ServerStatus | None = None) -> None:
    """The server row takes ``side``'s values and host; its ports take the side's bindings."""
    values: dict[str, Any] = {
        "host_id": host_id, "flavor_id": side.get("flavor_id"),
        "flavor_name": side["flavor_name"], "vcpus": side["vcpus"], "ram_mb": side["ram_mb"],
        "numa_cells": list(side.get("numa_cells") or ()),
        "requests": [list(r) for r in side.get("requests") or ()],
        "not_granted": list(side.get("not_granted") or ()), "updated_at": now,
        "generation": servers.c.generation + 1}
    if side.get("domain_xml") is not None:
        values["domain_xml"] = side["domain_xml"]
    if status is not None:
        values["status"] = status.value
    conn.execute(update(servers).where(servers.c.id == server_id).values(values))
    for port_id, b in (side.get("ports") or {}).items():
        _networks.bind_port(conn, str(port_id), server_id, binding_of(b), now)


def _with_bindings(nics: Sequence[PortRecord], side: Mapping[str, Any]) -> list[PortRecord]:
    """The server's ports as they are bound on ``side``."""
    bound = side.get("ports") or {}
    return [replace(p, binding=binding_of(bound[p.id]) if p.id in bound else None)
            for p in nics]


def _server_ref(server: Any) -> dict[str, str]:
    return {"id": server.id, "name": server.name, "project": server.project}


def side_devices(conn: Connection, server_id: str, host_id: int, move_id: int | None
                  ) -> list[Any]:
    """The server's devices on one side: on ``host_id`` with that ``move_id``."""
    q = select(devices.c.address, devices.c.tags, devices.c.owner_alias).where(
        devices.c.owner == server_id, devices.c.host_id == host_id)
    q = q.where(devices.c.move_id.is_(None) if move_id is None
                else devices.c.move_id == move_id)
    return list(conn.execute(q.order_by(devices.c.address)))


def side_payload(conn: Connection, server: Any, move: Any, *, dest: bool,
                 move_id: int | None) -> dict[str, Any]:
    """What a host needs to let go of (or take back) one side: its devices and ports, as a
    destroy payload has them, with the move's id."""
    host_id = move.dest_host_id if dest else move.source_host_id
    held = side_devices(conn, server.id, host_id, move_id)
    managed = {r.address: _payloads.managed(r.tags or {}) for r in held}
    nics = _with_bindings(_networks.server_ports(conn, [server.id]).get(server.id, []),
                          move.dest if dest else move.source)
    return {"server": _server_ref(server), "move": int(move.id),
            "devices": [{"address": r.address, "managed": managed[r.address]} for r in held],
            "interfaces": [_payloads.interface(p, p.binding is None or managed.get(
                str(p.binding.address), True)) for p in nics]}


# --- what deciding a move reads first ------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MoveInputs:
    """What deciding a move reads before the search (:meth:`pcipass.store.Store.move_inputs`)."""

    server: ServerRecord
    host_id: int                          # the source
    flavor: FlavorRecord                  # the new one (a migration: the server's own)
    image: ImageRecord
    alias_entries: list[dict[str, Any]]
    limits: dict[str, int]                # the project's quotas, by alias
    held: dict[str, int]                  # what it holds of those, less this server's


def move_inputs(conn: Connection, ref: str, flavor: str | None, scope: str | None
                ) -> MoveInputs:
    """The server (``scope``'s only, when given), the flavor it moves to (None: its own;
    ``scope`` must be able to see it), its image, the alias entries, and its project's
    quotas with what it holds besides this server."""
    server = find_server(conn, ref, scope)
    row = conn.execute(select(servers.c.host_id, servers.c.flavor_id, servers.c.image_id)
                       .where(servers.c.id == server.id)).one()
    if row.host_id is None:
        raise Conflict(f"server {server.name} is {server.status.value} on no host: it "
                       "cannot move", field="server", code="server_not_active")
    if flavor is None:
        if row.flavor_id is None:
            raise Conflict(f"the flavor of server {server.name} is gone: it cannot move",
                           field="server")
        try:
            fl = _catalog.find_flavor(conn, row.flavor_id, None)
        except NotFound:
            raise Conflict(f"flavor {server.flavor!r} of server {server.name} was deleted: "
                           "it cannot move", field="server") from None
    else:
        fl = _catalog.find_flavor(conn, flavor, scope)
    try:
        im = _catalog.find_image(conn, row.image_id or "", None)
    except NotFound:
        raise Conflict(f"image {server.image!r} of server {server.name} was deleted: it "
                       "cannot be rebuilt elsewhere", field="server") from None
    limits = _usage.project_limits(conn, server.project)
    held = _usage.held_per_alias(conn, server.project, list(limits)) if limits else {}
    for alias, n in _held_per_alias(conn, server.id).items():
        if alias in held:
            held[alias] = max(held[alias] - n, 0)
    return MoveInputs(server, int(row.host_id), fl, im, _catalog.alias_entries(conn),
                      limits, held)


def host_id(conn: Connection, name: str) -> int:
    found = conn.execute(select(hosts.c.id).where(hosts.c.name == name)).scalar()
    if found is None:
        raise NotFound(f"host {name!r} not found", field="host")
    return int(found)


# --- the claim ----------------------------------------------------------------------------

def _held_per_alias(conn: Connection, server_id: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for (alias,) in conn.execute(select(devices.c.owner_alias).where(
            devices.c.owner == server_id, devices.c.owner_alias.is_not(None))):
        out[alias] = out.get(alias, 0) + 1
    return out


def queue_task(conn: Connection, host_id: int, server_id: str, kind: str,
           payload: Mapping[str, Any], now: datetime) -> int:
    found = conn.execute(insert(tasks).returning(tasks.c.id), {
        "host_id": host_id, "server_id": server_id, "kind": kind, "payload": dict(payload),
        "state": "queued", "created_at": now, "updated_at": now}).scalar_one()
    return int(found)


def _moving_status(kind: str) -> ServerStatus:
    return ServerStatus.RESIZE if kind == MoveKind.RESIZE.value else ServerStatus.MIGRATING


def _action(kind: str) -> str:
    return MoveKind(kind).action


def check_movable(conn: Connection, server_id: str, what: str) -> Any:
    """The server's row if it can start a move: ACTIVE on a host, no move open."""
    row = conn.execute(select(servers).where(servers.c.id == server_id)).first()
    if row is None:
        raise NotFound(f"server {server_id!r} not found", field="server")
    refuse_while_moving(conn, server_id, what)
    if row.status != ServerStatus.ACTIVE.value or row.host_id is None:
        raise Conflict(f"server {row.name} ({server_id}) is {row.status}: only an ACTIVE "
                       f"server can {what}", field="server", code="server_not_active")
    if _step_open(conn, server_id):
        raise Conflict(f"server {row.name} has a device change its host has not finished: "
                       f"it can {what} once it has", field="server", code="device_busy")
    return row


def claim_move(conn: Connection, server_id: str, target: MoveTarget, host_id: int,
               decide: Decide, kind_ids: KindIds, facts: FactsCache, now: datetime,
               accept: Callable[[Fit], bool] | None = None, *,
               first_task: str | None = "migrate_out") -> ServerRecord | Fit | NoFit:
    """Claim the destination side on ``host_id`` (the boot's claim: host locked, fit again,
    quota with the server's current side credited, devices taken with a state predicate),
    write the move (``claimed``), set the server RESIZE or MIGRATING with a compare-and-swap
    on its generation, and queue ``first_task`` (a cold move's "migrate_out") on the source.
    A verdict comes back, nothing written, when the host does not fit (or ``accept`` says
    no). ``first_task`` None: the caller queues its own first step (live migration)."""
    what = "be resized" if target.kind is MoveKind.RESIZE else "be migrated"
    server = check_movable(conn, server_id, what)
    credit = _held_per_alias(conn, server_id)
    got = take_fit(conn, server_id, server.project, host_id, decide, kind_ids, facts, now,
                   accept, quotas=target.quotas, credit=credit)
    if not isinstance(got, Taken):
        return got
    nics = _networks.server_ports(conn, [server_id]).get(server_id, [])
    granted = {a.request for a in got.verdict.assignments}
    dest_ports = {pid: binding_json(b) for pid, b in got.bindings().items()}
    source = _server_side(server, nics)
    dest: dict[str, Any] = {
        "flavor_id": target.flavor_id, "flavor_name": target.flavor_name,
        "vcpus": target.vcpus, "ram_mb": target.ram_mb,
        "numa_cells": list(got.verdict.cells),
        "requests": [list(r) for r in target.requests],
        "not_granted": [*target.not_granted,
                        *(str(r) for r in got.verdict.not_granted if r not in granted)],
        "domain_xml": None, "ports": dest_ports}
    move_id = int(conn.execute(insert(moves).returning(moves.c.id), {
        "server_id": server_id, "kind": target.kind.value,
        "source_host_id": server.host_id, "dest_host_id": host_id,
        "old_flavor_id": server.flavor_id, "new_flavor_id": target.flavor_id,
        "status": MoveStatus.CLAIMED.value, "message": None,
        "auto_confirm": target.auto_confirm, "on_dest": False, "source": source,
        "dest": dest, "created_at": now, "updated_at": now, "generation": 1}).scalar_one())
    ids = [got.rows[a].id for a in got.chosen]
    if ids:
        conn.execute(update(devices).where(devices.c.id.in_(ids), devices.c.owner == server_id)
                     .values(move_id=move_id))
    status = _moving_status(target.kind.value)
    moved = conn.execute(update(servers).where(
        servers.c.id == server_id, servers.c.status == ServerStatus.ACTIVE.value,
        servers.c.generation == server.generation).values(
        status=status.value, updated_at=now, generation=servers.c.generation + 1)).rowcount
    if moved != 1:
        raise Conflict(f"server {server.name} changed while its move was being claimed; "
                       "try again", field="server", code="server_moving")
    # The destination's spawn, ready for when the source has let go. On the same host the
    # disk is the source's, kept for a revert; on another the source hands a copy over.
    same_host = host_id == server.host_id
    dest["spawn"] = {**spawn_payload(
        _server_ref(server),
        {**target.flavor, "vcpus": target.vcpus, "ram_mb": target.ram_mb}, target.image,
        got, _with_bindings(nics, dest)), "move": move_id, "keep_disk": same_host}
    if first_task == "migrate_out" and not same_host:
        dest["spawn"]["disk_from_move"] = move_id
    conn.execute(update(moves).where(moves.c.id == move_id).values(dest=dest))
    recount_host(conn, host_id)
    names = _host_names(conn, [server.host_id, host_id])
    source_name, dest_name = names[server.host_id], names[host_id]
    task_id = None
    if first_task is not None:
        row = conn.execute(select(moves).where(moves.c.id == move_id)).one()
        payload = side_payload(conn, server, row, dest=False, move_id=None)
        if first_task == "migrate_out" and not same_host:
            payload["hand_off_disk"] = True     # uploaded once the domain is stopped
        task_id = queue_task(conn, server.host_id, server_id, first_task, payload, now)
    record_event(conn, server_id, _action(target.kind.value), "started",
                 f"{what.removeprefix('be ')} from host {source_name} to host {dest_name}"
                 + (f" (flavor {server.flavor_name} to {target.flavor_name})"
                    if target.kind is MoveKind.RESIZE else ""), now, host=source_name,
                 detail={"move": move_id, "dest": dest_name, "task": task_id,
                         "devices": [{"address": str(a), "alias": got.chosen[a]}
                                     for a in sorted(got.chosen)]})
    return get_server(conn, server_id)


# --- the steps ----------------------------------------------------------------------------

def lock_move(conn: Connection, move_id: int) -> Any:
    row = conn.execute(select(moves).where(moves.c.id == move_id).with_for_update()).first()
    if row is None:
        raise NotFound(f"move {move_id} not found", field="move")
    return row


def set_status(conn: Connection, move: Any, to: MoveStatus, now: datetime,
               **values: Any) -> bool:
    """Compare-and-swap the move (as read: status and generation) to ``to``."""
    done = conn.execute(update(moves).where(
        moves.c.id == move.id, moves.c.status == move.status,
        moves.c.generation == move.generation
    ).values(status=to.value, updated_at=now, generation=moves.c.generation + 1, **values))
    return done.rowcount == 1


def free_side(conn: Connection, server_id: str, host_id: int, move_id: int | None,
              kind_ids: KindIds, now: datetime) -> list[str]:
    """Give back the server's devices on one side (``move_id``: the side's mark), end their
    metering; the addresses freed."""
    side = side_devices(conn, server_id, host_id, move_id)
    conn.execute(update(devices).where(
        devices.c.owner == server_id, devices.c.host_id == host_id,
        devices.c.move_id == move_id if move_id is not None else devices.c.move_id.is_(None))
        .values(move_id=None))
    freed = free_devices(conn, server_id, host_id, [r.address for r in side], kind_ids, now)
    if freed:
        host = _host_names(conn, [host_id])[host_id]
        conn.execute(update(usage_records).where(
            usage_records.c.server_id == server_id, usage_records.c.host == host,
            usage_records.c.address.in_(freed), usage_records.c.ended_at.is_(None))
            .values(ended_at=now))
    return freed


def _side_rows(conn: Connection, server_id: str, host_id: int, move_id: int | None
               ) -> list[Any]:
    q = select(devices.c.id).where(devices.c.owner == server_id, devices.c.host_id == host_id)
    q = q.where(devices.c.move_id.is_(None) if move_id is None
                else devices.c.move_id == move_id)
    return list(conn.execute(q))


def allocate_dest(conn: Connection, server: Any, move: Any, kind_ids: KindIds,
                   facts: FactsCache, now: datetime) -> None:
    """The destination's devices are allocated; their metering starts."""
    host_id = move.dest_host_id
    generation = conn.execute(select(hosts.c.generation).where(hosts.c.id == host_id)
                              ).scalar_one()
    rows = load_rows(conn, host_id, cached=(facts, generation))
    mine = {r.id for r in _side_rows(conn, server.id, host_id, int(move.id))}
    allocate(conn, server.id, server.project, host_id, rows, lambda r: r.id in mine,
             kind_ids, now)


def move_host_names(conn: Connection, move: Any) -> tuple[str, str]:
    names = _host_names(conn, [move.source_host_id, move.dest_host_id])
    return names[move.source_host_id], names[move.dest_host_id]


def server_row(conn: Connection, server_id: str) -> Any:
    return conn.execute(select(servers).where(servers.c.id == server_id)
                        .with_for_update()).one()


def _queue_restart(conn: Connection, server: Any, move: Any, now: datetime) -> int:
    payload = side_payload(conn, server, move, dest=False, move_id=None)
    payload["domain_xml"] = move.source.get("domain_xml")
    return queue_task(conn, move.source_host_id, server.id, "restart", payload, now)


def go_back(conn: Connection, move: Any, message: str | None, kind_ids: KindIds,
            now: datetime) -> None:
    """A step failed (or a revert came) before the server reached the destination: the
    destination is freed, the server row is the source side again (it never left it, but a
    live migration may have rebound its ports), and the source host restarts it. The move
    goes ``reverting`` (with ``message``, a failure)."""
    server = server_row(conn, move.server_id)
    freed = free_side(conn, server.id, move.dest_host_id, int(move.id), kind_ids, now)
    if not set_status(conn, move, MoveStatus.REVERTING, now, message=message, on_dest=False):
        raise Conflict(f"move {move.id} changed meanwhile", field="move")
    recount_host(conn, move.dest_host_id)
    source, dest = move_host_names(conn, move)
    if message is not None:
        record_event(conn, server.id, _action(move.kind), "failed", message, now, host=dest,
                     detail={"move": int(move.id), "freed": freed})
    fresh = conn.execute(select(moves).where(moves.c.id == move.id)).one()
    task_id = _queue_restart(conn, server, fresh, now)
    record_event(conn, server.id, "revert", "started",
                 f"back to host {source}: restarting the server there", now, host=source,
                 detail={"move": int(move.id), "task": task_id})


def migrated_out(conn: Connection, task: Any, ok: bool, message: str | None,
                 kind_ids: KindIds, now: datetime) -> None:
    """The source stopped the server (the destination's spawn is queued) or could not (the
    destination is freed and the source restarts it)."""
    move = lock_move(conn, int(task.payload["move"]))
    if move.status != MoveStatus.CLAIMED.value:
        return
    source, dest = move_host_names(conn, move)
    if not ok:
        go_back(conn, move, message or f"host {source} could not stop the server", kind_ids,
                now)
        return
    set_status(conn, move, MoveStatus.MOVING, now)
    spawn = dict(move.dest["spawn"])
    task_id = queue_task(conn, move.dest_host_id, move.server_id, "spawn", spawn, now)
    record_event(conn, move.server_id, _action(move.kind), "started",
                 f"stopped on host {source}; building it on host {dest}", now, host=dest,
                 detail={"move": int(move.id), "task": task_id})


def spawned(conn: Connection, task: Any, ok: bool, message: str | None,
            domain_xml: str | None, kind_ids: KindIds, facts: FactsCache,
            now: datetime) -> None:
    """The destination's spawn of a move: the server is there (VERIFY_RESIZE, or confirmed
    at once with ``auto_confirm``), or it failed (back to the source)."""
    move = lock_move(conn, int(task.payload["move"]))
    if move.status != MoveStatus.MOVING.value:
        return
    _source, dest = move_host_names(conn, move)
    if not ok:
        go_back(conn, move, message or f"host {dest} could not start the server", kind_ids,
                now)
        return
    server = server_row(conn, move.server_id)
    allocate_dest(conn, server, move, kind_ids, facts, now)
    side = dict(move.dest)
    side.pop("spawn", None)
    side["domain_xml"] = domain_xml
    apply_side(conn, server.id, side, move.dest_host_id, now, ServerStatus.VERIFY_RESIZE)
    set_status(conn, move, MoveStatus.VERIFY, now, on_dest=True)
    recount_host(conn, move.source_host_id)
    if move.dest_host_id != move.source_host_id:
        recount_host(conn, move.dest_host_id)
    record_event(conn, server.id, _action(move.kind), "done",
                 f"running on host {dest}" + ("" if move.auto_confirm else
                                              "; confirm or revert the move"), now,
                 host=dest, detail={"move": int(move.id)})
    if move.auto_confirm:
        confirm(conn, server.id, now, auto=True)


def confirm(conn: Connection, server_id: str, now: datetime, *, auto: bool = False
            ) -> ServerRecord:
    """Keep the destination: the server is ACTIVE there; the source is told to destroy what
    it kept, and its devices are freed when it confirms. The two sides swap marks."""
    server, _host_id, _gen = _lock_server(conn, server_id)
    move = open_move(conn, server_id, lock=True)
    if move is not None and move.status == MoveStatus.CONFIRMING.value:
        if not _step_open(conn, server_id):   # its destroy failed: ask again
            _queue_confirm(conn, server, move, now, "confirm asked again")
        return get_server(conn, server_id)
    if move is None or move.status != MoveStatus.VERIFY.value:
        state = "no move" if move is None else f"move {move.id} {move.status}"
        raise Conflict(f"server {server.name} has nothing to confirm ({state}); only a "
                       "move waiting in VERIFY_RESIZE can be confirmed", field="server",
                       code="not_verifying")
    conn.execute(update(devices).where(devices.c.owner == server_id).values(
        move_id=case((devices.c.move_id.is_(None), int(move.id)), else_=None)))
    set_status(conn, move, MoveStatus.CONFIRMING, now)
    conn.execute(update(servers).where(servers.c.id == server_id).values(
        status=ServerStatus.ACTIVE.value, updated_at=now, generation=servers.c.generation + 1))
    _queue_confirm(conn, server, move, now,
                   "confirmed automatically" if auto else "confirmed")
    return get_server(conn, server_id)


def _step_open(conn: Connection, server_id: str) -> bool:
    """Whether a host has a step of the server's move to do (while a move is open, the
    server has no other task)."""
    return conn.execute(select(tasks.c.id).where(
        tasks.c.server_id == server_id, tasks.c.state.in_(OPEN_TASKS)).limit(1)
    ).first() is not None


def _queue_confirm(conn: Connection, server: Any, move: Any, now: datetime, why: str) -> None:
    """The source's destroy after a confirm: what it kept of the source side."""
    payload = side_payload(conn, server, move, dest=False, move_id=int(move.id))
    same_host = move.source_host_id == move.dest_host_id
    # The source's ports were let go by "migrate_out"; on the same host the domain and the
    # disk are the destination's now.
    payload.update(step="confirm", interfaces=[], keep_domain=same_host, keep_disk=same_host)
    task_id = queue_task(conn, move.source_host_id, server.id, "destroy", payload, now)
    source, _dest = move_host_names(conn, move)
    record_event(conn, server.id, "confirm", "started",
                 f"{why}: host {source} destroys what it kept", now, host=source,
                 detail={"move": int(move.id), "task": task_id})


def _queue_revert(conn: Connection, server: Any, move: Any, now: datetime) -> None:
    """The destination's destroy after a revert: what it holds of the destination side."""
    payload = side_payload(conn, server, move, dest=True, move_id=int(move.id))
    # On the same host the disk is the source's too: the restart needs it.
    payload.update(step="revert", keep_disk=move.source_host_id == move.dest_host_id)
    task_id = queue_task(conn, move.dest_host_id, server.id, "destroy", payload, now)
    source, dest = move_host_names(conn, move)
    record_event(conn, server.id, "revert", "started",
                 f"host {dest} destroys the server; then back to host {source}", now,
                 host=dest, detail={"move": int(move.id), "task": task_id})


def _refuse_busy(conn: Connection, server: Any, move: Any, what: str) -> None:
    """409 ``move_busy`` while a host runs one of the move's steps."""
    running = conn.execute(select(tasks.c.kind).where(
        tasks.c.server_id == server.id, tasks.c.state == "running").limit(1)).first()
    if running is not None:
        raise Conflict(f"move {move.id} of server {server.name} is {move.status}: a host is "
                       f"running its {running.kind} task; {what} when it ends",
                       field="server", code="move_busy")


def delete_during(conn: Connection, server: Any, move: Any, now: datetime) -> list[int]:
    """Delete a server mid-move: each of the move's hosts destroys what it holds of the
    server. Asked again while ``deleting``: each host whose destroy failed is asked again.
    The tasks queued."""
    _refuse_busy(conn, server, move, "delete the server")
    if move.status == MoveStatus.DELETING.value:
        latest: dict[int, Any] = {}
        for r in conn.execute(select(tasks.c.host_id, tasks.c.state, tasks.c.payload).where(
                tasks.c.server_id == server.id, tasks.c.kind == "destroy")
                .order_by(tasks.c.id)):
            if (r.payload or {}).get("step") == DELETE_STEP and \
                    (r.payload or {}).get("move") == int(move.id):
                latest[int(r.host_id)] = r
        return [queue_task(conn, h, server.id, "destroy", dict(r.payload), now)
                for h, r in sorted(latest.items()) if r.state == "failed"]
    held = _ports_held(move)
    conn.execute(update(tasks).where(tasks.c.server_id == server.id, tasks.c.state == "queued")
                 .values(state="failed", message=DELETED_MID_MOVE, updated_at=now))
    if not set_status(conn, move, MoveStatus.DELETING, now, message=DELETED_MID_MOVE):
        raise Conflict(f"move {move.id} changed meanwhile", field="move")
    record_event(conn, server.id, _action(move.kind), "failed", DELETED_MID_MOVE, now,
                 detail={"move": int(move.id)})
    return [queue_task(conn, h, server.id, "destroy", _host_part(conn, server, move, h, held),
                       now)
            for h in sorted({int(move.source_host_id), int(move.dest_host_id)})]


def _ports_held(move: Any) -> tuple[bool, bool]:
    """Whether the source and the destination have the server's ports programmed (VFs set,
    switch bound) in the move's state, its queued step not run: those each destroy gives
    back; a side its agent let go already is not touched again."""
    status = MoveStatus(move.status)
    if move.kind == MoveKind.LIVE.value:
        # prepare programs the destination; a migrate that succeeds lets the source go, one
        # that fails plugs the NICs back on the source (reverting).
        return (status in (MoveStatus.CLAIMED, MoveStatus.MOVING, MoveStatus.REVERTING),
                status is not MoveStatus.CLAIMED)
    # migrate_out lets the source go; the destination's spawn programs it, its revert
    # destroy (once on_dest is cleared) gave it back.
    return (status is MoveStatus.CLAIMED,
            status in (MoveStatus.VERIFY, MoveStatus.CONFIRMING)
            or (status is MoveStatus.REVERTING and bool(move.on_dest)))


def _host_part(conn: Connection, server: Any, move: Any, host_id: int,
               held: tuple[bool, bool]) -> dict[str, Any]:
    """What one host holds of a server deleted mid-move, as a destroy payload: all its
    devices there (both sides', on a same-host resize), and the ports of each side there
    whose VFs are still programmed (``held``: source, destination)."""
    rows = conn.execute(select(devices.c.address, devices.c.tags).where(
        devices.c.owner == server.id, devices.c.host_id == host_id)
        .order_by(devices.c.address)).all()
    managed = {r.address: _payloads.managed(r.tags or {}) for r in rows}
    nics = _networks.server_ports(conn, [server.id]).get(server.id, [])
    interfaces: dict[tuple[str, str], dict[str, Any]] = {}
    for side, side_host, ports in ((move.source, move.source_host_id, held[0]),
                                   (move.dest, move.dest_host_id, held[1])):
        if side_host != host_id or not ports:
            continue
        for p in _with_bindings(nics, side):
            if p.binding is not None:
                key = (p.id, str(p.binding.address))
                interfaces[key] = _payloads.interface(p, managed.get(str(p.binding.address),
                                                                     True))
    return {"server": _server_ref(server), "move": int(move.id), "step": DELETE_STEP,
            "devices": [{"address": r.address, "managed": managed[r.address]} for r in rows],
            "interfaces": list(interfaces.values())}


def deleted_part(conn: Connection, task: Any, ok: bool, message: str | None,
                 kind_ids: KindIds, facts: FactsCache, now: datetime) -> None:
    """A host destroyed its part of a server deleted mid-move: its devices there are freed;
    once no host holds any, the move is ``failed`` and the server DELETED. A failure keeps
    them held, the server DELETING with the fault."""
    move = lock_move(conn, int(task.payload["move"]))
    if move.status != MoveStatus.DELETING.value:
        return
    server_id, host_id = move.server_id, int(task.host_id)
    if not ok:
        conn.execute(update(servers).where(servers.c.id == server_id).values(
            fault=message or "the host could not destroy the server", updated_at=now,
            generation=servers.c.generation + 1))
        return
    freed = [*free_side(conn, server_id, host_id, None, kind_ids, now),
             *free_side(conn, server_id, host_id, int(move.id), kind_ids, now)]
    recount_host(conn, host_id)
    pending = conn.execute(select(tasks.c.id).where(
        tasks.c.server_id == server_id, tasks.c.kind == "destroy",
        tasks.c.state.in_(OPEN_TASKS)).limit(1)).first()
    still = conn.execute(select(devices.c.id).where(devices.c.owner == server_id)
                         .limit(1)).first()
    if pending is not None or still is not None:
        return
    set_status(conn, move, MoveStatus.FAILED, now)
    record_event(conn, server_id, "delete", "done", "every host let go of the server", now,
                 detail={"move": int(move.id), "freed": freed})
    release(conn, server_id, ServerStatus.DELETED, None, kind_ids, facts, now)


def revert(conn: Connection, server_id: str, kind_ids: KindIds, now: datetime
           ) -> ServerRecord:
    """Go back to the source: from ``verify``, the destination destroys the server first;
    from ``claimed`` or ``moving`` whose task no host has started, that task is cancelled
    and the destination freed at once. A step a host is running: Conflict ``move_busy``."""
    server, _host_id, _gen = _lock_server(conn, server_id)
    move = open_move(conn, server_id, lock=True)
    if move is not None and move.status == MoveStatus.REVERTING.value:
        if not _step_open(conn, server_id):   # its last step failed: ask again
            if move.on_dest:
                _queue_revert(conn, server, move, now)
            else:
                _queue_restart(conn, server, move, now)
        return get_server(conn, server_id)
    if move is None or move.status in (MoveStatus.CONFIRMING.value,
                                       MoveStatus.DELETING.value):
        state = "no move" if move is None else f"move {move.id} is {move.status}"
        raise Conflict(f"server {server.name} has nothing to revert ({state})",
                       field="server", code="not_verifying")
    source, _dest = move_host_names(conn, move)
    if move.status == MoveStatus.VERIFY.value:
        set_status(conn, move, MoveStatus.REVERTING, now)
        conn.execute(update(servers).where(servers.c.id == server_id).values(
            status=_moving_status(move.kind).value, updated_at=now,
            generation=servers.c.generation + 1))
        _queue_revert(conn, server, move, now)
        return get_server(conn, server_id)
    kind = "migrate_out" if move.status == MoveStatus.CLAIMED.value else "spawn"
    pending = conn.execute(select(tasks.c.id, tasks.c.state).where(
        tasks.c.server_id == server_id, tasks.c.kind == kind,
        tasks.c.state.in_(OPEN_TASKS)).order_by(tasks.c.id.desc())).first()
    if pending is not None and pending.state == "running":
        raise Conflict(f"move {move.id} of server {server.name} is {move.status}: a host is "
                       f"running its {kind} task; revert when it ends", field="server",
                       code="move_busy")
    if pending is not None:
        conn.execute(update(tasks).where(tasks.c.id == pending.id, tasks.c.state == "queued")
                     .values(state="failed", message="the move was reverted",
                             updated_at=now))
    if kind == "migrate_out":
        # The source never stopped it: nothing to restart.
        freed = free_side(conn, server_id, move.dest_host_id, int(move.id), kind_ids, now)
        set_status(conn, move, MoveStatus.REVERTED, now)
        conn.execute(update(servers).where(servers.c.id == server_id).values(
            status=ServerStatus.ACTIVE.value, updated_at=now,
            generation=servers.c.generation + 1))
        recount_host(conn, move.dest_host_id)
        record_event(conn, server_id, "revert", "done",
                     f"reverted before host {source} stopped the server", now, host=source,
                     detail={"move": int(move.id), "freed": freed})
        return get_server(conn, server_id)
    go_back(conn, move, None, kind_ids, now)
    return get_server(conn, server_id)


def destroyed(conn: Connection, task: Any, ok: bool, message: str | None,
              kind_ids: KindIds, now: datetime) -> None:
    """A move's destroy: on the source after a confirm (its side freed, the move done), or
    on the destination after a revert (its side freed, the server row back to the source,
    the source restarts it). A failure only records why; the move waits (confirm or revert
    again re-queues the step)."""
    move = lock_move(conn, int(task.payload["move"]))
    step = str(task.payload.get("step") or "")
    source, dest = move_host_names(conn, move)
    if not ok:
        record_event(conn, move.server_id, step or "destroy", "failed",
                     message or "the host could not destroy the server", now,
                     host=dest if step == "revert" else source,
                     detail={"move": int(move.id)})
        conn.execute(update(moves).where(moves.c.id == move.id).values(
            message=message, updated_at=now))
        return
    if step == "confirm" and move.status == MoveStatus.CONFIRMING.value:
        freed = free_side(conn, move.server_id, move.source_host_id, int(move.id), kind_ids,
                          now)
        set_status(conn, move, MoveStatus.DONE, now)
        recount_host(conn, move.source_host_id)
        record_event(conn, move.server_id, "confirm", "done", None, now, host=source,
                     detail={"move": int(move.id), "freed": freed})
    elif step == "revert" and move.status == MoveStatus.REVERTING.value and move.on_dest:
        server = server_row(conn, move.server_id)
        freed = free_side(conn, server.id, move.dest_host_id, int(move.id), kind_ids, now)
        apply_side(conn, server.id, move.source, move.source_host_id, now)
        set_status(conn, move, MoveStatus.REVERTING, now, on_dest=False)
        recount_host(conn, move.dest_host_id)
        if move.dest_host_id != move.source_host_id:
            recount_host(conn, move.source_host_id)
        fresh = conn.execute(select(moves).where(moves.c.id == move.id)).one()
        task_id = _queue_restart(conn, server, fresh, now)
        record_event(conn, server.id, "revert", "started",
                     f"host {dest} let go ({len(freed)} devices freed); restarting on host "
                     f"{source}", now, host=source,
                     detail={"move": int(move.id), "task": task_id, "freed": freed})


def restarted(conn: Connection, task: Any, ok: bool, message: str | None,
              kind_ids: KindIds, facts: FactsCache, now: datetime) -> None:
    """The source started the server again: ACTIVE there, the move ``reverted`` (``failed``
    when a failure sent it back). A restart that fails: ERROR on the source, its devices
    freed as a failed boot's."""
    move = lock_move(conn, int(task.payload["move"]))
    if move.status != MoveStatus.REVERTING.value or move.on_dest:
        return
    source, _dest = move_host_names(conn, move)
    server = server_row(conn, move.server_id)
    failure = move.message
    if ok:
        set_status(conn, move, MoveStatus.FAILED if failure else MoveStatus.REVERTED, now)
        values: dict[str, Any] = {"status": ServerStatus.ACTIVE.value}
        if failure:
            values["fault"] = failure
        conn.execute(update(servers).where(servers.c.id == server.id).values(
            **values, updated_at=now, generation=servers.c.generation + 1))
        record_event(conn, server.id, "revert", "done",
                     f"running on host {source} again", now, host=source,
                     detail={"move": int(move.id)})
        return
    fault = message or f"host {source} could not restart the server"
    set_status(conn, move, MoveStatus.FAILED, now, message=fault)
    record_event(conn, server.id, "revert", "failed", fault, now, host=source,
                 detail={"move": int(move.id)})
    # As a boot that failed: ERROR, holding nothing (deleting it destroys what is left).
    release(conn, server.id, ServerStatus.ERROR, fault, kind_ids, facts, now)


def spawn_expired(conn: Connection, task: Any, fault: str, kind_ids: KindIds,
                  now: datetime) -> None:
    """A move's destination spawn ran out of time: as if it failed (the destination is
    freed; a late success is refused and rolled back by its agent)."""
    move = lock_move(conn, int(task.payload["move"]))
    if move.status == MoveStatus.MOVING.value:
        go_back(conn, move, fault, kind_ids, now)


def task_result(conn: Connection, task: Any, ok: bool, message: str | None,
                domain_xml: str | None, kind_ids: KindIds, facts: FactsCache,
                now: datetime) -> bool:
    """Apply a move task's result (the task already moved); False when it is no move's."""
    payload = task.payload or {}
    kind = str(task.kind)
    if payload.get("move") is None or kind not in ("migrate_out", "spawn", "destroy",
                                                   "restart"):
        return False
    record_event(conn, task.server_id, kind, "done" if ok else "failed", message, now,
                 host=_host_names(conn, [task.host_id])[task.host_id],
                 detail={"move": int(payload["move"])})
    if kind == "migrate_out":
        migrated_out(conn, task, ok, message, kind_ids, now)
    elif kind == "spawn":
        spawned(conn, task, ok, message, domain_xml, kind_ids, facts, now)
    elif kind == "destroy" and payload.get("step") == DELETE_STEP:
        deleted_part(conn, task, ok, message, kind_ids, facts, now)
    elif kind == "destroy":
        destroyed(conn, task, ok, message, kind_ids, now)
    else:
        restarted(conn, task, ok, message, kind_ids, facts, now)
    return True


__all__ = [
    "DELETED_MID_MOVE",
    "DELETE_STEP",
    "OPEN",
    "MoveInputs",
    "MoveTarget",
    "binding_json",
    "binding_of",
    "check_movable",
    "claim_move",
    "closed_move_ids",
    "confirm",
    "delete_during",
    "deleted_part",
    "destroyed",
    "free_side",
    "get_move",
    "go_back",
    "host_id",
    "list_moves",
    "lock_move",
    "migrated_out",
    "move_inputs",
    "open_move",
    "refuse_while_moving",
    "restarted",
    "revert",
    "set_status",
    "side_payload",
    "spawn_expired",
    "spawned",
    "task_result",
]
