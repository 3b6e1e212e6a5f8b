"""A task's payload (JSON from the control plane) as typed values, and the guest it asks for.

The control plane sends what it decided: the server, its flavor and image, the claimed devices
(``unit`` numbers tie functions assigned as one IOMMU unit), the guest NUMA cells with the
host node each one is on, and the server's ports as ``interfaces`` (one per port, with the
device each SR-IOV port is bound to). :func:`parse_spawn` and :func:`parse_destroy` check it
once, naming the offending field; :func:`from_payload` adds what only the host knows (the CPUs
of each NUMA node, where its state directory is, the libvirt network ``normal`` ports go on)
and returns the :class:`DomainSpec`. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from lxml import etree

from pcipass.errors import InvalidInput
from pcipass.net.port import VnicType, check_rate, parse_mac, parse_vnic_type
from pcipass.pci.address import PciAddress
from pcipass.virt.domain import (
    BootDisk,
    DirectInterface,
    DiskFormat,
    DomainSpec,
    GuestCell,
    HostdevInterface,
    HostdevUnit,
    Interface,
    NetworkInterface,
    NumaPlacement,
    VirtType,
)
from pcipass.virt.xml import (
    direct_interface_element,
    hostdev_elements,
    hostdev_interface_element,
    network_interface_element,
    parse_xml,
    read_hostdevs,
)

__all__ = [
    "DEFAULT_NORMAL_NETWORK",
    "DISK_FORMAT_PROPERTY",
    "DOMAIN_PREFIX",
    "ChangePayload",
    "DestroyPayload",
    "Fragment",
    "LivePayload",
    "PayloadCell",
    "PayloadDevice",
    "PayloadInterface",
    "ServerRef",
    "SpawnPayload",
    "change_fragments",
    "domain_name",
    "domain_spec",
    "from_payload",
    "guest_interface",
    "interfaces",
    "overlay_path",
    "parse_change",
    "parse_destroy",
    "parse_live",
    "parse_spawn",
    "plugged_keys",
    "unmanaged_addresses",
]

DOMAIN_PREFIX = "pcipass-"
DISK_FORMAT_PROPERTY = "disk_format"   # the image property naming its file's format (Glance's)
DISKS_DIR = "disks"
DEFAULT_NORMAL_NETWORK = "default"   # the libvirt network ``normal`` ports are plugged into


def _bad(message: str, field: str) -> InvalidInput:
    return InvalidInput(f"invalid task payload: {message}", field=field)


def _object(obj: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise _bad(f"{field} must be an object, not {type(obj).__name__}", field)
    return obj


def _get(obj: Mapping[str, Any], key: str, where: str) -> Any:
    field = f"{where}.{key}" if where else key
    if key not in obj:
        raise _bad(f"{field} is missing", field)
    return obj[key]


def _str(value: Any, field: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value):
        raise _bad(f"{field} must be a non-empty string, not {value!r}", field)
    return value


def _int(value: Any, field: str, *, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{field} must be an integer, not {value!r}", field)
    if value < low:
        raise _bad(f"{field} must be at least {low}, not {value}", field)
    return value


def _optional_int(value: Any, field: str, *, low: int = 0) -> int | None:
    return None if value is None else _int(value, field, low=low)


def _bool(obj: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = obj.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(f"{where}.{key} must be true or false, not {value!r}", f"{where}.{key}")
    return value


def _list(value: Any, field: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise _bad(f"{field} must be a list, not {type(value).__name__}", field)
    return value


def _strings(value: Any, field: str) -> dict[str, str]:
    obj = _object(value if value is not None else {}, field)
    for k, v in obj.items():
        if not isinstance(v, str):
            raise _bad(f"{field}.{k} must be a string, not {v!r}", f"{field}.{k}")
    return {str(k): v for k, v in obj.items()}


# --- the values ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ServerRef:
    id: UUID
    name: str
    project: str


@dataclass(frozen=True, slots=True)
class PayloadDevice:
    """A claimed host function. ``unit`` groups functions assigned together (None: alone)."""

    address: PciAddress
    managed: bool = True
    alias: str | None = None
    unit: int | None = None


@dataclass(frozen=True, slots=True)
class PayloadInterface:
    """One of the server's ports as the claim bound it on this host.

    ``address`` is the VF (``direct``, ``macvtap``) or the PF (``direct-physical``), ``pf``
    the PF's netdev and ``vf_index`` the VF's index under it (what the VF is programmed
    through), ``vf_netdev`` the VF's own netdev (what a macvtap sits on). A ``normal`` port
    has none of them. ``vlan`` None is an untagged (flat) network.
    """

    port: str
    vnic_type: VnicType
    mac: str
    vlan: int | None = None
    address: PciAddress | None = None
    pf: str | None = None
    vf_index: int | None = None
    vf_netdev: str | None = None
    managed: bool = True
    trusted: bool = False
    spoofchk: bool = True
    max_tx_rate_mbps: int | None = None
    min_tx_rate_mbps: int | None = None
    network: str | None = None
    physical_network: str | None = None

    @property
    def is_vf(self) -> bool:
        """A VF this host programs (MAC, VLAN, ...) on its PF: ``direct`` and ``macvtap``."""
        return self.vnic_type in (VnicType.DIRECT, VnicType.MACVTAP)

    @property
    def on_switch(self) -> bool:
        """An SR-IOV port whose PF's upstream switch is told about it (bind/unbind)."""
        return self.vnic_type is not VnicType.NORMAL

    def describe(self) -> str:
        return f"{self.vnic_type} port {self.port}"


