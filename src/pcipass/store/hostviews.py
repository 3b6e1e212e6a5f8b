"""Hosts as the scheduler sees them (:class:`pcipass.sched.HostView`), built from rows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Row, select

from pcipass.pci.reconcile import Tracked
from pcipass.records import DeviceState
from pcipass.sched.snapshot import DeviceView, HostView, NumaCell
from pcipass.store.facts import FactsCache
from pcipass.store.schema import devices, hosts

# What a host view needs of a host row.
HOST_COLUMNS = (hosts.c.id, hosts.c.name, hosts.c.generation, hosts.c.cpus,
                hosts.c.memory_mb, hosts.c.numa, hosts.c.used_vcpus, hosts.c.used_ram_mb,
                hosts.c.numa_used)


def numa_cells(numa: Sequence[Mapping[str, Any]],
               used: Mapping[str, Sequence[int]]) -> tuple[NumaCell, ...]:
    """Free vCPUs and RAM per host node: its capacity less what NUMA guests hold there."""
    cells = []
    for node in numa:
        cpus, ram = used.get(str(node["id"]), (0, 0))
        cells.append(NumaCell(id=node["id"], free_cpus=len(node["cpus"]) - cpus,
                              free_ram_mb=node["memory_mb"] - ram))
    return tuple(cells)


def host_view(host: Any, views: Iterable[DeviceView]) -> HostView:
    return HostView(
        name=host.name,
        free_vcpus=host.cpus - host.used_vcpus,
        free_ram_mb=host.memory_mb - host.used_ram_mb,
        numa=numa_cells(host.numa, host.numa_used),
        devices=tuple(views),
    )


def tracked_views(tracked: Iterable[Tracked]) -> list[DeviceView]:
    return [DeviceView(t.device, t.state, t.reserved) for t in tracked]


def load_views(conn: Connection, host_ids: Sequence[int], facts: FactsCache
               ) -> list[HostView]:
    """The hosts, in the order given, with all their devices."""
    if not host_ids:
        return []
    rows = {r.id: r for r in conn.execute(select(*HOST_COLUMNS)
                                          .where(hosts.c.id.in_(host_ids)))}
    states: dict[int, list[Row[Any, Any, Any, Any]]] = {i: [] for i in host_ids}
    for r in conn.execute(select(devices.c.host_id, devices.c.address, devices.c.state,
                                 devices.c.reserved).where(devices.c.host_id.in_(host_ids))):
        states[r.host_id].append(r)
    known = facts.get(conn, [(i, rows[i].generation, [r.address for r in states[i]])
                             for i in host_ids if i in rows])
    out = []
    for i in host_ids:
        if i not in rows:
            continue
        found = known.get(i, {})
        out.append(host_view(rows[i], (
            DeviceView(found[r.address], DeviceState(r.state), bool(r.reserved))
            for r in sorted(states[i], key=lambda r: r.address))))
    return out
