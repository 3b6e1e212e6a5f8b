"""Hosts whose agent went silent: ``hosts.down``.

Revision ID: 0011
Revises: 0010
Create Date: 2024-12-24

Set by the sweep when a host that has an agent neither polled nor reported for
``[scheduler] host_down_after`` seconds, cleared by its next poll or report
(:mod:`pcipass.store.liveness`). Every host starts up.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision: str | None = "0010"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None


def upgrade() -> None:
    # Every database adds a column with a constant default in place: no table copy.
    op.add_column("hosts", sa.Column("down", sa.Boolean(), nullable=False,
                                     server_default=sa.text("false")))


def downgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("down")
