"""``pcipass serve``: the control plane, with command-line overrides over the configuration."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from pcipass.cli.common import EXIT_USAGE, reported
from pcipass.cli.discover import ConfigOpt
from pcipass.config import env_name, load_settings, split_listen


def serve_command(
    config: ConfigOpt = None,
    db: Annotated[str | None, typer.Option(
        "--db", help="Database URL: sqlite:///FILE or postgresql+psycopg://... "
        "(default: pcipass.db in the state dir).", show_default=False)] = None,
    listen: Annotated[str | None, typer.Option(
        "--listen", help="HOST:PORT to listen on (default 127.0.0.1:8774).",
        show_default=False)] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, help="Worker processes (default 1).", show_default=False)] = None,
) -> None:
    """Run the control plane API (migrates the database first)."""
    from pcipass import server  # imports FastAPI and the store: only when serving

    with reported(EXIT_USAGE):
        if listen is not None:
            split_listen(listen, field="--listen")
    env = dict(os.environ)
    for key, value in (("db", db), ("listen", listen), ("workers", workers)):
        if value is not None:
            env[env_name("server", key)] = str(value)
    with reported(EXIT_USAGE):
        settings = load_settings(config, env)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with reported():
        server.serve(settings)
