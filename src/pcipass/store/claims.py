"""Claims: a server takes concrete devices on one host, and gives them back.

A claim is ONE transaction that cannot hand a device to two servers:

1. lock the host row (``SELECT ... FOR NO KEY UPDATE``; SQLite's ``BEGIN IMMEDIATE`` already
   holds the database's write lock) and read the host's devices, fresh, under the lock;
2. ask the caller's ``decide`` (the scheduler's ``fit``, which proposed this host from an
   older snapshot) again on that fresh view: if the host no longer fits, nothing is written
   and the verdict comes back, for the caller to try its next host;
3. if the project has quotas, lock its row and re-check them with what it would now hold;
4. take the chosen devices with a state predicate in the same statement (``UPDATE devices SET
   state='claimed', owner=?, owner_alias=? WHERE ... AND state='available' AND NOT reserved
   AND reason IS NULL``): a row count short of the devices chosen is a
   :class:`~pcipass.errors.ClaimConflict` and the transaction rolls back whole;
5. bind each port whose request got a device to it (``UPDATE ports ... WHERE id = ? AND
   server_id = ?``: the boot attached it before the claim);
6. re-derive the host (dependants ``unavailable``, reasons, pools, ``host_kinds``,
   ``pci_free``) and add the server to its vCPU, RAM and per-node use, insert the server
   (``BUILDING``), queue the spawn task.

Freeing is the mirror image: the server's devices go back to ``available`` (or stay reserved,
or are deleted if they had vanished, or leave the pools if the device spec no longer selects
them), the host is re-derived and its use recounted from the servers it still holds, usage
records end, a spawn task not yet run fails. Its ports lose their bindings; once it is
DELETED, the ports its boot made go and the others are detached.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, insert, or_, select, update

from pcipass.errors import ClaimConflict, Conflict, NotFound
from pcipass.net.port import port_alias
from pcipass.pci.address import PciAddress
from pcipass.pci.device import DevType, HostKind, PciDevice
from pcipass.records import (
    DeviceState,
    FlavorRecord,
    ImageRecord,
    PortBinding,
    PortRecord,
    ServerDevice,
    ServerRecord,
    ServerStatus,
)
from pcipass.sched.fit import Fit, NoFit, NoFitCode
from pcipass.sched.snapshot import HostView
from pcipass.store import networks as _networks
from pcipass.store import payloads as _payloads
from pcipass.store.derive import Row as DeviceRow
from pcipass.store.derive import Target, load_rows, write_host
from pcipass.store.events import record_event
from pcipass.store.facts import FactsCache
from pcipass.store.hostviews import HOST_COLUMNS, host_view, tracked_views
from pcipass.store.kinds import KindIds
from pcipass.store.pools import drop_empty_pools
from pcipass.store.schema import devices, hosts, moves, servers, tasks
from pcipass.store.servers import LIVE, get_server
from pcipass.store.usage import check_quota, end_usage, start_usage

Decide = Callable[[HostView], Fit | NoFit]


@dataclass(frozen=True, slots=True)
class BootInputs:
    """What a boot's decision reads first (:meth:`pcipass.store.Store.boot_inputs`)."""

    flavor: FlavorRecord
    image: ImageRecord
    alias_entries: list[dict[str, Any]]
    kinds: Mapping[int, PciDevice]        # an example device per pool kind
    limits: dict[str, int]                # the project's quotas, by alias
    held: dict[str, int]                  # what it holds of those aliases