@dataclass(frozen=True, slots=True)
class PayloadCell:
    """A guest NUMA cell as the scheduler placed it: its vCPU ids, memory and host node."""

    id: int
    host_node: int
    vcpus: tuple[int, ...]
    memory_mb: int


@dataclass(frozen=True, slots=True)
class SpawnPayload:
    server: ServerRef
    vcpus: int
    ram_mb: int
    disk_gb: int
    image_name: str
    image_source: str
    disk_format: DiskFormat
    devices: tuple[PayloadDevice, ...]
    cells: tuple[PayloadCell, ...] | None
    interfaces: tuple[PayloadInterface, ...] = ()
    disk_from_move: int | None = None   # a cold move's: the source handed its disk over


@dataclass(frozen=True, slots=True)
class DestroyPayload:
    """A ``destroy`` task; a move's steps on one host (``migrate_out``, ``restart``, and a
    ``destroy`` with a move) carry the same, and ``move``, the move's id. ``keep_domain``:
    the domain of that name is the other side's (a resize on the same host), only the
    functions and ports listed are given back; ``keep_disk``: the disk is shared with the
    other side. ``domain_xml``: what a ``restart`` defines if the host lost the domain.
    ``hand_off_disk``: a ``migrate_out`` to another host uploads the stopped disk."""

    server: ServerRef
    devices: tuple[PayloadDevice, ...]
    interfaces: tuple[PayloadInterface, ...] = ()
    move: int | None = None
    keep_domain: bool = False
    keep_disk: bool = False
    domain_xml: str | None = None
    hand_off_disk: bool = False


@dataclass(frozen=True, slots=True)
class ChangePayload:
    """An ``attach`` or ``detach`` task: the functions to (un)plug as ``<hostdev>`` s and the
    ports to (un)plug as ``<interface>`` s, on a running server."""

    server: ServerRef
    action: str
    devices: tuple[PayloadDevice, ...]
    interfaces: tuple[PayloadInterface, ...] = ()


# --- parsing ------------------------------------------------------------------------------

def _server(obj: Mapping[str, Any]) -> ServerRef:
    s = _object(_get(obj, "server", ""), "server")
    text = _str(_get(s, "id", "server"), "server.id")
    try:
        sid = UUID(text)
    except ValueError:
        raise _bad(f"server.id {text!r} is not a UUID", "server.id") from None
    return ServerRef(sid, _str(s.get("name") or str(sid), "server.name"),
                     _str(s.get("project") or "", "server.project", empty=True))


