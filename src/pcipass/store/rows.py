"""Rows to values and back: the store hands out records, never rows (house rule 1)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Row

from pcipass.pci.address import PciAddress
from pcipass.pci.device import DevType, HostInfo, HostKind, NetDev, NumaNode, PciDevice
from pcipass.pci.inventory import device_to_json, host_to_json
from pcipass.pci.pool import PoolKey
from pcipass.pci.reconcile import Tracked
from pcipass.records import DeviceRecord, DeviceState, HostRecord, PoolRecord

# Addresses repeat across reports of a host (and across hosts): parse each text once.
_address = lru_cache(maxsize=65536)(PciAddress.parse)

def device_facts(dev: PciDevice) -> dict[str, Any]:
    """The columns holding what discovery found: exactly the report's device object."""
    return device_to_json(dev)


def tracked_values(t: Tracked) -> dict[str, Any]:
    return {
        **device_facts(t.device),
        "state": t.state.value,
        "held_state": None if t.held_state is None else t.held_state.value,
        "reserved": t.reserved,
        "owner": t.owner,
    }


def to_device(m: Mapping[Any, Any]) -> PciDevice:
    parent = m["parent_addr"]
    return PciDevice(
        address=_address(m["address"]),
        vendor_id=m["vendor_id"],
        product_id=m["product_id"],
        subsystem_vendor_id=m["subsystem_vendor_id"],
        subsystem_product_id=m["subsystem_product_id"],
        class_code=m["class_code"],
        dev_type=DevType(m["dev_type"]),
        parent_addr=None if parent is None else _address(parent),
        vf_index=m["vf_index"],
        total_vfs=m["total_vfs"],
        num_vfs=m["num_vfs"],
        numa_node=m["numa_node"],
        iommu_group=m["iommu_group"],
        iommu_group_members=tuple(_address(a) for a in m["iommu_group_members"]),
        driver=m["driver"],
        netdevs=tuple(NetDev(n["name"], n.get("mac")) for n in m["netdevs"]),
        name=m["name"],
        card_serial_number=m["card_serial_number"],
        assignable=bool(m["assignable"]),
        tags=dict(m["tags"]),
        warnings=tuple(m["warnings"]),
    )


def to_tracked(row: Row[Any]) -> Tracked:
    m = row._mapping
    held = m["held_state"]
    return Tracked(
        device=to_device(m),
        state=DeviceState(m["state"]),
        reserved=bool(m["reserved"]),
        owner=m["owner"],
        held_state=None if held is None else DeviceState(held),
    )


def shown_state(state: DeviceState, reserved: bool) -> DeviceState:
    """What users see: a free device taken out of service shows as ``reserved``."""
    if reserved and state is DeviceState.AVAILABLE:
        return DeviceState.RESERVED
    return state


def to_record(host: str, t: Tracked, reason: str | None) -> DeviceRecord:
    """``reason`` is the stored, derived one (:func:`pcipass.store.derive.shown_reason`)."""
    return DeviceRecord(
        host=host,
        device=t.device,
        state=shown_state(t.state, t.reserved),
        reserved=t.reserved,
        owner=t.owner,
        reason=reason,
    )


def host_info(row: Row[Any]) -> HostInfo:
    m = row._mapping
    return HostInfo(
        hostname=m["hostname"],
        cpus=m["cpus"],
        memory_mb=m["memory_mb"],
        numa_nodes=tuple(
            NumaNode(id=n["id"], cpus=tuple(n["cpus"]), memory_mb=n["memory_mb"])
            for n in m["numa"]
        ),
        kind=HostKind(m["kind"]),
        migration_uri=m["migration_uri"],
    )


def host_values(info: HostInfo) -> dict[str, Any]:
    return {
        "hostname": info.hostname,
        "cpus": info.cpus,
        "memory_mb": info.memory_mb,
        "numa": host_to_json(info)["numa_nodes"],
        "kind": info.kind.value,
        "migration_uri": info.migration_uri,
    }


def empty_counts() -> dict[str, int]:
    return {"total": 0, **{s.value: 0 for s in DeviceState}}


def to_host(row: Row[Any], counts: dict[str, int] | None = None) -> HostRecord:
    m = row._mapping
    last: datetime | None = m["last_report_at"]
    return HostRecord(
        name=m["name"],
        generation=m["generation"],
        info=host_info(row),
        last_report_at=last,
        device_counts=counts if counts is not None else empty_counts(),
        reserved=bool(m.get("reserved", False)),
        reserved_reason=m.get("reserved_reason"),
        down=bool(m.get("down", False)),
    )


def pool_values(key: PoolKey) -> dict[str, Any]:
    return {
        "key": key.digest,
        "vendor_id": key.vendor_id,
        "product_id": key.product_id,
        "dev_type": key.dev_type.value,
        "numa_node": key.numa_node,
        "parent_addr": None if key.parent_addr is None else str(key.parent_addr),
        "tags_key": key.tags_key,
    }


def to_pool(host: str, row: Row[Any]) -> PoolRecord:
    m = row._mapping
    parent = m["parent_addr"]
    return PoolRecord(
        host=host,
        vendor_id=m["vendor_id"],
        product_id=m["product_id"],
        dev_type=DevType(m["dev_type"]),
        numa_node=m["numa_node"],
        parent_addr=None if parent is None else _address(parent),
        tags=dict(json.loads(m["tags_key"])),
        total=m["total"],
        free=m["free"],
    )
