"""Records to JSON: the one place the API decides how a store value looks on the wire.

Devices and hosts reuse ``pcipass.pci.inventory``'s serialisers, so a device reads back in the
very form an agent reported it, plus the control plane's bookkeeping.
"""

from __future__ import annotations

from typing import Any

from pcipass.pci.alias import Alias, alias_entry_to_json
from pcipass.pci.inventory import device_to_json, host_to_json
from pcipass.records import (
    DeviceRecord,
    EventRecord,
    FlavorRecord,
    HostRecord,
    ImageRecord,
    MoveRecord,
    NetworkRecord,
    PoolRecord,
    PortBinding,
    PortRecord,
    Principal,
    QuotaRecord,
    ReportResult,
    ServerDevice,
    ServerRecord,
    UsageRecord,
)
from pcipass.services import Explanation
from pcipass.services.drain import DrainReport
from pcipass.services.live import LiveDrainReport

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
        "reserved": rec.reserved,
        "reserved_reason": rec.reserved_reason,
        "down": rec.down,
        "kind": rec.info.kind.value,
        "migration_uri": rec.info.migration_uri,
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


# --- issue 3 ---------------------------------------------------------------------------------

def alias_view(alias: Alias) -> JSON:
    """The entries in Nova's own JSON, so an operator can paste them back into nova.conf."""
    return {
        "name": alias.name,
        "device_type": alias.dev_type.value if alias.dev_type is not None else None,
        "numa_policy": alias.numa_policy.value,
        "entries": [alias_entry_to_json(e) for e in alias.entries],
    }


def flavor_view(rec: FlavorRecord) -> JSON:
    return {
        "id": rec.id,
        "name": rec.name,
        "vcpus": rec.vcpus,
        "ram_mb": rec.ram_mb,
        "disk_gb": rec.disk_gb,
        "extra_specs": dict(rec.extra_specs),
        "is_public": rec.is_public,
        "projects": list(rec.projects),
    }


def image_view(rec: ImageRecord) -> JSON:
    return {
        "id": rec.id,
        "name": rec.name,
        "source": rec.source,
        "properties": dict(rec.properties),
        "project": rec.project,
    }


def server_device_view(dev: ServerDevice) -> JSON:
    return {
        "address": str(dev.address),
        "alias": dev.alias,
        "state": dev.state.value,
        "vendor_id": dev.vendor_id,
        "product_id": dev.product_id,
        "dev_type": dev.dev_type.value,
        "numa_node": dev.numa_node,
    }


def server_view(rec: ServerRecord) -> JSON:
    return {
        "id": rec.id,
        "name": rec.name,
        "project": rec.project,
        "status": rec.status.value,
        "flavor": rec.flavor,
        "image": rec.image,
        "host": rec.host,
        "devices": [server_device_view(d) for d in rec.devices],
        "not_granted": list(rec.not_granted),
        "fault": {"message": rec.fault} if rec.fault is not None else None,
        "numa_cells": list(rec.numa_cells),
        "ports": [port_view(x) for x in rec.ports],
        "created_at": rec.created_at,
        "updated_at": rec.updated_at,
    }


def move_view(rec: MoveRecord) -> JSON:
    return {"id": rec.id, "server_id": rec.server_id, "kind": rec.kind.value,
            "status": rec.status.value, "source": rec.source, "dest": rec.dest,
            "old_flavor": rec.old_flavor, "new_flavor": rec.new_flavor,
            "auto_confirm": rec.auto_confirm, "message": rec.message,
            "created_at": rec.created_at, "updated_at": rec.updated_at}


def event_view(rec: EventRecord) -> JSON:
    return {"id": rec.id, "server_id": rec.server_id, "action": rec.action,
            "outcome": rec.outcome, "message": rec.message, "host": rec.host,
            "detail": dict(rec.detail), "at": rec.at}


def drain_view(rep: DrainReport) -> JSON:
    return {"host": host_view(rep.host), "note": rep.note,
            "servers": [{"server": server_view(d.server), "live_migratable": d.live_migratable,
                         "blockers": list(d.blockers)} for d in rep.servers]}


def live_drain_view(rep: LiveDrainReport) -> JSON:
    return {"host": host_view(rep.host),
            "migrating": [server_view(s) for s in rep.migrating],
            "not_moved": [{"server": server_view(n.server), "blockers": list(n.blockers),
                           "reason": n.reason} for n in rep.not_moved]}


def explanation_view(exp: Explanation) -> JSON:
    return {
        "message": exp.message,
        "fits": exp.fits,
        "hosts": [{"host": v.host, "fits": v.fits, "reason": v.reason,
                   "devices": list(v.devices)} for v in exp.hosts],
    }


def quota_view(rec: QuotaRecord) -> JSON:
    return {"project": rec.project, "alias": rec.alias, "limit": rec.limit, "used": rec.used}


def usage_view(rec: UsageRecord) -> JSON:
    return {
        "project": rec.project,
        "alias": rec.alias,
        "device_seconds": rec.device_seconds,
        "device_hours": rec.device_seconds / 3600.0,
    }


# --- issue 5 ---------------------------------------------------------------------------------

def network_view(rec: NetworkRecord) -> JSON:
    return {
        "id": rec.id,
        "name": rec.name,
        "project": rec.project,
        "physical_network": rec.physical_network,
        "segmentation": rec.segmentation,
        "segmentation_id": rec.segmentation_id,
        "ports": rec.ports,
        "created_at": rec.created_at,
    }


def binding_view(b: PortBinding) -> JSON:
    return {"host": b.host, "address": str(b.address), "pf_netdev": b.pf_netdev,
            "vf_index": b.vf_index, "vf_netdev": b.vf_netdev}


def port_view(rec: PortRecord) -> JSON:
    return {
        "id": rec.id,
        "name": rec.name,
        "project": rec.project,
        "network_id": rec.network_id,
        "network": rec.network,
        "physical_network": rec.physical_network,
        "segmentation_id": rec.segmentation_id,
        "vnic_type": rec.vnic_type,
        "mac": rec.mac,
        "trusted": rec.trusted,
        "spoofchk": rec.spoofchk,
        "max_tx_rate_mbps": rec.max_tx_rate_mbps,
        "min_tx_rate_mbps": rec.min_tx_rate_mbps,
        "numa_affinity_policy": rec.numa_affinity_policy,
        "server_id": rec.server_id,
        "auto_delete": rec.auto_delete,
        "status": rec.status,
        "binding": binding_view(rec.binding) if rec.binding is not None else None,
        "created_at": rec.created_at,
    }
