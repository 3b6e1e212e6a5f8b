"""Guests on a host: domain specs, their libvirt XML, and the drivers that run them.

``DomainSpec`` (typed input) → ``build_domain_xml`` (lxml) → a ``VirtDriver``: the libvirt
one on a real host, the fake one (files in a state directory) for the demo and tests. Driver
failures are :class:`pcipass.errors.VirtError`. :func:`from_payload` turns a spawn task's
payload into a ``DomainSpec`` on the host that runs it.
"""

from pcipass.virt.domain import (
    BootDisk,
    DirectInterface,
    DiskFormat,
    DomainSpec,
    GuestCell,
    HostdevInterface,
    HostdevUnit,
    Interface,
    NumaPlacement,
    VirtType,
)
from pcipass.virt.driver import DEFAULT_URI, DriverKind, Operation, VirtDriver, open_driver
from pcipass.virt.payload import from_payload
from pcipass.virt.xml import GuestHostdev, build_domain_xml, read_hostdevs

__all__ = [
    "DEFAULT_URI",
    "BootDisk",
    "DirectInterface",
    "DiskFormat",
    "DomainSpec",
    "DriverKind",
    "GuestCell",
    "GuestHostdev",
    "HostdevInterface",
    "HostdevUnit",
    "Interface",
    "NumaPlacement",
    "Operation",
    "VirtDriver",
    "VirtType",
    "build_domain_xml",
    "from_payload",
    "open_driver",
    "read_hostdevs",
]
