"""Bare-metal hosts: ``hosts.kind``.

Revision ID: 0008
Revises: 0007
Create Date: 2024-12-21

A host is a ``hypervisor`` (every host so far: the default) or ``baremetal`` (no hypervisor:
one server takes the whole machine). The agent reports it; boots narrow on it first, through
the index ``(kind, pci_free, id)``. SQLite gets the column and its CHECK by a batch rebuild of
``hosts`` (reflected: 0005 and 0007 add columns to it the same way).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision: str | None = "0007"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

KINDS = "'hypervisor', 'baremetal'"


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False,
                                   server_default=sa.text("'hypervisor'")))
        batch.create_check_constraint(op.f("ck_hosts_kind"), f"kind IN ({KINDS})")
    op.create_index("ix_hosts_kind_pci_free_id", "hosts", ["kind", "pci_free", "id"])


def downgrade() -> None:
    op.drop_index("ix_hosts_kind_pci_free_id", table_name="hosts")
    with op.batch_alter_table("hosts") as batch:
        batch.drop_constraint(op.f("ck_hosts_kind"), type_="check")
        batch.drop_column("kind")