def _device(obj: Any, where: str, *, unit: bool) -> PayloadDevice:
    d = _object(obj, where)
    text = _str(_get(d, "address", where), f"{where}.address")
    address = PciAddress.parse(text, field=f"{where}.address")
    managed = d.get("managed", True)
    if not isinstance(managed, bool):
        raise _bad(f"{where}.managed must be true or false, not {managed!r}",
                   f"{where}.managed")
    alias = d.get("alias")
    if alias is not None:
        alias = _str(alias, f"{where}.alias")
    number = d.get("unit") if unit else None
    if number is not None:
        number = _int(number, f"{where}.unit")
    return PayloadDevice(address, managed, alias, number)


def _devices(obj: Mapping[str, Any], *, unit: bool) -> tuple[PayloadDevice, ...]:
    raw = _list(obj.get("devices") if obj.get("devices") is not None else [], "devices")
    out = tuple(_device(d, f"devices[{i}]", unit=unit) for i, d in enumerate(raw))
    seen: set[PciAddress] = set()
    for i, d in enumerate(out):
        if d.address in seen:
            raise _bad(f"device {d.address} is listed twice", f"devices[{i}].address")
        seen.add(d.address)
    return out


_NEEDS: dict[VnicType, tuple[str, ...]] = {
    # what each vnic type's binding must carry for the host to set the port up
    VnicType.NORMAL: (),
    VnicType.DIRECT: ("address", "pf", "vf_index"),
    VnicType.MACVTAP: ("address", "pf", "vf_index"),
    VnicType.DIRECT_PHYSICAL: ("address",),
}


def _interface(obj: Any, where: str) -> PayloadInterface:
    i = _object(obj, where)
    port = _str(_get(i, "port", where), f"{where}.port")
    vnic = parse_vnic_type(_get(i, "vnic_type", where), field=f"{where}.vnic_type")
    try:
        mac = parse_mac(_get(i, "mac", where), field=f"{where}.mac")
    except InvalidInput as exc:
        raise _bad(f"port {port}: {exc.message}", exc.field or f"{where}.mac") from None
    vlan = _optional_int(i.get("vlan"), f"{where}.vlan", low=1)
    if vlan is not None and vlan > 4094:
        raise _bad(f"{where}.vlan {vlan} is not a VLAN id (1 to 4094)", f"{where}.vlan")
    address = i.get("address")
    if address is not None:
        address = PciAddress.parse(_str(address, f"{where}.address"), field=f"{where}.address")
    pf = i.get("pf")
    pf = _str(pf, f"{where}.pf") if pf is not None else None
    vf_netdev = i.get("vf_netdev")
    vf_netdev = _str(vf_netdev, f"{where}.vf_netdev") if vf_netdev is not None else None
    try:
        most, least = check_rate(i.get("max_tx_rate_mbps"), i.get("min_tx_rate_mbps"))
    except InvalidInput as exc:
        raise _bad(f"port {port}: {exc.message}", f"{where}.{exc.field}") from None
    network, physnet = i.get("network"), i.get("physical_network")
    out = PayloadInterface(
        port=port, vnic_type=vnic, mac=mac, vlan=vlan, address=address, pf=pf,
        vf_index=_optional_int(i.get("vf_index"), f"{where}.vf_index"), vf_netdev=vf_netdev,
        managed=_bool(i, "managed", where, True), trusted=_bool(i, "trusted", where, False),
        spoofchk=_bool(i, "spoofchk", where, True), max_tx_rate_mbps=most,
        min_tx_rate_mbps=least,
        network=_str(network, f"{where}.network") if network is not None else None,
        physical_network=_str(physnet, f"{where}.physical_network")
        if physnet is not None else None,
    )
    for key in _NEEDS[vnic]:
        if getattr(out, key) is None:
            raise _bad(f"{out.describe()} is not bound to a device this host can set up "
                       f"({where}.{key} is missing)", f"{where}.{key}")
    return out


