"""Pools: the groups of interchangeable assignable devices a host offers, and their counts.

The scheduler reads pool summaries (``total``, ``free``) and never walks devices, so every
write to a device must move its pool's counts in the same transaction. This module says which
pool a device belongs to and how a set of device changes moves the counts; the store applies
the result. Keeping the arithmetic here, pure, lets the report, ``reserved`` and (later)
claims share one rule instead of four copies of it (Nova's ``stats.py`` lesson).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pcipass.pci.address import PciAddress
from pcipass.pci.device import DevType, PciDevice
from pcipass.records import DeviceState


def tags_key(tags: Mapping[str, str]) -> str:
    """Canonical JSON of a tag set: equal tags give equal text, so SQL can compare it."""
    return json.dumps(dict(sorted(tags.items())), separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class PoolKey:
    """What makes two devices on one host interchangeable for a request.

    VFs are pooled per parent PF: a port's physical network, and the PF a VF's traffic
    leaves through, are the PF's; the other device types have no parent.
    """

    vendor_id: str
    product_id: str
    dev_type: DevType
    numa_node: int | None
    parent_addr: PciAddress | None
    tags: tuple[tuple[str, str], ...] = ()

    @property
    def tags_dict(self) -> dict[str, str]:
        return dict(self.tags)

    @property
    def tags_key(self) -> str:
        return tags_key(self.tags_dict)

    @property
    def sort_key(self) -> tuple[str, str, str, int, str, str]:
        """A total order (None sorts first), for stable listings."""
        return (self.vendor_id, self.product_id, self.dev_type.value,
                -1 if self.numa_node is None else self.numa_node,
                "" if self.parent_addr is None else str(self.parent_addr), self.tags_key)

    @property
    def digest(self) -> str:
        """A short fixed-size identity for a unique index (tag sets can be long)."""
        text = json.dumps(
            [self.vendor_id, self.product_id, self.dev_type.value, self.numa_node,
             None if self.parent_addr is None else str(self.parent_addr), self.tags_key],
            separators=(",", ":"), ensure_ascii=False,
        )
        return hashlib.sha256(text.encode()).hexdigest()


def pool_key(dev: PciDevice) -> PoolKey | None:
    """The pool ``dev`` belongs to, or None when the device spec does not select it."""
    if not dev.assignable:
        return None
    return PoolKey(
        vendor_id=dev.vendor_id,
        product_id=dev.product_id,
        dev_type=dev.dev_type,
        numa_node=dev.numa_node,
        parent_addr=dev.parent_addr if dev.dev_type is DevType.VF else None,
        tags=tuple(sorted(dev.tags.items())),
    )


def is_free(state: DeviceState, reserved: bool) -> bool:
    """Free means a claim may take it now: available, and not taken out of service."""
    return state is DeviceState.AVAILABLE and not reserved


@dataclass(frozen=True, slots=True)
class Slot:
    """A device's place in the pools: which pool, and whether it counts as free there."""

    key: PoolKey
    free: bool


def slot(dev: PciDevice, state: DeviceState, reserved: bool) -> Slot | None:
    """Where a stored device counts. A removed device is not on the host: it counts nowhere."""
    key = pool_key(dev)
    if key is None or state is DeviceState.REMOVED:
        return None
    return Slot(key, is_free(state, reserved))


@dataclass(frozen=True, slots=True)
class PoolDelta:
    total: int = 0
    free: int = 0

    def __add__(self, other: PoolDelta) -> PoolDelta:
        return PoolDelta(self.total + other.total, self.free + other.free)

    def __bool__(self) -> bool:
        return self.total != 0 or self.free != 0


def pool_deltas(moves: Iterable[tuple[Slot | None, Slot | None]]) -> dict[PoolKey, PoolDelta]:
    """How much each pool's counts move when devices go from one slot to another.

    A move is ``(before, after)``: ``(None, s)`` adds a device, ``(s, None)`` takes one out.
    Pools whose counts do not move are left out.
    """
    out: dict[PoolKey, PoolDelta] = {}
    for before, after in moves:
        if before == after:
            continue
        if before is not None:
            out[before.key] = out.get(before.key, PoolDelta()) + PoolDelta(-1, -int(before.free))
        if after is not None:
            out[after.key] = out.get(after.key, PoolDelta()) + PoolDelta(1, int(after.free))
    return {k: d for k, d in out.items() if d}


def pool_counts(slots: Iterable[Slot | None]) -> dict[PoolKey, PoolDelta]:
    """Counts from scratch: what maintained counts must always equal."""
    return pool_deltas((None, s) for s in slots)