@dataclass(frozen=True, slots=True)
class NewServer:
    """A server about to be placed: what the services resolved from flavor and image."""

    id: str
    name: str
    project: str
    flavor_id: str | None
    flavor_name: str
    image_id: str | None
    image_name: str
    vcpus: int
    ram_mb: int
    requests: tuple[tuple[str, int, bool], ...] = ()   # (alias, count, soft)
    not_granted: tuple[str, ...] = ()                  # soft requests given up beforehand
    payload: Mapping[str, Any] = field(default_factory=dict)  # for the spawn task
    # Whether the project had quotas when the boot started: if not, the claim skips the
    # quota check (a quota set meanwhile applies from the next boot on).
    quotas: bool = True
    # Its ports (attached already, :func:`pcipass.store.networks.prepare_ports`), in the
    # order the guest sees them.
    ports: tuple[PortRecord, ...] = ()
    # A whole bare-metal machine (flavor ``pcipass:baremetal``): only a bare-metal host with
    # no live server takes it, and it takes every free device there and all of its vCPUs
    # and RAM (:func:`pcipass.sched.fit.fit_machine` decides; the claim re-checks).
    baremetal: bool = False


def _server_values(s: NewServer, now: datetime) -> dict[str, Any]:
    return {
        "id": s.id, "name": s.name, "project": s.project, "flavor_id": s.flavor_id,
        "flavor_name": s.flavor_name, "image_id": s.image_id, "image_name": s.image_name,
        "vcpus": s.vcpus, "ram_mb": s.ram_mb,
        "requests": [list(r) for r in s.requests], "created_at": now, "updated_at": now,
        "generation": 1,
    }


def create_detail(s: NewServer) -> dict[str, Any]:
    """What a server's ``create`` event says it asked for."""
    return {"flavor": s.flavor_name, "image": s.image_name, "nics": len(s.ports),
            "requests": [f"{a}:{n}" + (" (soft)" if soft else "") for a, n, soft in s.requests]}


def record_failure(conn: Connection, s: NewServer, fault: str, now: datetime) -> ServerRecord:
    """A server that could not be placed: ERROR, holding nothing, saying why."""
    conn.execute(insert(servers), {
        **_server_values(s, now), "status": ServerStatus.ERROR.value, "host_id": None,
        "fault": fault, "not_granted": list(s.not_granted), "numa_cells": []})
    record_event(conn, s.id, "create", "done", None, now, detail=create_detail(s))
    record_event(conn, s.id, "schedule", "failed", fault, now)
    return get_server(conn, s.id)


# A move's side that is not on the server's row but still holds its host's vCPUs and RAM:
# the destination until the server gets there, the source from then until it is confirmed
# (or, reverting, until the destination is freed). See pcipass.store.moves.
_OTHER_SIDE = (
    select(moves.c.source_host_id, moves.c.dest_host_id, moves.c.on_dest, moves.c.source,
           moves.c.dest)
    .where(or_(moves.c.status.in_(("claimed", "moving", "verify", "confirming")),
               (moves.c.status == "reverting") & moves.c.on_dest),
           or_(moves.c.source_host_id == bindparam("host_id"),
               moves.c.dest_host_id == bindparam("host_id"))))


def _other_sides(conn: Connection, host_id: int) -> list[tuple[int, int, list[int]]]:
    out = []
    for r in conn.execute(_OTHER_SIDE, {"host_id": host_id}):
        other_host = r.source_host_id if r.on_dest else r.dest_host_id
        side = r.source if r.on_dest else r.dest
        if other_host == host_id:
            out.append((int(side["vcpus"]), int(side["ram_mb"]),
                        [int(c) for c in side.get("numa_cells") or ()]))
    return out


def recount_host(conn: Connection, host_id: int) -> None:
    """The host's vCPUs, RAM and per-node use from the servers it holds (no drift), and the
    moves' sides it holds for them."""
    used_vcpus = used_ram = 0
    per_node: dict[str, list[int]] = {}
    for vcpus, ram, cells in [*conn.execute(
            select(servers.c.vcpus, servers.c.ram_mb, servers.c.numa_cells)
            .where(servers.c.host_id == host_id, servers.c.status.in_(LIVE))),
            *_other_sides(conn, host_id)]:
        used_vcpus += vcpus
        used_ram += ram
        for cell in cells:
            slot = per_node.setdefault(str(cell), [0, 0])
            slot[0] += vcpus // len(cells)
            slot[1] += ram // len(cells)
    conn.execute(update(hosts).where(hosts.c.id == host_id).values(
        used_vcpus=used_vcpus, used_ram_mb=used_ram, numa_used=per_node))


