"""Records to JSON: the one place the API decides how a store value looks on the wire.

Devices and hosts reuse ``pcipass.pci.inventory``'s serialisers, so a device reads back in the
very form an agent reported it, plus the control plane's bookkeeping.
"""

from __future__ import annotations

from typing import Any

from pcipass.pci.inventory import device_to_json, host_to_json
from pcipass.records import DeviceRecord, HostRecord, PoolRecord, Principal, ReportResult

JSON = dict[str, Any]


def host_view(rec: HostRecord) -> JSON:
    info = host_to_json(rec.info)
    counts = {k: v for k, v in rec.device_counts.items() if k != "total"}
    return {
        "name": rec.name,
        "generation": rec.generation,
        "cpus": info["cpus"],
        "memory_mb": info["memory_mb"],
        "numa_nodes": info["numa_nodes"],
        "last_report_at": rec.last_report_at,
        "devices": {"total": rec.device_counts.get("total", sum(counts.values())), **counts},
    }


def device_view(rec: DeviceRecord) -> JSON:
    return {
        **device_to_json(rec.device),
        "host": rec.host,
        "state": rec.state.value,
        "reserved": rec.reserved,
        "owner": rec.owner,
        "reason": rec.reason,
    }


def pool_view(rec: PoolRecord) -> JSON:
    return {
        "host": rec.host,
        "vendor_id": rec.vendor_id,
        "product_id": rec.product_id,
        "dev_type": rec.dev_type.value,
        "numa_node": rec.numa_node,
        "parent_addr": str(rec.parent_addr) if rec.parent_addr is not None else None,
        "tags": dict(rec.tags),
        "total": rec.total,
        "free": rec.free,
    }


def report_view(res: ReportResult) -> JSON:
    return {
        "host": res.host,
        "generation": res.generation,
        "changed": res.changed,
        "added": res.added,
        "updated": res.updated,
        "removed": res.removed,
        "gone": res.gone,
    }


def token_view(principal: Principal, secret: str) -> JSON:
    return {
        "id": principal.token_id,
        "token": secret,
        "role": principal.role.value,
        "project": principal.project,
        "host": principal.host,
    }
