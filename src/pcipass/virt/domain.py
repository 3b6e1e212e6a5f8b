"""What a guest is made of, as the virt layer needs it: typed values, checked once.

The services fill a :class:`DomainSpec` from a server, its flavor, image, claimed devices and
the scheduler's NUMA choice; :mod:`pcipass.virt.xml` turns it into libvirt domain XML. Nothing
here does I/O, so a spec can be built and checked anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar
from uuid import UUID

from pcipass.errors import InvalidInput
from pcipass.pci.address import PciAddress
from pcipass.pci.device import NumaNode

__all__ = [
    "BootDisk",
    "DirectInterface",
    "DiskFormat",
    "DomainSpec",
    "GuestCell",
    "HostdevInterface",
    "HostdevUnit",
    "Interface",
    "NetworkInterface",
    "NumaPlacement",
    "VirtType",
    "format_cpuset",
]

MAX_FUNCTIONS = 8          # functions in one guest slot
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_NETDEV_RE = re.compile(r"^[^\s/]{1,15}$")   # IFNAMSIZ - 1, no blanks or slashes


class VirtType(StrEnum):
    """``<domain type=...>``: ``kvm`` on real hosts, ``qemu`` (TCG) where /dev/kvm is absent."""

    KVM = "kvm"
    QEMU = "qemu"


class DiskFormat(StrEnum):
    QCOW2 = "qcow2"
    RAW = "raw"


def _bad(message: str, field: str) -> InvalidInput:
    return InvalidInput(message, field=field)


E = TypeVar("E", bound=StrEnum)


def _enum(kind: type[E], value: str, field: str) -> E:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise _bad(f"{value!r} is not one of {allowed}", field) from None


def format_cpuset(cpus: Iterable[int]) -> str:
    """libvirt's cpuset syntax, ranges folded: ``(0, 1, 2, 5)`` → ``0-2,5``."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


@dataclass(frozen=True, slots=True)
class HostdevUnit:
    """Host functions passed through together and kept together in one guest slot.

    A GPU and its audio function, or the members of one IOMMU group. ``managed=False`` means
    libvirt must find the functions already detached (bound to vfio-pci): the agent detaches
    and re-attaches them itself through the nodedev API.
    """

    addresses: tuple[PciAddress, ...]
    managed: bool = True

    def __post_init__(self) -> None:
        if not self.addresses:
            raise _bad("a hostdev unit needs at least one PCI address", "addresses")
        if len(set(self.addresses)) != len(self.addresses):
            raise _bad("a hostdev unit lists a PCI address twice", "addresses")
        if len(self.addresses) > MAX_FUNCTIONS:
            raise _bad(f"a hostdev unit has {len(self.addresses)} functions; one guest slot "
                       f"holds at most {MAX_FUNCTIONS}", "addresses")
        object.__setattr__(self, "addresses", tuple(sorted(self.addresses)))

    def guest_functions(self) -> tuple[tuple[PciAddress, int], ...]:
        """Each host function with its guest function number.

        Functions of one host slot that include function 0 keep their numbers, so the guest
        sees the device as the host does. Any other unit is numbered 0, 1, ... in address order:
        a guest only scans a slot's other functions when function 0 is present.
        """
        slots = {a.slot_address for a in self.addresses}
        if len(slots) == 1 and self.addresses[0].function == 0:
            return tuple((a, a.function) for a in self.addresses)
        return tuple((a, i) for i, a in enumerate(self.addresses))


@dataclass(frozen=True, slots=True)
class GuestCell:
    """One guest NUMA cell and the host node (and CPUs) the scheduler put it on."""

    id: int
    vcpus: tuple[int, ...]
    memory_mb: int
    host_node: int
    host_cpus: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.id < 0 or self.host_node < 0:
            raise _bad("NUMA cell and host node ids must not be negative", "numa.cells")
        if not self.vcpus or any(v < 0 for v in self.vcpus):
            raise _bad(f"guest cell {self.id} needs at least one vCPU", "numa.cells.vcpus")
        if not self.host_cpus or any(c < 0 for c in self.host_cpus):
            raise _bad(f"guest cell {self.id} needs at least one host CPU",
                       "numa.cells.host_cpus")
        if self.memory_mb <= 0:
            raise _bad(f"guest cell {self.id} needs memory", "numa.cells.memory_mb")
        object.__setattr__(self, "vcpus", tuple(sorted(set(self.vcpus))))
        object.__setattr__(self, "host_cpus", tuple(sorted(set(self.host_cpus))))


@dataclass(frozen=True, slots=True)
class NumaPlacement:
    """A guest NUMA topology pinned to host nodes: memory strict to each cell's node, vCPUs
    free to float over that node's CPUs."""

    cells: tuple[GuestCell, ...]

    def __post_init__(self) -> None:
        if not self.cells:
            raise _bad("a NUMA placement needs at least one cell", "numa.cells")
        if [c.id for c in self.cells] != list(range(len(self.cells))):
            raise _bad("guest NUMA cell ids must be 0, 1, ... in order", "numa.cells")
        nodes = [c.host_node for c in self.cells]
        if len(set(nodes)) != len(nodes):
            raise _bad("two guest cells are placed on the same host node", "numa.cells")
        seen: set[int] = set()
        for c in self.cells:
            if seen & set(c.vcpus):
                raise _bad("a vCPU belongs to two guest cells", "numa.cells.vcpus")
            seen |= set(c.vcpus)

    @classmethod
    def even(cls, vcpus: int, memory_mb: int, host_nodes: Sequence[NumaNode]) -> NumaPlacement:
        """Nova's automatic topology: N cells, each vcpus/N and memory/N, on the given nodes."""
        n = len(host_nodes)
        if n == 0 or vcpus % n or memory_mb % n:
            raise _bad(f"{vcpus} vCPUs and {memory_mb} MiB do not split evenly over {n} "
                       "NUMA nodes", "numa")
        per_cpu, per_mem = vcpus // n, memory_mb // n
        return cls(tuple(
            GuestCell(i, tuple(range(i * per_cpu, (i + 1) * per_cpu)), per_mem, node.id,
                      node.cpus)
            for i, node in enumerate(host_nodes)
        ))

    @property
    def host_nodes(self) -> tuple[int, ...]:
        return tuple(sorted(c.host_node for c in self.cells))

    @property
    def host_cpus(self) -> tuple[int, ...]:
        return tuple(sorted({cpu for c in self.cells for cpu in c.host_cpus}))