_LOCK_HOST = (select(*HOST_COLUMNS, hosts.c.reserved, hosts.c.down, hosts.c.kind)
              .where(hosts.c.id == bindparam("host_id")).with_for_update(key_share=True))


def reserved_verdict(host: str) -> NoFit:
    """A host an admin reserved (draining): it takes no new server."""
    return NoFit(host, NoFitCode.HOST_RESERVED, "is reserved (draining)",
                 "are reserved (draining)")


def down_verdict(host: str) -> NoFit:
    """A host whose agent went silent (:mod:`pcipass.store.liveness`): nothing would run
    what is placed there."""
    return NoFit(host, NoFitCode.HOST_DOWN, "is down (its agent has gone silent)",
                 "are down (their agents have gone silent)")


def kind_verdict(host: str, baremetal: bool) -> NoFit:
    """A host of the other kind: a hypervisor for a bare-metal boot, or the other way."""
    if baremetal:
        return NoFit(host, NoFitCode.HOST_KIND, "is not a bare-metal host",
                     "are not bare-metal hosts")
    return NoFit(host, NoFitCode.HOST_KIND, "is a bare-metal host (the flavor does not ask "
                 "for bare metal)", "are bare-metal hosts (the flavor does not ask for bare "
                 "metal)")


def occupied_verdict(host: str) -> NoFit:
    """A bare-metal host that runs a server: one server takes the whole machine."""
    return NoFit(host, NoFitCode.HOST_OCCUPIED, "runs a server already (a bare-metal "
                 "machine takes one)", "run a server already (a bare-metal machine takes one)")


def _machine_taken(conn: Connection, host_id: int) -> bool:
    return conn.execute(select(servers.c.id).where(
        servers.c.host_id == host_id, servers.c.status.in_(LIVE)).limit(1)).first() is not None
_TAKE = (
    update(devices)
    .where(devices.c.id.in_(bindparam("b_ids", expanding=True)),
           devices.c.state == DeviceState.AVAILABLE.value,
           ~devices.c.reserved, devices.c.reason.is_(None))
    .values(state=DeviceState.CLAIMED.value, owner=bindparam("b_owner"),
            owner_alias=bindparam("b_alias"), updated_at=bindparam("b_now"))
)


def _take(conn: Connection, server_id: str, alias: str | None, ids: Sequence[int],
          now: datetime) -> None:
    if not ids:
        return
    taken = conn.execute(_TAKE, {"b_ids": list(ids), "b_owner": server_id, "b_alias": alias,
                                 "b_now": now}).rowcount
    if taken != len(ids):
        raise ClaimConflict(
            f"{len(ids) - taken} of the devices chosen for server {server_id} were "
            "taken meanwhile", field="devices")


def port_binding(host: str, address: PciAddress, rows: Mapping[PciAddress, DeviceRow]
                 ) -> PortBinding:
    """Where a port lands on the device it got: a VF with its parent PF's netdev, or a PF
    (``direct-physical``) with its own."""
    dev = rows[address].tracked.device
    vf_netdev = dev.netdevs[0].name if dev.netdevs else None
    if dev.dev_type is DevType.VF:
        parent = rows.get(dev.parent_addr) if dev.parent_addr is not None else None
        pf = parent.tracked.device.netdevs if parent is not None else ()
        return PortBinding(host=host, address=address, pf_netdev=pf[0].name if pf else None,
                           vf_index=dev.vf_index, vf_netdev=vf_netdev)
    return PortBinding(host=host, address=address,
                       pf_netdev=vf_netdev if dev.dev_type is DevType.PF else None,
                       vf_index=None, vf_netdev=None)


