"""Networks and ports: one function per use case, each run in the caller's transaction.

A port is attached to a server by ``ports.server_id`` (set by :func:`prepare_ports` before
the claim, compare-and-swapped on ``server_id IS NULL``), bound to a device by the claim
(:func:`bind_port`, ``WHERE server_id = ?``) and given back by :func:`free_ports`: its
binding cleared, and when the server is gone, deleted (if the boot made it) or detached.

MAC addresses are unique per network by the database's ``(network_id, mac)`` constraint, on
any number of API workers: a generated MAC that lost a race (or was taken already) is drawn
again, each try inside a savepoint, up to :data:`MAC_TRIES` times; a MAC the caller gave
that is taken is a ``mac_in_use`` conflict.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from pcipass.errors import Conflict, InvalidInput, NotFound
from pcipass.net.port import parse_mac, random_mac
from pcipass.records import NetworkRecord, PortBinding, PortRecord, ServerStatus
from pcipass.store.rows import _address
from pcipass.store.schema import networks, ports, servers

MAC_TRIES = 20
_SYSTEM_RNG = random.SystemRandom()


@dataclass(frozen=True, slots=True)
class NewPort:
    """A port a boot makes on a network (``--nic net-id=``), deleted with its server."""

    network_id: str
    vnic_type: str
    name: str | None = None


# --- rows to records ------------------------------------------------------------------------

def _port_counts() -> Any:
    return (select(ports.c.network_id, func.count().label("n"))
            .group_by(ports.c.network_id).subquery())


def _network_query() -> Any:
    counts = _port_counts()
    return (select(networks, func.coalesce(counts.c.n, 0).label("port_count"))
            .select_from(networks.outerjoin(counts, counts.c.network_id == networks.c.id)))


def _network(row: Row[Any]) -> NetworkRecord:
    return NetworkRecord(
        id=row.id, name=row.name, project=row.project, physical_network=row.physical_network,
        segmentation=row.segmentation, segmentation_id=row.segmentation_id,
        created_at=row.created_at, ports=int(row.port_count))


_PORT_QUERY = (
    select(ports, networks.c.name.label("network_name"),
           networks.c.physical_network.label("network_physnet"),
           networks.c.segmentation_id.label("network_segmentation_id"),
           servers.c.status.label("server_status"))
    .select_from(ports.join(networks, networks.c.id == ports.c.network_id)
                 .outerjoin(servers, servers.c.id == ports.c.server_id))
)


def _port(row: Row[Any]) -> PortRecord:
    binding = None
    if row.binding_address is not None:
        binding = PortBinding(host=row.binding_host, address=_address(row.binding_address),
                              pf_netdev=row.binding_pf, vf_index=row.binding_vf_index,
                              vf_netdev=row.binding_vf_netdev)
    # A normal port holds no device, so it is up whenever its server is.
    plugged = binding is not None or (row.vnic_type == "normal" and row.server_status in (
        ServerStatus.BUILDING.value, ServerStatus.ACTIVE.value))
    if not plugged:
        status = "DOWN"
    elif row.server_status == ServerStatus.ACTIVE.value:
        status = "ACTIVE"
    else:
        status = "BUILD"
    return PortRecord(
        id=row.id, name=row.name, project=row.project, network_id=row.network_id,
        network=row.network_name, physical_network=row.network_physnet,
        segmentation_id=row.network_segmentation_id, vnic_type=row.vnic_type, mac=row.mac,
        trusted=bool(row.trusted), spoofchk=bool(row.spoofchk),
        max_tx_rate_mbps=row.max_tx_rate_mbps, min_tx_rate_mbps=row.min_tx_rate_mbps,
        numa_affinity_policy=row.numa_affinity_policy, server_id=row.server_id,
        auto_delete=bool(row.auto_delete), status=status, binding=binding,
        created_at=row.created_at)


def _ordered(q: Any) -> Any:
    return q.order_by(ports.c.created_at, ports.c.id)


def server_ports(conn: Connection, server_ids: Sequence[str]) -> dict[str, list[PortRecord]]:
    """The ports attached to each server in the guest's order (those the claim did not
    place after, oldest first); one query for all of them."""
    out: dict[str, list[PortRecord]] = defaultdict(list)
    if server_ids:
        for row in conn.execute(_PORT_QUERY.where(ports.c.server_id.in_(list(server_ids)))
                                .order_by(ports.c.server_position.is_(None),
                                          ports.c.server_position, ports.c.created_at,
                                          ports.c.id)):
            out[row.server_id].append(_port(row))
    return out


def _get_port(conn: Connection, port_id: str) -> PortRecord:
    row = conn.execute(_PORT_QUERY.where(ports.c.id == port_id)).first()
    if row is None:
        raise NotFound(f"port {port_id!r} not found", field="port")
    return _port(row)


# --- unique violations ----------------------------------------------------------------------

def _violates(exc: IntegrityError, constraint: str, sqlite_columns: str) -> bool:
    """Whether ``exc`` is the unique violation of ``constraint`` (PostgreSQL names it,
    SQLite lists its columns)."""
    text = str(exc.orig)
    return constraint in text or f"UNIQUE constraint failed: {sqlite_columns}" in text


def _insert_unless(conn: Connection, table: Any, values: dict[str, Any], constraint: str,
                   sqlite_columns: str) -> bool:
    """Insert the row in a savepoint; False (nothing written) when ``constraint`` refused it."""
    try:
        with conn.begin_nested():
            conn.execute(insert(table), values)
    except IntegrityError as exc:
        if _violates(exc, constraint, sqlite_columns):
            return False
        raise
    return True


# --- networks -------------------------------------------------------------------------------

def create_network(conn: Connection, *, name: str, project: str | None,
                   physical_network: str, segmentation: str, segmentation_id: int | None,
                   now: datetime) -> NetworkRecord:
    """A new network; a name in use is a Conflict on ``name``."""
    taken = Conflict(f"a network named {name!r} exists already", field="name")
    if conn.execute(select(networks.c.id).where(networks.c.name == name)).first() is not None:
        raise taken
    record = NetworkRecord(id=str(uuid.uuid4()), name=name, project=project,
                           physical_network=physical_network, segmentation=str(segmentation),
                           segmentation_id=segmentation_id, created_at=now, ports=0)
    values = {"id": record.id, "name": name, "project": project,
              "physical_network": physical_network, "segmentation": record.segmentation,
              "segmentation_id": segmentation_id, "created_at": now}
    if not _insert_unless(conn, networks, values, "uq_networks_name", "networks.name"):
        raise taken   # another worker created it since the check
    return record


def list_networks(conn: Connection, project: str | None) -> tuple[NetworkRecord, ...]:
    """Every network (``project`` None), or the shared ones and ``project``'s; by name."""
    q = _network_query()
    if project is not None:
        q = q.where(or_(networks.c.project.is_(None), networks.c.project == project))
    return tuple(_network(r) for r in conn.execute(q.order_by(networks.c.name)))