@dataclass(frozen=True, slots=True)
class BootDisk:
    """A qcow2 overlay written by the host on top of the image's file, which stays untouched."""

    overlay: str
    backing: str
    backing_format: DiskFormat = DiskFormat.QCOW2

    def __post_init__(self) -> None:
        for name in ("overlay", "backing"):
            if not str(getattr(self, name)).startswith("/"):
                raise _bad(f"disk {name} must be an absolute path on the host", f"disk.{name}")
        object.__setattr__(self, "backing_format",
                           _enum(DiskFormat, self.backing_format, "disk.backing_format"))


def _check_mac(mac: str) -> str:
    low = mac.lower()
    if not _MAC_RE.match(low):
        raise _bad(f"{mac!r} is not a MAC address", "mac")
    if int(low[:2], 16) & 1:
        raise _bad(f"{mac} is a multicast MAC address", "mac")
    return low


def _check_vlan(vlan: int | None) -> None:
    if vlan is not None and not 1 <= vlan <= 4094:
        raise _bad(f"VLAN {vlan} is out of range (1 to 4094)", "vlan")


@dataclass(frozen=True, slots=True)
class HostdevInterface:
    """An SR-IOV VF handed to the guest as a NIC (vnic type ``direct``): libvirt programs
    its MAC and VLAN on the PF."""

    mac: str
    address: PciAddress
    vlan: int | None = None
    managed: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", _check_mac(self.mac))
        _check_vlan(self.vlan)


@dataclass(frozen=True, slots=True)
class DirectInterface:
    """A macvtap in passthrough mode on a VF's netdev (vnic type ``macvtap``), virtio model."""

    mac: str
    dev: str
    vlan: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", _check_mac(self.mac))
        if not _NETDEV_RE.match(self.dev):
            raise _bad(f"{self.dev!r} is not a network device name", "dev")
        _check_vlan(self.vlan)


@dataclass(frozen=True, slots=True)
class NetworkInterface:
    """A virtio NIC on a libvirt network (vnic type ``normal``): no device of the host's."""

    mac: str
    network: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", _check_mac(self.mac))
        if not self.network or "/" in self.network or not self.network.isprintable() \
                or self.network != self.network.strip():
            raise _bad(f"{self.network!r} is not a libvirt network name", "network")


Interface = HostdevInterface | DirectInterface | NetworkInterface


@dataclass(frozen=True, slots=True)
class DomainSpec:
    """Everything the domain XML is built from."""

    name: str
    uuid: UUID
    vcpus: int
    memory_mb: int
    disk: BootDisk | None = None
    hostdevs: tuple[HostdevUnit, ...] = ()
    numa: NumaPlacement | None = None
    interfaces: tuple[Interface, ...] = ()
    virt_type: VirtType = VirtType.KVM

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or not self.name.isprintable() \
                or self.name != self.name.strip():
            raise _bad(f"{self.name!r} is not a usable domain name", "name")
        if self.vcpus < 1:
            raise _bad("a domain needs at least one vCPU", "vcpus")
        if self.memory_mb < 1:
            raise _bad("a domain needs memory", "memory_mb")
        object.__setattr__(self, "virt_type", _enum(VirtType, self.virt_type, "virt_type"))
        object.__setattr__(self, "hostdevs", tuple(self.hostdevs))
        object.__setattr__(self, "interfaces", tuple(self.interfaces))
        host = [a for u in self.hostdevs for a in u.addresses]
        host += [i.address for i in self.interfaces if isinstance(i, HostdevInterface)]
        if len(set(host)) != len(host):
            raise _bad("a PCI address is assigned to the domain twice", "hostdevs")
        if self.numa is not None:
            cpus = sorted(v for c in self.numa.cells for v in c.vcpus)
            if cpus != list(range(self.vcpus)):
                raise _bad(f"the NUMA cells must hold vCPUs 0 to {self.vcpus - 1}, each once",
                           "numa.cells.vcpus")
            memory = sum(c.memory_mb for c in self.numa.cells)
            if memory != self.memory_mb:
                raise _bad(f"the NUMA cells hold {memory} MiB, the domain {self.memory_mb} MiB",
                           "numa.cells.memory_mb")

    @property
    def unmanaged_addresses(self) -> tuple[PciAddress, ...]:
        """Host functions the agent must detach before start and re-attach after undefine."""
        out = [a for u in self.hostdevs if not u.managed for a in u.addresses]
        out += [i.address for i in self.interfaces
                if isinstance(i, HostdevInterface) and not i.managed]
        return tuple(sorted(out))
