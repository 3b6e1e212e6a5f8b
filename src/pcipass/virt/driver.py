"""The one interface the agent drives guests through.

Two implementations: :class:`~pcipass.virt.libvirt_driver.LibvirtDriver` (a real hypervisor)
and :class:`~pcipass.virt.fake.FakeVirtDriver` (domains as files, for the demo and tests).
Every failure comes out as :class:`pcipass.errors.VirtError`; no driver's own exception leaks.

The calls suit an agent that may repeat a task after a crash: ``destroy`` of a domain that is
not running does nothing, ``exists`` lets it skip what is already done, and detaching a
function already bound to vfio-pci is not an error.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Self

from pcipass.errors import InvalidInput
from pcipass.pci.address import PciAddress

__all__ = ["DEFAULT_URI", "DriverKind", "Operation", "VirtDriver", "open_driver"]

DEFAULT_URI = "qemu:///system"


class Operation(StrEnum):
    """What a driver was asked to do: names errors, recorded calls and injected failures."""

    DEFINE = "define"
    START = "start"
    DESTROY = "destroy"
    UNDEFINE = "undefine"
    EXISTS = "exists"
    IS_ACTIVE = "is_active"
    LIST = "list"
    GET_XML = "get_xml"
    NODEDEV_DETACH = "nodedev_detach"
    NODEDEV_REATTACH = "nodedev_reattach"
    CONNECT = "connect"


class VirtDriver(ABC):
    """Domains by name. Raises :class:`~pcipass.errors.VirtError` on any hypervisor failure."""

    @abstractmethod
    def define(self, xml: str) -> str:
        """Define (or redefine) a persistent domain; returns its name."""

    @abstractmethod
    def start(self, name: str) -> None:
        """Boot a defined domain; an error if it is already running."""

    @abstractmethod
    def destroy(self, name: str) -> None:
        """Power the domain off at once; nothing to do when it is not running."""

    @abstractmethod
    def undefine(self, name: str) -> None:
        """Forget a domain's definition (a running one becomes transient until destroyed)."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def is_active(self, name: str) -> bool:
        """Whether the domain is running (or paused): an error if it does not exist."""

    @abstractmethod
    def list(self) -> list[str]:
        """Names of every domain the hypervisor knows, defined or running, sorted."""

    @abstractmethod
    def get_xml(self, name: str) -> str:
        """The domain's XML as the hypervisor holds it (with what it filled in)."""

    @abstractmethod
    def nodedev_detach(self, address: PciAddress) -> None:
        """Bind a host function to vfio-pci for an unmanaged hostdev."""

    @abstractmethod
    def nodedev_reattach(self, address: PciAddress) -> None:
        """Give a detached host function back to its host driver."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release the connection; the default has none."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class DriverKind(StrEnum):
    LIBVIRT = "libvirt"
    FAKE = "fake"


def open_driver(kind: DriverKind | str, *, uri: str = DEFAULT_URI,
                state_dir: Path | None = None) -> VirtDriver:
    """The driver ``pcipass agent --driver`` names: libvirt at ``uri``, or the fake, which
    keeps its domains under ``state_dir / "virt"``."""
    try:
        kind = DriverKind(kind)
    except ValueError:
        raise InvalidInput(f"unknown virt driver {kind!r} (libvirt or fake)",
                           field="driver") from None
    if kind is DriverKind.LIBVIRT:
        from pcipass.virt.libvirt_driver import LibvirtDriver

        return LibvirtDriver(uri)
    if state_dir is None:
        raise InvalidInput("the fake virt driver needs a state directory", field="state_dir")
    from pcipass.virt.fake import FakeVirtDriver

    return FakeVirtDriver(state_dir / "virt")
