"""The real driver: libvirt-python on one connection (``qemu:///system`` by default).

libvirt's errors become :class:`~pcipass.errors.VirtError` here, carrying libvirt's message
and error number, and libvirt's habit of printing every error to stderr is switched off.

Device hot-plug and migration go through a :class:`~pcipass.virt.libvirt_calls.DomainCalls`
seam (libvirt's ``test:///default`` supports neither), with these flags:

- attach/detach: ``VIR_DOMAIN_AFFECT_LIVE`` for ``live``, ``VIR_DOMAIN_AFFECT_CONFIG`` for
  ``config``;
- migrate: ``migrateToURI3(dest_uri, params, PEER2PEER | PERSIST_DEST | UNDEFINE_SOURCE``
  ``| LIVE)`` (``PEER2PEER`` because ``dest_uri`` is the destination's libvirt URI; a stopped
  domain moves ``OFFLINE`` instead of ``LIVE``), ``params`` holding
  ``VIR_MIGRATE_PARAM_DEST_XML`` and ``VIR_MIGRATE_PARAM_PERSIST_XML`` when XML is given.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TypeVar

import libvirt

from pcipass.errors import VirtError
from pcipass.pci.address import PciAddress
from pcipass.virt.driver import DEFAULT_URI, Operation, VirtDriver, check_affect
from pcipass.virt.libvirt_calls import DomainCalls, LibvirtDomainCalls
from pcipass.virt.nodedev import LibvirtNodeDevices, NodeDevices

__all__ = ["LibvirtDriver"]

T = TypeVar("T")

# Undefine drops what libvirt keeps beside a definition, so the name is free again. Drivers
# that refuse some of these flags (test:///default refuses NVRAM and checkpoints) get fewer.
_UNDEFINE_BASIC = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                   | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
_UNDEFINE_FULL = (_UNDEFINE_BASIC | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                  | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
_UNSUPPORTED = (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT)

# Every migration: the destination libvirtd is reached by URI, keeps the domain defined, and
# the source forgets it.
MIGRATE_BASE = (libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
                | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)


def affect_flags(live: bool, config: bool) -> int:
    """``attachDeviceFlags``/``detachDeviceFlags`` flags for the running guest and/or the
    definition."""
    check_affect(live, config)
    return ((libvirt.VIR_DOMAIN_AFFECT_LIVE if live else 0)
            | (libvirt.VIR_DOMAIN_AFFECT_CONFIG if config else 0))


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt's default handler prints each error to stderr; ours are raised instead."""


def _translate(op: Operation, what: str, exc: libvirt.libvirtError) -> VirtError:
    text = exc.get_error_message() or str(exc)
    return VirtError(f"{op} {what}: {text}", operation=str(op),
                     driver_code=exc.get_error_code())


class LibvirtDriver(VirtDriver):
    def __init__(self, uri: str = DEFAULT_URI, *, nodedevs: NodeDevices | None = None,
                 calls: DomainCalls | None = None) -> None:
        libvirt.registerErrorHandler(_quiet, None)
        self.uri = uri
        try:
            self._conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise _translate(Operation.CONNECT, uri, exc) from None
        self._nodedevs = nodedevs if nodedevs is not None else LibvirtNodeDevices(self._conn)
        self._calls = calls if calls is not None else LibvirtDomainCalls()

    def _call(self, op: Operation, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except libvirt.libvirtError as exc:
            raise _translate(op, what, exc) from None

    def _lookup(self, op: Operation, name: str) -> libvirt.virDomain:
        return self._call(op, f"domain {name!r}", lambda: self._conn.lookupByName(name))

    def define(self, xml: str) -> str:
        dom = self._call(Operation.DEFINE, "domain", lambda: self._conn.defineXML(xml))
        return dom.name()

    def start(self, name: str) -> None:
        dom = self._lookup(Operation.START, name)
        self._call(Operation.START, f"domain {name!r}", dom.create)

    def destroy(self, name: str) -> None:
        dom = self._lookup(Operation.DESTROY, name)
        what = f"domain {name!r}"
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            # Not running (or it stopped while we asked): the outcome we wanted.
            if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and \
                    not self._call(Operation.DESTROY, what, dom.isActive):
                return
            raise _translate(Operation.DESTROY, what, exc) from None

    def undefine(self, name: str) -> None:
        dom = self._lookup(Operation.UNDEFINE, name)
        what = f"domain {name!r}"
        try:
            dom.undefineFlags(_UNDEFINE_FULL)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() not in _UNSUPPORTED:
                raise _translate(Operation.UNDEFINE, what, exc) from None
            self._call(Operation.UNDEFINE, what, lambda: dom.undefineFlags(_UNDEFINE_BASIC))

    def exists(self, name: str) -> bool:
        try:
            self._conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            raise _translate(Operation.EXISTS, f"domain {name!r}", exc) from None
        return True

    def is_active(self, name: str) -> bool:
        dom = self._lookup(Operation.IS_ACTIVE, name)
        return bool(self._call(Operation.IS_ACTIVE, f"domain {name!r}", dom.isActive))

    def list(self) -> list[str]:
        doms = self._call(Operation.LIST, "domains", lambda: self._conn.listAllDomains(0))
        return sorted(d.name() for d in doms)

    def get_xml(self, name: str) -> str:
        dom = self._lookup(Operation.GET_XML, name)
        return self._call(Operation.GET_XML, f"domain {name!r}", lambda: dom.XMLDesc(0))

    def nodedev_detach(self, address: PciAddress) -> None:
        self._nodedevs.detach(address)

    def nodedev_reattach(self, address: PciAddress) -> None:
        self._nodedevs.reattach(address)

    def attach_device(self, name: str, xml: str, *, live: bool = True,
                      config: bool = True) -> None:
        flags = affect_flags(live, config)
        dom = self._lookup(Operation.ATTACH_DEVICE, name)
        self._call(Operation.ATTACH_DEVICE, f"domain {name!r}",
                   lambda: self._calls.attach_device_flags(dom, xml, flags))

    def detach_device(self, name: str, xml: str, *, live: bool = True,
                      config: bool = True) -> None:
        flags = affect_flags(live, config)
        dom = self._lookup(Operation.DETACH_DEVICE, name)
        self._call(Operation.DETACH_DEVICE, f"domain {name!r}",
                   lambda: self._calls.detach_device_flags(dom, xml, flags))

    def migrate(self, name: str, dest_uri: str, *, live: bool, xml: str | None = None) -> None:
        what = f"domain {name!r}"
        dom = self._lookup(Operation.MIGRATE, name)
        active = bool(self._call(Operation.MIGRATE, what, dom.isActive))
        flags = MIGRATE_BASE
        if live:
            if not active:
                raise VirtError(f"migrate {what}: Requested operation is not valid: domain is "
                                "not running (a live migration needs a running guest)",
                                operation=str(Operation.MIGRATE),
                                driver_code=libvirt.VIR_ERR_OPERATION_INVALID)
            flags |= libvirt.VIR_MIGRATE_LIVE
        elif not active:
            flags |= libvirt.VIR_MIGRATE_OFFLINE
        params: dict[str, str] = {}
        if xml is not None:
            params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = xml
            params[libvirt.VIR_MIGRATE_PARAM_PERSIST_XML] = xml
        self._call(Operation.MIGRATE, f"{what} to {dest_uri}",
                   lambda: self._calls.migrate_to_uri3(dom, dest_uri, params, flags))

    def close(self) -> None:
        # Already closed, or the daemon went away: nothing is left to release.
        with contextlib.suppress(libvirt.libvirtError):
            self._conn.close()