def find_network(conn: Connection, ref: str, project: str | None) -> NetworkRecord:
    """By id, else by name, among those ``project`` may see (all when None); a network it may
    not see is NotFound, as one that does not exist."""
    found = conn.execute(_network_query().where(
        or_(networks.c.id == ref, networks.c.name == ref))).all()
    row = next((r for r in found if r.id == ref), found[0] if found else None)
    if row is None or (project is not None and row.project not in (None, project)):
        raise NotFound(f"network {ref!r} not found", field="network")
    return _network(row)


def _users(conn: Connection, network_id: str) -> str | None:
    """The servers that have ports on the network, for a message; None when none has."""
    held = sorted({r.server_id for r in conn.execute(
        select(ports.c.server_id).where(ports.c.network_id == network_id,
                                        ports.c.server_id.is_not(None)))})
    if not held:
        return None
    names = dict(conn.execute(select(servers.c.id, servers.c.name)
                              .where(servers.c.id.in_(held))).all())
    shown = ", ".join(f"{names[s]!r} ({s})" if s in names else s for s in held[:5])
    return shown + (f" and {len(held) - 5} more" if len(held) > 5 else "")


def delete_network(conn: Connection, ref: str) -> None:
    """Delete the network and its free ports; a Conflict (``network_in_use``) naming the
    servers while any of its ports is attached to one.

    The network's row is locked first: a port being made on it (which holds the row against
    deletion, :func:`_network_for`) finishes first or waits and finds it gone; a port
    attached meanwhile keeps its row, so the check after deleting the free ones sees it.
    """
    network = find_network(conn, ref, None)
    conn.execute(select(networks.c.id).where(networks.c.id == network.id).with_for_update())
    users = _users(conn, network.id)
    if users is None:
        conn.execute(delete(ports).where(ports.c.network_id == network.id,
                                         ports.c.server_id.is_(None)))
        users = _users(conn, network.id)
    if users is not None:
        raise Conflict(f"network {network.name!r} is in use by servers {users}",
                       field="network", code="network_in_use")
    conn.execute(delete(networks).where(networks.c.id == network.id))


# --- ports ----------------------------------------------------------------------------------

