"""Hot attach and detach: a running server takes more devices (or a port) on its own host, and
gives some back. One function per use case, each run in the caller's transaction.

Attach (:func:`attach`) is a claim on ONE host, the server's: it locks the host row, then the
server's (the schema's lock order); the server must be ACTIVE. Inside a savepoint it makes or
takes the port (``interfaces``: :func:`pcipass.store.networks.prepare_ports`), asks the
caller's ``decide`` (``sched.fit`` on the host's devices as they are now, the guest's NUMA
cells pinned) what to take, re-checks the project's quota under its row lock, takes the
devices with the state predicate (owner = the server, ``owner_alias`` = the alias or the
port's), binds the port, re-derives the host, appends the request to the server's
``requests`` and queues an ``attach`` task for the host's agent. The server stays ACTIVE.
When the host has nothing that fits, or the quota says no, the savepoint is rolled back (a
port made for the attach goes with it), a ``failed`` event records why, and the verdict (a
:class:`~pcipass.sched.fit.NoFit`) or the :class:`~pcipass.errors.QuotaExceeded` comes back
as a value: the event commits, the caller raises. The server is never moved.

The agent's result (:func:`finish_attach`): success allocates the claimed devices and starts
their metering; failure frees them, takes the request off the server, and gives the port
back (deleted if the attach made it, else detached). Either way the server stays ACTIVE
with what it had before.

Detach (:func:`detach_device`, :func:`detach_port`) only queues a ``detach`` task: the
devices stay owned (and metered) until the agent confirms the guest let them go
(:func:`finish_detach`, the same rule as delete); then they are freed, their metering ends,
the request leaves the server and the port goes (deleted if an attach or boot made it, else
detached). A failed detach changes nothing but the event log.

Attach and detach tasks never expire: a device plugged into a guest must not be handed to
another server because an agent was slow to say so.

Payloads (``attach`` and ``detach``, parsed on the host by
:func:`pcipass.virt.payload.parse_change`)::

    {"server": {"id", "name", "project"},
     "action": "attach_device" | "attach_interface" | "detach_device" | "detach_interface",
     "devices": [{"address", "alias", "managed", "unit"}, ...],   # <hostdev>s to (un)plug
     "interfaces": [port as in a spawn payload, ...],              # <interface>s to (un)plug
     "request": [alias, count, false] | null}                      # what the server's
                                                                   # requests gain or lose
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from pcipass.errors import Conflict, NotFound, QuotaExceeded
from pcipass.net.port import port_alias, port_of
from pcipass.pci.address import PciAddress
from pcipass.records import DeviceState, PortRecord, ServerRecord, ServerStatus
from pcipass.sched.fit import Fit, NoFit
from pcipass.sched.snapshot import HostView
from pcipass.store import networks as _networks
from pcipass.store import payloads as _payloads
from pcipass.store.claims import _lock_server, _take, allocate, free_devices, port_binding
from pcipass.store.derive import Row as DeviceRow
from pcipass.store.derive import Target, load_rows, write_host
from pcipass.store.events import record_event
from pcipass.store.facts import FactsCache
from pcipass.store.hostviews import HOST_COLUMNS, host_view, tracked_views
from pcipass.store.kinds import KindIds
from pcipass.store.moves import refuse_while_moving
from pcipass.store.networks import NewPort
from pcipass.store.schema import hosts, ports, servers, tasks, usage_records
from pcipass.store.servers import get_server
from pcipass.store.usage import check_quota

OPEN = ("queued", "running")

# What the caller judges the host with: its view now, the guest's NUMA cells (host nodes),
# and the ports being attached (none for an alias device).
AttachDecide = Callable[[HostView, tuple[int, ...], Sequence[PortRecord]], Fit | NoFit]


@dataclass(frozen=True, slots=True)
class DeviceAttach:
    """``count`` devices of ``alias``."""

    alias: str
    count: int = 1


@dataclass(frozen=True, slots=True)
class PortAttach:
    """A port made on a network for the server (``new``; deleted when detached) or an
    existing port of the server's project (``port_id``)."""

    new: NewPort | None = None
    port_id: str | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """Why an attach was refused: the host's verdict, or the quota's."""

    host: str
    verdict: NoFit | None = None
    quota: QuotaExceeded | None = None


# --- reading under the lock -------------------------------------------------------------------

