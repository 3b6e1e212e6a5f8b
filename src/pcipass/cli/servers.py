"""Client commands for servers and the scheduler's explanations.

Servers are named by name or id everywhere: the server resolves either. A boot that ends in
``ERROR`` prints the server (with its fault) and exits 1, as ``openstack server create --wait``
does, so a script notices; a refused boot (quota, image, permissions) is an API error, exit 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Protocol

import typer

from pcipass.cli import render
from pcipass.cli.client import JSON, ApiClient, event_record, fault_message, server_record
from pcipass.cli.common import (
    DEFAULT_URL,
    EXIT_ERROR,
    JsonOpt,
    TokenOpt,
    UrlOpt,
    console,
    fail,
    print_json,
    reported,
)
from pcipass.cli.networks import parse_nics
from pcipass.net.port import port_alias
from pcipass.records import MoveStatus, ServerStatus

server_app = typer.Typer(help="Servers: boot with devices, look, delete.", no_args_is_help=True)

ServerArg = Annotated[str, typer.Argument(help="Server name or id.")]
NicOpt = Annotated[list[str] | None, typer.Option(
    "--nic", help="net-id=NETWORK[,vnic-type=normal|direct|macvtap|direct-physical] (a port "
    "made for the server, deleted with it) or port-id=PORT; repeatable.", show_default=False)]
DEFAULT_WAIT_S = 300.0
POLL_S = 0.5
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=0.0,
                                           help="Seconds --wait waits at most.")]


TRANSITIONAL = frozenset({ServerStatus.BUILDING.value, ServerStatus.RESIZE.value,
                          ServerStatus.MIGRATING.value})


def settled(server: Mapping[str, Any]) -> bool:
    """Whether ``--wait`` may stop: the server is no longer being built or moved (ACTIVE,
    VERIFY_RESIZE, ERROR, ...), which takes the host's agent running its task."""
    return server.get("status") not in TRANSITIONAL


class ServerSource(Protocol):
    def server(self, ref: str) -> JSON: ...


def wait_for(client: ServerSource, server: JSON, *, timeout: float, poll: float = POLL_S,
             clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep) -> tuple[JSON, bool]:
    """Poll until :func:`settled` or ``timeout``; the last state seen and whether it settled."""
    deadline = clock() + timeout
    while not settled(server):
        if clock() >= deadline:
            return server, False
        sleep(poll)
        server = client.server(str(server["id"]))
    return server, True


def placement_line(obj: Mapping[str, Any]) -> str:
    """One sentence on where a boot stands, for people (``--json`` prints the server)."""
    s = server_record(obj)
    if s.status is ServerStatus.ERROR:
        return f"server {s.name} is ERROR: {s.fault or 'no fault recorded'}"
    where = f" on {s.host}" if s.host else ""
    ports = {port_alias(p.id): f"port {p.name or p.id}" for p in s.ports}
    devices = ", ".join(
        f"{d.address} ({ports.get(d.alias or '', d.alias or 'group mate')}, {d.state.value})"
        for d in s.devices)
    held = f": {devices}" if devices else ", no PCI devices"
    line = f"server {s.name} is {s.status.value}{where}{held}"
    if s.not_granted:
        line += f"; preferred but not granted: {', '.join(s.not_granted)}"
    return line


def _print_server(obj: JSON, as_json: bool) -> None:
    if as_json:
        print_json(obj)
        return
    console().print(render.server_view(server_record(obj)))


def _server_call(url: str, token: str | None, as_json: bool,
                 call: Callable[[ApiClient], JSON], *, wait: float | None = None,
                 verb: str | None = None) -> None:
    """One request that answers with the server, printed (or its JSON); with ``wait`` (in
    seconds), polled until :func:`settled` first. A server that is (or ends) in ERROR exits
    1 with its fault, as ``openstack server create --wait`` does, so a script notices.
    ``verb`` names what the call does to it ("booted", "moved") for that message."""
    done, failed_move = True, None
    with reported(), ApiClient(url, token) as client:
        obj = call(client)
        if wait is not None:
            obj, done = wait_for(client, obj, timeout=wait)
            if done and verb == "moved":
                failed_move = _failed_move(client.server_moves(str(obj["id"])))
    _print_server(obj, as_json)
    if not as_json and (wait is not None or verb == "booted"):
        console().print(placement_line(obj), highlight=False)
    if not done:
        fail(f"server {obj.get('name')} is still {obj.get('status')} after {wait:g}s "
             f"(is its host's agent running?)")
    if obj.get("status") == ServerStatus.ERROR.value:
        what = f"could not be {verb}" if verb else "is ERROR"
        fail(f"server {obj.get('name')} {what}: "
             f"{fault_message(obj) or 'no fault recorded'}", EXIT_ERROR)
    if failed_move is not None:
        fail(f"server {obj.get('name')} could not be moved, it stays on "
             f"{obj.get('host')}: {failed_move}", EXIT_ERROR)


