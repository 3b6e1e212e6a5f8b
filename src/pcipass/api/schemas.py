"""The shapes of the ``/v1`` API, as pydantic models: what OpenAPI documents and replies obey.

Request bodies that pydantic validates (tokens, device patches, flavors, images, servers,
quotas) carry their shape rules here; what the domain parsers own (extra specs, image
properties) is left to them, behind the services. Two bodies are read raw: the inventory
report (:class:`InventoryReport` only documents it; ``pcipass.pci.inventory.parse_inventory``
validates it) and Nova alias JSON (``pcipass.pci.alias``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from pcipass.pci.alias import NumaPolicy
from pcipass.pci.device import DevType
from pcipass.pci.inventory import valid_host_name
from pcipass.records import DeviceState, Role, ServerStatus


class ErrorOut(BaseModel):
    code: str = Field(description="Stable, append-only error code (pcipass.errors).")
    message: str
    field: str | None = Field(description="The input to blame, e.g. body.role, devices[3].address")


class HealthOut(BaseModel):
    status: str = "ok"


# --- tokens --------------------------------------------------------------------------------

class TokenCreate(BaseModel):
    """A member token is bound to a project, an agent token to one host; nothing else fits."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    project: str | None = Field(default=None, validate_default=True, min_length=1, max_length=255)
    host: str | None = Field(default=None, validate_default=True)

    @field_validator("project")
    @classmethod
    def _project_for_members(cls, value: str | None, info: ValidationInfo) -> str | None:
        role = info.data.get("role")
        if role is Role.MEMBER and value is None:
            raise ValueError("a member token needs a project")
        if role is not None and role is not Role.MEMBER and value is not None:
            raise ValueError(f"only member tokens have a project, not {role.value} tokens")
        return value

    @field_validator("host")
    @classmethod
    def _host_for_agents(cls, value: str | None, info: ValidationInfo) -> str | None:
        role = info.data.get("role")
        if role is Role.AGENT and value is None:
            raise ValueError("an agent token needs the host it reports for")
        if role is not None and role is not Role.AGENT and value is not None:
            raise ValueError(f"only agent tokens have a host, not {role.value} tokens")
        if value is not None and not valid_host_name(value):
            raise ValueError(f"{value!r} is not a host name")
        return value


class TokenOut(BaseModel):
    id: str
    token: str = Field(description="The secret; shown only in this reply, stored hashed.")
    role: Role
    project: str | None
    host: str | None


# --- hosts and inventory reports -----------------------------------------------------------

class NumaNodeOut(BaseModel):
    id: int
    cpus: list[int]
    memory_mb: int


class HostOut(BaseModel):
    name: str
    generation: int
    cpus: int
    memory_mb: int
    numa_nodes: list[NumaNodeOut]
    last_report_at: datetime | None
    devices: dict[str, int] = Field(description='{"total": n, "<state>": n, ...}')
    reserved: bool = Field(default=False,
                           description="Draining: nothing new is placed on the host.")
    reserved_reason: str | None = None
    down: bool = Field(default=False, description="Its agent has not polled or reported "
                       "for [scheduler] host_down_after seconds: nothing new is placed there.")
    kind: str = Field(default="hypervisor",
                      description="hypervisor, or baremetal (one server takes the machine).")
    migration_uri: str | None = Field(
        default=None, description="Where other hosts live-migrate guests to this one "
        "(reported by its agent); none: it cannot take a live migration.")


class HostPage(BaseModel):
    hosts: list[HostOut]
    next: str | None = Field(description="Marker for the next page; null on the last one.")


class NetDevIn(BaseModel):
    name: str
    mac: str | None = None


class DeviceIn(BaseModel):
    """One device as ``pcipass discover --json`` prints it."""

    address: str = Field(examples=["0000:3b:00.0"])
    vendor_id: str = Field(examples=["10de"])
    product_id: str = Field(examples=["20b5"])
    subsystem_vendor_id: str | None = None
    subsystem_product_id: str | None = None
    class_code: str = Field(examples=["030200"])
    dev_type: DevType = DevType.PCI
    parent_addr: str | None = None
    vf_index: int | None = None
    total_vfs: int | None = None
    num_vfs: int | None = None
    numa_node: int | None = None
    iommu_group: int | None = None
    iommu_group_members: list[str] = []
    driver: str | None = None
    netdevs: list[NetDevIn] = []
    name: str | None = None
    card_serial_number: str | None = Field(
        default=None, description="The SN field of the card's VPD; a VF reports its PF's.")
    assignable: bool = False
    tags: dict[str, str] = {}
    warnings: list[str] = []


