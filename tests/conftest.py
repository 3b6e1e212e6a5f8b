"""Shared fixtures.

Databases: ``db_url`` is the URL of an empty database, once on SQLite (a file in the test's
temporary directory) and once on PostgreSQL: a database created on ``PCIPASS_TEST_PG``'s server
(default ``postgresql+psycopg://postgres@127.0.0.1:5432/``) for this run, emptied before each
test and dropped at the end. When that server cannot be reached the PostgreSQL cases are
skipped with a reason that says so, or fail when ``PCIPASS_REQUIRE_PG=1``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import settings
from sqlalchemy import create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from apiserver import ApiServer, api_server
from fleet import Clock
from pcipass.store import Store

# Property tests assert properties, not speed: hypothesis's per-example deadline would turn a
# busy CI machine into a failure (speed is measured in bench/, not asserted in tests).
settings.register_profile("pcipass", deadline=None)
settings.load_profile("pcipass")

PG_SERVER = os.environ.get("PCIPASS_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/")
REQUIRE_PG = os.environ.get("PCIPASS_REQUIRE_PG") == "1"


@dataclass(frozen=True)
class PgDatabase:
    url: str | None
    problem: str | None = None


def _url_text(url: URL) -> str:
    return url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[PgDatabase]:
    """A database of our own on the test server for the whole run, dropped afterwards."""
    server = make_url(PG_SERVER)
    name = f"pcipass_test_{os.getpid()}_{secrets.token_hex(4)}"
    admin = create_engine(server.set(database=server.database or "postgres"),
                          isolation_level="AUTOCOMMIT", poolclass=NullPool,
                          connect_args={"connect_timeout": 5})
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except SQLAlchemyError as exc:
        admin.dispose()
        yield PgDatabase(None, f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
        return
    try:
        yield PgDatabase(_url_text(server.set(database=name)))
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _empty_pg(url: str) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA public CASCADE")
            conn.exec_driver_sql("CREATE SCHEMA public")
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The URL of an empty database (no tables), on each database pcipass supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'pcipass.db'}"
    pg: PgDatabase = request.getfixturevalue("pg_database")
    if pg.url is None:
        message = (f"POSTGRESQL TESTS NOT RUN: cannot create a database on {PG_SERVER} "
                   f"({pg.problem}); set PCIPASS_TEST_PG to a reachable server")
        if REQUIRE_PG:
            pytest.fail(message + " (PCIPASS_REQUIRE_PG=1)")
        pytest.skip(message)
    _empty_pg(pg.url)
    return pg.url


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A store on a freshly migrated database, closed after the test."""
    s = Store.open(db_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def clocked(db_url: str) -> Iterator[tuple[Store, Clock]]:
    """A store like ``store`` whose clock stands still until the test moves it."""
    clock = Clock()
    s = Store.open(db_url, clock=clock)
    try:
        yield s, clock
    finally:
        s.close()


# --- API servers (tests/apiserver.py) -------------------------------------------------------

def _create_pg_database(prefix: str) -> tuple[str | None, str | None]:
    """A new database on the test server: (url, None), or (None, why not)."""
    server = make_url(PG_SERVER)
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    admin = create_engine(server.set(database=server.database or "postgres"),
                          isolation_level="AUTOCOMMIT", poolclass=NullPool,
                          connect_args={"connect_timeout": 5})
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except SQLAlchemyError as exc:
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    finally:
        admin.dispose()
    return _url_text(server.set(database=name)), None


def _drop_pg_database(url: str) -> None:
    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT",
                          poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)')
    finally:
        admin.dispose()


def _assert_no_tracebacks(server: ApiServer) -> None:
    """Every failure a test provoked must have been an answered error, not a crash."""
    log = server.log()
    assert "Traceback" not in log, log[max(0, log.index("Traceback") - 500):][:6000]


@pytest.fixture(scope="module",
                params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def api(request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """A real API server (``python -m pcipass.server``) shared by one test module, on a
    database of its own of each kind (not ``db_url``'s, which is emptied before every test)."""
    work = tmp_path_factory.mktemp("api")
    if request.param == "sqlite":
        with api_server(f"sqlite:///{work / 'pcipass.db'}", work) as server:
            yield server
            _assert_no_tracebacks(server)
        return
    url, problem = _create_pg_database("pcipass_api")
    if url is None:
        message = (f"POSTGRESQL TESTS NOT RUN: cannot create a database on {PG_SERVER} "
                   f"({problem}); set PCIPASS_TEST_PG to a reachable server")
        if REQUIRE_PG:
            pytest.fail(message + " (PCIPASS_REQUIRE_PG=1)")
        pytest.skip(message)
    try:
        with api_server(url, work) as server:
            yield server
            _assert_no_tracebacks(server)
    finally:
        _drop_pg_database(url)


@pytest.fixture(scope="module")
def sqlite_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """A real API server on a SQLite file, for tests that look at the file itself."""
    work = tmp_path_factory.mktemp("api-sqlite")
    with api_server(f"sqlite:///{work / 'pcipass.db'}", work) as server:
        yield server