def _with_server(host: Any, vcpus: int, ram_mb: int, cells: Sequence[int]
                 ) -> dict[str, Any]:
    """The host's use counters with one more server (the host row is locked)."""
    per_node = {k: list(v) for k, v in host.numa_used.items()}
    for cell in cells:
        slot = per_node.setdefault(str(cell), [0, 0])
        slot[0] += vcpus // len(cells)
        slot[1] += ram_mb // len(cells)
    return {"used_vcpus": host.used_vcpus + vcpus, "used_ram_mb": host.used_ram_mb + ram_mb,
            "numa_used": per_node}


@dataclass(frozen=True, slots=True)
class Taken:
    """What :func:`take_fit` took on a host: the locked host row, its device rows as they
    were, the fit and the devices chosen (address: alias; None for a rider)."""

    host: Any
    rows: dict[PciAddress, DeviceRow]
    verdict: Fit
    chosen: dict[PciAddress, str | None]

    def held(self) -> tuple[ServerDevice, ...]:
        return tuple(
            ServerDevice(address=a, alias=self.chosen[a], state=DeviceState.CLAIMED,
                         vendor_id=dev.vendor_id, product_id=dev.product_id,
                         dev_type=dev.dev_type, numa_node=dev.numa_node)
            for a in sorted(self.chosen) for dev in (self.rows[a].tracked.device,))

    def bindings(self) -> dict[str, PortBinding]:
        """Each port whose request got a device: where it lands."""
        return {a.request.port: port_binding(self.host.name, a.devices[0], self.rows)
                for a in self.verdict.assignments if a.request.port is not None}


def take_fit(conn: Connection, owner: str, project: str, host_id: int, decide: Decide,
             kind_ids: KindIds, facts: FactsCache, now: datetime,
             accept: Callable[[Fit], bool] | None = None, *, quotas: bool = True,
             credit: Mapping[str, int] | None = None,
             host_values: Callable[[Any, Fit], Mapping[str, Any]] | None = None,
             baremetal: bool = False) -> Taken | Fit | NoFit:
    """Steps 1 to 4 and the re-derivation of a claim (see the module), for ``owner``: lock
    the host, judge it under the lock, check ``project``'s quota (``credit``: what the
    owner gives back when this claim's side wins, e.g. a resize's old side), take the
    devices and re-derive the host (``host_values``: more values for its row). A fit that
    ``accept`` turns down comes back unclaimed, as does a verdict that the host does not
    fit."""
    host = conn.execute(_LOCK_HOST, {"host_id": host_id}).first()
    if host is None:
        raise NotFound(f"host {host_id} vanished", field="host")
    if host.reserved:
        # Reserved after the narrowing read it: the reservation holds (same row lock).
        return reserved_verdict(host.name)
    if host.down:
        return down_verdict(host.name)
    machine = host.kind == HostKind.BAREMETAL.value
    if machine != baremetal:
        return kind_verdict(host.name, baremetal)
    if machine and _machine_taken(conn, host_id):
        # Under the host's lock: another bare-metal boot may have taken it since the
        # narrowing read it.
        return occupied_verdict(host.name)
    rows = load_rows(conn, host_id, cached=(facts, host.generation))
    ordered = sorted(rows.values(), key=lambda r: r.address)
    verdict = decide(host_view(host, tracked_views(r.tracked for r in ordered)))
    if isinstance(verdict, NoFit) or (accept is not None and not accept(verdict)):
        return verdict
    asked: dict[str, int] = {}
    for a in verdict.assignments:
        asked[a.request.alias] = asked.get(a.request.alias, 0) + len(a.devices)
    if quotas:
        check_quota(conn, project, asked, lock=True, credit=credit)

    chosen: dict[PciAddress, str | None] = {}
    for a in verdict.assignments:
        chosen.update({d: a.request.alias for d in a.devices})
        chosen.update({d: None for d in a.riders})
    chosen.update({d: None for d in verdict.machine})   # bare metal: the rest of the machine
    by_alias: dict[str | None, list[PciAddress]] = {}
    for address, alias in chosen.items():
        by_alias.setdefault(alias, []).append(address)
    for alias, addresses in by_alias.items():
        _take(conn, owner, alias, [rows[x].id for x in addresses], now)

    claimed = DeviceState.CLAIMED
    taken = {a: replace(r, tracked=replace(r.tracked, state=claimed, owner=owner),
                        owner_alias=chosen[a]) for a, r in rows.items() if a in chosen}
    write_host(conn, host_id, rows, [Target(r.tracked, r.owner_alias) for r in (
                   taken.get(r.address, r) for r in ordered)], kind_ids, now,
               host=None if host_values is None else host_values(host, verdict),
               current={**rows, **taken})
    return Taken(host, rows, verdict, chosen)


