"""Draining a host: an admin reserves it (nothing new is placed there) and sees what runs.

The reservation is one ``UPDATE hosts`` that takes the host row's lock, the same lock a
claim takes first (:mod:`pcipass.store.claims`): a claim that locked the row before sees the
host free and lands (the reservation then waits for it and the server shows in the drain
listing); a claim after it sees ``reserved`` under its lock and places nothing. The SQL
narrowing (:mod:`pcipass.store.candidates`) leaves reserved hosts out. What already runs
there keeps its devices. The host's ``generation`` is not touched: that is the inventory's
compare-and-swap, and an agent's report must not fail because an admin drained its host.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select, update

from pcipass.errors import NotFound
from pcipass.pci.address import PciAddress
from pcipass.records import HostRecord, ServerRecord
from pcipass.store.events import record_event
from pcipass.store.queries import get_host
from pcipass.store.rows import _address
from pcipass.store.schema import devices, hosts, servers
from pcipass.store.servers import LIVE, _query, records

REASON_MAX = 1000


@dataclass(frozen=True, slots=True)
class DrainEntry:
    """A server still on a draining host, with the device-spec tags of what it holds."""

    server: ServerRecord
    tags: dict[PciAddress, dict[str, str]]


def reserve_host(conn: Connection, name: str, reserved: bool, reason: str | None,
                 now: datetime) -> HostRecord:
    """Reserve (drain) or unreserve the host; each server still there logs it."""
    if reason is not None and len(reason) > REASON_MAX:
        reason = reason[:REASON_MAX]
    done = conn.execute(update(hosts).where(hosts.c.name == name).values(
        reserved=reserved, reserved_reason=reason if reserved else None)
        .returning(hosts.c.id))
    host_id = done.scalar()
    if host_id is None:
        raise NotFound(f"host {name} is not known", field="host")
    action = "reserve_host" if reserved else "unreserve_host"
    for sid in conn.execute(select(servers.c.id).where(
            servers.c.host_id == host_id, servers.c.status.in_(LIVE))).scalars():
        record_event(conn, sid, action, "done", reason if reserved else None, now, host=name)
    return get_host(conn, name)


def drain_entries(conn: Connection, name: str) -> tuple[HostRecord, tuple[DrainEntry, ...]]:
    """The host and the servers that still hold it (BUILDING, ACTIVE or DELETING), by name."""
    host = get_host(conn, name)
    rows = conn.execute(_query().where(hosts.c.name == name, servers.c.status.in_(LIVE))
                        .order_by(servers.c.name, servers.c.id)).all()
    found = records(conn, rows)
    tags: dict[str, dict[PciAddress, dict[str, str]]] = {s.id: {} for s in found}
    if found:
        for r in conn.execute(select(devices.c.owner, devices.c.address, devices.c.tags)
                              .where(devices.c.owner.in_(list(tags)))):
            tags[r.owner][_address(r.address)] = {str(k): str(v)
                                                   for k, v in (r.tags or {}).items()}
    return host, tuple(DrainEntry(s, tags[s.id]) for s in found)
