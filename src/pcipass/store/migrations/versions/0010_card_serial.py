"""The card serial number from a device's VPD: ``devices.card_serial_number``.

Revision ID: 0010
Revises: 0009
Create Date: 2024-12-23

A nullable column, so every database (SQLite included) adds it in place; devices reported
before it read as having no serial number until their host's next report.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision: str | None = "0009"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None


def upgrade() -> None:
    op.add_column("devices", sa.Column("card_serial_number", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("card_serial_number")