def _network_for(conn: Connection, ref: str, project: str) -> NetworkRecord:
    """The network (id or name) a port of ``project`` goes on, held against deletion until
    the transaction ends (``FOR KEY SHARE``, as the port's foreign key check would)."""
    network = find_network(conn, ref, project)
    held = conn.execute(select(networks.c.id).where(networks.c.id == network.id)
                        .with_for_update(read=True, key_share=True)).first()
    if held is None:
        raise NotFound(f"network {ref!r} not found", field="network")
    return network


def _insert_port(conn: Connection, values: dict[str, Any], network: NetworkRecord,
                 mac: str | None, mac_prefix: str, rng: random.Random) -> None:
    """Insert the port with ``mac``, or with a free random one under ``mac_prefix``."""
    if mac is not None:
        given = parse_mac(mac)
        if not _insert_unless(conn, ports, {**values, "mac": given},
                              "uq_ports_network_id_mac", "ports.network_id, ports.mac"):
            raise Conflict(f"MAC {given} is in use on network {network.name!r}", field="mac",
                           code="mac_in_use")
        return
    for _ in range(MAC_TRIES):
        if _insert_unless(conn, ports, {**values, "mac": random_mac(mac_prefix, rng)},
                          "uq_ports_network_id_mac", "ports.network_id, ports.mac"):
            return
    raise Conflict(f"no free MAC under prefix {mac_prefix} on network {network.name!r} "
                   f"after {MAC_TRIES} tries", field="mac", code="mac_exhausted")


def _port_values(*, project: str, network_id: str, name: str | None, vnic_type: str,
                 trusted: bool, spoofchk: bool, max_tx_rate_mbps: int | None,
                 min_tx_rate_mbps: int | None, numa_affinity_policy: str | None,
                 server_id: str | None, auto_delete: bool, now: datetime) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "name": name, "project": project,
            "network_id": network_id, "vnic_type": str(vnic_type), "trusted": trusted,
            "spoofchk": spoofchk, "max_tx_rate_mbps": max_tx_rate_mbps,
            "min_tx_rate_mbps": min_tx_rate_mbps,
            "numa_affinity_policy": None if numa_affinity_policy is None
            else str(numa_affinity_policy),
            "server_id": server_id, "server_position": None, "auto_delete": auto_delete,
            "binding_host": None,
            "binding_address": None, "binding_pf": None, "binding_vf_index": None,
            "binding_vf_netdev": None, "created_at": now, "updated_at": now}


def create_port(conn: Connection, *, project: str, network_id: str, name: str | None,
                vnic_type: str, mac: str | None, mac_prefix: str, trusted: bool,
                spoofchk: bool, max_tx_rate_mbps: int | None, min_tx_rate_mbps: int | None,
                numa_affinity_policy: str | None, rng: random.Random | None,
                now: datetime) -> PortRecord:
    """A free port of ``project`` on a network it may see (NotFound on ``network``
    otherwise), with the MAC given or a random free one under ``mac_prefix``."""
    network = _network_for(conn, network_id, project)
    values = _port_values(
        project=project, network_id=network.id, name=name, vnic_type=vnic_type,
        trusted=trusted, spoofchk=spoofchk, max_tx_rate_mbps=max_tx_rate_mbps,
        min_tx_rate_mbps=min_tx_rate_mbps, numa_affinity_policy=numa_affinity_policy,
        server_id=None, auto_delete=False, now=now)
    _insert_port(conn, values, network, mac, mac_prefix, rng or _SYSTEM_RNG)
    return _get_port(conn, values["id"])


def list_ports(conn: Connection, *, project: str | None, network: str | None,
               server: str | None) -> tuple[PortRecord, ...]:
    """Ports, oldest first: ``project``'s (all when None), on ``network`` (id or name),
    attached to ``server`` (its id)."""
    q = _PORT_QUERY
    if project is not None:
        q = q.where(ports.c.project == project)
    if network is not None:
        q = q.where(or_(networks.c.id == network, networks.c.name == network))
    if server is not None:
        q = q.where(ports.c.server_id == server)
    return tuple(_port(r) for r in conn.execute(_ordered(q)))


def find_port(conn: Connection, ref: str, project: str | None) -> PortRecord:
    """By id, else the oldest of that name; only ``project``'s when given."""
    q = _PORT_QUERY.where(or_(ports.c.id == ref, ports.c.name == ref))
    if project is not None:
        q = q.where(ports.c.project == project)
    found = conn.execute(_ordered(q)).all()
    row = next((r for r in found if r.id == ref), found[0] if found else None)
    if row is None:
        raise NotFound(f"port {ref!r} not found", field="port")
    return _port(row)


def _attached(port: PortRecord, server_id: str | None) -> Conflict:
    held = server_id or port.server_id
    return Conflict(f"port {port.name or port.id!r} is in use by server {held}", field="port",
                    code="port_in_use")


