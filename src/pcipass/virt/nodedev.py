"""Binding host functions to vfio-pci for unmanaged hostdevs, behind one small interface.

libvirt's nodedev API does the work on a real host. Its ``test:///default`` driver cannot
detach anything, so :class:`FakeNodeDevices` stands in where the libvirt driver's unmanaged
path is tested.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field

import libvirt

from pcipass.errors import VirtError
from pcipass.pci.address import PciAddress
from pcipass.virt.driver import Operation

__all__ = ["FakeNodeDevices", "LibvirtNodeDevices", "NodeDevices", "nodedev_name"]


def nodedev_name(address: PciAddress) -> str:
    """libvirt's node device name for a PCI function: ``pci_0000_3b_00_0``."""
    a = address
    return f"pci_{a.domain:04x}_{a.bus:02x}_{a.slot:02x}_{a.function:x}"


class NodeDevices(ABC):
    @abstractmethod
    def detach(self, address: PciAddress) -> None:
        """Bind to vfio-pci; a function already bound there is left as it is."""

    @abstractmethod
    def reattach(self, address: PciAddress) -> None:
        """Return to the host driver; refused while a running domain uses the function."""


class LibvirtNodeDevices(NodeDevices):
    """The nodedev calls of one libvirt connection."""

    def __init__(self, conn: libvirt.virConnect) -> None:
        self._conn = conn

    def _device(self, address: PciAddress, op: Operation) -> libvirt.virNodeDevice:
        try:
            return self._conn.nodeDeviceLookupByName(nodedev_name(address))
        except libvirt.libvirtError as exc:
            raise _error(op, f"PCI device {address}", exc) from None

    def detach(self, address: PciAddress) -> None:
        dev = self._device(address, Operation.NODEDEV_DETACH)
        try:
            dev.detachFlags("vfio", 0)
        except libvirt.libvirtError as exc:
            raise _error(Operation.NODEDEV_DETACH, f"PCI device {address}", exc) from None

    def reattach(self, address: PciAddress) -> None:
        dev = self._device(address, Operation.NODEDEV_REATTACH)
        try:
            dev.reAttach()
        except libvirt.libvirtError as exc:
            raise _error(Operation.NODEDEV_REATTACH, f"PCI device {address}", exc) from None


def _error(op: Operation, what: str, exc: libvirt.libvirtError) -> VirtError:
    """A libvirt error as ours: what we tried, on what, in libvirt's words."""
    text = exc.get_error_message() or str(exc)
    return VirtError(f"{op} {what}: {text}", operation=str(op), driver_code=exc.get_error_code())


@dataclass
class FakeNodeDevices(NodeDevices):
    """Devices that exist (``known``; None: any), which are detached, and every call made."""

    known: set[PciAddress] | None = None
    detached: set[PciAddress] = field(default_factory=set)
    calls: list[tuple[Operation, PciAddress]] = field(default_factory=list)
    fail: dict[Operation, str] = field(default_factory=dict)

    @classmethod
    def of(cls, addresses: Iterable[PciAddress]) -> FakeNodeDevices:
        return cls(known=set(addresses))

    def _check(self, op: Operation, address: PciAddress) -> None:
        self.calls.append((op, address))
        if op in self.fail:
            raise VirtError(f"{op} PCI device {address}: {self.fail[op]}", operation=str(op))
        if self.known is not None and address not in self.known:
            raise VirtError(f"{op} PCI device {address}: Node device not found: no node "
                            f"device with matching name '{nodedev_name(address)}'",
                            operation=str(op))

    def detach(self, address: PciAddress) -> None:
        self._check(Operation.NODEDEV_DETACH, address)
        self.detached.add(address)

    def reattach(self, address: PciAddress) -> None:
        self._check(Operation.NODEDEV_REATTACH, address)
        self.detached.discard(address)
