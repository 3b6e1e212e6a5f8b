"""The libvirt calls that change a running guest's devices or move it, behind one seam.

:class:`~pcipass.virt.libvirt_driver.LibvirtDriver` issues ``attachDeviceFlags``,
``detachDeviceFlags`` and ``migrateToURI3`` through a :class:`DomainCalls`. On a real host that
is :class:`LibvirtDomainCalls`, which forwards to libvirt. libvirt's ``test:///default`` driver
supports none of the three (libvirt 9: "this function is not supported by the connection
driver", "p2p migration is not supported by the source host"), so :class:`RecordingDomainCalls`
stands in where the driver is tested: it records each call exactly as libvirt would have
received it (domain, XML or URI, typed parameters, flags) and raises libvirt's own exception
type when told to, so the driver's translation of errors is tested too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import libvirt

__all__ = ["DomainCalls", "LibvirtCall", "LibvirtDomainCalls", "RecordingDomainCalls",
           "libvirt_error"]

ATTACH = "attachDeviceFlags"
DETACH = "detachDeviceFlags"
MIGRATE = "migrateToURI3"


class DomainCalls(ABC):
    """One method per libvirt call, named and shaped as libvirt's own."""

    @abstractmethod
    def attach_device_flags(self, dom: libvirt.virDomain, xml: str, flags: int) -> None: ...

    @abstractmethod
    def detach_device_flags(self, dom: libvirt.virDomain, xml: str, flags: int) -> None: ...

    @abstractmethod
    def migrate_to_uri3(self, dom: libvirt.virDomain, dconnuri: str,
                        params: dict[str, str], flags: int) -> None: ...


class LibvirtDomainCalls(DomainCalls):
    """libvirt itself."""

    def attach_device_flags(self, dom: libvirt.virDomain, xml: str, flags: int) -> None:
        dom.attachDeviceFlags(xml, flags)

    def detach_device_flags(self, dom: libvirt.virDomain, xml: str, flags: int) -> None:
        dom.detachDeviceFlags(xml, flags)

    def migrate_to_uri3(self, dom: libvirt.virDomain, dconnuri: str,
                        params: dict[str, str], flags: int) -> None:
        # libvirt-python's annotation says str; the binding takes (and needs) a dict.
        dom.migrateToURI3(dconnuri, params, flags)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class LibvirtCall:
    """One call as libvirt would have received it. ``target`` is the device XML for
    attach/detach and the destination URI for migration; ``params`` are migrateToURI3's."""

    method: str
    domain: str
    target: str
    flags: int
    params: tuple[tuple[str, str], ...] = ()


def libvirt_error(code: int, message: str) -> libvirt.libvirtError:
    """A ``libvirtError`` carrying ``code`` and ``message``, as libvirt raises them."""
    exc = libvirt.libvirtError(message)
    exc.err = (code, libvirt.VIR_FROM_DOMAIN, message, libvirt.VIR_ERR_ERROR, message,
               None, None, 0, 0)
    return exc


@dataclass
class RecordingDomainCalls(DomainCalls):
    """Records every call; ``fail`` maps a libvirt method name (``"migrateToURI3"``...) to the
    ``(error code, message)`` it raises, recorded all the same."""

    calls: list[LibvirtCall] = field(default_factory=list)
    fail: dict[str, tuple[int, str]] = field(default_factory=dict)

    def _record(self, call: LibvirtCall) -> None:
        self.calls.append(call)
        if call.method in self.fail:
            code, message = self.fail[call.method]
            raise libvirt_error(code, message)

    def attach_device_flags(self, dom: libvirt.virDomain, xml: str, flags: int) -> None:
        self._record(LibvirtCall(ATTACH, dom.name(), xml, flags))

    def detach_device_flags(self, dom: libvirt.virDomain, xml: str, flags: int) -> None:
        self._record(LibvirtCall(DETACH, dom.name(), xml, flags))

    def migrate_to_uri3(self, dom: libvirt.virDomain, dconnuri: str,
                        params: dict[str, str], flags: int) -> None:
        self._record(LibvirtCall(MIGRATE, dom.name(), dconnuri, flags,
                                 tuple(sorted(params.items()))))