def interfaces(obj: Mapping[str, Any]) -> tuple[PayloadInterface, ...]:
    """The payload's ``interfaces`` (absent or null: none), each checked; a port or a bound
    address listed twice is refused."""
    raw = _list(obj.get("interfaces") if obj.get("interfaces") is not None else [],
                "interfaces")
    out = tuple(_interface(x, f"interfaces[{n}]") for n, x in enumerate(raw))
    ports: set[str] = set()
    bound: set[PciAddress] = set()
    for n, nic in enumerate(out):
        if nic.port in ports:
            raise _bad(f"port {nic.port} is listed twice", f"interfaces[{n}].port")
        ports.add(nic.port)
        if nic.address is not None:
            if nic.address in bound:
                raise _bad(f"device {nic.address} is bound to two ports",
                           f"interfaces[{n}].address")
            bound.add(nic.address)
    return out


def _cells(obj: Any, vcpus: int) -> tuple[PayloadCell, ...] | None:
    """Cells' ``vcpus`` may be a count (vCPU ids follow on from the previous cell's) or the
    list of ids itself."""
    if obj is None:
        return None
    numa = _object(obj, "numa")
    raw = _list(_get(numa, "cells", "numa"), "numa.cells")
    if not raw:
        raise _bad("numa.cells is empty (send null for a guest without NUMA topology)",
                   "numa.cells")
    out: list[PayloadCell] = []
    next_cpu = 0
    for i, c in enumerate(raw):
        where = f"numa.cells[{i}]"
        cell = _object(c, where)
        given = _get(cell, "vcpus", where)
        ids: tuple[int, ...]
        if isinstance(given, list):
            ids = tuple(_int(v, f"{where}.vcpus[{j}]") for j, v in enumerate(given))
        else:
            count = _int(given, f"{where}.vcpus", low=1)
            ids = tuple(range(next_cpu, next_cpu + count))
        if not ids:
            raise _bad(f"{where}.vcpus is empty", f"{where}.vcpus")
        next_cpu = max(ids) + 1
        out.append(PayloadCell(
            id=_int(cell.get("id", i), f"{where}.id"),
            host_node=_int(_get(cell, "host_node", where), f"{where}.host_node"),
            vcpus=ids,
            memory_mb=_int(_get(cell, "memory_mb", where), f"{where}.memory_mb", low=1),
        ))
    total = sum(len(c.vcpus) for c in out)
    if total != vcpus:
        raise _bad(f"the NUMA cells hold {total} vCPUs, the flavor {vcpus}", "numa.cells")
    return tuple(out)


def parse_spawn(obj: Any) -> SpawnPayload:
    """A spawn task's payload, checked; :class:`InvalidInput` names the field at fault."""
    p = _object(obj, "payload")
    server = _server(p)
    flavor = _object(_get(p, "flavor", ""), "flavor")
    image = _object(_get(p, "image", ""), "image")
    vcpus = _int(_get(flavor, "vcpus", "flavor"), "flavor.vcpus", low=1)
    ram_mb = _int(_get(flavor, "ram_mb", "flavor"), "flavor.ram_mb", low=1)
    disk_gb = _int(flavor.get("disk_gb") or 0, "flavor.disk_gb")
    name = _str(image.get("name") or "", "image.name", empty=True)
    source = image.get("source")
    if not isinstance(source, str) or not source.startswith("/"):
        raise _bad(f"image {name or '?'} has no source file on the host "
                   f"(image.source is {source!r}, an absolute path is needed)", "image.source")
    props = _strings(image.get("properties"), "image.properties")
    fmt_text = props.get(DISK_FORMAT_PROPERTY, DiskFormat.QCOW2.value)
    try:
        fmt = DiskFormat(fmt_text)
    except ValueError:
        allowed = ", ".join(f.value for f in DiskFormat)
        raise _bad(f"image {name or '?'} has {DISK_FORMAT_PROPERTY} {fmt_text!r}; the "
                   f"host takes {allowed}",
                   f"image.properties.{DISK_FORMAT_PROPERTY}") from None
    return SpawnPayload(
        server=server, vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb, image_name=name,
        image_source=source, disk_format=fmt, devices=_devices(p, unit=True),
        cells=_cells(p.get("numa"), vcpus), interfaces=interfaces(p),
        disk_from_move=None if p.get("disk_from_move") is None else _int(
            p["disk_from_move"], "disk_from_move", low=1),
    )


