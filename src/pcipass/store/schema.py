"""The database schema, as SQLAlchemy Core tables (the migrations create exactly this).

Shaped for the scheduler at 10,000 hosts and a million devices: it filters hosts on ``pools``
(one row per host and group of interchangeable devices, counts kept current by every device
write) with indexed SQL and only then reads the devices of the hosts it picked.

    hosts 1─* devices *─1 pools          (pools.host_id → hosts as well)
              devices 1─* device_tags    (tags as rows: an index serves tag filters on any DB)
    tokens                               (sha256 of the token only)

Lock order for writers of one host's devices: the ``hosts`` row first (``SELECT ... FOR UPDATE``
or the generation compare-and-swap), then its devices and pools.
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
)
from sqlalchemy.dialects.postgresql import JSONB

from pcipass.records import DeviceState, Role

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
    UniqueConstraint("host_id", "key"),
    CheckConstraint("free >= 0 AND free <= total", name="counts"),
    Index(None, "vendor_id", "product_id", "free"),
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
    Column("assignable", Boolean, nullable=False),
    Column("tags", Json, nullable=False),
    Column("warnings", Json, nullable=False),
    # Lifecycle state; "reserved" is the flag below, never a stored state.
    Column("state", String(16), nullable=False),
    # While removed: the state its owner held it in, taken back when it reappears.
    Column("held_state", String(16), nullable=True),
    Column("reserved", Boolean, nullable=False),
    # The consumer (server) holding it; the claims table comes with the next issue.
    Column("owner", String(255), nullable=True),
    Column("pool_id", Id, ForeignKey("pools.id"), nullable=True),
    Column("updated_at", UtcDateTime, nullable=False),
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
