"""The shapes of the ``/v1`` API, as pydantic models: what OpenAPI documents and replies obey.

Request bodies that pydantic validates (tokens, device patches) carry their rules here. The
inventory report is the exception: :class:`InventoryReport` only documents it, and
``pcipass.pci.inventory.parse_inventory`` (the one parser) validates it.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationInfo, field_validator

from pcipass.pci.device import DevType
from pcipass.pci.inventory import valid_host_name
from pcipass.records import DeviceState, Role


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
