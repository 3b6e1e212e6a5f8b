"""An inventory report and its JSON form: the one parser for what agents send.

``discover --json`` prints :func:`inventory_to_json`; the API parses a report with
:func:`parse_inventory`, which refuses the whole report (naming the field) before anything is
stored, so a bad report never half-applies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pcipass.errors import InvalidAddress, InvalidInventory
from pcipass.pci.address import PciAddress
from pcipass.pci.device import DevType, HostInfo, HostKind, NetDev, NumaNode, PciDevice

_HEX4 = re.compile(r"^[0-9a-f]{4}$")
_HEX6 = re.compile(r"^[0-9a-f]{6}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Inventory:
    host: HostInfo
    devices: tuple[PciDevice, ...]

    def by_address(self) -> dict[PciAddress, PciDevice]:
        return {d.address: d for d in self.devices}


def valid_host_name(name: str) -> bool:
    """Host names are DNS-ish labels: they appear in URLs and tokens."""
    return bool(_NAME.match(name))


# --- to JSON -----------------------------------------------------------------------------

def device_to_json(dev: PciDevice) -> JSON:
    return {
        "address": str(dev.address),
        "vendor_id": dev.vendor_id,
        "product_id": dev.product_id,
        "subsystem_vendor_id": dev.subsystem_vendor_id,
        "subsystem_product_id": dev.subsystem_product_id,
        "class_code": dev.class_code,
        "dev_type": dev.dev_type.value,
        "parent_addr": str(dev.parent_addr) if dev.parent_addr else None,
        "vf_index": dev.vf_index,
        "total_vfs": dev.total_vfs,
        "num_vfs": dev.num_vfs,
        "numa_node": dev.numa_node,
        "iommu_group": dev.iommu_group,
        "iommu_group_members": [str(a) for a in dev.iommu_group_members],
        "driver": dev.driver,
        "netdevs": [{"name": n.name, "mac": n.mac} for n in dev.netdevs],
        "name": dev.name,
        "card_serial_number": dev.card_serial_number,
        "assignable": dev.assignable,
        "tags": dict(dev.tags),
        "warnings": list(dev.warnings),
    }


def host_to_json(host: HostInfo) -> JSON:
    return {
        "hostname": host.hostname,
        "cpus": host.cpus,
        "memory_mb": host.memory_mb,
        "numa_nodes": [
            {"id": n.id, "cpus": list(n.cpus), "memory_mb": n.memory_mb} for n in host.numa_nodes
        ],
        **({"migration_uri": host.migration_uri} if host.migration_uri is not None else {}),
        # Bare metal only: a hypervisor's report reads as it did before kinds existed.
        **({"kind": host.kind.value} if host.kind is not HostKind.HYPERVISOR else {}),
    }


def inventory_to_json(inv: Inventory) -> JSON:
    return {"host": host_to_json(inv.host), "devices": [device_to_json(d) for d in inv.devices]}


# --- from JSON ---------------------------------------------------------------------------

def _get(obj: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...],
         *, required: bool = False, default: Any = None) -> Any:
    if key not in obj or obj[key] is None:
        if required:
            raise InvalidInventory(f"{where}.{key} is required", field=f"{where}.{key}")
        return default
    value = obj[key]
    # bool is an int in Python; a JSON true is never a count or an id.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise InvalidInventory(f"{where}.{key} must not be a boolean", field=f"{where}.{key}")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise InvalidInventory(
            f"{where}.{key} must be {names}, not {type(value).__name__}", field=f"{where}.{key}"
        )
    return value


def _hex(obj: Mapping[str, Any], key: str, where: str, pattern: re.Pattern[str], digits: int,
         *, required: bool) -> str | None:
    value: str | None = _get(obj, key, where, str, required=required)
    if value is None:
        return None
    norm = value.lower().removeprefix("0x")
    if not pattern.match(norm):
        raise InvalidInventory(
            f"{where}.{key} {value!r} is not {digits} hex digits", field=f"{where}.{key}"
        )
    return norm


def _address(value: Any, field: str) -> PciAddress:
    try:
        return PciAddress.parse(value, field=field)
    except InvalidAddress as exc:
        raise InvalidInventory(exc.message, field=field) from None


def _count(obj: Mapping[str, Any], key: str, where: str) -> int | None:
    value: int | None = _get(obj, key, where, int)
    if value is not None and value < 0:
        raise InvalidInventory(f"{where}.{key} must not be negative", field=f"{where}.{key}")
    return value


def _serial(obj: Mapping[str, Any], where: str) -> str | None:
    value: str | None = _get(obj, "card_serial_number", where, str)
    if value is None:
        return None
    if not value or len(value) > 255 or not all(" " <= c <= "~" for c in value):
        raise InvalidInventory(
            f"{where}.card_serial_number {value[:40]!r} must be 1-255 printable ASCII "
            "characters (a VPD field)", field=f"{where}.card_serial_number")
    return value


def parse_device(obj: Any, where: str) -> PciDevice:
    if not isinstance(obj, Mapping):
        raise InvalidInventory(f"{where} must be an object", field=where)
    address = _address(_get(obj, "address", where, str, required=True), f"{where}.address")
    dev_type_raw = _get(obj, "dev_type", where, str, default=DevType.PCI.value)
    try:
        dev_type = DevType(dev_type_raw)
    except ValueError:
        raise InvalidInventory(
            f"{where}.dev_type {dev_type_raw!r} is not one of "
            f"{', '.join(t.value for t in DevType)}", field=f"{where}.dev_type",
        ) from None
    parent_raw = _get(obj, "parent_addr", where, str)
    parent = _address(parent_raw, f"{where}.parent_addr") if parent_raw is not None else None
    if dev_type is DevType.VF and parent is None:
        raise InvalidInventory(f"{where}: a type-VF needs parent_addr",
                               field=f"{where}.parent_addr")
    if dev_type is not DevType.VF and parent is not None:
        raise InvalidInventory(f"{where}: only a type-VF has a parent_addr",
                               field=f"{where}.parent_addr")
    members_raw = _get(obj, "iommu_group_members", where, list, default=[])
    members = tuple(
        _address(m, f"{where}.iommu_group_members[{i}]") for i, m in enumerate(members_raw)
    )
    netdevs = []
    for i, nd in enumerate(_get(obj, "netdevs", where, list, default=[])):
        nwhere = f"{where}.netdevs[{i}]"
        if not isinstance(nd, Mapping):
            raise InvalidInventory(f"{nwhere} must be an object", field=nwhere)
        mac = _get(nd, "mac", nwhere, str)
        if mac is not None:
            mac = mac.lower()
            if not _MAC.match(mac):
                raise InvalidInventory(f"{nwhere}.mac {mac!r} is not a MAC address",
                                       field=f"{nwhere}.mac")
        netdevs.append(NetDev(name=_get(nd, "name", nwhere, str, required=True), mac=mac))
    tags_raw = _get(obj, "tags", where, Mapping, default={})
    tags: dict[str, str] = {}
    for k, v in tags_raw.items():
        if not isinstance(v, str):
            raise InvalidInventory(f"{where}.tags.{k} must be a string", field=f"{where}.tags.{k}")
        tags[str(k)] = v
    warnings = _get(obj, "warnings", where, list, default=[])
    return PciDevice(
        address=address,
        vendor_id=_hex(obj, "vendor_id", where, _HEX4, 4, required=True) or "",
        product_id=_hex(obj, "product_id", where, _HEX4, 4, required=True) or "",
        subsystem_vendor_id=_hex(obj, "subsystem_vendor_id", where, _HEX4, 4, required=False),
        subsystem_product_id=_hex(obj, "subsystem_product_id", where, _HEX4, 4, required=False),
        class_code=_hex(obj, "class_code", where, _HEX6, 6, required=True) or "",
        dev_type=dev_type,
        parent_addr=parent,
        vf_index=_count(obj, "vf_index", where),
        total_vfs=_count(obj, "total_vfs", where),
        num_vfs=_count(obj, "num_vfs", where),
        numa_node=_count(obj, "numa_node", where),
        iommu_group=_count(obj, "iommu_group", where),
        iommu_group_members=members,
        driver=_get(obj, "driver", where, str),
        netdevs=tuple(netdevs),
        name=_get(obj, "name", where, str),
        card_serial_number=_serial(obj, where),
        assignable=_get(obj, "assignable", where, bool, default=False),
        tags=tags,
        warnings=tuple(str(w) for w in warnings),
    )


def parse_host(obj: Any, where: str = "host") -> HostInfo:
    if not isinstance(obj, Mapping):
        raise InvalidInventory(f"{where} must be an object", field=where)
    nodes = []
    seen: set[int] = set()
    for i, n in enumerate(_get(obj, "numa_nodes", where, list, default=[])):
        nwhere = f"{where}.numa_nodes[{i}]"
        if not isinstance(n, Mapping):
            raise InvalidInventory(f"{nwhere} must be an object", field=nwhere)
        node_id = _count(n, "id", nwhere)
        if node_id is None:
            raise InvalidInventory(f"{nwhere}.id is required", field=f"{nwhere}.id")
        if node_id in seen:
            raise InvalidInventory(f"{nwhere}.id {node_id} appears twice", field=f"{nwhere}.id")
        seen.add(node_id)
        cpus = _get(n, "cpus", nwhere, list, default=[])
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in cpus):
            raise InvalidInventory(f"{nwhere}.cpus must be a list of CPU numbers",
                                   field=f"{nwhere}.cpus")
        nodes.append(NumaNode(id=node_id, cpus=tuple(cpus),
                              memory_mb=_count(n, "memory_mb", nwhere) or 0))
    return HostInfo(
        hostname=_get(obj, "hostname", where, str),
        cpus=_count(obj, "cpus", where) or 0,
        memory_mb=_count(obj, "memory_mb", where) or 0,
        numa_nodes=tuple(nodes),
        migration_uri=_get(obj, "migration_uri", where, str) or None,
        kind=_host_kind(obj, where),
    )


def _host_kind(obj: Mapping[str, Any], where: str) -> HostKind:
    raw = _get(obj, "kind", where, str, default=HostKind.HYPERVISOR.value)
    try:
        return HostKind(raw)
    except ValueError:
        raise InvalidInventory(
            f"{where}.kind {raw!r} is not one of {', '.join(k.value for k in HostKind)}",
            field=f"{where}.kind") from None


def parse_inventory(obj: Any) -> Inventory:
    """Validate a whole report; the first problem found is raised with its field path."""
    if not isinstance(obj, Mapping):
        raise InvalidInventory("an inventory report must be an object", field="")
    host = parse_host(obj.get("host") or {})
    raw_devices = obj.get("devices")
    if raw_devices is None:
        raw_devices = []
    if not isinstance(raw_devices, Sequence) or isinstance(raw_devices, str):
        raise InvalidInventory("devices must be a list", field="devices")
    devices = [parse_device(d, f"devices[{i}]") for i, d in enumerate(raw_devices)]
    index: dict[PciAddress, int] = {}
    for i, dev in enumerate(devices):
        if dev.address in index:
            raise InvalidInventory(
                f"devices[{i}].address {dev.address} is reported twice "
                f"(also devices[{index[dev.address]}])", field=f"devices[{i}].address",
            )
        index[dev.address] = i
    node_ids = {n.id for n in host.numa_nodes}
    for i, dev in enumerate(devices):
        if dev.parent_addr is not None:
            parent = index.get(dev.parent_addr)
            if parent is None:
                raise InvalidInventory(
                    f"devices[{i}] ({dev.address}) names parent {dev.parent_addr}, "
                    "which is not in the report", field=f"devices[{i}].parent_addr",
                )
            if devices[parent].dev_type is not DevType.PF:
                raise InvalidInventory(
                    f"devices[{i}] ({dev.address}) names parent {dev.parent_addr}, "
                    "which is not a type-PF", field=f"devices[{i}].parent_addr",
                )
        if node_ids and dev.numa_node is not None and dev.numa_node not in node_ids:
            raise InvalidInventory(
                f"devices[{i}].numa_node {dev.numa_node} is not one of the host's NUMA nodes",
                field=f"devices[{i}].numa_node",
            )
    return Inventory(host=host, devices=tuple(devices))