def parse_destroy(obj: Any) -> DestroyPayload:
    p = _object(obj, "payload")
    move = p.get("move")
    xml = p.get("domain_xml")
    return DestroyPayload(
        _server(p), _devices(p, unit=False), interfaces(p),
        move=None if move is None else _int(move, "move", low=1),
        keep_domain=_bool(p, "keep_domain", "payload", False),
        keep_disk=_bool(p, "keep_disk", "payload", False),
        domain_xml=None if xml is None else _str(xml, "domain_xml"),
        hand_off_disk=_bool(p, "hand_off_disk", "payload", False))


CHANGE_ACTIONS = ("attach_device", "attach_interface", "detach_device", "detach_interface")


@dataclass(frozen=True, slots=True)
class LivePayload:
    """A ``live_prepare``, ``live_migrate`` or ``live_finish`` task (see
    :mod:`pcipass.store.live`). ``interfaces``: the server's ports as bound on the host that
    runs the task (the destination's bindings for prepare and finish, the source's for
    migrate); ``devices``: the passed-through functions on that host. ``live_migrate`` also
    carries the destination: its ``dest_uri``, its port bindings (``dest_interfaces``) and,
    for each migratable function, the destination's (``hostdevs``: source → destination)."""

    server: ServerRef
    move: int | None
    interfaces: tuple[PayloadInterface, ...]
    devices: tuple[PayloadDevice, ...] = ()
    dest_uri: str | None = None
    dest_interfaces: tuple[PayloadInterface, ...] = ()
    hostdevs: tuple[tuple[PciAddress, PciAddress], ...] = ()

    @property
    def vf_ports(self) -> tuple[PayloadInterface, ...]:
        """The ``direct`` ports: plugged as ``<interface type='hostdev'>``, unplugged for the
        move and plugged again on the destination's VF."""
        return tuple(nic for nic in self.interfaces if nic.vnic_type is VnicType.DIRECT)

    def replug(self) -> ChangePayload:
        """The ``direct`` ports as an attach of interfaces (for :func:`change_fragments`)."""
        return ChangePayload(self.server, "attach_interface", (), self.vf_ports)


def parse_live(obj: Any, *, migrate: bool = False) -> LivePayload:
    """A live-migration task's payload, checked; ``migrate``: a ``live_migrate`` task, which
    must name its destination."""
    p = _object(obj, "payload")
    move = _optional_int(p.get("move"), "move")
    dest_uri: str | None = None
    dest: tuple[PayloadInterface, ...] = ()
    pairs: list[tuple[PciAddress, PciAddress]] = []
    if migrate:
        dest_uri = _str(_get(p, "dest_uri", ""), "dest_uri")
        dest = interfaces({"interfaces": p.get("dest_interfaces")})
        for i, h in enumerate(_list(p.get("hostdevs") or [], "hostdevs")):
            where = f"hostdevs[{i}]"
            h = _object(h, where)
            src, dst = (PciAddress.parse(_str(_get(h, k, where), f"{where}.{k}"),
                                         field=f"{where}.{k}") for k in ("source", "dest"))
            pairs.append((src, dst))
    return LivePayload(_server(p), move, interfaces(p), _devices(p, unit=False), dest_uri,
                       dest, tuple(pairs))


