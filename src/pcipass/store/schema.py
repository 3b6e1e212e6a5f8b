"""The database schema, as SQLAlchemy Core tables (the migrations create exactly this).

Shaped for the scheduler at 10,000 hosts and a million devices: it narrows hosts with indexed
SQL over ``host_kinds`` / ``host_kind_sets`` (usable devices per host and kind, kept current
by every device write) and only then reads the devices of the few hosts it picked.

    hosts 1─* devices *─1 pools *─1 pool_kinds   (pools.host_id → hosts as well)
    hosts 1─* host_kinds *─1 pool_kinds         (usable devices per host and kind)
    hosts 1─* host_kind_sets *─1 kind_sets      (... and per set of kinds a request matches)
              devices 1─* device_tags    (tags as rows: an index serves tag filters on any DB)
    hosts 1─* servers 1─* tasks          (a server holds devices through devices.owner)
    aliases, flavors 1─* flavor_projects, images, quotas, projects, usage_records
    networks 1─* ports ┄ servers         (ports.server_id: no foreign key, see below)
    tokens                               (sha256 of the token only)

Ownership lives in one place: ``devices.state/owner/owner_alias``. Everything else about a
host's devices is derived from those and kept in step by every writer, in the same transaction
(:mod:`pcipass.store.derive`): dependants' ``unavailable`` state, ``devices.reason``, the pools'
``total/free/usable`` counts, ``host_kinds`` and ``host_kind_sets``, and the host's ``used_*``
and ``pci_free`` counters. ``hosts.derived`` says under which version of those rules.

``pool_kinds`` are the few distinct sets of attributes an alias can look at (vendor, product,
type, class, driver, subsystem ids, tags) fleet-wide; matching aliases against kinds in Python
and then hosts by ``kind_id`` in SQL lets a scheduling decision narrow 10,000 hosts with one
index walk.

Lock order for writers of one host's devices: the ``hosts`` row first (``SELECT ... FOR NO KEY
UPDATE`` or the generation compare-and-swap), then (for quota checks) the ``projects`` row, then
its devices, pools, servers and tasks. ``NO KEY``: writers exclude each other, but rows that
merely reference the host (a kind set's sums, a task) can still be inserted by others (their
foreign key check takes ``FOR KEY SHARE``, which ``FOR UPDATE`` would block: a deadlock with a
writer waiting on that inserter's ``host_kinds`` lock, see :mod:`pcipass.store.kindsets`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from pcipass.pci.device import HostKind
from pcipass.records import DeviceState, MoveKind, MoveStatus, Role, ServerStatus

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

# SQLite only turns INTEGER PRIMARY KEY into an auto-incrementing rowid; PostgreSQL gets 64 bits.
Id = BigInteger().with_variant(Integer(), "sqlite")
Json = JSON().with_variant(JSONB(), "postgresql")
STORED_STATES = tuple(s.value for s in DeviceState if s is not DeviceState.RESERVED)
TASK_KINDS = ("spawn", "destroy", "attach", "detach", "migrate_out", "restart", "live_prepare",
              "live_migrate", "live_finish")
TASK_STATES = ("queued", "running", "done", "failed", "expired")
SEGMENTATIONS = ("vlan", "flat")
EVENT_OUTCOMES = ("started", "done", "failed")
HOST_KINDS = tuple(k.value for k in HostKind)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every database (SQLite keeps no time zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


hosts = Table(
    "hosts", metadata,
    Column("id", Id, primary_key=True),
    Column("name", String(253), nullable=False, unique=True),
    # Bumped by every change to the host's inventory; reports compare-and-swap on it.
    Column("generation", Integer, nullable=False),
    Column("hostname", Text, nullable=True),
    Column("cpus", Integer, nullable=False),
    Column("memory_mb", BigInteger, nullable=False),
    Column("numa", Json, nullable=False),
    Column("last_report_at", UtcDateTime, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    # When its agent last asked for tasks (liveness).
    Column("last_seen", UtcDateTime, nullable=True),
    # Its agent went silent (pcipass.store.liveness): nothing new is placed there.
    Column("down", Boolean, nullable=False, server_default=text("false")),
    # What servers hold: vCPUs, RAM, per NUMA node {"<id>": [cpus, ram_mb]} (NUMA guests).
    Column("used_vcpus", Integer, nullable=False, server_default="0"),
    Column("used_ram_mb", BigInteger, nullable=False, server_default="0"),
    Column("numa_used", Json, nullable=False, server_default=text("'{}'")),
    # Devices a claim could take now (the pools' usable sum): no-PCI boots prefer 0.
    Column("pci_free", Integer, nullable=False, server_default="0"),
    # The version of the derivation rules the host's derived columns were computed with.
    Column("derived", Integer, nullable=False, server_default="0"),
    # Draining (issue 6): nothing new is placed on a reserved host; what runs there stays.
    Column("reserved", Boolean, nullable=False, server_default=text("false")),
    Column("reserved_reason", Text, nullable=True),
    # Where a live migration reaches this host's hypervisor (the agent reports it), e.g.
    # ``qemu+tcp://HOST/system`` or the fake driver's ``fake:///STATE_DIR``.
    Column("migration_uri", Text, nullable=True),
    # What runs servers there (the agent reports it): a hypervisor, or nothing (bare metal:
    # one server takes the whole machine). Boots narrow on it first.
    Column("kind", String(16), nullable=False, server_default=text("'hypervisor'")),
    CheckConstraint(_in("kind", HOST_KINDS), name="kind"),
    Index(None, "pci_free", "id"),
    Index(None, "kind", "pci_free", "id"),
)

pool_kinds = Table(
    "pool_kinds", metadata,
    Column("id", Id, primary_key=True),
    Column("digest", String(64), nullable=False, unique=True),
    Column("descriptor", Json, nullable=False),
)

# Per host and kind, the usable devices (the sum over the host's pools of that kind): what
# the scheduler's SQL sums and sorts, one row per host where a pool has several.
host_kinds = Table(
    "host_kinds", metadata,
    Column("host_id", Id, ForeignKey("hosts.id", ondelete="CASCADE"), primary_key=True),
    Column("kind_id", Id, ForeignKey("pool_kinds.id"), primary_key=True),
    Column("usable", Integer, nullable=False),
    Index(None, "kind_id", "usable", "host_id"),
)

# Sets of kinds that one request matches (an alias with alternatives, or one matching a
# model under several drivers), registered the first time a boot asks for one, and each
# host's usable devices of the set: one indexed walk finds the hosts for such a request, as
# for a single kind, instead of summing ``host_kinds`` over every host.
kind_sets = Table(
    "kind_sets", metadata,
    Column("id", Id, primary_key=True),
    Column("digest", String(64), nullable=False, unique=True),
    Column("kind_ids", Json, nullable=False),
)

host_kind_sets = Table(
    "host_kind_sets", metadata,
    Column("set_id", Id, ForeignKey("kind_sets.id"), primary_key=True),
    Column("host_id", Id, ForeignKey("hosts.id", ondelete="CASCADE"), primary_key=True),
    Column("usable", Integer, nullable=False),
    Index(None, "set_id", "usable", "host_id"),
)

pools = Table(
    "pools", metadata,
    Column("id", Id, primary_key=True),
    Column("host_id", Id, ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False),
    # sha256 of the whole pool key (pcipass.pci.pool.PoolKey.digest).
    Column("key", String(64), nullable=False),
    Column("vendor_id", String(4), nullable=False),
    Column("product_id", String(4), nullable=False),
    Column("dev_type", String(8), nullable=False),
    Column("numa_node", Integer, nullable=True),
    Column("parent_addr", String(16), nullable=True),
    Column("tags_key", Text, nullable=False),
    Column("total", Integer, nullable=False),
    Column("free", Integer, nullable=False),
    # Pools of one key but different kinds (a driver differs) are separate rows.
    Column("kind_id", Id, ForeignKey("pool_kinds.id"), nullable=True),
    # Free devices a claim may take now: no IOMMU, PF/VF or group reason against them.
    Column("usable", Integer, nullable=False, server_default="0"),
    UniqueConstraint("host_id", "key"),
    CheckConstraint("free >= 0 AND free <= total", name="counts"),
    Index(None, "vendor_id", "product_id", "free"),
    Index(None, "kind_id", "usable", "host_id"),
)

devices = Table(
    "devices", metadata,
    Column("id", Id, primary_key=True),
    Column("host_id", Id, ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False),
    Column("address", String(16), nullable=False),
    Column("vendor_id", String(4), nullable=False),
    Column("product_id", String(4), nullable=False),
    Column("subsystem_vendor_id", String(4), nullable=True),
    Column("subsystem_product_id", String(4), nullable=True),
    Column("class_code", String(6), nullable=False),
    Column("dev_type", String(8), nullable=False),
    Column("parent_addr", String(16), nullable=True),
    Column("vf_index", Integer, nullable=True),
    Column("total_vfs", Integer, nullable=True),
    Column("num_vfs", Integer, nullable=True),
    Column("numa_node", Integer, nullable=True),
    Column("iommu_group", Integer, nullable=True),
    Column("iommu_group_members", Json, nullable=False),
    Column("driver", Text, nullable=True),
    Column("netdevs", Json, nullable=False),
    Column("name", Text, nullable=True),
    Column("card_serial_number", Text, nullable=True),
    Column("assignable", Boolean, nullable=False),
    Column("tags", Json, nullable=False),
    Column("warnings", Json, nullable=False),
    # Lifecycle state; "reserved" is the flag below, never a stored state.
    Column("state", String(16), nullable=False),
    # While removed: the state its owner held it in, taken back when it reappears.
    Column("held_state", String(16), nullable=True),
    Column("reserved", Boolean, nullable=False),
    # The server holding it, and the alias it was claimed for (None for a rider: a group
    # mate handed out with it).
    Column("owner", String(255), nullable=True),
    Column("pool_id", Id, ForeignKey("pools.id"), nullable=True),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("owner_alias", String(255), nullable=True),
    # Why it cannot be handed out now (derived; None when it can, or when a server holds it).
    Column("reason", Text, nullable=True),
    # Claimed for a move's destination (issue 6): the move's id until it is confirmed
    # (then None: the server's) or reverted (then freed). See pcipass.store.moves.
    Column("move_id", Id, ForeignKey("moves.id"), nullable=True),
    UniqueConstraint("host_id", "address"),
    CheckConstraint(_in("state", STORED_STATES), name="state"),
    CheckConstraint(f"held_state IS NULL OR {_in('held_state', STORED_STATES)}",
                    name="held_state"),
    Index(None, "vendor_id", "product_id"),
    Index(None, "state", "reserved"),
    Index(None, "pool_id", "state"),
    Index(None, "owner"),
)

device_tags = Table(
    "device_tags", metadata,
    Column("device_id", Id, ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
    Index(None, "key", "value"),
)

tokens = Table(
    "tokens", metadata,
    Column("id", String(32), primary_key=True),
    Column("hash", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("project", String(255), nullable=True),
    Column("host", String(253), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    CheckConstraint(_in("role", tuple(r.value for r in Role)), name="role"),
)


# --- issue 3: catalog, servers, tasks, quotas, usage ----------------------------------------

aliases = Table(
    "aliases", metadata,
    Column("id", Id, primary_key=True),
    Column("name", String(255), nullable=False),
    Column("position", Integer, nullable=False),
    Column("entry", Json, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    UniqueConstraint("name", "position"),
)

flavors = Table(
    "flavors", metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("vcpus", Integer, nullable=False),
    Column("ram_mb", Integer, nullable=False),
    Column("disk_gb", Integer, nullable=False),
    Column("extra_specs", Json, nullable=False),
    Column("is_public", Boolean, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

flavor_projects = Table(
    "flavor_projects", metadata,
    Column("flavor_id", String(36), ForeignKey("flavors.id", ondelete="CASCADE"),
           primary_key=True),
    Column("project", String(255), primary_key=True),
)

images = Table(
    "images", metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("source", Text, nullable=False),
    Column("properties", Json, nullable=False),
    # None: public (made by an admin); else private to this project.
    Column("project", String(255), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Index(None, "name"),
)

servers = Table(
    "servers", metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("project", String(255), nullable=False),
    Column("flavor_id", String(36), nullable=True),
    Column("flavor_name", String(255), nullable=False),
    Column("image_id", String(36), nullable=True),
    Column("image_name", String(255), nullable=False),
    Column("status", String(16), nullable=False),
    Column("host_id", Id, ForeignKey("hosts.id"), nullable=True),
    Column("fault", Text, nullable=True),
    # What it asked for: [[alias, count, soft], ...]; and the soft ones it did not get.
    Column("requests", Json, nullable=False),
    Column("not_granted", Json, nullable=False),
    Column("numa_cells", Json, nullable=False),
    Column("vcpus", Integer, nullable=False),
    Column("ram_mb", Integer, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("generation", Integer, nullable=False),
    # The libvirt XML the agent defined (for admins), once the spawn succeeded.
    Column("domain_xml", Text, nullable=True),
    CheckConstraint(_in("status", tuple(s.value for s in ServerStatus)), name="status"),
    Index(None, "project", "status"),
    Index(None, "host_id", "status"),
    Index(None, "name"),
)

tasks = Table(
    "tasks", metadata,
    Column("id", Id, primary_key=True),
    Column("host_id", Id, ForeignKey("hosts.id"), nullable=False),
    Column("server_id", String(36), ForeignKey("servers.id"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("payload", Json, nullable=False),
    Column("state", String(16), nullable=False),
    Column("message", Text, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("deadline", UtcDateTime, nullable=True),
    Column("started_at", UtcDateTime, nullable=True),
    CheckConstraint(_in("kind", TASK_KINDS), name="kind"),
    CheckConstraint(_in("state", TASK_STATES), name="state"),
    Index(None, "host_id", "state"),
    Index(None, "server_id"),
)

projects = Table(
    "projects", metadata,
    # One row per project that has quotas: the row a claim locks to check them.
    Column("name", String(255), primary_key=True),
    Column("created_at", UtcDateTime, nullable=False),
)

quotas = Table(
    "quotas", metadata,
    Column("project", String(255), primary_key=True),
    Column("alias", String(255), primary_key=True),
    Column("device_limit", Integer, nullable=False),
    CheckConstraint("device_limit >= 0", name="device_limit"),
)

usage_records = Table(
    "usage_records", metadata,
    Column("id", Id, primary_key=True),
    Column("project", String(255), nullable=False),
    Column("alias", String(255), nullable=False),
    Column("server_id", String(36), nullable=False),
    Column("host", String(253), nullable=False),
    Column("address", String(16), nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    # None while the server still holds the device.
    Column("ended_at", UtcDateTime, nullable=True),
    Index(None, "project", "started_at"),
    Index(None, "server_id"),
)


# --- issue 5: SR-IOV networks and ports -----------------------------------------------------

networks = Table(
    "networks", metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(255), nullable=False, unique=True),
    # None: shared with every project.
    Column("project", String(255), nullable=True),
    Column("physical_network", String(255), nullable=False),
    Column("segmentation", String(8), nullable=False),
    Column("segmentation_id", Integer, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    CheckConstraint(_in("segmentation", SEGMENTATIONS), name="segmentation"),
)

# A port belongs to a server through ``server_id`` alone, not a foreign key: a boot attaches
# its ports before the claim writes the server row (and gives them back if it never does).
# Unique MACs per network are the database's job: creators with random MACs retry on the
# ``(network_id, mac)`` violation.
ports = Table(
    "ports", metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(255), nullable=True),
    Column("project", String(255), nullable=False),
    Column("network_id", String(36), ForeignKey("networks.id"), nullable=False),
    Column("vnic_type", String(16), nullable=False),
    Column("mac", String(17), nullable=False),
    Column("trusted", Boolean, nullable=False),
    Column("spoofchk", Boolean, nullable=False),
    Column("max_tx_rate_mbps", Integer, nullable=True),
    Column("min_tx_rate_mbps", Integer, nullable=True),
    Column("numa_affinity_policy", String(32), nullable=True),
    Column("server_id", String(36), nullable=True),
    # Its place among the server's ports, the order the guest sees them in (set by the claim).
    Column("server_position", Integer, nullable=True),
    # Made by a boot (``--nic net-id=``): deleted with its server.
    Column("auto_delete", Boolean, nullable=False),
    # What the claim bound it to: the host (by name), the VF (or PF), the PF's netdev, the
    # VF's index and netdev. All None while unbound.
    Column("binding_host", String(253), nullable=True),
    Column("binding_address", String(16), nullable=True),
    Column("binding_pf", String(255), nullable=True),
    Column("binding_vf_index", Integer, nullable=True),
    Column("binding_vf_netdev", String(255), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("network_id", "mac"),
    Index(None, "server_id"),
    Index(None, "project"),
)


# --- issue 6: moves (resize, cold and live migration) ----------------------------------------

# One row per move of a server. ``source``/``dest``: each side's server values (flavor,
# vCPUs, RAM, NUMA cells, requests, soft requests not granted, domain XML) and its ports'
# bindings, so either side can be put back on the server row; ``on_dest``: which side the
# server row holds now. See :mod:`pcipass.store.moves`.
moves = Table(
    "moves", metadata,
    Column("id", Id, primary_key=True),
    Column("server_id", String(36), ForeignKey("servers.id"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("source_host_id", Id, ForeignKey("hosts.id"), nullable=False),
    Column("dest_host_id", Id, ForeignKey("hosts.id"), nullable=False),
    Column("old_flavor_id", String(36), nullable=True),
    Column("new_flavor_id", String(36), nullable=True),
    Column("status", String(16), nullable=False),
    Column("message", Text, nullable=True),
    Column("auto_confirm", Boolean, nullable=False),
    Column("on_dest", Boolean, nullable=False),
    Column("source", Json, nullable=False),
    Column("dest", Json, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("generation", Integer, nullable=False),
    CheckConstraint(_in("kind", tuple(k.value for k in MoveKind)), name="kind"),
    CheckConstraint(_in("status", tuple(s.value for s in MoveStatus)), name="status"),
    Index(None, "server_id", "status"),
    Index(None, "status"),
)


# --- issue 6: the per-server action log -----------------------------------------------------

# One row per step of a server's life, written in the step's own transaction. No foreign key
# to ``servers`` (see :mod:`pcipass.store.events`).
server_events = Table(
    "server_events", metadata,
    Column("id", Id, primary_key=True),
    Column("server_id", String(36), nullable=False),
    Column("action", String(32), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("message", Text, nullable=True),
    Column("host", String(253), nullable=True),
    Column("detail", Json, nullable=False),
    Column("at", UtcDateTime, nullable=False),
    CheckConstraint(_in("outcome", EVENT_OUTCOMES), name="outcome"),
    Index(None, "server_id", "at"),
)
