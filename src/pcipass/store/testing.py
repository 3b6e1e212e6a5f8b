"""TEST-ONLY writes that the public store does not offer.

Tests need devices in given states without going through a boot. Never call these from
production code: they skip every check a claim makes, but do keep the derived state (pools,
dependants, reasons) right, as every device writer must.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from pcipass.pci.address import PciAddress
from pcipass.records import DeviceRecord, DeviceState
from pcipass.store.derive import change_device
from pcipass.store.store import Store


def force_device_state(store: Store, host: str, address: PciAddress, state: DeviceState, *,
                       owner: str | None = None) -> DeviceRecord:
    """Set a device's stored state and owner as is (``held_state`` cleared)."""
    if state is DeviceState.RESERVED:
        raise ValueError("reserved is a flag: use Store.set_reserved")
    with store._tx.write() as conn:
        return change_device(
            conn, host, address,
            lambda t: replace(t, state=state, owner=owner, held_state=None),
            store._kind_ids, datetime.now(UTC))
