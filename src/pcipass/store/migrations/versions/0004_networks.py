"""SR-IOV networks and their ports.

Revision ID: 0004
Revises: 0003
Create Date: 2024-12-11

Two new tables, written out in full; nothing existing changes. ``ports.server_id`` is not a
foreign key: a boot attaches its ports before the claim writes the server row.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

When = sa.DateTime(timezone=True)
SEGMENTATIONS = "'vlan', 'flat'"


def upgrade() -> None:
    op.create_table(
        "networks",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("project", sa.String(255), nullable=True),
        sa.Column("physical_network", sa.String(255), nullable=False),
        sa.Column("segmentation", sa.String(8), nullable=False),
        sa.Column("segmentation_id", sa.Integer(), nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_networks"),
        sa.UniqueConstraint("name", name="uq_networks_name"),
        # op.f: the name is final (0002's went through the naming convention twice).
        sa.CheckConstraint(f"segmentation IN ({SEGMENTATIONS})",
                           name=op.f("ck_networks_segmentation")),
    )
    op.create_table(
        "ports",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("project", sa.String(255), nullable=False),
        sa.Column("network_id", sa.String(36), nullable=False),
        sa.Column("vnic_type", sa.String(16), nullable=False),
        sa.Column("mac", sa.String(17), nullable=False),
        sa.Column("trusted", sa.Boolean(), nullable=False),
        sa.Column("spoofchk", sa.Boolean(), nullable=False),
        sa.Column("max_tx_rate_mbps", sa.Integer(), nullable=True),
        sa.Column("min_tx_rate_mbps", sa.Integer(), nullable=True),
        sa.Column("numa_affinity_policy", sa.String(32), nullable=True),
        sa.Column("server_id", sa.String(36), nullable=True),
        sa.Column("server_position", sa.Integer(), nullable=True),
        sa.Column("auto_delete", sa.Boolean(), nullable=False),
        sa.Column("binding_host", sa.String(253), nullable=True),
        sa.Column("binding_address", sa.String(16), nullable=True),
        sa.Column("binding_pf", sa.String(255), nullable=True),
        sa.Column("binding_vf_index", sa.Integer(), nullable=True),
        sa.Column("binding_vf_netdev", sa.String(255), nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.Column("updated_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ports"),
        sa.ForeignKeyConstraint(["network_id"], ["networks.id"],
                                name="fk_ports_network_id_networks"),
        sa.UniqueConstraint("network_id", "mac", name="uq_ports_network_id_mac"),
    )
    op.create_index("ix_ports_server_id", "ports", ["server_id"])
    op.create_index("ix_ports_project", "ports", ["project"])


def downgrade() -> None:
    op.drop_index("ix_ports_project", table_name="ports")
    op.drop_index("ix_ports_server_id", table_name="ports")
    op.drop_table("ports")
    op.drop_table("networks")
