"""A server's SR-IOV ports on this host: what their VFs are told, and what to put back.

Before a spawn the agent programs each ``direct`` and ``macvtap`` port's VF on its PF
(:func:`vf_config`: the port's MAC, VLAN, spoof-check, trust and tx rates) and tells the
PF's upstream switch about every SR-IOV port (:class:`SwitchBinding`). What each VF had
before is kept (:class:`SavedVf`), in the task's journal and in a file per server::

    STATE/vfs/<server_id>.json   {"version": 1, "server_id": "...",
                                  "vfs": [{"port", "pf", "vf_index", "previous": {...}}]}

so the destroy task, a different task run perhaps by a restarted agent, puts back exactly
that. A VF with nothing saved (the file lost, or written by an agent that did not keep it)
is reset to :data:`FALLBACK_VF`, what an unused VF has on common NICs.

``--sriov`` picks the programmer (:func:`make_programmer`): ``netlink`` on a real host,
``fake`` (a :class:`~pcipass.host.sriov.RecordingVfProgrammer` whose VF tables are the
host's own discovered PFs, :func:`sriov_tables`) for the demo and tests.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from pcipass import errors
from pcipass.host.sriov import (
    ZERO_MAC,
    NetlinkVfProgrammer,
    RecordingVfProgrammer,
    VfConfig,
    VfProgrammer,
    VfSlot,
)
from pcipass.pci.device import DevType
from pcipass.pci.inventory import Inventory
from pcipass.virt.payload import PayloadInterface

log = logging.getLogger("pcipass.agent.ports")

__all__ = [
    "FALLBACK_VF",
    "VFS_DIR",
    "SavedVf",
    "SriovKind",
    "SwitchBinding",
    "VfStore",
    "config_from_json",
    "config_to_json",
    "make_programmer",
    "saved_from_json",
    "saved_to_json",
    "sriov_tables",
    "switch_bindings",
    "vf_config",
    "vf_slot",
]

VFS_DIR = "vfs"
FILE_VERSION = 1

# What a VF is reset to when what it had before was not saved: no MAC, untagged, spoof-check
# on, untrusted, no rate limits.
FALLBACK_VF = VfConfig(mac=ZERO_MAC, vlan=0, spoofchk=True, trust=False, min_tx_rate_mbps=0,
                       max_tx_rate_mbps=0)


class SriovKind(StrEnum):
    """How the agent programs VFs: ``netlink`` (pyroute2, the host's kernel) or ``fake``."""

    NETLINK = "netlink"
    FAKE = "fake"


@dataclass(frozen=True, slots=True)
class SavedVf:
    """What a port's VF had before this host programmed it for the port."""

    port: str
    slot: VfSlot
    previous: VfConfig


@dataclass(frozen=True, slots=True)
class SwitchBinding:
    """One :meth:`~pcipass.net.switch.SwitchDriver.bind` call's arguments (and its port)."""

    port: str
    pf: str
    vlan: int | None
    mac: str


# --- from the payload ---------------------------------------------------------------------

def vf_slot(nic: PayloadInterface) -> VfSlot:
    """The VF a ``direct``/``macvtap`` port is bound to, as its PF knows it."""
    if nic.pf is None or nic.vf_index is None:
        raise errors.InvalidInput(f"{nic.describe()} names no PF netdev and VF index to "
                                  f"program its VF through", field="interfaces.pf")
    return VfSlot(nic.pf, nic.vf_index)


def vf_config(nic: PayloadInterface) -> VfConfig:
    """What the port asks of its VF. An untagged port clears a VLAN left on the VF; unset
    rates leave the VF's as they are (the PF driver may not support them at all)."""
    return VfConfig(mac=nic.mac, vlan=nic.vlan or 0, spoofchk=nic.spoofchk, trust=nic.trusted,
                    min_tx_rate_mbps=nic.min_tx_rate_mbps, max_tx_rate_mbps=nic.max_tx_rate_mbps)


def switch_bindings(nics: Iterable[PayloadInterface]) -> tuple[SwitchBinding, ...]:
    """The switch calls for a server's SR-IOV ports (``direct``, ``macvtap``,
    ``direct-physical``); a port whose PF has no netdev on this host is skipped, logged."""
    out = []
    for nic in nics:
        if not nic.on_switch:
            continue
        if nic.pf is None:
            log.warning("%s has no PF netdev on this host; its switch port is not told",
                        nic.describe())
            continue
        out.append(SwitchBinding(nic.port, nic.pf, nic.vlan, nic.mac))
    return tuple(out)


# --- JSON -----------------------------------------------------------------------------------

_CONFIG_FIELDS = ("mac", "vlan", "qos", "vlan_proto", "spoofchk", "trust", "link_state",
                  "min_tx_rate_mbps", "max_tx_rate_mbps")


def config_to_json(c: VfConfig) -> dict[str, Any]:
    return {name: getattr(c, name) for name in _CONFIG_FIELDS}


def config_from_json(obj: Any) -> VfConfig:
    """A saved config; ValueError/TypeError when it is not one (an InvalidInput is a
    ValueError's cousin: both mean the file cannot be trusted)."""
    if not isinstance(obj, Mapping):
        raise TypeError("a saved VF config must be an object")
    unknown = set(obj) - set(_CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"unknown VF config keys {sorted(unknown)}")
    try:
        return VfConfig(**{k: obj[k] for k in _CONFIG_FIELDS if k in obj})
    except errors.InvalidInput as exc:
        raise ValueError(exc.message) from None


def saved_to_json(v: SavedVf) -> dict[str, Any]:
    return {"port": v.port, "pf": v.slot.pf_netdev, "vf_index": v.slot.vf_index,
            "previous": config_to_json(v.previous)}


def saved_from_json(obj: Any) -> SavedVf:
    if not isinstance(obj, Mapping):
        raise TypeError("a saved VF must be an object")
    try:
        slot = VfSlot(obj["pf"], obj["vf_index"])
    except errors.InvalidInput as exc:
        raise ValueError(exc.message) from None
    return SavedVf(str(obj["port"]), slot, config_from_json(obj["previous"]))


def binding_to_json(b: SwitchBinding) -> dict[str, Any]:
    return {"port": b.port, "pf": b.pf, "vlan": b.vlan, "mac": b.mac}


def binding_from_json(obj: Any) -> SwitchBinding:
    if not isinstance(obj, Mapping):
        raise TypeError("a switch binding must be an object")
    vlan = obj.get("vlan")
    return SwitchBinding(str(obj["port"]), str(obj["pf"]),
                         None if vlan is None else int(vlan), str(obj["mac"]))


# --- the per-server file ----------------------------------------------------------------------

class VfStore:
    """``STATE/vfs``: per server, the VFs this host programmed and what they had before."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def file(self, server_id: str) -> Path:
        if not server_id or "/" in server_id or server_id.startswith(".") or "\0" in server_id:
            raise errors.InvalidInput(f"server id {server_id!r} cannot name a file",
                                      field="server_id")
        return self.path / f"{server_id}.json"

    def load(self, server_id: str) -> tuple[SavedVf, ...]:
        """What was saved for the server; nothing when there is no file. An unreadable file
        is logged and counts as nothing saved (its VFs get :data:`FALLBACK_VF`)."""
        path = self.file(server_id)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(doc, Mapping) or doc.get("version") != FILE_VERSION:
                raise ValueError("not a version-1 VF file")
            return tuple(saved_from_json(v) for v in doc.get("vfs") or ())
        except FileNotFoundError:
            return ()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("saved VF configs %s are unreadable (%s); its VFs will be reset to "
                      "defaults on release", path, exc)
            return ()

    def save(self, server_id: str, vfs: Iterable[SavedVf]) -> None:
        """Replace the server's file whole (written, synced, renamed)."""
        path = self.file(server_id)
        self.path.mkdir(parents=True, exist_ok=True)
        doc = {"version": FILE_VERSION, "server_id": server_id,
               "vfs": [saved_to_json(v) for v in vfs]}
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{server_id}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def remove(self, server_id: str) -> None:
        self.file(server_id).unlink(missing_ok=True)

    def add(self, server_id: str, vfs: Iterable[SavedVf]) -> None:
        """Keep ``vfs`` with what the file holds already (a hot-plugged port's VF joins the
        spawn's); a VF saved before keeps its first saved config."""
        kept = {v.slot: v for v in self.load(server_id)}
        for v in vfs:
            kept.setdefault(v.slot, v)
        self.save(server_id, kept.values())

    def forget(self, server_id: str, slots: Iterable[VfSlot]) -> None:
        """Drop the VFs in ``slots`` (restored); the file goes when none is left."""
        gone = set(slots)
        left = [v for v in self.load(server_id) if v.slot not in gone]
        if left:
            self.save(server_id, left)
        else:
            self.remove(server_id)


# --- the programmer ---------------------------------------------------------------------------

def sriov_tables(inv: Inventory) -> dict[str, int]:
    """PF netdev → its VF count, for every PF discovered with a netdev and VFs enabled."""
    return {d.netdevs[0].name: d.num_vfs for d in inv.devices
            if d.dev_type is DevType.PF and d.netdevs and d.num_vfs}


def make_programmer(kind: SriovKind | str,
                    discover: Callable[[], Inventory] | None = None) -> VfProgrammer:
    """The VF programmer ``--sriov`` names; ``fake`` needs ``discover`` for its tables."""
    try:
        kind = SriovKind(kind)
    except ValueError:
        raise errors.InvalidConfig(f"sriov {kind!r} is not one of "
                                   f"{', '.join(k.value for k in SriovKind)}",
                                   field="agent.sriov") from None
    if kind is SriovKind.NETLINK:
        return NetlinkVfProgrammer()
    if discover is None:
        raise errors.InvalidConfig("the fake VF programmer needs the host's inventory",
                                   field="agent.sriov")
    tables = sriov_tables(discover())
    log.info("fake VF programmer for PFs %s",
             ", ".join(f"{pf} ({n} VFs)" for pf, n in sorted(tables.items())) or "(none)")
    return RecordingVfProgrammer(tables)