class HostIn(BaseModel):
    hostname: str | None = None
    cpus: int = 0
    memory_mb: int = 0
    numa_nodes: list[NumaNodeOut] = []


class InventoryReport(BaseModel):
    """What an agent PUTs: ``discover --json`` output plus the generation it last saw."""

    generation: int | None = Field(
        default=None,
        description="The host's current generation; null only when the host is new.",
    )
    host: HostIn
    devices: list[DeviceIn]


class ReportOut(BaseModel):
    host: str
    generation: int
    changed: bool
    added: int
    updated: int
    removed: int
    gone: int


# --- devices and pools ---------------------------------------------------------------------

class DeviceOut(DeviceIn):
    """A reported device plus the control plane's bookkeeping."""

    model_config = ConfigDict(extra="allow")  # new discovery fields pass through untouched

    host: str
    state: DeviceState
    reserved: bool
    owner: str | None
    reason: str | None = Field(description="Why it cannot be handed out, when known.")


class DevicePage(BaseModel):
    devices: list[DeviceOut]
    next: str | None


class DevicePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reserved: StrictBool = Field(description="true takes the device out of service.")


class PoolOut(BaseModel):
    host: str
    vendor_id: str
    product_id: str
    dev_type: DevType
    numa_node: int | None
    parent_addr: str | None
    tags: dict[str, str]
    total: int
    free: int


class PoolPage(BaseModel):
    pools: list[PoolOut]
    next: str | None


# --- issue 3: aliases, flavors, images, servers, scheduler, quotas, usage -------------------

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
Project = Annotated[str, StringConstraints(min_length=1, max_length=255)]


class AliasOut(BaseModel):
    """Every entry of one name; a device matching any entry satisfies the alias."""

    name: str
    device_type: DevType | None
    numa_policy: NumaPolicy
    entries: list[dict[str, Any]] = Field(description="Nova alias JSON, one object per entry.")


class AliasesMade(BaseModel):
    aliases: list[AliasOut] = Field(description="Every name the body touched, all its entries.")


class AliasList(BaseModel):
    aliases: list[AliasOut]
    next: str | None = None