def _active(conn: Connection, server_id: str, what: str) -> tuple[Any, int, Any]:
    """The server's row (locked after its host's), its host id and the host row; Conflict
    ``server_not_active`` unless it is ACTIVE on a host."""
    server, host_id, _generation = _lock_server(conn, server_id)
    if server.status != ServerStatus.ACTIVE.value or host_id is None:
        raise Conflict(f"server {server.name} ({server_id}) is {server.status}: only an "
                       f"ACTIVE server can {what}", field="server", code="server_not_active")
    refuse_while_moving(conn, server_id, what)
    host = conn.execute(select(*HOST_COLUMNS).where(hosts.c.id == host_id)).one()
    return server, host_id, host


def _server_ref(server: Any) -> dict[str, str]:
    return {"id": server.id, "name": server.name, "project": server.project}


def _open_changes(conn: Connection, server_id: str) -> list[Any]:
    return list(conn.execute(select(tasks.c.id, tasks.c.kind, tasks.c.payload).where(
        tasks.c.server_id == server_id, tasks.c.kind.in_(("attach", "detach")),
        tasks.c.state.in_(OPEN))))


def changed_addresses(payload: Mapping[str, Any]) -> set[str]:
    """Every device an attach or detach payload touches: its hostdevs and its ports' VFs."""
    out = {str(d["address"]) for d in payload.get("devices") or ()}
    out |= {str(i["address"]) for i in payload.get("interfaces") or ()
            if i.get("address") is not None}
    return out


def _queue(conn: Connection, host_id: int, server: Any, kind: str, payload: dict[str, Any],
           now: datetime) -> int:
    found = conn.execute(insert(tasks).returning(tasks.c.id), {
        "host_id": host_id, "server_id": server.id, "kind": kind, "payload": payload,
        "state": "queued", "created_at": now, "updated_at": now}).scalar_one()
    conn.execute(update(servers).where(servers.c.id == server.id).values(
        updated_at=now, generation=servers.c.generation + 1))
    return int(found)


def _requests(value: Any) -> list[list[Any]]:
    return [list(r) for r in (value or ())]


def _set_requests(conn: Connection, server_id: str, requests: list[list[Any]],
                  now: datetime) -> None:
    conn.execute(update(servers).where(servers.c.id == server_id).values(
        requests=requests, updated_at=now, generation=servers.c.generation + 1))


def _less(requests: list[list[Any]], alias: str, count: int) -> list[list[Any]]:
    """``requests`` with ``count`` fewer of ``alias`` (hard ones first, emptied ones gone)."""
    out = [list(r) for r in requests]
    for r in sorted(out, key=lambda r: bool(r[2])):
        if count <= 0:
            break
        if r[0] == alias:
            took = min(count, int(r[1]))
            r[1] = int(r[1]) - took
            count -= took
    return [r for r in out if int(r[1]) > 0]


# --- attach -----------------------------------------------------------------------------------