def delete_port(conn: Connection, ref: str, project: str | None) -> None:
    """Delete a free port; a Conflict (``port_in_use``) while a server has it."""
    port = find_port(conn, ref, project)
    gone = conn.execute(delete(ports).where(ports.c.id == port.id,
                                            ports.c.server_id.is_(None))).rowcount
    if gone != 1:
        now_held = conn.execute(select(ports.c.server_id)
                                .where(ports.c.id == port.id)).scalar()
        if now_held is None:
            raise NotFound(f"port {ref!r} not found", field="port")  # deleted meanwhile
        raise _attached(port, now_held)


def prepare_ports(conn: Connection, server_id: str, project: str, new: Sequence[NewPort],
                  existing: Sequence[str], *, mac_prefix: str, rng: random.Random | None,
                  now: datetime) -> tuple[PortRecord, ...]:
    """Attach a boot's ports to ``server_id`` before its claim: make one ``auto_delete``
    port per :class:`NewPort` and take each existing port (by id) of ``project`` that no
    server has (compare-and-swap on ``server_id IS NULL``; a Conflict ``port_in_use`` naming
    its server otherwise). The ports in the order new..., existing...."""
    if len(set(existing)) != len(existing):
        raise InvalidInput("a port may be given only once per server", field="nics")
    made: list[str] = []
    for p in new:
        network = _network_for(conn, p.network_id, project)
        values = _port_values(
            project=project, network_id=network.id, name=p.name, vnic_type=p.vnic_type,
            trusted=False, spoofchk=True, max_tx_rate_mbps=None, min_tx_rate_mbps=None,
            numa_affinity_policy=None, server_id=server_id, auto_delete=True, now=now)
        _insert_port(conn, values, network, None, mac_prefix, rng or _SYSTEM_RNG)
        made.append(values["id"])
    for port_id in existing:
        port = find_port(conn, port_id, project)
        took = conn.execute(update(ports).where(
            ports.c.id == port.id, ports.c.project == project, ports.c.server_id.is_(None))
            .values(server_id=server_id, updated_at=now)).rowcount
        if took != 1:
            raise _attached(port, conn.execute(select(ports.c.server_id)
                                               .where(ports.c.id == port.id)).scalar())
    return tuple(_get_port(conn, pid) for pid in (*made, *existing))


def bind_port(conn: Connection, port_id: str, server_id: str, binding: PortBinding,
              now: datetime) -> None:
    """Record the device the claim gave the port; Conflict if it is no longer attached to
    ``server_id`` (the claim then rolls back whole)."""
    bound = conn.execute(update(ports).where(ports.c.id == port_id,
                                             ports.c.server_id == server_id).values(
        binding_host=binding.host, binding_address=str(binding.address),
        binding_pf=binding.pf_netdev, binding_vf_index=binding.vf_index,
        binding_vf_netdev=binding.vf_netdev, updated_at=now)).rowcount
    if bound != 1:
        raise Conflict(f"port {port_id} is no longer attached to server {server_id}",
                       field="port", code="port_in_use")


def place_ports(conn: Connection, server_id: str, port_ids: Sequence[str]) -> None:
    """Record the order of the server's ports (the guest's NIC order)."""
    if port_ids:
        conn.execute(update(ports).where(ports.c.id == bindparam("b_id"),
                                         ports.c.server_id == server_id)
                     .values(server_position=bindparam("b_pos")),
                     [{"b_id": pid, "b_pos": i} for i, pid in enumerate(port_ids)])


def has_ports(conn: Connection, server_id: str) -> bool:
    return conn.execute(select(ports.c.id).where(ports.c.server_id == server_id)
                        .limit(1)).first() is not None


def free_ports(conn: Connection, server_id: str, *, detach: bool, now: datetime) -> None:
    """Clear the bindings of the server's ports; with ``detach`` (the server is gone), delete
    the ports its boot made and let go of the others."""
    conn.execute(update(ports).where(ports.c.server_id == server_id).values(
        binding_host=None, binding_address=None, binding_pf=None, binding_vf_index=None,
        binding_vf_netdev=None, updated_at=now))
    if detach:
        conn.execute(delete(ports).where(ports.c.server_id == server_id, ports.c.auto_delete))
        conn.execute(update(ports).where(ports.c.server_id == server_id)
                     .values(server_id=None, server_position=None, updated_at=now))


def release_ports(conn: Connection, server_id: str, now: datetime) -> None:
    """Undo :func:`prepare_ports` for a boot refused before its server row was written."""
    free_ports(conn, server_id, detach=True, now=now)
