"""The ``pcipass`` command: one CLI for the server, the agent, the demo and the client.

Modules behind the commands are imported by the commands that need them where they are heavy
(the server, the demo), so ``pcipass device list`` does not load FastAPI or SQLAlchemy.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pcipass import __version__
from pcipass.cli.admin import device_app, host_app, pool_app, token_app
from pcipass.cli.agent import agent_command
from pcipass.cli.catalog import alias_app, flavor_app, image_app
from pcipass.cli.discover import discover_command
from pcipass.cli.networks import network_app, port_app
from pcipass.cli.quotas import quota_app, usage_command
from pcipass.cli.serve import serve_command
from pcipass.cli.servers import explain_command, server_app

app = typer.Typer(
    name="pcipass",
    help="PCI passthrough for KVM/libvirt clouds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("discover")(discover_command)
app.command("serve")(serve_command)
app.command("agent")(agent_command)
app.add_typer(host_app, name="host")
app.add_typer(device_app, name="device")
app.add_typer(pool_app, name="pool")
app.add_typer(token_app, name="token")
app.add_typer(alias_app, name="alias")
app.add_typer(flavor_app, name="flavor")
app.add_typer(image_app, name="image")
app.add_typer(network_app, name="network")
app.add_typer(port_app, name="port")
app.add_typer(server_app, name="server")
app.command("explain")(explain_command)
app.add_typer(quota_app, name="quota")
app.command("usage")(usage_command)


@app.command("demo")
def demo_command(
    once: Annotated[bool, typer.Option(
        "--once", help="Run the scenario once, then clean up and exit.")] = False,
    hosts_per_profile: Annotated[int, typer.Option(
        "--hosts-per-profile", min=1, max=20, help="Simulated hosts built from each profile.")
    ] = 1,
) -> None:
    """Run a simulated fleet against a real control plane, and show what it offers."""
    from pcipass.demo import run_demo

    raise typer.Exit(run_demo(once=once, hosts_per_profile=hosts_per_profile))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pcipass {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """PCI passthrough for KVM/libvirt clouds."""


def main() -> None:
    app()