def parse_change(obj: Any) -> ChangePayload:
    """An attach or detach task's payload (see :mod:`pcipass.store.attach`), checked."""
    p = _object(obj, "payload")
    action = _str(_get(p, "action", ""), "action")
    if action not in CHANGE_ACTIONS:
        raise _bad(f"action {action!r} is not one of {', '.join(CHANGE_ACTIONS)}", "action")
    out = ChangePayload(_server(p), action, _devices(p, unit=False), interfaces(p))
    if not out.devices and not out.interfaces:
        raise _bad("an attach or detach names no device and no interface", "devices")
    return out


# --- the guest ----------------------------------------------------------------------------

def domain_name(server_id: UUID | str) -> str:
    """The libvirt name of a server's domain: unique per server, whatever users call it."""
    return f"{DOMAIN_PREFIX}{server_id}"


def overlay_path(state_dir: Path, server_id: UUID | str) -> Path:
    """Where a server's boot disk (the overlay on its image) lives on the host."""
    return Path(state_dir).absolute() / DISKS_DIR / f"{server_id}.qcow2"


def hostdev_units(devices: Iterable[PayloadDevice]) -> tuple[HostdevUnit, ...]:
    """Devices grouped by unit number, in address order. A unit with any unmanaged function is
    unmanaged as a whole: libvirt takes one ``managed`` per slot's worth of functions, and the
    agent detaches what it must (see :func:`unmanaged_addresses`)."""
    groups: dict[tuple[int, int | PciAddress], list[PayloadDevice]] = {}
    for d in devices:
        key: tuple[int, int | PciAddress] = (0, d.unit) if d.unit is not None else (1, d.address)
        groups.setdefault(key, []).append(d)
    units = [HostdevUnit(tuple(d.address for d in g), managed=all(d.managed for d in g))
             for g in groups.values()]
    return tuple(sorted(units, key=lambda u: u.addresses[0]))


def unmanaged_addresses(devices: Iterable[PayloadDevice]) -> tuple[PciAddress, ...]:
    """Functions the agent detaches and re-attaches itself: those of unmanaged units."""
    return tuple(a for u in hostdev_units(devices) if not u.managed for a in u.addresses)


def _placement(cells: Sequence[PayloadCell],
               host_cpus: Mapping[int, Sequence[int]]) -> NumaPlacement:
    out = []
    for i, c in enumerate(cells):
        cpus = host_cpus.get(c.host_node)
        if not cpus:
            known = ", ".join(str(n) for n in sorted(host_cpus)) or "none"
            raise _bad(f"guest cell {c.id} is placed on host NUMA node {c.host_node}, which "
                       f"this host does not have (its nodes: {known})",
                       f"numa.cells[{i}].host_node")
        out.append(GuestCell(c.id, c.vcpus, c.memory_mb, c.host_node, tuple(cpus)))
    return NumaPlacement(tuple(out))


def guest_interface(nic: PayloadInterface, *, where: str = "interfaces",
                    normal_network: str = DEFAULT_NORMAL_NETWORK) -> Interface | None:
    """The guest NIC a port becomes: the VF itself (``direct``), a macvtap on the VF's netdev
    (``macvtap``), a virtio NIC on ``normal_network`` (``normal``); None for
    ``direct-physical``, whose PF is among the payload's devices as a plain hostdev."""
    if nic.vnic_type is VnicType.MACVTAP and nic.vf_netdev is None:
        raise _bad(f"macvtap port {nic.port} is bound to VF {nic.address}, which has no "
                   f"network device on this host to put a macvtap on ({where}.vf_netdev is "
                   f"null)", f"{where}.vf_netdev")
    try:
        if nic.vnic_type is VnicType.DIRECT:
            assert nic.address is not None   # the parser checked it
            return HostdevInterface(nic.mac, nic.address, nic.vlan, nic.managed)
        if nic.vnic_type is VnicType.MACVTAP:
            assert nic.vf_netdev is not None
            return DirectInterface(nic.mac, nic.vf_netdev, nic.vlan)
        if nic.vnic_type is VnicType.NORMAL:
            return NetworkInterface(nic.mac, normal_network)
        return None
    except InvalidInput as exc:
        raise _bad(f"port {nic.port}: {exc.message}", f"{where}.{exc.field}") from None


