"""Draining a host: what still runs there, and whether each server could move live.

Pure verdicts over what the store read (:func:`pcipass.store.Store.drain_entries`): a server
could be live-migrated when every device it holds is

- bound to an SR-IOV port of vnic type ``macvtap`` (moves with the guest) or ``direct``
  (unplugged before the move and plugged again on a VF of the destination), or
- passed through with a device spec saying ``live_migratable: "yes"`` and taken for an
  alias every entry of which says ``live_migratable: "yes"`` too (Nova's rule: both sides
  must agree the device can move; when the caller gives no aliases only the spec is read);

anything else (a ``direct-physical`` port's PF, a plain passthrough device, an IOMMU group
mate handed out with one) is a blocker named by its address. :func:`blockers` is the one
verdict: the drain listing shows it and a live migration
(:mod:`pcipass.services.live`) refuses on it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from pcipass.pci.address import PciAddress
from pcipass.pci.alias import Alias, AliasEntry
from pcipass.records import HostRecord, Principal, ServerRecord
from pcipass.services.access import admin
from pcipass.store import Store
from pcipass.store.drain import DrainEntry

DRAIN_HINT = "live-migrate what can move with: pcipass host drain HOST --live-migrate"
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
    note: str = DRAIN_HINT


def live_aliases(aliases: Mapping[str, Alias]) -> frozenset[str]:
    """The aliases whose every entry says ``live_migratable: "yes"`` (at the top level or as
    a ``match`` constraint)."""
    def says_yes(e: AliasEntry) -> bool:
        return e.live_migratable is True or any(
            c.key == "live_migratable" and c.allowed == ("true",) for c in e.match)
    return frozenset(name for name, a in aliases.items()
                     if a.entries and all(says_yes(e) for e in a.entries))


def blockers(server: ServerRecord, tags: Mapping[PciAddress, Mapping[str, str]],
             live: Collection[str] | None = None) -> tuple[str, ...]:
    """Why ``server`` could not be live-migrated, per device (see the module); ``live``:
    the aliases that say ``live_migratable`` (:func:`live_aliases`), None to read only the
    device specs."""
    ports = {p.binding.address: p for p in server.ports if p.binding is not None}
    out: list[str] = []
    for d in server.devices:
        port = ports.get(d.address)
        if port is not None:
            if port.vnic_type not in MOVABLE_VNICS:
                out.append(f"{d.address}: port {port.name or port.id} is {port.vnic_type} "
                           "(a whole PF passed through cannot move with the guest)")
            continue
        spec_yes = tags.get(d.address, {}).get("live_migratable", "").strip().lower() in _TRUE
        if spec_yes and (live is None or d.alias in live):
            continue
        what = f"alias {d.alias!r}" if d.alias is not None else "an IOMMU group mate"
        if spec_yes:
            out.append(f"{d.address} ({what}): passed through, and its alias does not say "
                       "live_migratable")
            continue
        out.append(f"{d.address} ({what}): passed through, and its device spec does not "
                   "say live_migratable")
    return tuple(out)


def judge(entry: DrainEntry, live: Collection[str] | None = None) -> DrainServer:
    return DrainServer(entry.server, blockers(entry.server, entry.tags, live))


def drain_report(store: Store, p: Principal, host: str,
                 aliases: Mapping[str, Alias] | None = None) -> DrainReport:
    """What still runs on ``host`` and whether each could move live (admins only);
    ``aliases``: every alias known, so a device's alias is judged too."""
    admin(p, "see what runs on a host")
    rec, entries = store.drain_entries(host)
    live = None if aliases is None else live_aliases(aliases)
    return DrainReport(rec, tuple(judge(e, live) for e in entries))


def reserve_host(store: Store, p: Principal, host: str, reserved: bool,
                 reason: str | None = None) -> HostRecord:
    """Drain ``host`` (nothing new is placed there; what runs keeps its devices), or take
    it back into service (admins only)."""
    admin(p, "reserve or unreserve hosts")
    return store.reserve_host(host, reserved, reason=reason)
