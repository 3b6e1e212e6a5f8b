"""Libvirt domain XML from a :class:`~pcipass.virt.domain.DomainSpec`, and back.

Built element by element with lxml: no value ever lands in XML by string formatting, so a
name or path cannot break the document.

Guests use the q35 machine. Each hostdev unit gets its own ``pcie-root-port`` (controller
index 1, 2, ... in unit order) and sits in slot 0 of that port's bus, its functions as
:meth:`HostdevUnit.guest_functions` numbers them, ``multifunction='on'`` on function 0 when
there are several. Behind a root port a passed-through device is a PCIe endpoint with a link,
as on the host (drivers of GPUs and NICs expect that); libvirt numbers the controllers it adds
for other devices after ours.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from pcipass.errors import InvalidInput
from pcipass.pci.address import PciAddress
from pcipass.virt.domain import (
    DirectInterface,
    DomainSpec,
    HostdevInterface,
    HostdevUnit,
    Interface,
    NetworkInterface,
    format_cpuset,
)

__all__ = [
    "GuestHostdev",
    "build_domain",
    "build_domain_xml",
    "direct_interface_element",
    "hostdev_elements",
    "hostdev_interface_element",
    "network_interface_element",
    "parse_xml",
    "read_hostdevs",
]

MACHINE = "q35"
ARCH = "x86_64"


def _sub(parent: etree._Element, tag: str, /, text: str | None = None,
         **attrs: str) -> etree._Element:
    el = etree.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def _hex(value: int, width: int) -> str:
    return f"0x{value:0{width}x}"


def _pci_attrs(addr: PciAddress) -> dict[str, str]:
    return {"domain": _hex(addr.domain, 4), "bus": _hex(addr.bus, 2),
            "slot": _hex(addr.slot, 2), "function": _hex(addr.function, 1)}


def hostdev_elements(unit: HostdevUnit, guest_bus: int) -> list[etree._Element]:
    """One ``<hostdev>`` per function of ``unit``, all in slot 0 of guest bus ``guest_bus``."""
    functions = unit.guest_functions()
    out = []
    for host, fn in functions:
        hd = etree.Element("hostdev", mode="subsystem", type="pci",
                           managed="yes" if unit.managed else "no")
        _sub(hd, "driver", name="vfio")
        _sub(_sub(hd, "source"), "address", **_pci_attrs(host))
        guest = {"type": "pci", **_pci_attrs(PciAddress(0, guest_bus, 0, fn))}
        if fn == 0 and len(functions) > 1:
            guest["multifunction"] = "on"
        _sub(hd, "address", **guest)
        out.append(hd)
    return out


def _mac_and_vlan(iface: etree._Element, mac: str, vlan: int | None) -> None:
    _sub(iface, "mac", address=mac)
    if vlan is not None:
        _sub(_sub(iface, "vlan"), "tag", id=str(vlan))


def hostdev_interface_element(nic: HostdevInterface) -> etree._Element:
    """vnic type ``direct``: the VF itself, with the port's MAC and VLAN."""
    iface = etree.Element("interface", type="hostdev", managed="yes" if nic.managed else "no")
    _sub(iface, "mac", address=nic.mac)
    _sub(iface, "driver", name="vfio")
    _sub(_sub(iface, "source"), "address", type="pci", **_pci_attrs(nic.address))
    if nic.vlan is not None:
        _sub(_sub(iface, "vlan"), "tag", id=str(nic.vlan))
    return iface


def direct_interface_element(nic: DirectInterface) -> etree._Element:
    """vnic type ``macvtap``: a macvtap in passthrough mode on the VF's netdev."""
    iface = etree.Element("interface", type="direct")
    _mac_and_vlan(iface, nic.mac, nic.vlan)
    _sub(iface, "source", dev=nic.dev, mode="passthrough")
    _sub(iface, "model", type="virtio")
    return iface


def network_interface_element(nic: NetworkInterface) -> etree._Element:
    """vnic type ``normal``: a virtio NIC on a libvirt network (the agent's ``normal_network``)."""
    iface = etree.Element("interface", type="network")
    _sub(iface, "mac", address=nic.mac)
    _sub(iface, "source", network=nic.network)
    _sub(iface, "model", type="virtio")
    return iface


def _interface_element(nic: Interface) -> etree._Element:
    if isinstance(nic, HostdevInterface):
        return hostdev_interface_element(nic)
    if isinstance(nic, DirectInterface):
        return direct_interface_element(nic)
    return network_interface_element(nic)