def _failed_move(moves: list[JSON]) -> str | None:
    """The newest move's message when it failed (the server went back to its source)."""
    if not moves or moves[-1].get("status") != MoveStatus.FAILED.value:
        return None
    return str(moves[-1].get("message") or "no message recorded")


@server_app.command("create")
def server_create(
    name: Annotated[str, typer.Argument(help="Server name.")],
    flavor: Annotated[str, typer.Option("--flavor", help="Flavor name or id.")],
    image: Annotated[str, typer.Option("--image", help="Image name or id.")],
    project: Annotated[str | None, typer.Option(
        "--project", help="Boot in this project (admin only; members boot in their own).",
        show_default=False)] = None,
    nic: NicOpt = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Wait until the server leaves BUILDING (ACTIVE or ERROR).")] = False,
    timeout: TimeoutOpt = DEFAULT_WAIT_S,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Boot a server: the scheduler picks a host and claims its devices, or explains why not."""
    nics = parse_nics(nic)
    _server_call(url, token, as_json, lambda client: client.create_server(
        name=name, flavor=flavor, image=image, project=project, nics=nics),
        wait=timeout if wait else None, verb="booted")


@server_app.command("list")
def server_list(
    host: Annotated[str | None, typer.Option("--host", help="Only servers on this host.",
                                             show_default=False)] = None,
    status: Annotated[ServerStatus | None, typer.Option(
        "--status", case_sensitive=False, show_default=False)] = None,
    project: Annotated[str | None, typer.Option("--project", help="Only this project (admin).",
                                                show_default=False)] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, max=1000,
                                              help="Page size asked of the server.")] = None,
    marker: Annotated[str | None, typer.Option(
        "--marker", help="Start after this marker (a previous --json listing's 'next').",
        show_default=False)] = None,
    all_pages: Annotated[bool, typer.Option(
        "--all/--no-all", help="Follow 'next' markers and fetch every page.")] = True,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """List servers (a member sees its project's)."""
    params = [(k, v) for k, v in (("host", host), ("status", status.value if status else None),
                                  ("project", project)) if v is not None]
    with reported(), ApiClient(url, token) as client:
        listing = client.servers(params, limit=limit, marker=marker, all_pages=all_pages)
    if as_json:
        print_json({"servers": listing.items, "next": listing.next})
        return
    console().print(render.servers_table([server_record(s) for s in listing.items]))
    if listing.next:
        console(stderr=True).print(f"more follow: --marker {listing.next}", highlight=False)


@server_app.command("show")
def server_show(server: ServerArg, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
                as_json: JsonOpt = False,
                xml: Annotated[bool, typer.Option(
                    "--xml", help="Print the libvirt domain XML its host defined (admin).")
                ] = False) -> None:
    """Show a server: its host, devices (address, alias, state), what was not granted, fault."""
    with reported(), ApiClient(url, token) as client:
        if xml:
            typer.echo(client.server_domain_xml(server).rstrip("\n"))
            return
        obj = client.server(server)
    _print_server(obj, as_json)


@server_app.command("events")
def server_events(server: ServerArg, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
                  as_json: JsonOpt = False) -> None:
    """A server's action log, oldest first: create, schedule, spawn, delete, destroy."""
    with reported(), ApiClient(url, token) as client:
        events = client.server_events(server)
    if as_json:
        print_json({"events": events, "next": None})
        return
    console().print(render.events_table([event_record(e) for e in events],
                                        title=f"Events of server {server}"))


@server_app.command("delete")
def server_delete(
    server: ServerArg,
    force: Annotated[bool, typer.Option("--force", help="Mark it DELETED at once even if its "
                                        "host is down (admin); the devices come back when "
                                        "the host confirms.")] = False,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Delete a server: DELETING until its host destroys it, then its devices are freed.
    Mid-move, each of the move's two hosts destroys its part and frees its devices."""
    _server_call(url, token, as_json, lambda client: client.delete_server(server, force=force))


@server_app.command("attach-device")
def server_attach_device(
    server: ServerArg,
    alias: Annotated[str, typer.Option("--alias", help="The alias the devices must match.")],
    count: Annotated[int, typer.Option("--count", min=1, help="How many devices.")] = 1,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Hot-plug devices of an alias into a running server, from its own host (it is never
    moved): they show claimed until the host confirms, then allocated."""
    _server_call(url, token, as_json,
                 lambda client: client.attach_device(server, alias=alias, count=count))


@server_app.command("detach-device")
def server_detach_device(
    server: ServerArg,
    address: Annotated[str, typer.Option("--address", help="The device's PCI address.")],
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Hot-unplug a device (with its IOMMU unit); freed once the host confirms."""
    _server_call(url, token, as_json, lambda client: client.detach_device(server, address))


@server_app.command("attach-interface")
def server_attach_interface(
    server: ServerArg,
    net: Annotated[str | None, typer.Option(
        "--net", help="Network name or id: a port is made for the server (deleted when "
        "detached).", show_default=False)] = None,
    vnic_type: Annotated[str | None, typer.Option(
        "--vnic-type", help="normal, direct, macvtap or direct-physical (with --net).",
        show_default=False)] = None,
    port: Annotated[str | None, typer.Option(
        "--port", help="An existing port of the project (name or id).",
        show_default=False)] = None,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Hot-plug a port into a running server: its VF (or PF) from the server's own host."""
    if (net is None) == (port is None):
        fail("give exactly one of --net and --port")
    nic = {"port_id": port} if port is not None else {"net_id": str(net)}
    if vnic_type is not None:
        nic["vnic_type"] = vnic_type
    _server_call(url, token, as_json, lambda client: client.attach_interface(server, nic))


@server_app.command("detach-interface")
def server_detach_interface(
    server: ServerArg,
    port: Annotated[str, typer.Option("--port", help="The port (name or id).")],
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Hot-unplug a port: its VF restored and freed once the host confirms; a port made by
    attach-interface --net is deleted."""
    _server_call(url, token, as_json, lambda client: client.detach_interface(server, port))


@server_app.command("resize")
def server_resize(
    server: ServerArg,
    flavor: Annotated[str, typer.Option("--flavor", help="The new flavor, by name or id.")],
    wait: Annotated[bool, typer.Option(
        "--wait", help="Wait until the move ends (VERIFY_RESIZE, ACTIVE or ERROR).")] = False,
    timeout: TimeoutOpt = DEFAULT_WAIT_S,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Move a server to another flavor: the new flavor's devices are claimed (on its own
    host when they fit there, else another), the server is rebuilt there and waits in
    VERIFY_RESIZE for `resize-confirm` (frees the old devices) or `resize-revert` (frees
    the new ones and restarts it where it was)."""
    _server_call(url, token, as_json, lambda client: client.resize_server(server, flavor=flavor),
                 wait=timeout if wait else None, verb="moved")


@server_app.command("migrate")
def server_migrate(
    server: ServerArg,
    host: Annotated[str | None, typer.Option(
        "--host", help="The destination host (default: any other host that fits).",
        show_default=False)] = None,
    auto_confirm: Annotated[bool, typer.Option(
        "--auto-confirm", help="Confirm as soon as it runs on the destination.")] = False,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Wait until the move ends (VERIFY_RESIZE, ACTIVE or ERROR).")] = False,
    timeout: TimeoutOpt = DEFAULT_WAIT_S,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Admins: cold-migrate a server (stopped, rebuilt on another host with the same
    devices claimed there). Then confirm or revert as a resize, unless --auto-confirm."""
    _server_call(url, token, as_json,
                 lambda client: client.migrate_server(server, host=host, auto_confirm=auto_confirm),
                 wait=timeout if wait else None, verb="moved")


@server_app.command("resize-confirm")
def server_resize_confirm(server: ServerArg, url: UrlOpt = DEFAULT_URL,
                          token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Keep a resized or migrated server where it is now; its old devices are freed once
    the old host has destroyed what it kept."""
    _server_call(url, token, as_json, lambda client: client.confirm_resize(server))


@server_app.command("resize-revert")
def server_resize_revert(server: ServerArg, url: UrlOpt = DEFAULT_URL,
                         token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Send a resized or migrated server back where it was, with its old flavor; the new
    devices are freed."""
    _server_call(url, token, as_json, lambda client: client.revert_resize(server))


@server_app.command("moves")
def server_moves(server: ServerArg, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
                 as_json: JsonOpt = False) -> None:
    """A server's resizes and migrations, oldest first."""
    with reported(), ApiClient(url, token) as client:
        moves = client.server_moves(server)
    if as_json:
        print_json({"moves": moves})
        return
    console().print(render.moves_table(moves, title=f"Moves of server {server}"))


@server_app.command("live-migrate")
def server_live_migrate(
    server: ServerArg,
    host: Annotated[str | None, typer.Option(
        "--host", help="The destination host (default: any host that fits).",
        show_default=False)] = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Wait until the move ends (VERIFY_RESIZE, ACTIVE or ERROR).")] = False,
    timeout: TimeoutOpt = DEFAULT_WAIT_S,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Admins: move a running server to another host without stopping it. Its direct
    (VF) NICs are unplugged for the move and plugged again on the destination's VFs; its
    macvtap NICs move with it. Refused, naming each device, when a device cannot move
    live. Follow the steps with `server events`."""
    _server_call(url, token, as_json, lambda client: client.live_migrate(server, host=host),
                 wait=timeout if wait else None, verb="moved")


def explain_command(
    flavor: Annotated[str, typer.Option("--flavor", help="Flavor name or id.")],
    image: Annotated[str | None, typer.Option("--image", help="Image name or id.",
                                              show_default=False)] = None,
    project: Annotated[str | None, typer.Option(
        "--project", help="Judge as a boot in this project would be.",
        show_default=False)] = None,
    nic: NicOpt = None,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Whether a boot of this flavor (and image, and NICs) fits now, and each host's verdict
    (admin)."""
    nics = parse_nics(nic)
    with reported(), ApiClient(url, token) as client:
        obj = client.explain(flavor=flavor, image=image, project=project, nics=nics)
    if as_json:
        print_json(obj)
        return
    console().print(render.explain_view(obj))
