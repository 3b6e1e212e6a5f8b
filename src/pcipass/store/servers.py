"""Server rows as records, and the reads over them (list, get, by name)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Row, and_, or_, select

from pcipass.errors import Conflict, InvalidInput, NotFound
from pcipass.pci.device import DevType
from pcipass.records import (
    DeviceState,
    Page,
    PortRecord,
    ServerDevice,
    ServerRecord,
    ServerStatus,
)
from pcipass.store.networks import server_ports
from pcipass.store.queries import check_limit, decode_marker, encode_marker
from pcipass.store.rows import _address, shown_state
from pcipass.store.schema import devices, hosts, servers

# Servers that hold their host's vCPUs and RAM (a DELETING one until its host confirms; a
# moving one on the host its row names, the other side through its move).
LIVE = (ServerStatus.BUILDING.value, ServerStatus.ACTIVE.value, ServerStatus.DELETING.value,
        ServerStatus.RESIZE.value, ServerStatus.MIGRATING.value,
        ServerStatus.VERIFY_RESIZE.value)


def _query() -> Any:
    return select(servers, hosts.c.name.label("host_name")).select_from(
        servers.outerjoin(hosts, hosts.c.id == servers.c.host_id))


def held_devices(conn: Connection, ids: Sequence[str]) -> dict[str, list[ServerDevice]]:
    """The devices each server holds, by address."""
    out: dict[str, list[ServerDevice]] = defaultdict(list)
    if not ids:
        return out
    for r in conn.execute(
            select(devices.c.owner, devices.c.address, devices.c.owner_alias, devices.c.state,
                   devices.c.reserved, devices.c.vendor_id, devices.c.product_id,
                   devices.c.dev_type, devices.c.numa_node)
            .where(devices.c.owner.in_(ids)).order_by(devices.c.address)):
        out[r.owner].append(ServerDevice(
            address=_address(r.address), alias=r.owner_alias,
            state=shown_state(DeviceState(r.state), bool(r.reserved)),
            vendor_id=r.vendor_id, product_id=r.product_id, dev_type=DevType(r.dev_type),
            numa_node=r.numa_node))
    return out


def to_server(row: Row[Any], held: Sequence[ServerDevice],
              nics: Sequence[PortRecord] = ()) -> ServerRecord:
    return ServerRecord(
        id=row.id, name=row.name, project=row.project, status=ServerStatus(row.status),
        flavor=row.flavor_name, image=row.image_name, host=row.host_name,
        devices=tuple(held), not_granted=tuple(row.not_granted), fault=row.fault,
        numa_cells=tuple(row.numa_cells), created_at=row.created_at,
        updated_at=row.updated_at, ports=tuple(nics))


def records(conn: Connection, rows: Sequence[Row[Any]]) -> list[ServerRecord]:
    """The servers with their devices and ports (one query each for all of them)."""
    ids = [r.id for r in rows]
    held = held_devices(conn, ids)
    nics = server_ports(conn, ids)
    return [to_server(r, held.get(r.id, ()), nics.get(r.id, ())) for r in rows]


def get_server(conn: Connection, server_id: str) -> ServerRecord:
    row = conn.execute(_query().where(servers.c.id == server_id)).first()
    if row is None:
        raise NotFound(f"server {server_id!r} not found", field="server")
    return records(conn, [row])[0]


def find_server(conn: Connection, ref: str, project: str | None) -> ServerRecord:
    """By id, else by name among servers not deleted; only ``project``'s when given. A name
    that several servers share is a Conflict asking for the id."""
    q = _query().where(servers.c.id == ref)
    if project is not None:
        q = q.where(servers.c.project == project)
    row = conn.execute(q).first()
    if row is None:
        q = _query().where(servers.c.name == ref,
                           servers.c.status != ServerStatus.DELETED.value)
        if project is not None:
            q = q.where(servers.c.project == project)
        found = conn.execute(q.limit(2)).all()
        if len(found) > 1:
            raise Conflict(f"several servers are named {ref!r}: give the id", field="server")
        row = found[0] if found else None
    if row is None:
        raise NotFound(f"server {ref!r} not found", field="server")
    return records(conn, [row])[0]


def list_servers(conn: Connection, *, project: str | None, host: str | None,
                 status: ServerStatus | None, limit: int,
                 marker: str | None) -> Page[ServerRecord]:
    """Newest first; deleted servers only when asked for by status."""
    check_limit(limit)
    q = _query()
    if project is not None:
        q = q.where(servers.c.project == project)
    if host is not None:
        q = q.where(hosts.c.name == host)
    if status is not None:
        q = q.where(servers.c.status == status.value)
    else:
        q = q.where(servers.c.status != ServerStatus.DELETED.value)
    if marker is not None:
        when, after = decode_marker(marker, (str, str))
        row = conn.execute(select(servers.c.created_at).where(servers.c.id == after)).first()
        if row is None or row.created_at.isoformat() != when:
            raise InvalidInput(f"marker {marker!r} is not one this server handed out",
                               field="marker")
        created = row.created_at
        q = q.where(or_(servers.c.created_at < created,
                        and_(servers.c.created_at == created, servers.c.id < after)))
    rows = conn.execute(q.order_by(servers.c.created_at.desc(), servers.c.id.desc())
                        .limit(limit + 1)).all()
    page = rows[:limit]
    nxt = (encode_marker(page[-1].created_at.isoformat(), page[-1].id)
           if len(rows) > limit else None)
    return Page(tuple(records(conn, page)), nxt)