def spawn_payload(server: Mapping[str, Any], flavor: Mapping[str, Any],
                  image: Mapping[str, Any], taken: Taken, nics: Sequence[PortRecord]
                  ) -> dict[str, Any]:
    """The spawn task for what ``taken`` holds, with the server's ports (bound, in order)."""
    rows, chosen, verdict = taken.rows, taken.chosen, taken.verdict
    # A VF bound to a direct or macvtap port is an <interface>, not a <hostdev>.
    as_interface = {p.binding.address for p in nics if p.binding is not None
                    and p.vnic_type != "direct-physical"}
    units = {x: i for i, u in enumerate(u for a in verdict.assignments for u in a.units)
             for x in u.addresses}
    return _payloads.spawn(
        server, flavor, image,
        [_payloads.device(a, chosen[a], rows[a].tracked.device.tags,
                          units.get(a, len(units) + i)) for i, a in enumerate(sorted(chosen))
         if a not in as_interface],
        verdict.cells,
        [_payloads.interface(p, True if p.binding is None or p.binding.address not in rows
                             else _payloads.managed(rows[p.binding.address].tracked.device.tags))
         for p in nics])


def claim(conn: Connection, s: NewServer, host_id: int, decide: Decide, kind_ids: KindIds,
          facts: FactsCache, now: datetime, accept: Callable[[Fit], bool] | None = None
          ) -> ServerRecord | Fit | NoFit:
    """Place ``s`` on the host if it still fits there (see the module); the caller's
    transaction commits it. A fit that ``accept`` turns down comes back unclaimed, as does a
    verdict that the host does not fit."""
    def used(host: Any, verdict: Fit) -> dict[str, Any]:
        # A bare-metal server holds the whole machine's vCPUs and RAM.
        if s.baremetal:
            return _with_server(host, host.cpus, host.memory_mb, verdict.cells)
        return _with_server(host, s.vcpus, s.ram_mb, verdict.cells)

    got = take_fit(conn, s.id, s.project, host_id, decide, kind_ids, facts, now, accept,
                   quotas=s.quotas, host_values=used, baremetal=s.baremetal)
    if not isinstance(got, Taken):
        return got
    if s.baremetal:
        s = replace(s, vcpus=got.host.cpus, ram_mb=got.host.memory_mb)
    host, verdict, chosen = got.host, got.verdict, got.chosen
    for port_id, binding in got.bindings().items():
        _networks.bind_port(conn, port_id, s.id, binding, now)
    granted = {a.request for a in verdict.assignments}
    not_granted = (*s.not_granted, *(str(r) for r in verdict.not_granted if r not in granted))
    conn.execute(insert(servers), {
        **_server_values(s, now), "status": ServerStatus.BUILDING.value, "host_id": host_id,
        "fault": None, "not_granted": list(not_granted), "numa_cells": list(verdict.cells)})
    _networks.place_ports(conn, s.id, [p.id for p in s.ports])
    nics = _networks.server_ports(conn, [s.id]).get(s.id, [])
    payload = spawn_payload(
        {"id": s.id, "name": s.name, "project": s.project},
        {"vcpus": s.vcpus, "ram_mb": s.ram_mb, **s.payload.get("flavor", {})},
        s.payload.get("image", {}), got, nics)
    if s.baremetal:
        payload["baremetal"] = True
    conn.execute(insert(tasks), {"host_id": host_id, "server_id": s.id, "kind": "spawn",
                                 "payload": payload, "state": "queued", "created_at": now,
                                 "updated_at": now})
    record_event(conn, s.id, "create", "done", None, now, detail=create_detail(s))
    record_event(conn, s.id, "schedule", "done", None, now, host=host.name, detail={
        "devices": [{"address": str(a), "alias": chosen[a]} for a in sorted(chosen)],
        "numa_cells": list(verdict.cells), "not_granted": list(not_granted)})
    return ServerRecord(
        id=s.id, name=s.name, project=s.project, status=ServerStatus.BUILDING,
        flavor=s.flavor_name, image=s.image_name, host=host.name, devices=got.held(),
        not_granted=tuple(not_granted), fault=None, numa_cells=tuple(verdict.cells),
        created_at=now, updated_at=now, ports=tuple(nics))


