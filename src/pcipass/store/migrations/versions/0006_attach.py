"""Hot attach and detach: the ``attach`` and ``detach`` task kinds.

Revision ID: 0006
Revises: 0005
Create Date: 2024-12-18

Only the CHECK on ``tasks.kind`` changes. SQLite cannot alter a CHECK constraint: the tasks
table is rebuilt (batch mode) from the table as 0003 left it (0004 and 0005 do not touch it),
so nothing is reflected.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision: str | None = "0005"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
When = sa.DateTime(timezone=True)
STATES = "'queued', 'running', 'done', 'failed', 'expired'"
OLD_KINDS = "'spawn', 'destroy'"
NEW_KINDS = "'spawn', 'destroy', 'attach', 'detach'"
# 0002 named it through the naming convention twice; 0006 gives it its proper name.
OLD_NAME = "ck_tasks_ck_tasks_kind"
NEW_NAME = "ck_tasks_kind"


def _tasks(kind_check: str, kind_name: str) -> sa.Table:
    """The tasks table as 0003 left it, with the kind CHECK given."""
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
        sa.CheckConstraint(f"kind IN ({kind_check})", name=kind_name),
        sa.CheckConstraint(f"state IN ({STATES})", name="ck_tasks_state"),
        sa.Index("ix_tasks_host_id_state", "host_id", "state"),
        sa.Index("ix_tasks_server_id", "server_id"),
    )


def upgrade() -> None:
    with op.batch_alter_table("tasks", copy_from=_tasks(OLD_KINDS, OLD_NAME)) as batch:
        batch.drop_constraint(op.f(OLD_NAME), type_="check")
        batch.create_check_constraint(op.f(NEW_NAME), f"kind IN ({NEW_KINDS})")


def downgrade() -> None:
    # Hot-plug tasks have no meaning before 0006: they go.
    op.execute("DELETE FROM tasks WHERE kind IN ('attach', 'detach')")
    with op.batch_alter_table("tasks", copy_from=_tasks(NEW_KINDS, NEW_NAME)) as batch:
        batch.drop_constraint(op.f(NEW_NAME), type_="check")
        batch.create_check_constraint(op.f(OLD_NAME), f"kind IN ({OLD_KINDS})")
