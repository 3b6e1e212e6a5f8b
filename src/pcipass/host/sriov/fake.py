"""A VF programmer that keeps VF tables in memory and records every call.

For the demo's simulated hosts and for tests: the program/restore/rollback logic is the real
one (inherited from :class:`~pcipass.host.sriov.programmer.VfProgrammer`), only the kernel is
replaced. Failures are injected per attribute, PF and VF with the errno a driver would answer,
and come back worded exactly as the netlink backend words them.
"""

from __future__ import annotations

import errno as errnos
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

from pcipass.errors import InvalidInput
from pcipass.host.sriov.model import ZERO_MAC, VfAttribute, VfConfig, VfSlot
from pcipass.host.sriov.programmer import VfProgrammer, no_such_pf, no_such_vf, vf_error

# What a freshly created VF reports on a typical NIC (ixgbe, i40e, mlx5).
FRESH_VF = VfConfig(mac=ZERO_MAC, vlan=None, spoofchk=True, trust=False, link_state="auto",
                    min_tx_rate_mbps=0, max_tx_rate_mbps=0)

CallOp = Literal["read", "write", "program", "restore"]


@dataclass(frozen=True, slots=True)
class VfCall:
    """One recorded call; ``attribute`` for writes, ``config`` for writes/program/restore."""

    op: CallOp
    slot: VfSlot
    attribute: VfAttribute | None = None
    config: VfConfig | None = None


@dataclass(slots=True)
class _Failure:
    target: VfAttribute | Literal["read"] | None
    pf: str | None
    vf_index: int | None
    errno: int
    remaining: int | None
    skip: int

    def matches(self, slot: VfSlot, target: VfAttribute | Literal["read"]) -> bool:
        return (((self.target is None and target != "read") or self.target == target)
                and self.pf in (None, slot.pf_netdev)
                and self.vf_index in (None, slot.vf_index)
                and self.remaining != 0)


class RecordingVfProgrammer(VfProgrammer):
    """VF tables per PF in memory; ``calls`` lists every read, write, program and restore."""

    def __init__(self, pfs: Mapping[str, int] | None = None, *,
                 initial: VfConfig = FRESH_VF) -> None:
        self._lock = threading.RLock()
        self._tables: dict[str, list[VfConfig]] = {}
        self._failures: list[_Failure] = []
        self.calls: list[VfCall] = []
        for pf, count in (pfs or {}).items():
            self.add_pf(pf, count, initial=initial)

    def add_pf(self, pf: str, num_vfs: int, *, initial: VfConfig = FRESH_VF) -> None:
        """Give ``pf`` a table of ``num_vfs`` VFs, each starting as ``initial``."""
        VfSlot(pf, 0)  # validates the name
        if num_vfs < 0:
            raise InvalidInput(f"num_vfs must be >= 0, not {num_vfs}", field="num_vfs")
        with self._lock:
            self._tables[pf] = [initial] * num_vfs

    def fail(self, attribute: VfAttribute | Literal["read"] | None = None, *,
             pf: str | None = None, vf_index: int | None = None,
             errno: int = errnos.EOPNOTSUPP, times: int | None = None,
             skip: int = 0) -> None:
        """Make matching writes (``attribute`` None: every write) or reads (``"read"``) fail
        with ``errno``: after letting ``skip`` of them through, ``times`` times or for good."""
        target = VfAttribute(attribute) if attribute not in (None, "read") else attribute
        with self._lock:
            self._failures.append(_Failure(target, pf, vf_index, errno, times, skip))

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    def state(self, slot: VfSlot) -> VfConfig:
        """What the VF has now, without recording a call (for assertions)."""
        with self._lock:
            return self._table(slot)[slot.vf_index]

    def table(self, pf: str) -> tuple[VfConfig, ...]:
        with self._lock:
            return tuple(self._tables[pf])

    def ops(self, *ops: CallOp) -> list[VfCall]:
        """The recorded calls of these kinds, in order."""
        with self._lock:
            return [c for c in self.calls if c.op in ops]

    def read(self, slot: VfSlot) -> VfConfig:
        with self._lock:
            self.calls.append(VfCall("read", slot))
            self._check("read", slot)
            return self._table(slot)[slot.vf_index]

    def write(self, slot: VfSlot, attribute: VfAttribute, config: VfConfig) -> None:
        with self._lock:
            self.calls.append(VfCall("write", slot, attribute, config))
            table = self._table(slot)
            self._check(attribute, slot)
            table[slot.vf_index] = _set(table[slot.vf_index], attribute, config)

    def program(self, slot: VfSlot, config: VfConfig) -> VfConfig:
        with self._lock:
            self.calls.append(VfCall("program", slot, config=config))
            return super().program(slot, config)

    def restore(self, slot: VfSlot, previous: VfConfig) -> None:
        with self._lock:
            self.calls.append(VfCall("restore", slot, config=previous))
            super().restore(slot, previous)

    def _table(self, slot: VfSlot) -> list[VfConfig]:
        table = self._tables.get(slot.pf_netdev)
        if table is None:
            raise no_such_pf(slot)
        if slot.vf_index >= len(table):
            raise no_such_vf(slot, len(table))
        return table

    def _check(self, target: VfAttribute | Literal["read"], slot: VfSlot) -> None:
        for failure in self._failures:
            if failure.matches(slot, target):
                if failure.skip:
                    failure.skip -= 1
                    continue
                if failure.remaining is not None:
                    failure.remaining -= 1
                raise vf_error(slot, None if target == "read" else target, failure.errno)


def _set(vf: VfConfig, attribute: VfAttribute, config: VfConfig) -> VfConfig:
    """What the kernel does with one attribute request: replace that attribute's fields."""
    if attribute is VfAttribute.MAC:
        return replace(vf, mac=config.mac)
    if attribute is VfAttribute.VLAN:
        return replace(vf, vlan=config.vlan, qos=config.qos, vlan_proto=config.vlan_proto)
    if attribute is VfAttribute.SPOOFCHK:
        return replace(vf, spoofchk=config.spoofchk)
    if attribute is VfAttribute.TRUST:
        return replace(vf, trust=config.trust)
    if attribute is VfAttribute.LINK_STATE:
        return replace(vf, link_state=config.link_state)
    return replace(vf, min_tx_rate_mbps=config.min_tx_rate_mbps or 0,
                   max_tx_rate_mbps=config.max_tx_rate_mbps or 0)
