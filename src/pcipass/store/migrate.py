"""Schema migrations: Alembic, driven from code (no alembic.ini to ship or find).

``upgrade`` runs in one write transaction that first takes a lock (an advisory lock on
PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so API workers starting together migrate once and
the others find the schema at head.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, text

from pcipass.errors import InfrastructureError
from pcipass.store.engine import Transactions

MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant works; this one spells "pcipass" so it is recognisable in pg_locks.
_PG_LOCK = 0x70636970617373


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return str(head)


def current_revision(conn: Connection) -> str | None:
    rev = MigrationContext.configure(conn).get_current_revision()
    return None if rev is None else str(rev)


def upgrade(tx: Transactions, revision: str = "head") -> None:
    with tx.schema_change() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK})
        try:
            command.upgrade(alembic_config(conn), revision)
        except CommandError as exc:
            raise InfrastructureError(f"database migration failed: {exc}") from exc
