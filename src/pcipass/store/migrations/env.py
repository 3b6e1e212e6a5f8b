"""Alembic environment: runs on the connection :mod:`pcipass.store.migrate` hands in.

Without one (a developer running ``alembic`` by hand with ``-x url=...`` or
``sqlalchemy.url``), it makes its own engine with the store's SQLite settings.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from pcipass.store.engine import Transactions, make_engine
from pcipass.store.schema import metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things: later revisions copy tables
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    if context.is_offline_mode():
        raise SystemExit("pcipass migrations run online only")
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option(
        "sqlalchemy.url")
    if not url:
        raise SystemExit("give a database: alembic -x url=... or sqlalchemy.url")
    engine = make_engine(url)
    try:
        with Transactions(engine).schema_change() as conn:
            _run(conn)
    finally:
        engine.dispose()


main()
