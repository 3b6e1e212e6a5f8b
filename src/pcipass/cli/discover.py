"""``pcipass discover``: what this host would report, without a server.

The same :func:`discover_inventory` feeds the agent, so what an operator sees here is what the
control plane receives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pcipass.cli import render
from pcipass.cli.common import EXIT_USAGE, JsonOpt, console, print_json, reported
from pcipass.cli.specs import load_specs, spec_texts
from pcipass.config import load_settings
from pcipass.host.discovery import discover
from pcipass.host.pciids import PciIds
from pcipass.pci.devspec import DeviceSpecSet
from pcipass.pci.inventory import Inventory, inventory_to_json

SysfsRootOpt = Annotated[Path | None, typer.Option(
    "--sysfs-root", help="Read sys/ under this directory instead of / (a test tree).",
    show_default=False)]
DeviceSpecOpt = Annotated[list[str] | None, typer.Option(
    "--device-spec", metavar="SPEC",
    help="A Nova \\[pci] device_spec JSON object or list, or @FILE with one per line; "
         "repeatable, added to the configuration's.")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", envvar="PCIPASS_CONFIG", help="TOML configuration file.", show_default=False)]


def discover_inventory(root: Path, specs: DeviceSpecSet, *, pci_ids: PciIds | None = None,
                       hostname: str | None = None) -> Inventory:
    """Discover the host under ``root`` and let the device spec mark what is assignable."""
    inv = discover(root, pci_ids=pci_ids, hostname=hostname)
    return Inventory(host=inv.host, devices=tuple(specs.apply(inv.devices)))


def discover_command(
    sysfs_root: SysfsRootOpt = None,
    device_spec: DeviceSpecOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Discover this host's PCI devices and show what the device spec makes assignable."""
    with reported(EXIT_USAGE):
        settings = load_settings(config)
        specs = load_specs(spec_texts(device_spec or [], settings.pci.device_spec))
    root = sysfs_root if sysfs_root is not None else settings.agent.sysfs_root
    with reported():
        inv = discover_inventory(root, specs, pci_ids=PciIds.load())
    if as_json:
        print_json(inventory_to_json(inv))
        return
    console().print(render.inventory_view(inv))