def attach(conn: Connection, server_id: str, what: DeviceAttach | PortAttach,
           decide: AttachDecide, kind_ids: KindIds, facts: FactsCache, now: datetime, *,
           mac_prefix: str = "fa:16:3e", rng: random.Random | None = None
           ) -> ServerRecord | Refused:
    """Claim on the server's own host and queue the attach (see the module)."""
    is_port = isinstance(what, PortAttach)
    action = "attach_interface" if is_port else "attach_device"
    server, host_id, host = _active(conn, server_id,
                                    "have an interface attached" if is_port
                                    else "have a device attached")
    savepoint = conn.begin_nested()
    nics: tuple[PortRecord, ...] = ()
    if isinstance(what, PortAttach):
        nics = _networks.prepare_ports(
            conn, server_id, server.project, [what.new] if what.new is not None else [],
            [what.port_id] if what.port_id is not None else [], mac_prefix=mac_prefix,
            rng=rng, now=now)
    rows = load_rows(conn, host_id, cached=(facts, host.generation))
    ordered = sorted(rows.values(), key=lambda r: r.address)
    cells = tuple(int(c) for c in server.numa_cells or ())
    verdict = decide(host_view(host, tracked_views(r.tracked for r in ordered)), cells, nics)
    asked: dict[str, int] = {}
    if isinstance(verdict, Fit):
        for a in verdict.assignments:
            asked[a.request.alias] = asked.get(a.request.alias, 0) + len(a.devices)
    refused: Refused | None = None
    if isinstance(verdict, NoFit):
        refused = Refused(host.name, verdict=verdict)
    else:
        try:
            check_quota(conn, server.project, asked, lock=True)
        except QuotaExceeded as exc:
            refused = Refused(host.name, quota=exc)
    what_text = _describe(what, nics)
    if refused is not None:
        savepoint.rollback()
        reason = refused.quota.message if refused.quota is not None else str(refused.verdict)
        record_event(conn, server_id, action, "failed",
                     f"cannot attach {what_text} on host {host.name}: {reason}", now,
                     host=host.name, detail={"request": what_text})
        return refused
    assert isinstance(verdict, Fit)

    chosen: dict[PciAddress, str | None] = {}
    for a in verdict.assignments:
        chosen.update({d: a.request.alias for d in a.devices})
        chosen.update({d: None for d in a.riders})
    by_alias: dict[str | None, list[PciAddress]] = {}
    for address, alias in chosen.items():
        by_alias.setdefault(alias, []).append(address)
    for alias, addresses in by_alias.items():
        _take(conn, server_id, alias, [rows[x].id for x in addresses], now)
    taken = {a: replace(r, tracked=replace(r.tracked, state=DeviceState.CLAIMED,
                                           owner=server_id), owner_alias=chosen[a])
             for a, r in rows.items() if a in chosen}
    write_host(conn, host_id, rows, [Target(r.tracked, r.owner_alias) for r in (
        taken.get(r.address, r) for r in ordered)], kind_ids, now,
        current={**rows, **taken})
    for a in verdict.assignments:
        if a.request.port is not None:
            _networks.bind_port(conn, a.request.port, server_id,
                                port_binding(host.name, a.devices[0], rows), now)
    request: list[Any] | None = None
    if isinstance(what, DeviceAttach):
        request = [what.alias, what.count, False]
    else:
        (port,) = nics
        _place_last(conn, server_id, port.id)
        if port.vnic_type != "normal":
            request = [port_alias(port.id), 1, False]
    requests = _requests(server.requests)
    if request is not None:
        requests.append(request)
    _set_requests(conn, server_id, requests, now)

    bound = [_networks.find_port(conn, p.id, None) for p in nics]
    as_interface = {p.binding.address for p in bound if p.binding is not None
                    and p.vnic_type != "direct-physical"}
    units = {x: i for i, u in enumerate(u for a in verdict.assignments for u in a.units)
             for x in u.addresses}
    payload = {
        "server": _server_ref(server), "action": action,
        "devices": [_payloads.device(a, chosen[a], rows[a].tracked.device.tags,
                                     units.get(a, len(units) + i))
                    for i, a in enumerate(sorted(chosen)) if a not in as_interface],
        "interfaces": [_payloads.interface(p, True if p.binding is None else _payloads.managed(
            rows[p.binding.address].tracked.device.tags)) for p in bound],
        "request": request,
    }
    task_id = _queue(conn, host_id, server, "attach", payload, now)
    savepoint.commit()
    record_event(conn, server_id, action, "started",
                 f"attaching {what_text} on host {host.name}: "
                 f"{', '.join(str(a) for a in sorted(chosen)) or 'no device'}", now,
                 host=host.name, detail={"task": task_id,
                                         "devices": [str(a) for a in sorted(chosen)],
                                         "ports": [p.id for p in nics]})
    return get_server(conn, server_id)


def _describe(what: DeviceAttach | PortAttach, nics: Sequence[PortRecord]) -> str:
    if isinstance(what, DeviceAttach):
        return f"{what.count} x {what.alias}"
    if nics:
        p = nics[0]
        return f"{p.vnic_type} port {p.name or p.id!r} on network {p.network!r}"
    return "a port"


def _place_last(conn: Connection, server_id: str, port_id: str) -> None:
    """The port after the server's others in the guest's NIC order."""
    last = conn.execute(select(ports.c.server_position).where(
        ports.c.server_id == server_id, ports.c.id != port_id,
        ports.c.server_position.is_not(None)).order_by(
        ports.c.server_position.desc()).limit(1)).scalar()
    conn.execute(update(ports).where(ports.c.id == port_id).values(
        server_position=0 if last is None else int(last) + 1))


# --- detach -----------------------------------------------------------------------------------