class FlavorCreate(BaseModel):
    """Nova's flavor shape; ``extra_specs`` are checked against the aliases when created."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    vcpus: int = Field(ge=1, le=4096)
    ram_mb: int = Field(ge=1)
    disk_gb: int = Field(default=0, ge=0)
    extra_specs: dict[str, str] = Field(
        default_factory=dict, examples=[{"pci_passthrough:alias": "gpu:2"}])
    is_public: StrictBool = True
    projects: list[Project] = Field(default_factory=list,
                                    description="Projects a private flavor is shared with.")


class FlavorOut(BaseModel):
    id: str
    name: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    extra_specs: dict[str, str]
    is_public: bool
    projects: list[str]


class FlavorList(BaseModel):
    flavors: list[FlavorOut]
    next: str | None = None


class FlavorAccess(BaseModel):
    model_config = ConfigDict(extra="forbid")

    add: list[Project] = Field(default_factory=list)
    remove: list[Project] = Field(default_factory=list)


class ImageCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    source: str = Field(min_length=1, max_length=4096,
                        description="The disk file's path on the hosts.")
    properties: dict[str, str] = Field(
        default_factory=dict, examples=[{"hw_pci_supported_aliases": "gpu,vf"}])


class ImageOut(BaseModel):
    id: str
    name: str
    source: str
    properties: dict[str, str]
    project: str | None = Field(description="null: public (made by an admin).")


class ImageList(BaseModel):
    images: list[ImageOut]
    next: str | None = None


# --- issue 5: networks and ports -----------------------------------------------------------
# Values the domain parsers own (segmentation ids, MACs, vnic types, rates, NUMA policies)
# are only typed here; the services check them and name the field.

class NetworkCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    physical_network: Name = Field(examples=["physnet1"],
                                   description="The physical network its PFs are cabled to "
                                   "(the devices' physical_network tag).")
    segmentation: str = Field(examples=["vlan"], description="vlan or flat.")
    segmentation_id: StrictInt | None = Field(default=None, examples=[100],
                                              description="The VLAN id, 1-4094; none for flat.")
    project: Project | None = Field(default=None, description="null: shared with every project.")


class NetworkOut(BaseModel):
    id: str
    name: str
    project: str | None = Field(description="null: shared with every project.")
    physical_network: str
    segmentation: str
    segmentation_id: int | None
    ports: int = Field(description="Ports on it.")
    created_at: datetime


class NetworkList(BaseModel):
    networks: list[NetworkOut]
    next: str | None = None


class PortCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    network: str = Field(min_length=1, description="Network name or id.")
    name: Name | None = None
    vnic_type: str = Field(default="normal",
                           description="normal, direct, macvtap or direct-physical.")
    mac: str | None = Field(default=None, examples=["fa:16:3e:12:34:56"],
                            description="Generated from the configured prefix when absent.")
    trusted: StrictBool = Field(default=False, description="Admins only: the guest may change "
                                "the VF's MAC and go promiscuous.")
    spoofchk: StrictBool = True
    max_tx_rate_mbps: StrictInt | None = None
    min_tx_rate_mbps: StrictInt | None = None
    numa_affinity_policy: str | None = Field(default=None, description="Overrides the "
                                             "flavor's hw:pci_numa_affinity_policy.")
    project: Project | None = Field(default=None, description="Admins only: the port's project.")


class PortBindingOut(BaseModel):
    host: str
    address: str = Field(description="The VF (the PF for direct-physical).")
    pf_netdev: str | None
    vf_index: int | None
    vf_netdev: str | None


class PortOut(BaseModel):
    id: str
    name: str | None
    project: str
    network_id: str
    network: str
    physical_network: str
    segmentation_id: int | None
    vnic_type: str
    mac: str
    trusted: bool
    spoofchk: bool
    max_tx_rate_mbps: int | None
    min_tx_rate_mbps: int | None
    numa_affinity_policy: str | None
    server_id: str | None
    auto_delete: bool = Field(description="Made by a boot's net_id NIC: deleted with its server.")
    status: str = Field(description="DOWN (unbound), BUILD or ACTIVE (its server's state).")
    binding: PortBindingOut | None
    created_at: datetime


class PortList(BaseModel):
    ports: list[PortOut]
    next: str | None = None


class NicIn(BaseModel):
    """One NIC of a boot: a new port on a network, or an existing port; exactly one of
    ``net_id`` and ``port_id`` (the services check it, naming ``nics[i].net_id``)."""

    model_config = ConfigDict(extra="forbid")

    net_id: str | None = Field(default=None, description="Network name or id: a port is "
                               "made for the server and deleted with it.")
    vnic_type: str | None = Field(default=None, examples=["direct"],
                                  description="normal (default), direct, macvtap or "
                                  "direct-physical; only with net_id.")
    port_id: str | None = Field(default=None, description="Port name or id: an existing port "
                                "of the project, attached to no server.")

    def given(self) -> dict[str, str]:
        """The keys the caller gave, as the services take a NIC."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class ServerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    flavor: str = Field(min_length=1, description="Flavor name or id.")
    image: str = Field(min_length=1, description="Image name or id.")
    project: Project | None = Field(default=None, description="Admins only: boot for a project.")
    nics: list[NicIn] = Field(default_factory=list, max_length=64)


class DeviceAttachIn(BaseModel):
    """A hot-plug of devices of an alias, from the server's own host."""

    model_config = ConfigDict(extra="forbid")

    alias: str = Field(min_length=1, description="The alias the devices must match.")
    count: int = Field(default=1, ge=1, le=16, description="How many devices.")


class ResizeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flavor: str = Field(min_length=1, description="The new flavor, by name or id.")


class MigrateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str | None = Field(default=None, min_length=1, max_length=253,
                             description="The destination; any other host that fits when "
                                         "absent.")
    auto_confirm: bool = Field(default=False, description="Confirm as soon as the server "
                               "runs on the destination (no VERIFY_RESIZE step).")


class MoveOut(BaseModel):
    id: str
    server_id: str
    kind: str = Field(description='"resize", "migrate" or "live".')
    status: str = Field(description='"claimed", "moving", "verify", "confirming", '
                        '"reverting", "done", "reverted" or "failed".')
    source: str
    dest: str
    old_flavor: str
    new_flavor: str
    auto_confirm: bool
    message: str | None = Field(description="Why it failed or went back, if it did.")
    created_at: datetime
    updated_at: datetime


class MovePage(BaseModel):
    moves: list[MoveOut]


class ServerDeviceOut(BaseModel):
    address: str
    alias: str | None = Field(description="null: handed out with another (an IOMMU group mate).")
    state: DeviceState
    vendor_id: str
    product_id: str
    dev_type: DevType
    numa_node: int | None


class FaultOut(BaseModel):
    message: str


class ServerOut(BaseModel):
    id: str
    name: str
    project: str
    status: ServerStatus
    flavor: str
    image: str
    host: str | None
    devices: list[ServerDeviceOut]
    not_granted: list[str] = Field(description='Soft requests no host could grant, e.g. "fpga:1".')
    fault: FaultOut | None
    numa_cells: list[int]
    ports: list[PortOut] = Field(description="The server's ports, with their bindings.")
    created_at: datetime
    updated_at: datetime


class ServerPage(BaseModel):
    servers: list[ServerOut]
    next: str | None


class EventOut(BaseModel):
    id: int
    server_id: str
    action: str = Field(description='"create", "schedule", "spawn", "delete", "destroy", ...')
    outcome: str = Field(description='"started", "done" or "failed".')
    message: str | None
    host: str | None
    detail: dict[str, Any]
    at: datetime


class EventPage(BaseModel):
    events: list[EventOut] = Field(description="Oldest first.")
    next: str | None


class HostReserveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=1000,
                               description="Why (shown with the host); unreserve ignores it.")


class DrainServerOut(BaseModel):
    server: ServerOut
    live_migratable: bool = Field(description="Whether it could move live, device by device.")
    blockers: list[str] = Field(description="What prevents a live migration, per device.")


class DrainOut(BaseModel):
    host: HostOut
    servers: list[DrainServerOut]
    note: str = Field(description="How to live-migrate what can move.")


class LiveMigrateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str | None = Field(default=None, min_length=1, max_length=253,
                             description="The destination; any host that fits when absent.")


class HostDrainIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    live_migrate: bool = Field(description="Live-migrate every server that can move (true; "
                               "false is refused: GET lists without moving).")


class NotMovedOut(BaseModel):
    server: ServerOut
    blockers: list[str] = Field(description="Devices that cannot move live, and why.")
    reason: str | None = Field(description="Why its move could not start (no host fits, "
                               "not ACTIVE...), when no device pins it.")


class LiveDrainOut(BaseModel):
    host: HostOut
    migrating: list[ServerOut] = Field(description="Servers whose live migration started.")
    not_moved: list[NotMovedOut] = Field(description="Servers left on the host.")


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flavor: str = Field(min_length=1)
    image: str | None = Field(default=None, min_length=1)
    project: Project | None = None
    nics: list[NicIn] = Field(default_factory=list, max_length=64,
                              description="As a boot's; no port is created.")


class HostVerdictOut(BaseModel):
    host: str
    fits: bool
    reason: str | None
    devices: list[str]


class ExplainOut(BaseModel):
    message: str
    fits: bool
    hosts: list[HostVerdictOut]


class QuotaSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(ge=0, strict=True, description="Devices of the alias the project may hold.")


class QuotaOut(BaseModel):
    project: str
    alias: str
    limit: int
    used: int


class QuotaList(BaseModel):
    quotas: list[QuotaOut]
    next: str | None = None


class UsageOut(BaseModel):
    project: str
    alias: str
    device_seconds: float
    device_hours: float


class UsageList(BaseModel):
    usage: list[UsageOut]
    next: str | None = None
