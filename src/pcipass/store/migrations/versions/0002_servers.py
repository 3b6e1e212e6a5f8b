"""Aliases, flavors, images, servers, tasks, quotas, usage; derived device state and kinds.

Revision ID: 0002
Revises: 0001
Create Date: 2024-11-27

Written out in full, like 0001. Existing hosts keep ``derived = 0``: the store recomputes
their derived columns (dependants, reasons, pool kinds and usable counts) when it next opens
the database (:func:`pcipass.store.derive.refresh_hosts`), since that needs the scheduler's
rules, which a migration must not import.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision: str | None = "0001"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
When = sa.DateTime(timezone=True)
SERVER_STATUSES = "'BUILDING', 'ACTIVE', 'ERROR', 'DELETING', 'DELETED'"


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("used_vcpus", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("used_ram_mb", sa.BigInteger(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("numa_used", Json, nullable=False,
                                   server_default=sa.text("'{}'")))
        batch.add_column(sa.Column("pci_free", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("derived", sa.Integer(), nullable=False,
                                   server_default="0"))
    op.create_index("ix_hosts_pci_free_id", "hosts", ["pci_free", "id"])

    op.create_table(
        "pool_kinds",
        sa.Column("id", Id, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("descriptor", Json, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_pool_kinds"),
        sa.UniqueConstraint("digest", name="uq_pool_kinds_digest"),
    )
    op.create_table(
        "host_kinds",
        sa.Column("host_id", Id, nullable=False),
        sa.Column("kind_id", Id, nullable=False),
        sa.Column("usable", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("host_id", "kind_id", name="pk_host_kinds"),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name="fk_host_kinds_host_id_hosts",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["kind_id"], ["pool_kinds.id"],
                                name="fk_host_kinds_kind_id_pool_kinds"),
    )
    op.create_index("ix_host_kinds_kind_id_usable_host_id", "host_kinds",
                    ["kind_id", "usable", "host_id"])
    op.create_table(
        "kind_sets",
        sa.Column("id", Id, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("kind_ids", Json, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_kind_sets"),
        sa.UniqueConstraint("digest", name="uq_kind_sets_digest"),
    )
    op.create_table(
        "host_kind_sets",
        sa.Column("set_id", Id, nullable=False),
        sa.Column("host_id", Id, nullable=False),
        sa.Column("usable", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("set_id", "host_id", name="pk_host_kind_sets"),
        sa.ForeignKeyConstraint(["set_id"], ["kind_sets.id"],
                                name="fk_host_kind_sets_set_id_kind_sets"),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"],
                                name="fk_host_kind_sets_host_id_hosts", ondelete="CASCADE"),
    )
    op.create_index("ix_host_kind_sets_set_id_usable_host_id", "host_kind_sets",
                    ["set_id", "usable", "host_id"])
    with op.batch_alter_table("pools") as batch:
        batch.add_column(sa.Column("kind_id", Id, nullable=True))
        batch.add_column(sa.Column("usable", sa.Integer(), nullable=False, server_default="0"))
        batch.create_foreign_key("fk_pools_kind_id_pool_kinds", "pool_kinds", ["kind_id"],
                                 ["id"])
    op.create_index("ix_pools_kind_id_usable_host_id", "pools",
                    ["kind_id", "usable", "host_id"])

    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("owner_alias", sa.String(255), nullable=True))
        batch.add_column(sa.Column("reason", sa.Text(), nullable=True))

    op.create_table(
        "aliases",
        sa.Column("id", Id, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("entry", Json, nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_aliases"),
        sa.UniqueConstraint("name", "position", name="uq_aliases_name_position"),
    )
    op.create_table(
        "flavors",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("ram_mb", sa.Integer(), nullable=False),
        sa.Column("disk_gb", sa.Integer(), nullable=False),
        sa.Column("extra_specs", Json, nullable=False),
        sa.Column("is_public", sa.Boolean(), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_flavors"),
        sa.UniqueConstraint("name", name="uq_flavors_name"),
    )
    op.create_table(
        "flavor_projects",
        sa.Column("flavor_id", sa.String(36), nullable=False),
        sa.Column("project", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("flavor_id", "project", name="pk_flavor_projects"),
        sa.ForeignKeyConstraint(["flavor_id"], ["flavors.id"],
                                name="fk_flavor_projects_flavor_id_flavors", ondelete="CASCADE"),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("properties", Json, nullable=False),
        sa.Column("project", sa.String(255), nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_images"),
    )
    op.create_index("ix_images_name", "images", ["name"])
    op.create_table(
        "servers",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("project", sa.String(255), nullable=False),
        sa.Column("flavor_id", sa.String(36), nullable=True),
        sa.Column("flavor_name", sa.String(255), nullable=False),
        sa.Column("image_id", sa.String(36), nullable=True),
        sa.Column("image_name", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("host_id", Id, nullable=True),
        sa.Column("fault", sa.Text(), nullable=True),
        sa.Column("requests", Json, nullable=False),
        sa.Column("not_granted", Json, nullable=False),
        sa.Column("numa_cells", Json, nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("ram_mb", sa.Integer(), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.Column("updated_at", When, nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_servers"),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name="fk_servers_host_id_hosts"),
        sa.CheckConstraint(f"status IN ({SERVER_STATUSES})", name="ck_servers_status"),
    )
    op.create_index("ix_servers_project_status", "servers", ["project", "status"])
    op.create_index("ix_servers_host_id_status", "servers", ["host_id", "status"])
    op.create_index("ix_servers_name", "servers", ["name"])
    op.create_table(
        "tasks",
        sa.Column("id", Id, nullable=False),
        sa.Column("host_id", Id, nullable=False),
        sa.Column("server_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("payload", Json, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.Column("updated_at", When, nullable=False),
        sa.Column("deadline", When, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name="fk_tasks_host_id_hosts"),
        sa.ForeignKeyConstraint(["server_id"], ["servers.id"], name="fk_tasks_server_id_servers"),
        sa.CheckConstraint("kind IN ('spawn', 'destroy')", name="ck_tasks_kind"),
        sa.CheckConstraint("state IN ('queued', 'running', 'done', 'failed')",
                           name="ck_tasks_state"),
    )
    op.create_index("ix_tasks_host_id_state", "tasks", ["host_id", "state"])
    op.create_index("ix_tasks_server_id", "tasks", ["server_id"])
    op.create_table(
        "projects",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_projects"),
    )
    op.create_table(
        "quotas",
        sa.Column("project", sa.String(255), nullable=False),
        sa.Column("alias", sa.String(255), nullable=False),
        sa.Column("device_limit", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("project", "alias", name="pk_quotas"),
        sa.CheckConstraint("device_limit >= 0", name="ck_quotas_device_limit"),
    )
    op.create_table(
        "usage_records",
        sa.Column("id", Id, nullable=False),
        sa.Column("project", sa.String(255), nullable=False),
        sa.Column("alias", sa.String(255), nullable=False),
        sa.Column("server_id", sa.String(36), nullable=False),
        sa.Column("host", sa.String(253), nullable=False),
        sa.Column("address", sa.String(16), nullable=False),
        sa.Column("started_at", When, nullable=False),
        sa.Column("ended_at", When, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_usage_records"),
    )
    op.create_index("ix_usage_records_project_started_at", "usage_records",
                    ["project", "started_at"])
    op.create_index("ix_usage_records_server_id", "usage_records", ["server_id"])


def downgrade() -> None:
    for table in ("usage_records", "quotas", "projects", "tasks", "servers", "images",
                  "flavor_projects", "flavors", "aliases"):
        op.drop_table(table)
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("reason")
        batch.drop_column("owner_alias")
    op.drop_index("ix_pools_kind_id_usable_host_id", "pools")
    with op.batch_alter_table("pools") as batch:
        batch.drop_constraint("fk_pools_kind_id_pool_kinds", type_="foreignkey")
        batch.drop_column("usable")
        batch.drop_column("kind_id")
    op.drop_table("host_kind_sets")
    op.drop_table("kind_sets")
    op.drop_table("host_kinds")
    op.drop_table("pool_kinds")
    op.drop_index("ix_hosts_pci_free_id", "hosts")
    with op.batch_alter_table("hosts") as batch:
        for column in ("derived", "pci_free", "numa_used", "used_ram_mb", "used_vcpus"):
            batch.drop_column(column)
