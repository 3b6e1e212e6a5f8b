"""Hosts, devices with their tags, pools, tokens.

Revision ID: 0001
Revises:
Create Date: 2024-11-26

Written out in full rather than from the live metadata, so that it keeps creating exactly this
schema however ``pcipass.store.schema`` moves on.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision: str | None = None
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
When = sa.DateTime(timezone=True)
STATES = "'available', 'claimed', 'allocated', 'unavailable', 'removed'"


def upgrade() -> None:
    op.create_table(
        "hosts",
        sa.Column("id", Id, nullable=False),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("hostname", sa.Text(), nullable=True),
        sa.Column("cpus", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.BigInteger(), nullable=False),
        sa.Column("numa", Json, nullable=False),
        sa.Column("last_report_at", When, nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_hosts"),
        sa.UniqueConstraint("name", name="uq_hosts_name"),
    )
    op.create_table(
        "pools",
        sa.Column("id", Id, nullable=False),
        sa.Column("host_id", Id, nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("vendor_id", sa.String(4), nullable=False),
        sa.Column("product_id", sa.String(4), nullable=False),
        sa.Column("dev_type", sa.String(8), nullable=False),
        sa.Column("numa_node", sa.Integer(), nullable=True),
        sa.Column("parent_addr", sa.String(16), nullable=True),
        sa.Column("tags_key", sa.Text(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("free", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_pools"),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name="fk_pools_host_id_hosts",
                                ondelete="CASCADE"),
        sa.UniqueConstraint("host_id", "key", name="uq_pools_host_id_key"),
        sa.CheckConstraint("free >= 0 AND free <= total", name="ck_pools_counts"),
    )
    op.create_index("ix_pools_vendor_id_product_id_free", "pools",
                    ["vendor_id", "product_id", "free"])
    op.create_table(
        "devices",
        sa.Column("id", Id, nullable=False),
        sa.Column("host_id", Id, nullable=False),
        sa.Column("address", sa.String(16), nullable=False),
        sa.Column("vendor_id", sa.String(4), nullable=False),
        sa.Column("product_id", sa.String(4), nullable=False),
        sa.Column("subsystem_vendor_id", sa.String(4), nullable=True),
        sa.Column("subsystem_product_id", sa.String(4), nullable=True),
        sa.Column("class_code", sa.String(6), nullable=False),
        sa.Column("dev_type", sa.String(8), nullable=False),
        sa.Column("parent_addr", sa.String(16), nullable=True),
        sa.Column("vf_index", sa.Integer(), nullable=True),
        sa.Column("total_vfs", sa.Integer(), nullable=True),
        sa.Column("num_vfs", sa.Integer(), nullable=True),
        sa.Column("numa_node", sa.Integer(), nullable=True),
        sa.Column("iommu_group", sa.Integer(), nullable=True),
        sa.Column("iommu_group_members", Json, nullable=False),
        sa.Column("driver", sa.Text(), nullable=True),
        sa.Column("netdevs", Json, nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("assignable", sa.Boolean(), nullable=False),
        sa.Column("tags", Json, nullable=False),
        sa.Column("warnings", Json, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("held_state", sa.String(16), nullable=True),
        sa.Column("reserved", sa.Boolean(), nullable=False),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("pool_id", Id, nullable=True),
        sa.Column("updated_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_devices"),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name="fk_devices_host_id_hosts",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["pool_id"], ["pools.id"], name="fk_devices_pool_id_pools"),
        sa.UniqueConstraint("host_id", "address", name="uq_devices_host_id_address"),
        sa.CheckConstraint(f"state IN ({STATES})", name="ck_devices_state"),
        sa.CheckConstraint(f"held_state IS NULL OR held_state IN ({STATES})",
                           name="ck_devices_held_state"),
    )
    op.create_index("ix_devices_vendor_id_product_id", "devices", ["vendor_id", "product_id"])
    op.create_index("ix_devices_state_reserved", "devices", ["state", "reserved"])
    op.create_index("ix_devices_pool_id_state", "devices", ["pool_id", "state"])
    op.create_index("ix_devices_owner", "devices", ["owner"])
    op.create_table(
        "device_tags",
        sa.Column("device_id", Id, nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "key", name="pk_device_tags"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"],
                                name="fk_device_tags_device_id_devices", ondelete="CASCADE"),
    )
    op.create_index("ix_device_tags_key_value", "device_tags", ["key", "value"])
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("project", sa.String(255), nullable=True),
        sa.Column("host", sa.String(253), nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tokens"),
        sa.UniqueConstraint("hash", name="uq_tokens_hash"),
        sa.CheckConstraint("role IN ('admin', 'member', 'agent')", name="ck_tokens_role"),
    )


def downgrade() -> None:
    for table in ("tokens", "device_tags", "devices", "pools", "hosts"):
        op.drop_table(table)
