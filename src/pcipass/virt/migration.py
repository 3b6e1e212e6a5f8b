"""What a live migration must do with a guest's passthrough devices, read from its domain XML.

Pure: no driver, no I/O. Each PCI device of the running domain falls in one of four cases:

- ``<interface type='direct'>`` (vnic type ``macvtap``): moves with the guest; on the
  destination its macvtap sits on that host's VF netdev (:meth:`LiveMigrationPlan.destination_xml`).
- ``<interface type='hostdev'>`` (vnic type ``direct``): a VF QEMU cannot migrate. It is
  unplugged on the source before (:attr:`LiveMigrationPlan.unplug`) and the port is plugged on
  the destination after (:meth:`LiveMigrationPlan.replug`), on the VF claimed there; the guest
  loses that NIC meanwhile.
- ``<hostdev type='pci'>`` whose function the caller says can migrate (its alias and device
  spec say ``live_migratable: "yes"``): moves, the destination XML naming the destination's
  function.
- any other ``<hostdev>``: a :class:`Blocker` naming the function, so the refusal can name the
  device. Blockers are a value, not an error: a plan with blockers is simply not ``allowed``.

Malformed input (XML that does not parse, destination devices that do not match the plan) is
:class:`~pcipass.errors.InvalidInput`.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from lxml import etree

from pcipass.errors import InvalidInput
from pcipass.pci.address import PciAddress
from pcipass.virt.domain import HostdevInterface
from pcipass.virt.xml import hostdev_interface_element, parse_xml, read_hostdevs

__all__ = ["Blocker", "LiveMigrationPlan", "Unplug", "plan_live_migration"]


@dataclass(frozen=True, slots=True)
class Unplug:
    """A VF port to detach on the source before the move: its MAC, the source VF, and the
    ``<interface>`` fragment (as the domain holds it) for ``detach_device``."""

    mac: str
    address: PciAddress
    xml: str


@dataclass(frozen=True, slots=True)
class Blocker:
    """A device that prevents live migration: ``device`` is its PCI address (or MAC)."""

    device: str
    reason: str


@dataclass(frozen=True, slots=True)
class LiveMigrationPlan:
    source_xml: str = field(repr=False)
    unplug: tuple[Unplug, ...]
    macvtaps: tuple[str, ...]           # MACs of macvtap ports that move with the guest
    hostdevs: tuple[PciAddress, ...]    # migratable source functions that move with it
    blockers: tuple[Blocker, ...]

    @property
    def allowed(self) -> bool:
        return not self.blockers

    def replug(self, vfs: Mapping[str, HostdevInterface]) -> tuple[str, ...]:
        """The ``<interface type='hostdev'>`` fragments to attach on the destination after the
        move, in :attr:`unplug` order: ``vfs`` maps each unplugged port's MAC to the port on
        the destination's VF (same MAC, that host's VF address and the port's VLAN)."""
        _same_keys({u.mac for u in self.unplug}, set(vfs), "interfaces",
                   "unplugged port", "destination VF")
        out = []
        for u in self.unplug:
            vf = vfs[u.mac]
            if vf.mac != u.mac:
                raise InvalidInput(f"the destination VF for port {u.mac} carries MAC {vf.mac}",
                                   field="interfaces")
            out.append(etree.tostring(hostdev_interface_element(vf), encoding="unicode"))
        return tuple(out)

    def destination_xml(self, *, macvtaps: Mapping[str, str] | None = None,
                        hostdevs: Mapping[PciAddress, PciAddress] | None = None) -> str:
        """The domain XML the destination runs (``migrate``'s ``xml``): the unplugged ports
        gone, each macvtap port on the destination's netdev (``macvtaps``: MAC → netdev),
        each migratable function replaced by the destination's (``hostdevs``: source →
        destination)."""
        if not self.allowed:
            raise InvalidInput("the plan has blockers: "
                               + "; ".join(b.reason for b in self.blockers), field="devices")
        macvtaps = dict(macvtaps or {})
        hostdevs = dict(hostdevs or {})
        _same_keys(set(self.macvtaps), set(macvtaps), "interfaces", "macvtap port",
                   "destination netdev")
        _same_keys(set(self.hostdevs), set(hostdevs), "hostdevs", "migratable function",
                   "destination function")
        root = copy.deepcopy(parse_xml(self.source_xml))
        devices = root.find("devices")
        if devices is None:
            return etree.tostring(root, encoding="unicode")
        gone = {u.mac for u in self.unplug}
        for el in list(devices):
            if el.tag == "interface" and el.get("type") == "hostdev" and _mac(el) in gone:
                devices.remove(el)
            elif el.tag == "interface" and el.get("type") == "direct" and _mac(el) in macvtaps:
                source = el.find("source")
                if source is None:
                    source = etree.SubElement(el, "source", mode="passthrough")
                source.set("dev", macvtaps[_mac(el) or ""])
                target = el.find("target")      # the source host's macvtap name
                if target is not None:
                    el.remove(target)
            elif el.tag == "hostdev" and el.get("type") == "pci":
                address = el.find("source/address")
                host = _host(el)
                if address is not None and host in hostdevs:
                    _set_address(address, hostdevs[host])
        return etree.tostring(root, encoding="unicode")


