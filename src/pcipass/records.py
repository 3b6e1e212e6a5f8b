"""Plain values the store hands out: what the API serialises and the services reason on.

The store turns ORM rows into these at once (house rule 1); nothing outside ``pcipass.store``
ever sees a row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

from pcipass.pci.address import PciAddress
from pcipass.pci.device import DevType, HostInfo, PciDevice

T = TypeVar("T")


class Role(StrEnum):
    ADMIN = "admin"
    MEMBER = "member"
    AGENT = "agent"


class DeviceState(StrEnum):
    AVAILABLE = "available"
    CLAIMED = "claimed"
    ALLOCATED = "allocated"
    UNAVAILABLE = "unavailable"
    REMOVED = "removed"
    RESERVED = "reserved"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a token's role and what it is bound to."""

    token_id: str
    role: Role
    project: str | None = None
    host: str | None = None


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    next: str | None = None


@dataclass(frozen=True, slots=True)
class ReportResult:
    host: str
    generation: int
    changed: bool
    added: int = 0
    updated: int = 0
    removed: int = 0
    gone: int = 0


@dataclass(frozen=True, slots=True)
class HostRecord:
    name: str
    generation: int
    info: HostInfo
    last_report_at: datetime | None
    device_counts: dict[str, int] = field(default_factory=dict)
    reserved: bool = False                # draining: nothing new is placed there
    reserved_reason: str | None = None
    down: bool = False                    # its agent went silent: nothing new either


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A device as the control plane knows it: discovered facts plus bookkeeping."""

    host: str
    device: PciDevice
    state: DeviceState
    reserved: bool = False
    owner: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    host: str | None = None
    state: DeviceState | None = None
    vendor_id: str | None = None
    product_id: str | None = None
    dev_type: DevType | None = None
    assignable: bool | None = None
    tags: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class PoolRecord:
    host: str
    vendor_id: str
    product_id: str
    dev_type: DevType
    numa_node: int | None
    parent_addr: PciAddress | None
    tags: dict[str, str]
    total: int
    free: int


# --- issue 3: aliases, flavors, images, servers, quotas, usage ------------------------------

class ServerStatus(StrEnum):
    BUILDING = "BUILDING"
    ACTIVE = "ACTIVE"
    ERROR = "ERROR"
    DELETING = "DELETING"
    DELETED = "DELETED"
    # Moves (issue 6, :mod:`pcipass.store.moves`): a resize or migration under way, and a
    # resize (or unconfirmed migration) waiting for its confirm or revert.
    RESIZE = "RESIZE"
    MIGRATING = "MIGRATING"
    VERIFY_RESIZE = "VERIFY_RESIZE"


@dataclass(frozen=True, slots=True)
class FlavorRecord:
    id: str
    name: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    extra_specs: dict[str, str]
    is_public: bool = True
    projects: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ImageRecord:
    id: str
    name: str
    source: str
    properties: dict[str, str]
    project: str | None = None  # None: public (made by an admin)


@dataclass(frozen=True, slots=True)
class ServerDevice:
    """A device a server holds: ``alias`` is None for a rider (a group mate handed out with it)."""

    address: PciAddress
    alias: str | None
    state: DeviceState
    vendor_id: str
    product_id: str
    dev_type: DevType
    numa_node: int | None


# --- issue 5: SR-IOV networks and ports ------------------------------------------------------

@dataclass(frozen=True, slots=True)
class NetworkRecord:
    """A provider network: a VLAN (or the untagged, flat segment) on a physical network."""

    id: str
    name: str
    project: str | None   # None: shared with every project
    physical_network: str
    segmentation: str     # "vlan" | "flat"
    segmentation_id: int | None
    created_at: datetime
    ports: int = 0        # ports on it


@dataclass(frozen=True, slots=True)
class PortBinding:
    """Where a port landed: the VF (or, for ``direct-physical``, the PF) a claim gave it."""

    host: str
    address: PciAddress
    pf_netdev: str | None     # the parent PF's netdev (direct-physical: the PF's own)
    vf_index: int | None
    vf_netdev: str | None     # the VF's own netdev (what macvtap sits on)


@dataclass(frozen=True, slots=True)
class PortRecord:
    id: str
    name: str | None
    project: str
    network_id: str
    network: str              # the network's name
    physical_network: str     # copied from the network, for display
    segmentation_id: int | None
    vnic_type: str
    mac: str
    trusted: bool
    spoofchk: bool
    max_tx_rate_mbps: int | None
    min_tx_rate_mbps: int | None
    numa_affinity_policy: str | None
    server_id: str | None
    auto_delete: bool         # created by ``server create --nic net-id=``: goes with the server
    status: str               # "DOWN" (unbound), "BUILD" (bound, server not ACTIVE), "ACTIVE"
    binding: PortBinding | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ServerRecord:
    id: str
    name: str
    project: str
    status: ServerStatus
    flavor: str
    image: str
    host: str | None
    devices: tuple[ServerDevice, ...]
    not_granted: tuple[str, ...]  # soft requests that no host could grant, e.g. "fpga:1"
    fault: str | None
    numa_cells: tuple[int, ...]  # host NUMA nodes the guest's cells were placed on
    created_at: datetime
    updated_at: datetime
    ports: tuple[PortRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One step of a server's life: ``action`` ("create", "schedule", "spawn", ...) and its
    ``outcome`` ("started", "done", "failed")."""

    id: int
    server_id: str
    action: str
    outcome: str
    message: str | None
    host: str | None
    detail: dict[str, Any]
    at: datetime


@dataclass(frozen=True, slots=True)
class QuotaRecord:
    project: str
    alias: str
    limit: int
    used: int


@dataclass(frozen=True, slots=True)
class UsageRecord:
    project: str
    alias: str
    device_seconds: float


# --- issue 6: moving servers (resize, cold and live migration) -------------------------------

class MoveKind(StrEnum):
    RESIZE = "resize"
    MIGRATE = "migrate"
    LIVE = "live"

    @property
    def action(self) -> str:
        """The name its events carry (and, with '-' for '_', the CLI's verb)."""
        return "live_migrate" if self is MoveKind.LIVE else self.value


class MoveStatus(StrEnum):
    """A move's steps (see :mod:`pcipass.store.moves`)."""

    CLAIMED = "claimed"          # destination devices claimed; the source is told to let go
    MOVING = "moving"            # the source let go; the destination builds the server
    VERIFY = "verify"            # running on the destination; waiting for confirm or revert
    CONFIRMING = "confirming"    # confirmed: the source is told to destroy what it kept
    REVERTING = "reverting"      # going back to the source (asked for, or a step failed)
    DELETING = "deleting"        # the server was deleted mid-move: each host destroys its part
    DONE = "done"
    REVERTED = "reverted"
    FAILED = "failed"            # went back to the source after a failure (or could not)

    @property
    def open(self) -> bool:
        return self not in (MoveStatus.DONE, MoveStatus.REVERTED, MoveStatus.FAILED)


@dataclass(frozen=True, slots=True)
class MoveRecord:
    """One move of a server: from ``source`` to ``dest`` (the same host for a same-host
    resize), from ``old_flavor`` to ``new_flavor`` (the same for a migration)."""

    id: str
    server_id: str
    kind: MoveKind
    status: MoveStatus
    source: str
    dest: str
    old_flavor: str
    new_flavor: str
    auto_confirm: bool
    on_dest: bool                 # the server's record is the destination's side
    message: str | None
    created_at: datetime
    updated_at: datetime
    generation: int