def domain_spec(p: SpawnPayload, *, host_cpus: Mapping[int, Sequence[int]], state_dir: Path,
                virt_type: VirtType = VirtType.KVM,
                normal_network: str = DEFAULT_NORMAL_NETWORK) -> DomainSpec:
    numa = _placement(p.cells, host_cpus) if p.cells is not None else None
    disk = BootDisk(str(overlay_path(state_dir, p.server.id)), p.image_source, p.disk_format)
    nics = [guest_interface(nic, where=f"interfaces[{n}]", normal_network=normal_network)
            for n, nic in enumerate(p.interfaces)]
    try:
        return DomainSpec(name=domain_name(p.server.id), uuid=p.server.id, vcpus=p.vcpus,
                          memory_mb=p.ram_mb, disk=disk, hostdevs=hostdev_units(p.devices),
                          numa=numa, interfaces=tuple(n for n in nics if n is not None),
                          virt_type=virt_type)
    except InvalidInput as exc:
        raise _bad(exc.message, exc.field or "payload") from None


def from_payload(payload: Any, *, host_cpus: Mapping[int, Sequence[int]], state_dir: Path,
                 virt_type: VirtType = VirtType.KVM,
                 normal_network: str = DEFAULT_NORMAL_NETWORK) -> DomainSpec:
    """The guest a spawn payload asks for on this host (``host_cpus``: NUMA node → its CPUs;
    ``normal_network``: the libvirt network ``normal`` ports are plugged into)."""
    return domain_spec(parse_spawn(payload), host_cpus=host_cpus, state_dir=state_dir,
                       virt_type=virt_type, normal_network=normal_network)


# --- hot-plug -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Fragment:
    """One device to plug into (or unplug from) a running domain: ``key`` is what names it
    there (``pci:ADDRESS`` for a hostdev or a VF interface, ``mac:MAC`` for another
    interface), ``xml`` the fragment for ``VirtDriver.attach_device``/``detach_device``."""

    key: str
    xml: str


def _pci_key(address: PciAddress) -> str:
    return f"pci:{address}"


def change_fragments(p: ChangePayload, *,
                     normal_network: str = DEFAULT_NORMAL_NETWORK) -> tuple[Fragment, ...]:
    """The hot-plug fragments of a change: each function its own ``<hostdev>`` (libvirt
    picks a free hot-pluggable slot; it cannot hot-plug a multi-function slot), then each
    port's ``<interface>`` (a ``direct-physical`` port's PF is among the devices)."""
    out = []
    for d in p.devices:
        (el,) = hostdev_elements(HostdevUnit((d.address,), managed=d.managed), 0)
        for guest in el.findall("address"):
            el.remove(guest)   # the guest slot is libvirt's to choose on a hot-plug
        out.append(Fragment(_pci_key(d.address), etree.tostring(el, encoding="unicode")))
    for n, nic in enumerate(p.interfaces):
        iface = guest_interface(nic, where=f"interfaces[{n}]", normal_network=normal_network)
        if iface is None:
            continue
        if isinstance(iface, HostdevInterface):
            key, el = _pci_key(iface.address), hostdev_interface_element(iface)
        elif isinstance(iface, DirectInterface):
            key, el = f"mac:{iface.mac.lower()}", direct_interface_element(iface)
        else:
            key, el = f"mac:{iface.mac.lower()}", network_interface_element(iface)
        out.append(Fragment(key, etree.tostring(el, encoding="unicode")))
    return tuple(out)


def plugged_keys(domain_xml: str) -> frozenset[str]:
    """The :attr:`Fragment.key` s a domain holds now (from its XML)."""
    root = parse_xml(domain_xml)
    keys = {_pci_key(h.host) for h in read_hostdevs(root, interfaces=True)}
    for iface in root.iterfind("devices/interface"):
        mac = iface.find("mac")
        if mac is not None and mac.get("address"):
            keys.add(f"mac:{str(mac.get('address')).lower()}")
    return frozenset(keys)
