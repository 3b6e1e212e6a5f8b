"""Client commands: read the fleet, take devices out of service, hand out tokens.

Each command is one or a few :class:`ApiClient` calls; ``--json`` prints the API's objects
(lists gathered over every page unless ``--no-all``), a table otherwise.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pcipass.cli import render
from pcipass.cli.client import (
    ApiClient,
    Listing,
    device_record,
    host_record,
    pool_record,
    server_record,
)
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
from pcipass.host.pciids import PciIds
from pcipass.pci.address import PciAddress
from pcipass.pci.device import DevType
from pcipass.records import DeviceState, Role

host_app = typer.Typer(help="Hosts that report to the control plane.", no_args_is_help=True)
device_app = typer.Typer(help="PCI devices across the fleet.", no_args_is_help=True)
pool_app = typer.Typer(help="Pools of interchangeable assignable devices.",
                       no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)

LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, max=1000,
                                              help="Page size asked of the server.")]
AllOpt = Annotated[bool, typer.Option("--all/--no-all",
                                      help="Follow 'next' markers and fetch every page.")]
MarkerOpt = Annotated[str | None, typer.Option(
    "--marker", help="Start after this marker (a previous --json listing's 'next').",
    show_default=False)]


def _client(url: str, token: str | None) -> ApiClient:
    return ApiClient(url, token)


def _address(text: str) -> str:
    """Normalise the address locally, so a typo is a usage error, not a 404."""
    with reported(EXIT_USAGE):
        return str(PciAddress.parse(text))


def _more(listing: Listing) -> None:
    if listing.next:
        console(stderr=True).print(f"more follow: --marker {listing.next}", highlight=False)


# --- hosts -------------------------------------------------------------------------------

@host_app.command("list")
def host_list(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
              limit: LimitOpt = None, marker: MarkerOpt = None,
              all_pages: AllOpt = True) -> None:
    """List hosts with their device counts."""
    with reported(), _client(url, token) as client:
        hosts = client.hosts(limit=limit, marker=marker, all_pages=all_pages)
    if as_json:
        print_json({"hosts": hosts.items, "next": hosts.next})
        return
    console().print(render.hosts_table([host_record(h) for h in hosts.items]))
    _more(hosts)


@host_app.command("show")
def host_show(host: Annotated[str, typer.Argument(help="Host name.")],
              url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
              as_json: JsonOpt = False) -> None:
    """Show one host: capacity, NUMA nodes, device counts by state."""
    with reported(), _client(url, token) as client:
        obj = client.host(host)
    if as_json:
        print_json(obj)
        return
    console().print(render.host_view(host_record(obj)))


def _set_host_reserved(host: str, reserved: bool, reason: str | None, url: str,
                       token: str | None, as_json: bool) -> None:
    with reported(), _client(url, token) as client:
        obj = client.reserve_host(host, reserved, reason=reason)
    if as_json:
        print_json(obj)
        return
    rec = host_record(obj)
    console().print(f"host {rec.name}: reserved={render.reserved_text(rec)}", highlight=False)


@host_app.command("reserve")
def host_reserve(host: Annotated[str, typer.Argument(help="Host name.")],
                 reason: Annotated[str | None, typer.Option(
                     "--reason", help="Why (shown with the host).")] = None,
                 url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Drain a host: nothing new is placed there; servers running there keep their devices
    (see `host drain`)."""
    _set_host_reserved(host, True, reason, url, token, as_json)


@host_app.command("unreserve")
def host_unreserve(host: Annotated[str, typer.Argument(help="Host name.")],
                   url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
                   as_json: JsonOpt = False) -> None:
    """Take a reserved host back into service."""
    _set_host_reserved(host, False, None, url, token, as_json)


@host_app.command("drain")
def host_drain(host: Annotated[str, typer.Argument(help="Host name.")],
               live_migrate: Annotated[bool, typer.Option(
                   "--live-migrate", help="Live-migrate every server that can move (to any "
                   "host that fits) and list those that cannot, with why.")] = False,
               url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
               as_json: JsonOpt = False) -> None:
    """List what still runs on a host (servers, devices, ports) and whether each could be
    live-migrated, or what prevents it; with --live-migrate, move those that can."""
    if live_migrate:
        with reported(), _client(url, token) as client:
            moved = client.host_drain_live(host)
        if as_json:
            print_json(moved)
            return
        console().print(render.live_drain_view(moved))
        return
    with reported(), _client(url, token) as client:
        obj = client.host_drain(host)
    if as_json:
        print_json(obj)
        return
    servers = [server_record(e["server"]) for e in obj.get("servers") or ()]
    console().print(render.drain_view(obj, servers))