def detach_device(conn: Connection, server_id: str, address: PciAddress,
                  now: datetime) -> ServerRecord:
    """Queue the unplug of a device the server holds by an alias, with the rest of its IOMMU
    unit (the riders handed out with it). Asked again while pending: nothing more is done."""
    server, host_id, host = _active(conn, server_id, "have a device detached")
    rows = load_rows(conn, host_id)
    held = {a: r for a, r in rows.items() if r.tracked.owner == server_id}
    row = held.get(address)
    if row is None:
        raise NotFound(f"server {server.name} ({server_id}) holds no device {address}",
                       field="address")
    if port_of(row.owner_alias) is not None:
        raise Conflict(f"device {address} is bound to port {port_of(row.owner_alias)}: detach "
                       "the interface instead", field="address", code="device_is_port")
    unit = _unit(row, held)
    if any(changed_addresses(t.payload) & {str(a) for a in unit}
           for t in _open_changes(conn, server_id)):
        return get_server(conn, server_id)   # asked again: the host was told already
    busy = [a for a in unit if _state(held[a]) is not DeviceState.ALLOCATED]
    if busy:
        raise Conflict(f"device {busy[0]} of server {server.name} is {_state(held[busy[0]])}"
                       ", not allocated: wait for its attach to finish", field="address",
                       code="device_busy")
    devices = [{"address": str(a), "alias": held[a].owner_alias,
                "managed": _payloads.managed(held[a].tracked.device.tags), "unit": 0}
               for a in unit]
    alias = row.owner_alias
    counted = sum(1 for a in unit if held[a].owner_alias == alias)
    payload = {"server": _server_ref(server), "action": "detach_device", "devices": devices,
               "interfaces": [],
               "request": None if alias is None else [alias, counted, False]}
    task_id = _queue(conn, host_id, server, "detach", payload, now)
    record_event(conn, server_id, "detach_device", "started",
                 f"detaching {', '.join(str(a) for a in unit)} on host {host.name}", now,
                 host=host.name, detail={"task": task_id, "devices": [str(a) for a in unit]})
    return get_server(conn, server_id)


def _state(row: DeviceRow) -> DeviceState:
    t = row.tracked
    return t.held_state if t.state is DeviceState.REMOVED and t.held_state else t.state


def _unit(row: DeviceRow, held: Mapping[PciAddress, DeviceRow]) -> list[PciAddress]:
    """The device and what the server holds of its IOMMU group (assigned as one unit)."""
    group = row.tracked.device.iommu_group
    if group is None:
        return [row.address]
    return sorted(a for a, r in held.items() if r.tracked.device.iommu_group == group
                  and (a == row.address or r.owner_alias in (None, row.owner_alias)))


def detach_port(conn: Connection, server_id: str, port_ref: str, project: str | None,
                now: datetime) -> ServerRecord:
    """Queue the unplug of one of the server's ports (its VF restored by the host, the port
    deleted when an attach or boot made it, else detached, on confirmation)."""
    server, host_id, host = _active(conn, server_id, "have an interface detached")
    port = _networks.find_port(conn, port_ref, project)
    if port.server_id != server_id:
        raise NotFound(f"port {port_ref!r} is not attached to server {server.name}",
                       field="port")
    if any(port.id in {str(i["port"]) for i in t.payload.get("interfaces") or ()}
           for t in _open_changes(conn, server_id)):
        return get_server(conn, server_id)
    rows = load_rows(conn, host_id)
    devices: list[dict[str, Any]] = []
    managed = True
    if port.binding is not None:
        row = rows.get(port.binding.address)
        if row is None or row.tracked.owner != server_id:
            raise Conflict(f"port {port.name or port.id!r} is bound to {port.binding.address}, "
                           f"which server {server.name} does not hold", field="port")
        if _state(row) is not DeviceState.ALLOCATED:
            raise Conflict(f"port {port.name or port.id!r} is still being attached",
                           field="port", code="device_busy")
        managed = _payloads.managed(row.tracked.device.tags)
        if port.vnic_type == "direct-physical":
            devices.append({"address": str(row.address), "alias": row.owner_alias,
                            "managed": managed, "unit": 0})
    payload = {"server": _server_ref(server), "action": "detach_interface",
               "devices": devices, "interfaces": [_payloads.interface(port, managed)],
               "request": None if port.vnic_type == "normal"
               else [port_alias(port.id), 1, False]}
    task_id = _queue(conn, host_id, server, "detach", payload, now)
    record_event(conn, server_id, "detach_interface", "started",
                 f"detaching {port.vnic_type} port {port.name or port.id!r} on host "
                 f"{host.name}", now, host=host.name,
                 detail={"task": task_id, "port": port.id})
    return get_server(conn, server_id)


