"""What the scheduler decides on: a snapshot of hosts and a boot's demands.

The store builds these from its rows (or its pool summaries narrow the hosts first); the
scheduler only reads them. All are frozen; nothing here is changed by a decision.
"""

from __future__ import annotations

from dataclasses import dataclass

from pcipass.errors import InvalidInput
from pcipass.pci.address import PciAddress
from pcipass.pci.device import PciDevice
from pcipass.pci.request import PciRequest
from pcipass.records import DeviceState

__all__ = ["BootRequest", "DeviceView", "HostView", "NumaCell"]


@dataclass(frozen=True, slots=True)
class NumaCell:
    """A host NUMA node's free capacity; ``socket`` feeds the ``socket`` PCI NUMA policy."""

    id: int
    free_cpus: int
    free_ram_mb: int
    socket: int | None = None


@dataclass(frozen=True, slots=True)
class DeviceView:
    """A discovered device plus its control-plane state."""

    device: PciDevice
    state: DeviceState = DeviceState.AVAILABLE
    reserved: bool = False

    @property
    def address(self) -> PciAddress:
        return self.device.address

    @property
    def free(self) -> bool:
        return self.state is DeviceState.AVAILABLE and not self.reserved


@dataclass(frozen=True, slots=True)
class HostView:
    name: str
    free_vcpus: int
    free_ram_mb: int
    numa: tuple[NumaCell, ...] = ()
    devices: tuple[DeviceView, ...] = ()


@dataclass(frozen=True, slots=True)
class BootRequest:
    """A server's demands: compute, an optional guest NUMA topology, hard and soft PCI.

    ``numa_nodes`` None means the guest has no NUMA topology and is not constrained by one;
    N means vCPUs and RAM split evenly over N distinct host nodes (Nova's automatic topology).
    """

    vcpus: int
    ram_mb: int
    numa_nodes: int | None = None
    pci: tuple[PciRequest, ...] = ()

    def __post_init__(self) -> None:
        if self.vcpus < 0 or self.ram_mb < 0:
            raise InvalidInput("vCPUs and RAM must not be negative", field="vcpus")
        if self.numa_nodes is not None:
            n = self.numa_nodes
            if n < 1:
                raise InvalidInput(f"a guest needs at least 1 NUMA node, not {n}",
                                   field="numa_nodes")
            if self.vcpus % n or self.ram_mb % n:
                raise InvalidInput(
                    f"{self.vcpus} vCPUs and {self.ram_mb} MB RAM cannot be split evenly over "
                    f"{n} NUMA nodes", field="numa_nodes")
        ports: set[str] = set()
        for r in self.pci:
            if r.count < 1:
                raise InvalidInput(f"PCI request {r.alias!r} asks for {r.count} devices",
                                   field="pci")
            if r.port is not None:
                if r.port in ports:
                    raise InvalidInput(f"{r.port_shown} is asked for twice", field="pci")
                ports.add(r.port)

    @property
    def hard(self) -> tuple[PciRequest, ...]:
        return tuple(r for r in self.pci if not r.soft)

    @property
    def soft(self) -> tuple[PciRequest, ...]:
        return tuple(r for r in self.pci if r.soft)

    def describe(self) -> str:
        """How an explanation names the boot: its hard devices (``2 x gpu, port 'web' (VF on
        physnet2)``), else its compute."""
        if self.hard:
            return ", ".join(str(r) for r in self.hard)
        text = f"{self.vcpus} vCPUs and {self.ram_mb} MB RAM"
        if self.numa_nodes:
            text += f" on {self.numa_nodes} NUMA node{'s' if self.numa_nodes > 1 else ''}"
        return text