def _numa(root: etree._Element, spec: DomainSpec) -> None:
    """Memory strict on each cell's host node, each vCPU pinned to its cell's host CPUs."""
    numa = spec.numa
    if numa is None:
        return
    tune = _sub(root, "cputune")
    for cell in numa.cells:
        for v in cell.vcpus:
            _sub(tune, "vcpupin", vcpu=str(v), cpuset=format_cpuset(cell.host_cpus))
    nt = _sub(root, "numatune")
    _sub(nt, "memory", mode="strict", nodeset=format_cpuset(numa.host_nodes))
    for cell in numa.cells:
        _sub(nt, "memnode", cellid=str(cell.id), mode="strict", nodeset=str(cell.host_node))
    cells = _sub(_sub(root, "cpu"), "numa")
    for cell in numa.cells:
        _sub(cells, "cell", id=str(cell.id), cpus=format_cpuset(cell.vcpus),
             memory=str(cell.memory_mb * 1024), unit="KiB")


def build_domain(spec: DomainSpec) -> etree._Element:
    root = etree.Element("domain", type=str(spec.virt_type))
    _sub(root, "name", spec.name)
    _sub(root, "uuid", str(spec.uuid))
    _sub(root, "memory", str(spec.memory_mb * 1024), unit="KiB")
    vcpu = _sub(root, "vcpu", str(spec.vcpus), placement="static")
    if spec.numa is not None:
        vcpu.set("cpuset", format_cpuset(spec.numa.host_cpus))
    _numa(root, spec)
    os_ = _sub(root, "os")
    _sub(os_, "type", "hvm", arch=ARCH, machine=MACHINE)
    _sub(os_, "boot", dev="hd")
    features = _sub(root, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    devices = _sub(root, "devices")
    if spec.disk is not None:
        disk = _sub(devices, "disk", type="file", device="disk")
        _sub(disk, "driver", name="qemu", type="qcow2")
        _sub(disk, "source", file=spec.disk.overlay)
        backing = _sub(disk, "backingStore", type="file")
        _sub(backing, "format", type=str(spec.disk.backing_format))
        _sub(backing, "source", file=spec.disk.backing)
        _sub(disk, "target", dev="vda", bus="virtio")
    for index, _unit in enumerate(spec.hostdevs, start=1):
        _sub(devices, "controller", type="pci", index=str(index), model="pcie-root-port")
    for index, unit in enumerate(spec.hostdevs, start=1):
        devices.extend(hostdev_elements(unit, index))
    for nic in spec.interfaces:
        devices.append(_interface_element(nic))
    return root


def build_domain_xml(spec: DomainSpec) -> str:
    return etree.tostring(build_domain(spec), encoding="unicode", pretty_print=True)


@dataclass(frozen=True, slots=True)
class GuestHostdev:
    """A ``<hostdev>`` PCI device as a domain XML holds it (what libvirt kept or assigned)."""

    host: PciAddress
    guest: PciAddress | None
    managed: bool
    multifunction: bool


_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def parse_xml(text: str) -> etree._Element:
    """Parse domain XML from libvirt or a state file, entities and network access off."""
    try:
        return etree.fromstring(text.encode(), _PARSER)
    except etree.XMLSyntaxError as exc:
        raise InvalidInput(f"domain XML does not parse: {exc}", field="xml") from None


def _address(el: etree._Element | None) -> PciAddress | None:
    if el is None:
        return None
    try:
        return PciAddress(*(int(el.get(k, "0"), 16) for k in ("domain", "bus", "slot",
                                                                 "function")))
    except ValueError:
        raise InvalidInput("a PCI address in the domain XML is not hex",
                           field="xml") from None


def read_hostdevs(xml: str | etree._Element, *,
                  interfaces: bool = False) -> tuple[GuestHostdev, ...]:
    """The PCI hostdevs of a domain in document order; with ``interfaces``, the
    ``<interface type='hostdev'>`` VFs after them."""
    root = parse_xml(xml) if isinstance(xml, str) else xml
    paths = ["devices/hostdev[@type='pci']"]
    if interfaces:
        paths.append("devices/interface[@type='hostdev']")
    out = []
    for path in paths:
        for hd in root.iterfind(path):
            host = _address(hd.find("source/address"))
            if host is None:
                continue
            guest_el = hd.find("address[@type='pci']")
            out.append(GuestHostdev(
                host=host,
                guest=_address(guest_el),
                managed=hd.get("managed", "no") == "yes",
                multifunction=guest_el is not None and guest_el.get("multifunction") == "on",
            ))
    return tuple(out)