# --- the agent's answer -----------------------------------------------------------------------

def _let_go(conn: Connection, server_id: str, port_ids: Iterable[str], now: datetime) -> None:
    """The ports leave the server: unbound, then deleted if made for it, else detached."""
    ids = list(port_ids)
    if not ids:
        return
    mine = (ports.c.id.in_(ids), ports.c.server_id == server_id)
    conn.execute(update(ports).where(*mine).values(
        binding_host=None, binding_address=None, binding_pf=None, binding_vf_index=None,
        binding_vf_netdev=None, updated_at=now))
    conn.execute(delete(ports).where(*mine, ports.c.auto_delete))
    conn.execute(update(ports).where(*mine).values(server_id=None, server_position=None,
                                                   updated_at=now))


def _host_name(conn: Connection, host_id: int) -> str:
    return str(conn.execute(select(hosts.c.name).where(hosts.c.id == host_id)).scalar_one())


def finish_attach(conn: Connection, task: Any, ok: bool, message: str | None,
                  domain_xml: str | None, kind_ids: KindIds, facts: FactsCache,
                  now: datetime) -> None:
    """The agent plugged the devices (allocated, metered) or could not (freed, the request
    and the port given back); the task is already moved."""
    sid = task.server_id
    payload = dict(task.payload)
    action = str(payload.get("action") or "attach_device")
    server, host_id, generation = _lock_server(conn, sid)
    if host_id is None:
        return
    host = _host_name(conn, host_id)
    addresses = changed_addresses(payload)
    port_ids = [str(i["port"]) for i in payload.get("interfaces") or ()]
    if not ok:
        freed = free_devices(conn, sid, host_id, addresses, kind_ids, now)
        _let_go(conn, sid, port_ids, now)
        request = payload.get("request")
        if request:
            _set_requests(conn, sid, _less(_requests(server.requests), str(request[0]),
                                           int(request[1])), now)
        record_event(conn, sid, action, "failed",
                     message or f"the host {host} could not attach the device", now,
                     host=host, detail={"task": int(task.id), "freed": freed})
        return
    rows = load_rows(conn, host_id, cached=(facts, generation))
    allocate(conn, sid, server.project, host_id, rows,
             lambda r: str(r.address) in addresses, kind_ids, now)
    values: dict[str, Any] = {"updated_at": now, "generation": servers.c.generation + 1}
    if domain_xml is not None:
        values["domain_xml"] = domain_xml
    conn.execute(update(servers).where(servers.c.id == sid).values(values))
    record_event(conn, sid, action, "done", None, now, host=host,
                 detail={"task": int(task.id), "devices": sorted(addresses)})


def finish_detach(conn: Connection, task: Any, ok: bool, message: str | None,
                  domain_xml: str | None, kind_ids: KindIds, facts: FactsCache,
                  now: datetime) -> None:
    """The agent unplugged the devices (freed, metering ends, the request and the port go)
    or could not (nothing changes but the log)."""
    sid = task.server_id
    payload = dict(task.payload)
    action = str(payload.get("action") or "detach_device")
    server, host_id, _generation = _lock_server(conn, sid)
    if host_id is None:
        return
    host = _host_name(conn, host_id)
    if not ok:
        record_event(conn, sid, action, "failed",
                     message or f"the host {host} could not detach the device", now,
                     host=host, detail={"task": int(task.id)})
        return
    addresses = changed_addresses(payload)
    freed = free_devices(conn, sid, host_id, addresses, kind_ids, now)
    if freed:
        conn.execute(update(usage_records).where(
            usage_records.c.server_id == sid, usage_records.c.address.in_(freed),
            usage_records.c.ended_at.is_(None)).values(ended_at=now))
    _let_go(conn, sid, [str(i["port"]) for i in payload.get("interfaces") or ()], now)
    request = payload.get("request")
    values: dict[str, Any] = {"updated_at": now, "generation": servers.c.generation + 1}
    if request:
        values["requests"] = _less(_requests(server.requests), str(request[0]),
                                   int(request[1]))
    if domain_xml is not None:
        values["domain_xml"] = domain_xml
    conn.execute(update(servers).where(servers.c.id == sid).values(values))
    record_event(conn, sid, action, "done", None, now, host=host,
                 detail={"task": int(task.id), "freed": freed})
