"""Moving servers: the ``moves`` table, ``devices.move_id``, ``hosts.migration_uri``, the
move task kinds and server statuses.

Revision ID: 0007
Revises: 0006
Create Date: 2024-12-20

SQLite cannot alter a CHECK constraint: ``tasks`` and ``servers`` are rebuilt (batch mode)
from the tables as the earlier revisions left them, so nothing is reflected. ``servers``'
status CHECK gets its proper name on the way (0002 named it through the naming convention
twice). ``devices.move_id`` is added in place (SQLite takes a REFERENCES clause on ADD
COLUMN when the column's default is NULL).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision: str | None = "0006"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
When = sa.DateTime(timezone=True)
TASK_STATES = "'queued', 'running', 'done', 'failed', 'expired'"
OLD_KINDS = "'spawn', 'destroy', 'attach', 'detach'"
NEW_KINDS = ("'spawn', 'destroy', 'attach', 'detach', 'migrate_out', 'restart', "
             "'live_prepare', 'live_migrate', 'live_finish'")
OLD_STATUSES = "'BUILDING', 'ACTIVE', 'ERROR', 'DELETING', 'DELETED'"
NEW_STATUSES = OLD_STATUSES + ", 'RESIZE', 'MIGRATING', 'VERIFY_RESIZE'"
MOVE_KINDS = "'resize', 'migrate', 'live'"
MOVE_STATUSES = ("'claimed', 'moving', 'verify', 'confirming', 'reverting', 'done', "
                 "'reverted', 'failed'")


def _tasks(kinds: str) -> sa.Table:
    """The tasks table as 0006 left it, with the kind CHECK given."""
    return sa.Table(
        "tasks", sa.MetaData(),
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
        sa.Column("started_at", When, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name="fk_tasks_host_id_hosts"),
        sa.ForeignKeyConstraint(["server_id"], ["servers.id"], name="fk_tasks_server_id_servers"),
        sa.CheckConstraint(f"kind IN ({kinds})", name="ck_tasks_kind"),
        sa.CheckConstraint(f"state IN ({TASK_STATES})", name="ck_tasks_state"),
        sa.Index("ix_tasks_host_id_state", "host_id", "state"),
        sa.Index("ix_tasks_server_id", "server_id"),
    )


def _servers(statuses: str, name: str) -> sa.Table:
    """The servers table as 0003 left it (0004 to 0006 do not touch it)."""
    return sa.Table(
        "servers", sa.MetaData(),
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
        sa.Column("domain_xml", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_servers"),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name="fk_servers_host_id_hosts"),
        sa.CheckConstraint(f"status IN ({statuses})", name=name),
        sa.Index("ix_servers_project_status", "project", "status"),
        sa.Index("ix_servers_host_id_status", "host_id", "status"),
        sa.Index("ix_servers_name", "name"),
    )


def upgrade() -> None:
    with op.batch_alter_table("tasks", copy_from=_tasks(OLD_KINDS)) as batch:
        batch.drop_constraint(op.f("ck_tasks_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_tasks_kind"), f"kind IN ({NEW_KINDS})")
    with op.batch_alter_table("servers", copy_from=_servers(
            OLD_STATUSES, "ck_servers_ck_servers_status")) as batch:
        batch.drop_constraint(op.f("ck_servers_ck_servers_status"), type_="check")
        batch.create_check_constraint(op.f("ck_servers_status"),
                                      f"status IN ({NEW_STATUSES})")
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("migration_uri", sa.Text(), nullable=True))
    op.create_table(
        "moves",
        sa.Column("id", Id, nullable=False),
        sa.Column("server_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source_host_id", Id, nullable=False),
        sa.Column("dest_host_id", Id, nullable=False),
        sa.Column("old_flavor_id", sa.String(36), nullable=True),
        sa.Column("new_flavor_id", sa.String(36), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("auto_confirm", sa.Boolean(), nullable=False),
        sa.Column("on_dest", sa.Boolean(), nullable=False),
        sa.Column("source", Json, nullable=False),
        sa.Column("dest", Json, nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.Column("updated_at", When, nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_moves"),
        sa.ForeignKeyConstraint(["server_id"], ["servers.id"], name="fk_moves_server_id_servers"),
        sa.ForeignKeyConstraint(["source_host_id"], ["hosts.id"],
                                name="fk_moves_source_host_id_hosts"),
        sa.ForeignKeyConstraint(["dest_host_id"], ["hosts.id"],
                                name="fk_moves_dest_host_id_hosts"),
        sa.CheckConstraint(f"kind IN ({MOVE_KINDS})", name=op.f("ck_moves_kind")),
        sa.CheckConstraint(f"status IN ({MOVE_STATUSES})", name=op.f("ck_moves_status")),
    )
    op.create_index("ix_moves_server_id_status", "moves", ["server_id", "status"])
    op.create_index("ix_moves_status", "moves", ["status"])
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE devices ADD COLUMN move_id INTEGER REFERENCES moves (id)")
    else:
        op.add_column("devices", sa.Column("move_id", Id, nullable=True))
        op.create_foreign_key("fk_devices_move_id_moves", "devices", "moves", ["move_id"],
                              ["id"])


def downgrade() -> None:
    # Moves have no meaning before 0007: their tasks and rows go, their servers settle.
    op.execute("DELETE FROM tasks WHERE kind NOT IN (" + OLD_KINDS + ")")
    op.execute("UPDATE servers SET status = 'ERROR' WHERE status NOT IN (" + OLD_STATUSES + ")")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("move_id")
    op.drop_index("ix_moves_status", table_name="moves")
    op.drop_index("ix_moves_server_id_status", table_name="moves")
    op.drop_table("moves")
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("migration_uri")
    with op.batch_alter_table("servers", copy_from=_servers(
            NEW_STATUSES, "ck_servers_status")) as batch:
        batch.drop_constraint(op.f("ck_servers_status"), type_="check")
        batch.create_check_constraint(op.f("ck_servers_ck_servers_status"),
                                      f"status IN ({OLD_STATUSES})")
    with op.batch_alter_table("tasks", copy_from=_tasks(NEW_KINDS)) as batch:
        batch.drop_constraint(op.f("ck_tasks_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_tasks_kind"), f"kind IN ({OLD_KINDS})")
