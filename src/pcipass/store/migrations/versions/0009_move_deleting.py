"""Deleting a server mid-move: the ``deleting`` move status.

Revision ID: 0009
Revises: 0008
Create Date: 2024-12-22

Only the CHECK on ``moves.status`` changes. SQLite cannot alter a CHECK constraint: the moves
table is rebuilt (batch mode) from the table as 0007 created it (0008 does not touch it), so
nothing is reflected.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision: str | None = "0008"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
When = sa.DateTime(timezone=True)
KINDS = "'resize', 'migrate', 'live'"
OLD_STATUSES = ("'claimed', 'moving', 'verify', 'confirming', 'reverting', 'done', "
                "'reverted', 'failed'")
NEW_STATUSES = ("'claimed', 'moving', 'verify', 'confirming', 'reverting', 'deleting', "
                "'done', 'reverted', 'failed'")


def _moves(statuses: str) -> sa.Table:
    """The moves table as 0007 created it, with the status CHECK given."""
    return sa.Table(
        "moves", sa.MetaData(),
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
        sa.CheckConstraint(f"kind IN ({KINDS})", name="ck_moves_kind"),
        sa.CheckConstraint(f"status IN ({statuses})", name="ck_moves_status"),
        sa.Index("ix_moves_server_id_status", "server_id", "status"),
        sa.Index("ix_moves_status", "status"),
    )


def upgrade() -> None:
    with op.batch_alter_table("moves", copy_from=_moves(OLD_STATUSES)) as batch:
        batch.drop_constraint(op.f("ck_moves_status"), type_="check")
        batch.create_check_constraint(op.f("ck_moves_status"), f"status IN ({NEW_STATUSES})")


def downgrade() -> None:
    # No earlier revision knows the status: a move still deleting is recorded as failed.
    op.execute("UPDATE moves SET status = 'failed' WHERE status = 'deleting'")
    with op.batch_alter_table("moves", copy_from=_moves(NEW_STATUSES)) as batch:
        batch.drop_constraint(op.f("ck_moves_status"), type_="check")
        batch.create_check_constraint(op.f("ck_moves_status"), f"status IN ({OLD_STATUSES})")
