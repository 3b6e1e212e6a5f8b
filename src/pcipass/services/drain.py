"""Draining a host: what still runs there, and whether each server could move live.

Pure verdicts over what the store read (:func:`pcipass.store.Store.drain_entries`): a server
could be live-migrated when every device it holds is

- bound to an SR-IOV port of vnic type ``macvtap`` (moves with the guest) or ``direct``
  (unplugged before the move and plugged again on a VF of the destination), or
- passed through with a device spec saying ``live_migratable: "yes"`` (an alias asking for
  ``live_migratable`` only ever matches such devices);

anything else (a ``direct-physical`` port's PF, a plain passthrough device, an IOMMU group
mate handed out with one) is a blocker named by its address. The move itself is a later
issue: the report says "live migration not yet available".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pcipass.pci.address import PciAddress
from pcipass.records import HostRecord, Principal, ServerRecord
from pcipass.services.access import admin
from pcipass.store import Store
from pcipass.store.drain import DrainEntry

NOT_YET = "live migration not yet available"
_TRUE = frozenset({"1", "t", "true", "on", "y", "yes"})
MOVABLE_VNICS = frozenset({"macvtap", "direct"})


@dataclass(frozen=True, slots=True)
class DrainServer:
    """A server still on the host; ``blockers``: what prevents a live migration (device
    address first), empty when it could be live-migrated."""

    server: ServerRecord
    blockers: tuple[str, ...]

    @property
    def live_migratable(self) -> bool:
        return not self.blockers


@dataclass(frozen=True, slots=True)
class DrainReport:
    host: HostRecord
    servers: tuple[DrainServer, ...]
    note: str = NOT_YET


def blockers(server: ServerRecord, tags: Mapping[PciAddress, Mapping[str, str]]
             ) -> tuple[str, ...]:
    """Why ``server`` could not be live-migrated, per device (see the module)."""
    ports = {p.binding.address: p for p in server.ports if p.binding is not None}
    out: list[str] = []
    for d in server.devices:
        port = ports.get(d.address)
        if port is not None:
            if port.vnic_type not in MOVABLE_VNICS:
                out.append(f"{d.address}: port {port.name or port.id} is {port.vnic_type} "
                           "(a whole PF passed through cannot move with the guest)")
            continue
        if tags.get(d.address, {}).get("live_migratable", "").strip().lower() in _TRUE:
            continue
        what = f"alias {d.alias!r}" if d.alias is not None else "an IOMMU group mate"
        out.append(f"{d.address} ({what}): passed through, and its device spec does not "
                   "say live_migratable")
    return tuple(out)


def judge(entry: DrainEntry) -> DrainServer:
    return DrainServer(entry.server, blockers(entry.server, entry.tags))


def drain_report(store: Store, p: Principal, host: str) -> DrainReport:
    """What still runs on ``host`` and whether each could move live (admins only)."""
    admin(p, "see what runs on a host")
    rec, entries = store.drain_entries(host)
    return DrainReport(rec, tuple(judge(e) for e in entries))


def reserve_host(store: Store, p: Principal, host: str, reserved: bool,
                 reason: str | None = None) -> HostRecord:
    """Drain ``host`` (nothing new is placed there; what runs keeps its devices), or take
    it back into service (admins only)."""
    admin(p, "reserve or unreserve hosts")
    return store.reserve_host(host, reserved, reason=reason)