# --- after the claim ---------------------------------------------------------------------

def _lock_server(conn: Connection, server_id: str
                 ) -> tuple[Row[Any], int | None, int]:
    """The server's row, with its host's row locked first (the schema's lock order); the
    host id and generation."""
    row = conn.execute(select(servers.c.host_id).where(servers.c.id == server_id)).first()
    if row is None:
        raise NotFound(f"server {server_id!r} not found", field="server")
    host_id: int | None = row.host_id
    generation = 0
    if host_id is not None:
        generation = conn.execute(select(hosts.c.generation).where(hosts.c.id == host_id)
                                  .with_for_update(key_share=True)).scalar_one()
    server = conn.execute(select(servers).where(servers.c.id == server_id)
                          .with_for_update()).one()
    return server, host_id, generation


def _finish_tasks(conn: Connection, server_id: str, state: str, message: str | None,
                  now: datetime) -> None:
    conn.execute(update(tasks).where(tasks.c.server_id == server_id, tasks.c.kind == "spawn",
                                     tasks.c.state.in_(("queued", "running")))
                 .values(state=state, message=message, updated_at=now))


def release(conn: Connection, server_id: str, status: ServerStatus, fault: str | None,
            kind_ids: KindIds, facts: FactsCache, now: datetime) -> ServerRecord:
    """Free everything the server holds and set its status (DELETED, or ERROR with a fault).

    Idempotent: a server already DELETED is returned as it is, unless it still holds devices
    (a forced delete keeps them until its host confirms the domain is gone).
    """
    server, host_id, generation = _lock_server(conn, server_id)
    if server.status == ServerStatus.DELETED.value and conn.execute(
            select(devices.c.id).where(devices.c.owner == server_id).limit(1)).first() is None \
            and not _networks.has_ports(conn, server_id):
        return get_server(conn, server_id)
    if host_id is not None:
        free_devices(conn, server_id, host_id, None, kind_ids, now,
                     cached=(facts, generation))
    values: dict[str, Any] = {"status": status.value, "updated_at": now,
                              "generation": servers.c.generation + 1}
    if fault is not None:
        values["fault"] = fault
    conn.execute(update(servers).where(servers.c.id == server_id).values(values))
    if host_id is not None:
        recount_host(conn, host_id)
    _networks.free_ports(conn, server_id, detach=status is ServerStatus.DELETED, now=now)
    end_usage(conn, server_id, now)
    _finish_tasks(conn, server_id, "failed", fault or f"server {status.value.lower()}", now)
    return get_server(conn, server_id)


