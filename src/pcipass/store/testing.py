"""TEST-ONLY writes that the public store does not offer yet.

Tests need allocated devices before claims exist (they come with the next issue, which
replaces this module's use). Never call these from production code: they skip every check
a claim will make, but do keep the pool counts right, as every device writer must.
"""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import select, update

from pcipass.errors import NotFound
from pcipass.pci.address import PciAddress
from pcipass.records import DeviceRecord, DeviceState
from pcipass.store.inventory import slot_of
from pcipass.store.pools import drop_empty_pools, sync_pools
from pcipass.store.rows import to_record, to_tracked
from pcipass.store.schema import devices, hosts
from pcipass.store.store import Store


def force_device_state(store: Store, host: str, address: PciAddress, state: DeviceState, *,
                       owner: str | None = None) -> DeviceRecord:
    """Set a device's stored state and owner as is (``held_state`` cleared)."""
    if state is DeviceState.RESERVED:
        raise ValueError("reserved is a flag: use Store.set_reserved")
    tx = store._tx
    with tx.write() as conn:
        host_id = conn.execute(
            select(hosts.c.id).where(hosts.c.name == host).with_for_update()
        ).scalar()
        row = None if host_id is None else conn.execute(
            select(devices).where(devices.c.host_id == host_id,
                                  devices.c.address == str(address))
        ).first()
        if host_id is None or row is None:
            raise NotFound(f"host {host} has no device {address}")
        before = to_tracked(row)
        after = replace(before, state=state, owner=owner, held_state=None)
        ids = sync_pools(conn, host_id, [(slot_of(before), slot_of(after))])
        s = slot_of(after)
        conn.execute(update(devices).where(devices.c.id == row.id).values(
            state=state.value, owner=owner, held_state=None,
            pool_id=None if s is None else ids[s.key],
        ))
        drop_empty_pools(conn, host_id)
        return to_record(host, after)
