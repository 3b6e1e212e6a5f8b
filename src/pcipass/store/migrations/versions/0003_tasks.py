"""Agent tasks: the ``expired`` task state, when a task started, hosts' liveness, domain XML.

Revision ID: 0003
Revises: 0002
Create Date: 2024-12-04

SQLite cannot alter a CHECK constraint: the tasks table is rebuilt (batch mode), from the
table as 0002 wrote it, so nothing is reflected.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision: str | None = "0002"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
When = sa.DateTime(timezone=True)
OLD_STATES = "'queued', 'running', 'done', 'failed'"
NEW_STATES = "'queued', 'running', 'done', 'failed', 'expired'"
# 0002's names went through the naming convention a second time.
OLD_NAME = "ck_tasks_ck_tasks_state"


def _tasks_0002() -> sa.Table:
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
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name="fk_tasks_host_id_hosts"),
        sa.ForeignKeyConstraint(["server_id"], ["servers.id"], name="fk_tasks_server_id_servers"),
        sa.CheckConstraint("kind IN ('spawn', 'destroy')", name="ck_tasks_ck_tasks_kind"),
        sa.CheckConstraint(f"state IN ({OLD_STATES})", name=OLD_NAME),
        sa.Index("ix_tasks_host_id_state", "host_id", "state"),
        sa.Index("ix_tasks_server_id", "server_id"),
    )


def upgrade() -> None:
    op.add_column("hosts", sa.Column("last_seen", When, nullable=True))
    op.add_column("servers", sa.Column("domain_xml", sa.Text(), nullable=True))
    with op.batch_alter_table("tasks", copy_from=_tasks_0002()) as batch:
        batch.add_column(sa.Column("started_at", When, nullable=True))
        batch.drop_constraint(op.f(OLD_NAME), type_="check")
        batch.create_check_constraint(op.f("ck_tasks_state"), f"state IN ({NEW_STATES})")


def downgrade() -> None:
    op.execute("UPDATE tasks SET state = 'failed' WHERE state = 'expired'")
    new = _tasks_0002()
    new.append_column(sa.Column("started_at", When, nullable=True))
    for c in list(new.constraints):
        if isinstance(c, sa.CheckConstraint) and c.name == OLD_NAME:
            new.constraints.remove(c)
    new.append_constraint(sa.CheckConstraint(f"state IN ({NEW_STATES})", name="ck_tasks_state"))
    with op.batch_alter_table("tasks", copy_from=new) as batch:
        batch.drop_constraint(op.f("ck_tasks_state"), type_="check")
        batch.create_check_constraint(op.f("ck_tasks_state"), f"state IN ({OLD_STATES})")
        batch.drop_column("started_at")
    op.drop_column("servers", "domain_xml")
    op.drop_column("hosts", "last_seen")