def complete_spawn(conn: Connection, server_id: str, kind_ids: KindIds, facts: FactsCache,
                   now: datetime) -> ServerRecord:
    """The agent started the server: its devices are allocated, metering starts."""
    server, host_id, generation = _lock_server(conn, server_id)
    if server.status != ServerStatus.BUILDING.value or host_id is None:
        raise Conflict(f"server {server_id} is {server.status}, not BUILDING on a host",
                       field="server")
    rows = load_rows(conn, host_id, cached=(facts, generation))
    allocate(conn, server_id, server.project, host_id, rows, lambda _r: True, kind_ids, now)
    conn.execute(update(servers).where(servers.c.id == server_id).values(
        status=ServerStatus.ACTIVE.value, updated_at=now,
        generation=servers.c.generation + 1))
    _finish_tasks(conn, server_id, "done", None, now)
    return get_server(conn, server_id)


def allocate(conn: Connection, server_id: str, project: str, host_id: int,
             rows: Mapping[PciAddress, DeviceRow], pick: Callable[[DeviceRow], bool],
             kind_ids: KindIds, now: datetime) -> list[str]:
    """The devices the server claimed on the host that ``pick`` picks are allocated (the
    host started the guest with them); those claimed for an alias start being metered. The
    addresses allocated."""
    host_name = conn.execute(select(hosts.c.name).where(hosts.c.id == host_id)).scalar_one()
    targets: list[Target] = []
    metered: list[dict[str, Any]] = []
    # A port's device is metered by what it is, e.g. "direct:physnet1", not by the port.
    metered_as = {port_alias(p.id): f"{p.vnic_type}:{p.physical_network}"
                  for p in _networks.server_ports(conn, [server_id]).get(server_id, ())}
    for r in sorted(rows.values(), key=lambda r: r.address):
        t = r.tracked
        if t.owner == server_id and pick(r):
            before = t
            if t.state is DeviceState.CLAIMED:
                t = replace(t, state=DeviceState.ALLOCATED)
            elif t.state is DeviceState.REMOVED and t.held_state is DeviceState.CLAIMED:
                t = replace(t, held_state=DeviceState.ALLOCATED)
            if t != before and r.owner_alias is not None:
                metered.append({"project": project,
                                "alias": metered_as.get(r.owner_alias, r.owner_alias),
                                "server_id": server_id, "host": host_name,
                                "address": str(t.address), "started_at": now,
                                "ended_at": None})
        targets.append(Target(t, r.owner_alias))
    write_host(conn, host_id, rows, targets, kind_ids, now)
    start_usage(conn, metered)
    return [m["address"] for m in metered]


def free_devices(conn: Connection, server_id: str, host_id: int,
                 addresses: Iterable[str] | None, kind_ids: KindIds, now: datetime, *,
                 cached: tuple[FactsCache, int] | None = None) -> list[str]:
    """Give back those of ``addresses`` (None: all) the server still holds on the host;
    which it did (their metering is the caller's). ``cached``: as :func:`load_rows`. A
    device tagged ``one_time_use`` comes back reserved (Nova's one-time-use devices: an
    operator cleans it, then unreserves it)."""
    wanted = None if addresses is None else set(addresses)
    rows = load_rows(conn, host_id, cached=cached)
    targets: list[Target] = []
    freed: list[str] = []
    for r in sorted(rows.values(), key=lambda r: r.address):
        t = r.tracked
        if t.owner != server_id or (wanted is not None and str(t.address) not in wanted):
            targets.append(Target(t, r.owner_alias))
            continue
        freed.append(str(t.address))
        if t.state is DeviceState.REMOVED:
            continue   # it vanished while held: now nobody holds it, the row goes
        once = t.device.tags.get("one_time_use") == "true"
        targets.append(Target(replace(t, state=DeviceState.AVAILABLE, owner=None,
                                      held_state=None, reserved=t.reserved or once)))
    if freed:
        write_host(conn, host_id, rows, targets, kind_ids, now)
        drop_empty_pools(conn, host_id)
    return freed
