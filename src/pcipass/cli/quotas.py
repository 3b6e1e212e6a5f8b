"""Client commands for quotas (devices per project and alias) and metered usage."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from pcipass.cli import render
from pcipass.cli.client import ApiClient, quota_record, usage_record
from pcipass.cli.common import (
    DEFAULT_URL,
    EXIT_USAGE,
    JsonOpt,
    TokenOpt,
    UrlOpt,
    console,
    fail,
    print_json,
    reported,
)
from pcipass.cli.resource import deleted

quota_app = typer.Typer(help="Quotas: how many devices of an alias a project may hold.",
                        no_args_is_help=True)

ProjectArg = Annotated[str, typer.Argument(help="Project.")]
AliasArg = Annotated[str, typer.Argument(help="Alias name.")]


@quota_app.command("set")
def quota_set(project: ProjectArg, alias: AliasArg,
              limit: Annotated[int, typer.Argument(min=0, help="Devices at most.")],
              url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
              as_json: JsonOpt = False) -> None:
    """Set a project's quota of devices of one alias (admin)."""
    with reported(), ApiClient(url, token) as client:
        obj = client.set_quota(project, alias, limit)
    if as_json:
        print_json(obj)
        return
    console().print(render.quotas_table([quota_record(obj)], title="Quota set"))


@quota_app.command("list")
def quota_list(project: Annotated[str | None, typer.Option(
                   "--project", help="Only this project.", show_default=False)] = None,
               url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
               as_json: JsonOpt = False) -> None:
    """List quotas with what each project uses now (a member sees its own)."""
    with reported(), ApiClient(url, token) as client:
        listing = client.quotas(project=project)
    if as_json:
        print_json({"quotas": listing.items, "next": listing.next})
        return
    console().print(render.quotas_table([quota_record(q) for q in listing.items]))


@quota_app.command("delete")
def quota_delete(project: ProjectArg, alias: AliasArg, url: UrlOpt = DEFAULT_URL,
                 token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Remove a quota: the project is no longer limited on that alias (admin)."""
    with reported(), ApiClient(url, token) as client:
        client.delete_quota(project, alias)
    deleted("quota", f"{project}/{alias}", as_json)


def parse_when(text: str | None, option: str) -> datetime | None:
    """An ISO 8601 time; one without a zone is taken as UTC."""
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        fail(f"{option} {text!r} is not an ISO 8601 time (e.g. 2025-01-31T12:00:00Z)",
             EXIT_USAGE)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def usage_command(
    project: Annotated[str | None, typer.Option("--project", help="Only this project.",
                                                show_default=False)] = None,
    start: Annotated[str | None, typer.Option(
        "--start", help="ISO 8601 (default: 30 days ago).", show_default=False)] = None,
    end: Annotated[str | None, typer.Option("--end", help="ISO 8601 (default: now).",
                                            show_default=False)] = None,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Device-hours per project and alias, from allocation to free (a member sees its own)."""
    since, until = parse_when(start, "--start"), parse_when(end, "--end")
    if since and until and since > until:
        fail("--start is after --end", EXIT_USAGE)
    with reported(), ApiClient(url, token) as client:
        listing = client.usage(project=project, start=since, end=until)
    if as_json:
        print_json({"usage": listing.items, "next": listing.next})
        return
    console().print(render.usage_table([usage_record(u) for u in listing.items]))
