"""The VF programmer interface, with program/restore/rollback written once for every backend.

A backend says how to read a VF and how to set one attribute (:meth:`VfProgrammer.read`,
:meth:`VfProgrammer.write`); this base class decides what to set: only the attributes that
change, in :class:`~pcipass.host.sriov.model.VfAttribute` order, undoing what it already set
when a later one is refused, so a failed spawn leaves the VF as it found it.

Every failure is a :class:`~pcipass.errors.VfProgrammingError` whose message names the PF, the
VF and the attribute, with the kernel's reason in words (:func:`vf_error`), the same from the
netlink backend and from the recording fake.
"""

from __future__ import annotations

import errno as errnos
import logging
import os
from abc import ABC, abstractmethod

from pcipass.errors import VfProgrammingError
from pcipass.host.sriov.model import VfAttribute, VfConfig, VfSlot, changed_attributes, effective

log = logging.getLogger(__name__)

# What setting each attribute means, for "the PF driver does not support setting ...".
_WHAT = {
    VfAttribute.MAC: "a VF's MAC address",
    VfAttribute.VLAN: "a VF's VLAN",
    VfAttribute.SPOOFCHK: "a VF's spoof-check",
    VfAttribute.TRUST: "a VF's trust mode",
    VfAttribute.LINK_STATE: "a VF's link state",
    VfAttribute.RATE: "a VF's tx rate limits",
}

# errno.errorcode says ENOTSUP for 95 on Linux; the kernel's own name is EOPNOTSUPP.
_ERRNO_NAMES = {errnos.EOPNOTSUPP: "EOPNOTSUPP"}


def errno_name(code: int) -> str:
    return _ERRNO_NAMES.get(code) or errnos.errorcode.get(code, f"errno {code}")


def kernel_reason(code: int, attribute: VfAttribute | None) -> str:
    """The kernel's refusal in words: what an operator reading a spawn fault needs to know."""
    what = _WHAT[attribute] if attribute is not None else "VF configuration"
    if code == errnos.EOPNOTSUPP:
        return f"the PF driver does not support setting {what}"
    if code == errnos.EPROTONOSUPPORT:
        return "the PF driver does not support this VLAN protocol"
    if code == errnos.EINVAL:
        return "the PF driver refused the value (or the VF index is out of range)"
    if code == errnos.ERANGE:
        return "the value is out of the range the PF supports"
    if code in (errnos.EPERM, errnos.EACCES):
        return "permission denied (programming a VF needs CAP_NET_ADMIN)"
    if code == errnos.ENODEV:
        return "the PF is gone"
    if code == errnos.EBUSY:
        return "the PF is busy"
    return os.strerror(code).lower()


def vf_error(slot: VfSlot, attribute: VfAttribute | None, code: int | None,
             reason: str | None = None) -> VfProgrammingError:
    """One error shape for every backend: ``cannot set vlan of VF 3 on PF ens1f0: ...``."""
    doing = f"set {attribute} of" if attribute is not None else "read"
    why = reason or (kernel_reason(code, attribute) if code is not None else "unknown failure")
    if code is not None:
        why += f" ({errno_name(code)})"
    return VfProgrammingError(f"cannot {doing} {slot}: {why}", pf=slot.pf_netdev,
                              vf_index=slot.vf_index,
                              attribute=str(attribute) if attribute is not None else None,
                              errno=code)


def no_such_vf(slot: VfSlot, num_vfs: int) -> VfProgrammingError:
    """The PF exists but has no VF at this index (a plain NIC, or SR-IOV not enabled)."""
    if num_vfs == 0:
        why = ("it has no VFs (SR-IOV not supported by this device, or sriov_numvfs is 0)")
    else:
        why = f"it has {num_vfs} VF{'s' if num_vfs != 1 else ''} (indexes 0-{num_vfs - 1})"
    return VfProgrammingError(f"PF {slot.pf_netdev} has no VF {slot.vf_index}: {why}",
                              pf=slot.pf_netdev, vf_index=slot.vf_index, errno=errnos.ENODEV)


def no_such_pf(slot: VfSlot, where: str = "") -> VfProgrammingError:
    return VfProgrammingError(f"PF {slot.pf_netdev} not found{where}: no network interface "
                              f"by that name", pf=slot.pf_netdev, vf_index=slot.vf_index,
                              errno=errnos.ENODEV)


class VfProgrammer(ABC):
    """Reads and sets VF configuration on a PF; restores what was there before."""

    @abstractmethod
    def read(self, slot: VfSlot) -> VfConfig:
        """What the VF has now, every field the driver reports filled in."""

    @abstractmethod
    def write(self, slot: VfSlot, attribute: VfAttribute, config: VfConfig) -> None:
        """Set one attribute to ``config``'s value for it (a complete config, after
        :func:`~pcipass.host.sriov.model.effective`); raise :class:`VfProgrammingError`."""

    def program(self, slot: VfSlot, config: VfConfig) -> VfConfig:
        """Apply ``config`` (its unset fields left alone) and return what the VF had before.

        Keep the returned value for :meth:`restore` on release. A refused attribute undoes the
        ones already set before the error is raised; the error says what was rolled back.
        """
        previous = self.read(slot)
        target = effective(previous, config)
        done: list[VfAttribute] = []
        for attribute in changed_attributes(previous, target):
            try:
                self.write(slot, attribute, target)
            except VfProgrammingError as exc:
                if not done:
                    raise
                raise self._rolled_back(slot, exc, done, previous) from exc
            done.append(attribute)
        log.info("programmed %s: %s", slot, ", ".join(done) or "nothing to change")
        return previous

    def restore(self, slot: VfSlot, previous: VfConfig) -> None:
        """Put back what :meth:`program` returned, setting only what differs now.

        Best effort on every attribute before raising one error that names all that failed:
        a half-restored VF is better than one left with a departed guest's MAC and VLAN.
        """
        current = self.read(slot)
        target = effective(current, previous)
        failures: list[VfProgrammingError] = []
        for attribute in changed_attributes(current, target):
            try:
                self.write(slot, attribute, target)
            except VfProgrammingError as exc:
                failures.append(exc)
        if failures:
            first = failures[0]
            text = "; ".join(f.message for f in failures)
            raise VfProgrammingError(f"restoring {slot} failed: {text}", pf=slot.pf_netdev,
                                     vf_index=slot.vf_index, attribute=first.attribute,
                                     errno=first.errno)
        log.info("restored %s", slot)

    def _rolled_back(self, slot: VfSlot, exc: VfProgrammingError, done: list[VfAttribute],
                     previous: VfConfig) -> VfProgrammingError:
        undone: list[str] = []
        stuck: list[str] = []
        for attribute in reversed(done):
            if previous.value_of(attribute) is None:
                stuck.append(f"{attribute} (the driver did not report its previous value)")
                continue
            try:
                self.write(slot, attribute, previous)
                undone.append(str(attribute))
            except VfProgrammingError as undo:
                log.error("rollback of %s on %s failed: %s", attribute, slot, undo)
                stuck.append(f"{attribute} ({undo.message})")
        text = exc.message
        if undone:
            text += f"; rolled back {', '.join(undone)}"
        if stuck:
            text += f"; could not roll back {', '.join(stuck)}"
        return VfProgrammingError(text, pf=exc.pf, vf_index=exc.vf_index,
                                  attribute=exc.attribute, errno=exc.errno)