def plan_live_migration(xml: str | etree._Element, *,
                        migratable: Collection[PciAddress] = ()) -> LiveMigrationPlan:
    """The plan for the running domain ``xml``; ``migratable``: the passed-through functions
    whose alias and device spec say ``live_migratable: "yes"``."""
    root = parse_xml(xml) if isinstance(xml, str) else xml
    text = xml if isinstance(xml, str) else etree.tostring(xml, encoding="unicode")
    allowed = set(migratable)
    unplug: list[Unplug] = []
    macvtaps: list[str] = []
    moving: list[PciAddress] = []
    blockers: list[Blocker] = []
    for el in root.iterfind("devices/*"):
        if el.tag == "interface" and el.get("type") == "direct":
            mac = _mac(el)
            if mac is None:
                blockers.append(Blocker("interface", "a macvtap interface has no MAC, so its "
                                        "port cannot be found on the destination"))
            else:
                macvtaps.append(mac)
        elif el.tag == "interface" and el.get("type") == "hostdev":
            host, mac = _host(el), _mac(el)
            if host is None or mac is None:
                blockers.append(Blocker(str(host or "interface"), "a VF interface without a "
                                        "MAC and a PCI source cannot be unplugged and replugged"))
                continue
            fragment = copy.deepcopy(el)
            fragment.tail = None
            unplug.append(Unplug(mac, host, etree.tostring(fragment, encoding="unicode")))
        elif el.tag == "hostdev" and el.get("type") == "pci":
            host = _host(el)
            if host is not None and host in allowed:
                moving.append(host)
            else:
                blockers.append(Blocker(str(host or "hostdev"), f"PCI device {host} is passed "
                                        "through and "
                                        "cannot be live-migrated (its alias or device "
                                        "spec does not say live_migratable)"))
    return LiveMigrationPlan(text, tuple(unplug), tuple(macvtaps), tuple(moving),
                             tuple(blockers))


def _mac(el: etree._Element) -> str | None:
    mac = el.find("mac")
    address = mac.get("address") if mac is not None else None
    return address.lower() if address else None


def _host(el: etree._Element) -> PciAddress | None:
    """The source PCI function of a ``<hostdev>`` or ``<interface type='hostdev'>``."""
    root = etree.Element("domain")
    etree.SubElement(root, "devices").append(copy.deepcopy(el))
    found = read_hostdevs(root, interfaces=True)
    return found[0].host if found else None


def _set_address(el: etree._Element, addr: PciAddress) -> None:
    el.set("domain", f"0x{addr.domain:04x}")
    el.set("bus", f"0x{addr.bus:02x}")
    el.set("slot", f"0x{addr.slot:02x}")
    el.set("function", f"0x{addr.function:x}")


def _same_keys(expected: set[str] | set[PciAddress], given: set[str] | set[PciAddress],
               field_name: str, what: str, counterpart: str) -> None:
    missing = sorted(str(k) for k in expected - given)
    extra = sorted(str(k) for k in given - expected)
    if missing:
        raise InvalidInput(f"no {counterpart} for {what} {', '.join(missing)}",
                           field=field_name)
    if extra:
        raise InvalidInput(f"{', '.join(extra)} is not a {what} of this domain",
                           field=field_name)
