"""What every command shares: consoles, the client options, and how errors end a command.

Exit codes: 0 success, 1 an error the server or the host reported (its message printed),
2 bad usage (an invalid option value, device spec or configuration), as click does for
usage errors.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from pcipass import errors

EXIT_ERROR = 1
EXIT_USAGE = 2
PIPE_WIDTH = 200  # rich squeezes tables to 80 columns when not on a terminal; be kinder

UrlOpt = Annotated[str, typer.Option("--url", envvar="PCIPASS_URL",
                                     help="Control plane URL.")]
TokenOpt = Annotated[str | None, typer.Option("--token", envvar="PCIPASS_TOKEN",
                                              help="API token (Bearer).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of a table.")]

DEFAULT_URL = "http://127.0.0.1:8774"


def console(*, stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    width = None
    if not stream.isatty() and not os.environ.get("COLUMNS"):
        width = PIPE_WIDTH
    return Console(file=stream, width=width, stderr=stderr, highlight=False)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False))


def describe(exc: errors.PcipassError) -> str:
    where = f" (field: {exc.field})" if exc.field else ""
    return f"{exc.message}{where} [{exc.code}]"


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    text = Text("error: ", style="bold red")
    text.append(message)
    console(stderr=True).print(text, soft_wrap=True)
    raise typer.Exit(code)


def parse_pairs(values: Sequence[str] | None, option: str) -> list[tuple[str, str]]:
    """``key=value`` options in order; a value may hold ``=``, a key may not be empty."""
    pairs = []
    for text in values or ():
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            fail(f"{option} {text!r} must be key=value", EXIT_USAGE)
        pairs.append((key.strip(), value.strip()))
    return pairs


def pairs_dict(values: Sequence[str] | None, option: str) -> dict[str, str]:
    """``key=value`` options as a dict; a key given twice is a usage error, not a silent win."""
    out: dict[str, str] = {}
    for key, value in parse_pairs(values, option):
        if key in out:
            fail(f"{option} {key} is given twice", EXIT_USAGE)
        out[key] = value
    return out


@contextmanager
def reported(code: int = EXIT_ERROR) -> Iterator[None]:
    """Turn a pcipass error into its message on stderr and exit ``code``.

    Commands parse what the user typed (specs, configuration) under ``reported(EXIT_USAGE)``
    and talk to servers and hosts under ``reported()``.
    """
    try:
        yield
    except errors.PcipassError as exc:
        fail(describe(exc), code)
