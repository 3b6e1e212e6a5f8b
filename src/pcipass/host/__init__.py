"""The host side: what the agent reads from (and, later, does to) the machine it runs on.

``discovery`` reads sysfs into an :class:`~pcipass.pci.inventory.Inventory`; ``pciids`` names
devices; ``sysfs_tree`` writes kernel-shaped fake trees and ``profiles`` fills them with
realistic servers, for tests and the demo's simulated hosts.
"""

from pcipass.host.discovery import discover, discover_host
from pcipass.host.pciids import PciIds
from pcipass.host.profiles import PROFILES, Profile, build_host, suggested_device_spec
from pcipass.host.sysfs_tree import FakeDevice, FakeNetDev, FakeSriov, SysfsTree

__all__ = [
    "PROFILES",
    "FakeDevice",
    "FakeNetDev",
    "FakeSriov",
    "PciIds",
    "Profile",
    "SysfsTree",
    "build_host",
    "discover",
    "discover_host",
    "suggested_device_spec",
]
