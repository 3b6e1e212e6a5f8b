"""Engines and transactions: the one place that knows SQLite from PostgreSQL.

Write transactions on SQLite start with ``BEGIN IMMEDIATE``: the write lock is taken before
the first read, so two writers queue for it instead of both reading and then failing to
upgrade (``SQLITE_BUSY``, which no timeout helps); they poll for it every few milliseconds
rather than in SQLite's own growing sleeps. WAL lets readers run beside
the one writer. PostgreSQL runs READ COMMITTED and writers serialise per host on the host row.
Database errors leave here as :class:`pcipass.errors.InfrastructureError`.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from pcipass.errors import InfrastructureError, InvalidConfig, PcipassError

BUSY_TIMEOUT_S = 30.0
_WRITE = "pcipass_write"


def _wal(cur: Any) -> None:
    """Switch a database file to WAL once (the mode sticks to the file).

    The switch needs the file to itself and SQLite answers "locked" at once, without the busy
    timeout, when several processes open a new database together: retry until the timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _sqlite_setup(engine: Engine, *, memory: bool) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # Take BEGIN away from the driver: the "begin" hook below emits our own.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            cur.execute("PRAGMA foreign_keys=ON")
            if not memory:
                _wal(cur)
                cur.execute("PRAGMA synchronous=NORMAL")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE, False)
        if write and not memory:
            _begin_immediate(conn.connection.driver_connection)
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _begin_immediate(dbapi_conn: Any) -> None:
    """``BEGIN IMMEDIATE``, waiting for the write lock in short, jittered steps.

    SQLite's own busy handler sleeps 25 to 100 ms at a time once a wait grows, so under a few
    concurrent writers that hold the lock for milliseconds each, some waiters sleep far
    longer than the lock is held. Here the wait polls every few milliseconds instead (with
    the handler off for this statement only), up to the same overall timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    delay = 0.0005
    dbapi_conn.execute("PRAGMA busy_timeout=0")
    try:
        while True:
            try:
                dbapi_conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.004)
    finally:
        dbapi_conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get WAL, a busy timeout and IMMEDIATE writes."""
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            memory = parsed.database in (None, "", ":memory:")
            kw: dict[str, Any] = {"connect_args": {"check_same_thread": False,
                                                   "timeout": BUSY_TIMEOUT_S}}
            if memory:
                kw["poolclass"] = StaticPool
            engine = create_engine(parsed, **kw)
            _sqlite_setup(engine, memory=memory)
            return engine
        return create_engine(parsed, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise InvalidConfig(f"database URL {url!r} is not usable: {exc}",
                            field="database_url") from None


def infrastructure(exc: SQLAlchemyError) -> InfrastructureError:
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    return InfrastructureError(f"database error: {type(orig).__name__}: {orig}".strip())


class Transactions:
    """Read and write transactions over one engine, with errors translated."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = engine.execution_options(**{_WRITE: True})

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self._translate(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        with self._translate(), self._writer.begin() as conn:
            yield conn

    @contextmanager
    def schema_change(self) -> Iterator[Connection]:
        """A write transaction for migrations.

        On SQLite it follows SQLite's own procedure for changing a table: foreign keys off
        around the transaction, and ``foreign_key_check`` before the commit. Batch mode
        copies a table and drops the old one, and with foreign keys on, that drop deletes
        (cascading) every row that references it: an upgrade would empty the database.
        """
        if self.engine.dialect.name != "sqlite":
            with self.write() as conn:
                yield conn
            return
        with self._translate(), self._writer.connect() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            raw.execute("PRAGMA foreign_keys=OFF")  # a no-op inside a transaction: before it
            try:
                with conn.begin():
                    yield conn
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise InfrastructureError(
                            f"the schema change left {len(broken)} row(s) referencing "
                            f"missing rows (first: table {broken[0][0]}, row {broken[0][1]}, "
                            f"referencing {broken[0][2]}); nothing was changed")
            finally:
                raw.execute("PRAGMA foreign_keys=ON")

    @contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except PcipassError:
            raise
        except SQLAlchemyError as exc:
            raise infrastructure(exc) from exc