# --- devices -----------------------------------------------------------------------------

@device_app.command("list")
def device_list(
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
    host: Annotated[str | None, typer.Option("--host", help="Only this host.")] = None,
    state: Annotated[DeviceState | None, typer.Option("--state", case_sensitive=False)] = None,
    vendor_id: Annotated[str | None, typer.Option("--vendor-id")] = None,
    product_id: Annotated[str | None, typer.Option("--product-id")] = None,
    dev_type: Annotated[DevType | None, typer.Option("--dev-type")] = None,
    assignable: Annotated[bool | None, typer.Option("--assignable/--not-assignable",
                                                    show_default=False)] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="key=value, repeatable.")] = None,
    limit: LimitOpt = None,
    marker: MarkerOpt = None,
    all_pages: AllOpt = True,
) -> None:
    """List devices, filtered."""
    params: list[tuple[str, str]] = []
    for key, value in (("host", host), ("state", state), ("vendor_id", vendor_id),
                       ("product_id", product_id), ("dev_type", dev_type)):
        if value is not None:
            params.append((key, str(value.value if hasattr(value, "value") else value)))
    if assignable is not None:
        params.append(("assignable", "true" if assignable else "false"))
    for t in tag or []:
        if "=" not in t or not t.partition("=")[0]:
            fail(f"--tag {t!r} must be key=value", EXIT_USAGE)
        params.append(("tag", t))
    with reported(), _client(url, token) as client:
        devices = client.devices(params, limit=limit, marker=marker, all_pages=all_pages)
    if as_json:
        print_json({"devices": devices.items, "next": devices.next})
        return
    console().print(render.devices_table([device_record(d) for d in devices.items]))
    _more(devices)


@device_app.command("show")
def device_show(host: Annotated[str, typer.Argument(help="Host name.")],
                address: Annotated[str, typer.Argument(help="PCI address dddd:bb:ss.f.")],
                url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
                as_json: JsonOpt = False) -> None:
    """Show one device with its state and owner."""
    addr = _address(address)
    with reported(), _client(url, token) as client:
        obj = client.device(host, addr)
    _print_device(obj, as_json)


def _set_reserved(host: str, address: str, url: str, token: str | None, as_json: bool,
                  reserved: bool) -> None:
    addr = _address(address)
    with reported(), _client(url, token) as client:
        obj = client.set_reserved(host, addr, reserved)
    _print_device(obj, as_json)


def _print_device(obj: dict[str, object], as_json: bool) -> None:
    if as_json:
        print_json(obj)
        return
    console().print(render.device_view(device_record(obj)))


@device_app.command("reserve")
def device_reserve(host: Annotated[str, typer.Argument()],
                   address: Annotated[str, typer.Argument()],
                   url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
                   as_json: JsonOpt = False) -> None:
    """Take a device out of service (an allocated one keeps its owner until freed)."""
    _set_reserved(host, address, url, token, as_json, True)


@device_app.command("unreserve")
def device_unreserve(host: Annotated[str, typer.Argument()],
                     address: Annotated[str, typer.Argument()],
                     url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
                     as_json: JsonOpt = False) -> None:
    """Put a reserved device back in service."""
    _set_reserved(host, address, url, token, as_json, False)


# --- pools -------------------------------------------------------------------------------

@pool_app.command("list")
def pool_list(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
              host: Annotated[str | None, typer.Option("--host", help="Only this host.")] = None,
              limit: LimitOpt = None, marker: MarkerOpt = None,
              all_pages: AllOpt = True) -> None:
    """List pools: free and total interchangeable devices per host and kind."""
    params = [("host", host)] if host else []
    with reported(), _client(url, token) as client:
        pools = client.pools(params, limit=limit, marker=marker, all_pages=all_pages)
    if as_json:
        print_json({"pools": pools.items, "next": pools.next})
        return
    console().print(render.pools_table([pool_record(p) for p in pools.items],
                                       name_of=PciIds.load().name))
    _more(pools)


# --- tokens ------------------------------------------------------------------------------

@token_app.command("create")
def token_create(
    role: Annotated[Role, typer.Option("--role", help="admin, member or agent.")],
    project: Annotated[str | None, typer.Option("--project",
                                                help="The member's project.")] = None,
    host: Annotated[str | None, typer.Option("--host", help="The agent's host.")] = None,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Create a token; the secret is printed once and never again."""
    with reported(), _client(url, token) as client:
        obj = client.create_token(role.value, project=project, host=host)
    if as_json:
        print_json(obj)
        return
    console().print(render.token_view(obj))
