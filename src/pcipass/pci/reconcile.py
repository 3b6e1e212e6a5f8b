"""Reconciliation: what an inventory report changes in what the control plane knows.

A pure function of the devices the store holds for a host and the host's new report; the store
writes the resulting :class:`Plan` in one transaction. The rules, in the order they are checked:

- a device reported for the first time appears ``available``;
- a known device whose discovered facts changed takes the new facts; its state, owner and
  ``reserved`` flag stay (a device no longer selected by the device spec, ``assignable``
  false, stays with its owner until freed and is then never handed out again);
- a device that vanished while free (no owner, not claimed or allocated) is gone;
- a device that vanished while in use turns ``removed``: it keeps its owner and remembers the
  state its owner held it in (``held_state``), and is never handed to anyone else;
- a removed device that is reported again takes back that state, owner kept (``available``
  if its owner let go of it meanwhile);
- anything else is left alone, so an unchanged report plans nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from pcipass.pci.address import PciAddress
from pcipass.pci.device import PciDevice
from pcipass.pci.inventory import Inventory
from pcipass.records import DeviceState

_HELD = (DeviceState.CLAIMED, DeviceState.ALLOCATED)


@dataclass(frozen=True, slots=True)
class Tracked:
    """One device as the store holds it: discovered facts plus bookkeeping.

    ``state`` is the stored lifecycle state (never ``reserved``: that is the flag);
    ``held_state`` is only set while ``removed``.
    """

    device: PciDevice
    state: DeviceState = DeviceState.AVAILABLE
    reserved: bool = False
    owner: str | None = None
    held_state: DeviceState | None = None

    @property
    def address(self) -> PciAddress:
        return self.device.address

    @property
    def in_use(self) -> bool:
        """Someone holds it: losing track of it would lose their device."""
        return self.owner is not None or self.state in _HELD


@dataclass(frozen=True, slots=True)
class Change:
    before: Tracked
    after: Tracked


@dataclass(frozen=True, slots=True)
class Plan:
    """What to write; every tuple is in address order."""

    added: tuple[Tracked, ...] = ()
    updated: tuple[Change, ...] = ()
    removed: tuple[Change, ...] = ()
    gone: tuple[Tracked, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed or self.gone)

    def moves(self) -> Iterator[tuple[Tracked | None, Tracked | None]]:
        """Every device write as ``(before, after)``; None for a row that is new or deleted."""
        for t in self.added:
            yield None, t
        for c in (*self.updated, *self.removed):
            yield c.before, c.after
        for t in self.gone:
            yield t, None


def _returning_state(t: Tracked) -> DeviceState:
    if t.held_state is not None:
        return t.held_state
    return DeviceState.ALLOCATED if t.owner is not None else DeviceState.AVAILABLE


def reconcile(current: Iterable[Tracked], inventory: Inventory) -> Plan:
    """Plan the writes that make the store agree with ``inventory`` (see module rules)."""
    known = {t.address: t for t in current}
    reported = inventory.by_address()
    added: list[Tracked] = []
    updated: list[Change] = []
    removed: list[Change] = []
    gone: list[Tracked] = []
    for address in sorted(reported):
        dev = reported[address]
        before = known.get(address)
        if before is None:
            added.append(Tracked(dev))
        elif before.state is DeviceState.REMOVED:
            after = replace(before, device=dev, state=_returning_state(before), held_state=None)
            updated.append(Change(before, after))
        elif before.device != dev:
            updated.append(Change(before, replace(before, device=dev)))
    for address in sorted(known.keys() - reported.keys()):
        before = known[address]
        if before.state is DeviceState.REMOVED:
            continue
        if before.in_use:
            after = replace(before, state=DeviceState.REMOVED, held_state=before.state)
            removed.append(Change(before, after))
        else:
            gone.append(before)
    return Plan(tuple(added), tuple(updated), tuple(removed), tuple(gone))


def apply_plan(current: Iterable[Tracked], plan: Plan) -> list[Tracked]:
    """What the store holds once ``plan`` is written, in address order."""
    out = {t.address: t for t in current}
    for before, after in plan.moves():
        if after is not None:
            out[after.address] = after
        elif before is not None:
            del out[before.address]
    return [out[a] for a in sorted(out)]
