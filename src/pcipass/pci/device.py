"""What a host says about itself: PCI devices, NUMA nodes, the host summary.

These are the facts discovery finds and an inventory report carries. Their JSON form (what
``pcipass discover --json`` prints and ``PUT /v1/hosts/{host}/inventory`` takes) lives in
:mod:`pcipass.pci.inventory`, the one parser for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from pcipass.pci.address import PciAddress


class DevType(StrEnum):
    """Nova's device types: a plain function, an SR-IOV physical or virtual function."""

    PCI = "type-PCI"
    PF = "type-PF"
    VF = "type-VF"


@dataclass(frozen=True, slots=True)
class NetDev:
    name: str
    mac: str | None = None


@dataclass(frozen=True, slots=True)
class PciDevice:
    """One PCI function as discovered on a host, with the device spec's verdict on it.

    ``assignable`` only says that the operator's device spec selects the device; whether VFIO
    can isolate it (IOMMU group, VMD) is the scheduler's judgement.
    """

    address: PciAddress
    vendor_id: str
    product_id: str
    class_code: str
    dev_type: DevType = DevType.PCI
    subsystem_vendor_id: str | None = None
    subsystem_product_id: str | None = None
    parent_addr: PciAddress | None = None
    vf_index: int | None = None
    total_vfs: int | None = None
    num_vfs: int | None = None
    numa_node: int | None = None
    iommu_group: int | None = None
    iommu_group_members: tuple[PciAddress, ...] = ()
    driver: str | None = None
    netdevs: tuple[NetDev, ...] = ()
    name: str | None = None
    #: The ``SN`` field of the card's VPD (a VF reports its PF's): how a SmartNIC DPU finds
    #: the card, and what a ``remote_managed`` device spec requires, as in Nova.
    card_serial_number: str | None = None
    assignable: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def devnames(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.netdevs)


@dataclass(frozen=True, slots=True)
class NumaNode:
    id: int
    cpus: tuple[int, ...] = ()
    memory_mb: int = 0


class HostKind(StrEnum):
    """What runs servers on a host: a hypervisor (many guests, devices passed through), or
    nothing (bare metal: one server takes the whole machine and every device with it)."""

    HYPERVISOR = "hypervisor"
    BAREMETAL = "baremetal"


@dataclass(frozen=True, slots=True)
class HostInfo:
    """The host's compute capacity: what the scheduler filters on besides devices."""

    hostname: str | None = None
    cpus: int = 0
    memory_mb: int = 0
    numa_nodes: tuple[NumaNode, ...] = ()
    kind: HostKind = HostKind.HYPERVISOR
    #: Where another host's hypervisor reaches this one for a live migration (libvirt's
    #: ``qemu+tcp://HOST/system``, the fake's ``fake:///STATE``); None: not reported.
    migration_uri: str | None = None
