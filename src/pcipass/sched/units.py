"""Assignable units: what VFIO can hand a guest as one piece, and why a device is not one.

VFIO isolates IOMMU groups, not functions: a guest gets every endpoint function of a group,
or none. So a GPU at ``.0`` and its HDMI audio at ``.1`` in one group form one unit, counted
as one GPU (the audio function rides along; no alias matches it). Rules:

- A PCI bridge or port (class ``0604``, or ``0609`` semi-transparent) in a group is not an
  endpoint: it shares the group because the path lacks ACS isolation, the kernel keeps it on
  its host driver without breaking the group's viability, and it is never handed out. It
  neither joins a unit nor blocks one.
- Any other member that the device spec does not select (a NIC the host uses, an NVMe drive),
  or that the host did not report at all, makes every device of the group unusable: handing
  the group over would take that function from the host.
- A device without an IOMMU group (IOMMU off, or behind an Intel VMD controller, which shows
  as a PCI domain above ``ffff``) cannot be isolated and is never handed out.
- A PF is not handed out while any of its VFs is in use, nor a VF while its PF is.

"In use" means claimed, allocated or removed (vanished while allocated), and the mates of such
a unit, which the guest holds too. A device marked ``unavailable`` whose reason cannot be seen
(neither its PF nor one of its VFs is in use) is taken to be in use: only ever too careful.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pcipass.pci.address import PciAddress
from pcipass.pci.device import DevType, PciDevice
from pcipass.records import DeviceState
from pcipass.sched.snapshot import DeviceView

__all__ = [
    "Unit",
    "dependants",
    "free_units",
    "is_bridge",
    "unit_reasons",
    "units",
]

BRIDGE_CLASSES = ("0604", "0609")
USED_STATES = frozenset({DeviceState.CLAIMED, DeviceState.ALLOCATED, DeviceState.REMOVED})
_MAX_DOMAIN_WITHOUT_VMD = 0xFFFF
_NONE: frozenset[PciAddress] = frozenset()

_STATE_REASONS = {
    DeviceState.CLAIMED: "is claimed for a server being built",
    DeviceState.ALLOCATED: "is allocated to a server",
    DeviceState.REMOVED: "vanished from the host while allocated",
    DeviceState.RESERVED: "is reserved: taken out of service by an operator",
}


def is_bridge(dev: PciDevice) -> bool:
    return dev.class_code.lower().startswith(BRIDGE_CLASSES)


@dataclass(frozen=True, slots=True)
class Unit:
    """The endpoint functions of one IOMMU group, handed out together.

    ``pfs``: PFs in the unit (using it makes their VFs outside it unusable); ``parents``: PFs
    outside it whose VFs are in it (using it makes those PFs unusable).
    """

    group: int
    members: tuple[DeviceView, ...]
    addresses: tuple[PciAddress, ...] = field(init=False, repr=False, compare=False)
    pfs: frozenset[PciAddress] = field(init=False, repr=False, compare=False)
    parents: frozenset[PciAddress] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.members) == 1:   # the common case, kept cheap: fit builds many units
            dev = self.members[0].device
            object.__setattr__(self, "addresses", (dev.address,))
            object.__setattr__(self, "pfs", frozenset((dev.address,))
                               if dev.dev_type is DevType.PF else _NONE)
            object.__setattr__(self, "parents", frozenset((dev.parent_addr,))
                               if dev.dev_type is DevType.VF and dev.parent_addr is not None
                               else _NONE)
            return
        addresses = tuple(m.device.address for m in self.members)
        inside = set(addresses)
        object.__setattr__(self, "addresses", addresses)
        object.__setattr__(self, "pfs", frozenset(
            m.device.address for m in self.members if m.device.dev_type is DevType.PF))
        object.__setattr__(self, "parents", frozenset(
            p for m in self.members
            if m.device.dev_type is DevType.VF and (p := m.device.parent_addr) is not None
            and p not in inside))

    @property
    def key(self) -> PciAddress:
        return self.addresses[0]


@dataclass(frozen=True, slots=True)
class _Structure:
    """What the hardware and the device spec allow, whatever the states."""

    by_addr: Mapping[PciAddress, DeviceView]
    units: tuple[Unit, ...]
    unit_of: Mapping[PciAddress, Unit]
    reasons: Mapping[PciAddress, str]           # devices that can never be handed out
    vfs_of: Mapping[PciAddress, tuple[PciAddress, ...]]


def _no_group_reason(dev: PciDevice) -> str:
    if dev.address.domain > _MAX_DOMAIN_WITHOUT_VMD:
        return ("has no IOMMU group of its own: it sits behind an Intel VMD controller "
                f"(PCI domain {dev.address.domain:x}), so VFIO cannot isolate it")
    return ("has no IOMMU group (the host's IOMMU is off or absent), so VFIO cannot "
            "isolate it")


def _blocker_reason(group: int, mate: PciAddress, view: DeviceView | None) -> str:
    if view is None:
        return (f"shares IOMMU group {group} with {mate}, which the host did not report, "
                "so the group cannot be handed out whole")
    dev = view.device
    if dev.iommu_group != group:
        return (f"shares IOMMU group {group} with {mate}, which the host reports in group "
                f"{dev.iommu_group}: the inventory contradicts itself")
    used_by = f", bound to host driver {dev.driver!r}" if dev.driver and dev.driver != "vfio-pci" \
        else ""
    return (f"shares IOMMU group {group} with {mate} (class {dev.class_code}{used_by}), which "
            "the device spec does not select, so the group cannot be handed out whole")


def _structure(devices: Iterable[DeviceView]) -> _Structure:
    by_addr: dict[PciAddress, DeviceView] = {}
    groups: dict[int, list[DeviceView]] = {}
    listed: dict[int, set[PciAddress]] = {}   # only groups whose members lists say more
    vfs_of: dict[PciAddress, list[PciAddress]] = {}
    reasons: dict[PciAddress, str] = {}
    for view in devices:
        dev = view.device
        addr = dev.address
        by_addr[addr] = view
        if dev.dev_type is DevType.VF and dev.parent_addr is not None:
            vfs_of.setdefault(dev.parent_addr, []).append(addr)
        group = dev.iommu_group
        if group is None:
            if is_bridge(dev):
                reasons[addr] = "is a PCI bridge or port: bridges are never passed through"
            elif not dev.assignable:
                reasons[addr] = "is not selected by the host's device spec"
            else:
                reasons[addr] = _no_group_reason(dev)
            continue
        groups.setdefault(group, []).append(view)
        members = dev.iommu_group_members
        if len(members) > 1 or (members and members[0] != addr):
            listed.setdefault(group, set()).update(members)
    unit_list: list[Unit] = []
    unit_of: dict[PciAddress, Unit] = {}
    for group in sorted(groups):
        views = groups[group]
        missing: list[PciAddress] = []
        if len(views) > 1 or group in listed:
            views = sorted(views, key=lambda v: v.device.address)
            missing = sorted(listed.get(group, set()) - {v.device.address for v in views})
        endpoints: list[DeviceView] = []
        blockers: list[tuple[PciAddress, DeviceView | None]] = [
            (m, by_addr.get(m)) for m in missing]
        for view in views:
            addr = view.device.address
            if is_bridge(view.device):
                reasons[addr] = "is a PCI bridge or port: bridges are never passed through"
            elif view.device.assignable:
                endpoints.append(view)
            else:
                reasons[addr] = "is not selected by the host's device spec"
                blockers.append((addr, view))
        if blockers:
            first, mate = min(blockers, key=lambda b: b[0])
            blocker = _blocker_reason(group, first, mate)
            for ep in endpoints:
                reasons[ep.device.address] = blocker
            continue
        if endpoints:
            unit = Unit(group, tuple(endpoints))
            unit_list.append(unit)
            for ep in endpoints:
                unit_of[ep.device.address] = unit
    return _Structure(by_addr, tuple(unit_list), unit_of, reasons,
                      {p: tuple(sorted(v)) for p, v in vfs_of.items()})


def _parent_of(view: DeviceView) -> PciAddress | None:
    dev = view.device
    return dev.parent_addr if dev.dev_type is DevType.VF else None


def _held(st: _Structure, *, trust_unavailable: bool) -> frozenset[PciAddress]:
    """Devices a guest holds: used ones and their unit mates.

    ``trust_unavailable`` (the scheduler's view): an ``unavailable`` device whose reason cannot
    be seen is held too. Without it (the store recomputing), states other than claimed,
    allocated and removed are ignored, and everything else derived from those.
    """
    primary = {a for a, v in st.by_addr.items() if v.state in USED_STATES}
    held = set(primary)
    for addr in primary:
        unit = st.unit_of.get(addr)
        if unit is not None:
            held.update(unit.addresses)
    if trust_unavailable:
        for addr, view in st.by_addr.items():
            if view.state is not DeviceState.UNAVAILABLE or addr in held:
                continue
            parent = _parent_of(view)
            explained = (parent is not None and parent in held) or any(
                vf in held for vf in st.vfs_of.get(addr, ()))
            if not explained:
                held.add(addr)
    return frozenset(held)


def _own_reason(st: _Structure, view: DeviceView, held: frozenset[PciAddress], *,
                trust_unavailable: bool) -> str | None:
    addr = view.address
    if addr in st.reasons:
        return st.reasons[addr]
    if view.state in _STATE_REASONS:
        return _STATE_REASONS[view.state]
    if view.reserved:
        return _STATE_REASONS[DeviceState.RESERVED]
    parent = _parent_of(view)
    if parent is not None and parent in held:
        return f"is a VF and its PF {parent} is in use"
    if view.device.dev_type is DevType.PF:
        unit = st.unit_of.get(addr)
        inside = set(unit.addresses) if unit is not None else {addr}
        used_vf = next((vf for vf in st.vfs_of.get(addr, ()) if vf in held and vf not in inside),
                       None)
        if used_vf is not None:
            return f"is a PF and its VF {used_vf} is in use"
    if trust_unavailable and view.state is DeviceState.UNAVAILABLE and addr in held and (
            not any(m in held and st.by_addr[m].state in USED_STATES
                    for m in (st.unit_of[addr].addresses if addr in st.unit_of else ()))):
        return "is marked unavailable"
    return None


def _blocked(st: _Structure, held: frozenset[PciAddress], *,
             trust_unavailable: bool) -> dict[PciAddress, str]:
    """Why each device cannot be handed out now; a unit goes whole, so one blocked member
    blocks its mates."""
    out: dict[PciAddress, str] = {}
    for addr, view in st.by_addr.items():
        reason = _own_reason(st, view, held, trust_unavailable=trust_unavailable)
        if reason is not None:
            out[addr] = reason
    for unit in st.units:
        first = next((a for a in unit.addresses if a in out), None)
        if first is None:
            continue
        for addr in unit.addresses:
            out.setdefault(addr, f"goes with {first} (IOMMU group {unit.group}), which "
                                 f"{out[first]}")
    return out


def free_units(devices: Iterable[DeviceView]) -> tuple[tuple[Unit, ...], frozenset[PciAddress]]:
    """The units that can be handed out now, and the devices held by guests."""
    st = _structure(devices)
    held = _held(st, trust_unavailable=True)
    free = []
    for unit in st.units:
        if all(m.state is DeviceState.AVAILABLE and not m.reserved and m.address not in held
               for m in unit.members) and not _excluded(st, unit, held):
            free.append(unit)
    return tuple(free), held


def _excluded(st: _Structure, unit: Unit, held: frozenset[PciAddress]) -> bool:
    """PF/VF exclusion against what guests hold: the unit's PFs' VFs, its VFs' PFs."""
    if any(p in held for p in unit.parents):
        return True
    inside = unit.addresses
    return any(vf in held and vf not in inside for p in unit.pfs for vf in st.vfs_of.get(p, ()))


def units(devices: Iterable[DeviceView]) -> tuple[Unit, ...]:
    """Every unit the hardware and the device spec allow, free or not, by group number."""
    return _structure(devices).units


def unit_reasons(devices: Iterable[DeviceView]) -> dict[PciAddress, str]:
    """Why each device that cannot be handed out now cannot be; usable free ones are absent.

    The text reads after the device's address: ``0000:3b:00.1 is a PF and its VF ... is in
    use`` (what ``device show`` prints).
    """
    st = _structure(devices)
    return _blocked(st, _held(st, trust_unavailable=True), trust_unavailable=True)


def dependants(devices: Iterable[DeviceView]) -> frozenset[PciAddress]:
    """Devices that should be ``unavailable`` because of other devices' states.

    Derived from the primary states only (claimed, allocated, removed, reserved): the mates
    of a used or reserved unit member, the PF of a used VF, the VFs of a used PF. A device
    that is itself claimed, allocated, removed or reserved, or that can never be handed out,
    is not a dependant. The store recomputes a host's ``unavailable`` devices with this after
    every claim and free, so pool counts stay true.
    """
    st = _structure(devices)
    held = _held(st, trust_unavailable=False)
    blocked = _blocked(st, held, trust_unavailable=False)
    return frozenset(
        a for a, v in st.by_addr.items()
        if a in blocked and a not in st.reasons and v.state not in _STATE_REASONS
        and not v.reserved
    )
