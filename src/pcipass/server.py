"""Run the control plane under uvicorn.

``serve(settings)`` is what ``pcipass serve`` calls; ``python -m pcipass.server --db URL
--listen HOST:PORT [--workers N] [--config FILE]`` does the same without the CLI. Several
workers need an import string, so they are started from :func:`app_factory`, which rebuilds
the settings from the environment this process hands down.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from pcipass.api import create_app
from pcipass.config import (
    CONFIG_ENV,
    Settings,
    default_db_url,
    env_name,
    load_settings,
    settings_to_env,
)
from pcipass.errors import PcipassError
from pcipass.records import Role
from pcipass.services.move_disks import MOVE_DISKS_DIR, MoveDisks
from pcipass.services.sweeper import Sweeper
from pcipass.store import Store

APP_FACTORY = "pcipass.server:app_factory"


def serve(settings: Settings) -> None:
    """Serve until interrupted (SIGINT/SIGTERM shut down gracefully).

    The database is migrated and the bootstrap admin token stored here, once, before any
    worker starts; a thread here fails spawn tasks that ran out of time and marks down the
    hosts whose agent went silent.
    """
    if settings.server.db == default_db_url(settings.state_dir):
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    host, port = settings.server.host, settings.server.port
    store = Store.open(settings.server.db, migrate=True)
    sweeper = Sweeper(settings.server.db, settings.tasks.timeout,
                      disks=MoveDisks(settings.state_dir / MOVE_DISKS_DIR),
                      host_down_after=settings.scheduler.host_down_after)
    try:
        if settings.server.admin_token:
            store.ensure_token(settings.server.admin_token, role=Role.ADMIN)
        sweeper.start()
        if settings.server.workers == 1:
            uvicorn.run(create_app(settings, store), host=host, port=port)
            return
        os.environ.update(settings_to_env(settings))
        os.environ.pop(CONFIG_ENV, None)  # the environment now carries every setting
        uvicorn.run(APP_FACTORY, factory=True, host=host, port=port,
                    workers=settings.server.workers)
    finally:
        sweeper.stop()
        store.close()


def app_factory() -> FastAPI:
    """One worker's app, from the settings ``serve`` left in the environment."""
    settings = load_settings(None, os.environ)
    store = Store.open(settings.server.db, migrate=False)
    return create_app(settings, store, close_store=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pcipass.server",
                                     description="Run the pcipass control plane API.")
    parser.add_argument("--config", type=Path, help=f"TOML file (default: ${CONFIG_ENV})")
    parser.add_argument("--db", help="database URL (sqlite:///FILE or postgresql+psycopg://...)")
    parser.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:8774)")
    parser.add_argument("--workers", help="number of worker processes (default 1)")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    for key in ("db", "listen", "workers"):
        if getattr(args, key) is not None:
            env[env_name("server", key)] = getattr(args, key)
    try:
        settings = load_settings(args.config, env)
    except PcipassError as exc:
        print(f"pcipass: {exc.message}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        serve(settings)
    except PcipassError as exc:  # the database unreachable, a token known with another role
        print(f"pcipass: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
