"""The pure vocabulary of pcipass: addresses, devices, device specs, inventories.

Nothing here does I/O, reads configuration or looks at a clock.
"""

from pcipass.pci.address import PciAddress
from pcipass.pci.device import DevType, HostInfo, NetDev, NumaNode, PciDevice

__all__ = ["DevType", "HostInfo", "NetDev", "NumaNode", "PciAddress", "PciDevice"]
