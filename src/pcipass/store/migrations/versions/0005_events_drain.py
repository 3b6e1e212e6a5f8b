"""The per-server action log, and draining hosts.

Revision ID: 0005
Revises: 0004
Create Date: 2024-12-18

A new table ``server_events`` (no foreign key to ``servers``: see pcipass.store.events), and
two columns on ``hosts``: ``reserved`` (nothing new is placed there) and its reason.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision: str | None = "0004"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
When = sa.DateTime(timezone=True)
OUTCOMES = "'started', 'done', 'failed'"


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("reserved", sa.Boolean(), nullable=False,
                                   server_default=sa.text("false")))
        batch.add_column(sa.Column("reserved_reason", sa.Text(), nullable=True))
    op.create_table(
        "server_events",
        sa.Column("id", Id, nullable=False),
        sa.Column("server_id", sa.String(36), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("host", sa.String(253), nullable=True),
        sa.Column("detail", Json, nullable=False),
        sa.Column("at", When, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_server_events"),
        sa.CheckConstraint(f"outcome IN ({OUTCOMES})",
                           name=op.f("ck_server_events_outcome")),
    )
    op.create_index("ix_server_events_server_id_at", "server_events", ["server_id", "at"])


def downgrade() -> None:
    op.drop_index("ix_server_events_server_id_at", table_name="server_events")
    op.drop_table("server_events")
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("reserved_reason")
        batch.drop_column("reserved")
