"""The one interface the agent drives guests through.

Two implementations: :class:`~pcipass.virt.libvirt_driver.LibvirtDriver` (a real hypervisor)
and :class:`~pcipass.virt.fake.FakeVirtDriver` (domains as files, for the demo and tests).
Every failure comes out as :class:`pcipass.errors.VirtError`; no driver's own exception leaks.

The calls suit an agent that may repeat a task after a crash: ``destroy`` of a domain that is
not running does nothing, ``exists`` lets it skip what is already done, and detaching a
function already bound to vfio-pci is not an error.

Changing a guest: ``attach_device`` / ``detach_device`` plug a ``<hostdev>`` or ``<interface>``
fragment into the running domain (``live``) and/or its persistent definition (``config``);
``migrate`` moves a domain to the hypervisor at ``dest_uri``, which keeps it defined while the
source forgets it. :mod:`pcipass.virt.migration` says which devices must be unplugged first.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Self

from pcipass.errors import InvalidInput
from pcipass.pci.address import PciAddress

__all__ = ["DEFAULT_URI", "DriverKind", "Operation", "VirtDriver", "check_affect", "open_driver"]

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
    ATTACH_DEVICE = "attach_device"
    DETACH_DEVICE = "detach_device"
    MIGRATE = "migrate"
    #: The destination's half of ``migrate``: the fake records it (and fails it on demand)
    #: in the destination's state, as a refusing destination host would.
    INCOMING_MIGRATION = "incoming_migration"


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

    @abstractmethod
    def attach_device(self, name: str, xml: str, *, live: bool = True,
                      config: bool = True) -> None:
        """Plug a ``<hostdev>`` or ``<interface>`` fragment into the domain: the running guest
        when ``live`` (an error if it is not running), its persistent definition when
        ``config`` (an error for a transient domain). At least one of them must be asked."""

    @abstractmethod
    def detach_device(self, name: str, xml: str, *, live: bool = True,
                      config: bool = True) -> None:
        """Unplug the device the fragment names (a hostdev by its source PCI address, an
        interface by its MAC) from the running guest and/or the definition; an error when
        it is not there."""

    @abstractmethod
    def migrate(self, name: str, dest_uri: str, *, live: bool, xml: str | None = None) -> None:
        """Move the domain to the hypervisor at ``dest_uri`` (a libvirt URI, or
        ``fake:///STATE`` for the fake). ``live``: the guest keeps running while its memory
        copies; otherwise a running guest is paused for the copy and a stopped one moves as
        a definition. The destination keeps it defined (with ``xml``, when given, as both its
        running and its persistent XML: same name and UUID, the destination's devices); the
        source forgets it. Passed-through devices must be unplugged first, except ones whose
        host driver can migrate them."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release the connection; the default has none."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def check_affect(live: bool, config: bool) -> None:
    """An attach or detach must touch the running guest, its definition, or both."""
    if not (live or config):
        raise InvalidInput("a device change needs live, config or both", field="live")


class DriverKind(StrEnum):
    LIBVIRT = "libvirt"
    FAKE = "fake"
    #: A bare-metal host's machine as files (:mod:`pcipass.virt.baremetal`).
    BAREMETAL_FAKE = "baremetal-fake"

    @property
    def baremetal(self) -> bool:
        return self is DriverKind.BAREMETAL_FAKE


def open_driver(kind: DriverKind | str, *, uri: str = DEFAULT_URI,
                state_dir: Path | None = None) -> VirtDriver:
    """The driver ``pcipass agent --driver`` names: libvirt at ``uri``, or the fake, which
    keeps its domains under ``state_dir / "virt"``."""
    try:
        kind = DriverKind(kind)
    except ValueError:
        raise InvalidInput(f"unknown virt driver {kind!r} (libvirt, fake or baremetal-fake)",
                           field="driver") from None
    if kind is DriverKind.LIBVIRT:
        from pcipass.virt.libvirt_driver import LibvirtDriver

        return LibvirtDriver(uri)
    if state_dir is None:
        raise InvalidInput("the fake virt driver needs a state directory", field="state_dir")
    if kind is DriverKind.BAREMETAL_FAKE:
        from pcipass.virt.baremetal import FakeBareMetalDriver

        return FakeBareMetalDriver(state_dir / "baremetal")
    from pcipass.virt.fake import FakeVirtDriver

    return FakeVirtDriver(state_dir / "virt")
