"""Client commands for networks and ports.

``network create`` is an admin's; ports are a tenant's (``--trusted`` and ``--project`` are
an admin's). What the user typed is checked here first with the parsers the server uses
(segmentation, MAC), so a typo is a usage error (exit 2) before any request. ``list``,
``show`` and ``delete`` are the same for both, once (:class:`Resource`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, TypeVar

import typer
from rich.console import RenderableType

from pcipass.cli import render
from pcipass.cli.client import ApiClient, network_record, port_record
from pcipass.cli.common import (
    DEFAULT_URL,
    EXIT_USAGE,
    JsonOpt,
    TokenOpt,
    UrlOpt,
    fail,
    reported,
)
from pcipass.cli.resource import Resource
from pcipass.net.port import Segmentation, VnicType, check_segmentation, parse_mac
from pcipass.pci.alias import NumaPolicy
from pcipass.records import NetworkRecord, PortRecord

T = TypeVar("T")

network_app = typer.Typer(help="Networks: a VLAN (or flat) segment of a physical network.",
                          no_args_is_help=True)
port_app = typer.Typer(help="Ports: a MAC on a network, bound to a VF when a server boots.",
                       no_args_is_help=True)


def _networks_table(items: Sequence[NetworkRecord]) -> RenderableType:
    return render.networks_table(items)


def _ports_table(items: Sequence[PortRecord]) -> RenderableType:
    return render.ports_table(items)


NETWORKS: Resource[NetworkRecord] = Resource(
    "network", "/v1/networks", "networks", network_record, _networks_table,
    render.network_view)
PORTS: Resource[PortRecord] = Resource(
    "port", "/v1/ports", "ports", port_record, _ports_table, render.port_view)

NetworkArg = Annotated[str, typer.Argument(help="Network name or id.")]
PortArg = Annotated[str, typer.Argument(help="Port name or id.")]


# --- networks ------------------------------------------------------------------------------

@network_app.command("create")
def network_create(
    name: Annotated[str, typer.Argument(help="Network name.")],
    physnet: Annotated[str, typer.Option(
        "--physnet", help="The physical network (the devices' physical_network tag).")],
    vlan: Annotated[int | None, typer.Option("--vlan", help="The VLAN id (1-4094).",
                                             show_default=False)] = None,
    flat: Annotated[bool, typer.Option("--flat", help="Untagged: no VLAN.")] = False,
    project: Annotated[str | None, typer.Option(
        "--project", help="Only this project sees it (default: shared with all).",
        show_default=False)] = None,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Create a network (admin): a VLAN or the flat segment of a physical network."""
    if flat == (vlan is not None):
        fail("give exactly one of --vlan ID and --flat", EXIT_USAGE)
    segmentation = Segmentation.FLAT if flat else Segmentation.VLAN
    with reported(EXIT_USAGE):
        check_segmentation(segmentation.value, vlan)
    with reported(), ApiClient(url, token) as client:
        obj = client.create_network(name=name, physical_network=physnet,
                                    segmentation=segmentation.value, segmentation_id=vlan,
                                    project=project)
    NETWORKS.print(obj, as_json)


@network_app.command("list")
def network_list(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
                 as_json: JsonOpt = False) -> None:
    """List networks (a member sees the shared ones and its project's)."""
    NETWORKS.list(url, token, as_json)


@network_app.command("show")
def network_show(network: NetworkArg, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Show one network."""
    NETWORKS.show(network, url, token, as_json)


@network_app.command("delete")
def network_delete(network: NetworkArg, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
                   as_json: JsonOpt = False) -> None:
    """Delete a network and its free ports (admin; refused while a server has a port on it)."""
    NETWORKS.delete(network, url, token, as_json)


# --- ports ---------------------------------------------------------------------------------

@port_app.command("create")
def port_create(
    network: Annotated[str, typer.Option("--network", help="Network name or id.")],
    name: Annotated[str | None, typer.Option("--name", help="Port name.",
                                             show_default=False)] = None,
    vnic_type: Annotated[VnicType, typer.Option(
        "--vnic-type", help="normal, direct (a VF), macvtap (a VF behind macvtap) or "
        "direct-physical (a whole PF).")] = VnicType.NORMAL,
    mac: Annotated[str | None, typer.Option(
        "--mac", help="The MAC (default: random under the configured prefix).",
        show_default=False)] = None,
    trusted: Annotated[bool, typer.Option(
        "--trusted", help="A trusted VF: the guest may change its MAC and go promiscuous "
        "(admin).")] = False,
    no_spoofchk: Annotated[bool, typer.Option(
        "--no-spoofchk", help="Turn the VF's spoof check off.")] = False,
    max_tx_rate: Annotated[int | None, typer.Option(
        "--max-tx-rate", min=0, help="Mbit/s the VF may send at most (0: no limit).",
        show_default=False)] = None,
    min_tx_rate: Annotated[int | None, typer.Option(
        "--min-tx-rate", min=0, help="Mbit/s guaranteed to the VF.", show_default=False)
    ] = None,
    numa_policy: Annotated[NumaPolicy | None, typer.Option(
        "--numa-policy", help="required, legacy, preferred or socket (overrides the "
        "flavor's).", show_default=False)] = None,
    project: Annotated[str | None, typer.Option(
        "--project", help="The port's project (admin; members make ports in their own).",
        show_default=False)] = None,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Create a port; a server booted with --nic port-id=PORT gets it (and a VF for it)."""
    if mac is not None:
        with reported(EXIT_USAGE):
            mac = parse_mac(mac, field="--mac")
    with reported(), ApiClient(url, token) as client:
        obj = client.create_port(
            network=network, name=name, vnic_type=vnic_type.value, mac=mac,
            trusted=trusted or None, spoofchk=False if no_spoofchk else None,
            max_tx_rate_mbps=max_tx_rate, min_tx_rate_mbps=min_tx_rate,
            numa_affinity_policy=numa_policy.value if numa_policy else None, project=project)
    PORTS.print(obj, as_json)


@port_app.command("list")
def port_list(
    network: Annotated[str | None, typer.Option("--network", help="Only ports on it.",
                                                show_default=False)] = None,
    server: Annotated[str | None, typer.Option("--server", help="Only the server's ports.",
                                               show_default=False)] = None,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """List ports and their bindings (a member sees its project's)."""
    params = [(k, v) for k, v in (("network", network), ("server", server)) if v is not None]
    PORTS.list(url, token, as_json, params)


@port_app.command("show")
def port_show(port: PortArg, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
              as_json: JsonOpt = False) -> None:
    """Show a port: its MAC, VF settings and binding (host, address, PF, VF index)."""
    PORTS.show(port, url, token, as_json)


@port_app.command("delete")
def port_delete(port: PortArg, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
                as_json: JsonOpt = False) -> None:
    """Delete a port (refused while a server has it)."""
    PORTS.delete(port, url, token, as_json)


# --- a boot's NICs -------------------------------------------------------------------------

_NIC_KEYS = {"net-id": "net_id", "port-id": "port_id", "vnic-type": "vnic_type"}
NIC_USAGE = "--nic takes net-id=NETWORK[,vnic-type=TYPE] or port-id=PORT"


def parse_nic(text: str) -> dict[str, str]:
    """``net-id=N,vnic-type=direct`` → ``{"net_id": "N", "vnic_type": "direct"}`` (as
    ``openstack server create --nic``); a usage error otherwise."""
    nic: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in _NIC_KEYS or not value:
            fail(f"{NIC_USAGE}, not {text!r}", EXIT_USAGE)
        if _NIC_KEYS[key] in nic:
            fail(f"--nic {text!r} gives {key} twice", EXIT_USAGE)
        nic[_NIC_KEYS[key]] = value
    if ("net_id" in nic) == ("port_id" in nic):
        fail(f"{NIC_USAGE}: exactly one of net-id and port-id, not {text!r}", EXIT_USAGE)
    if "port_id" in nic and "vnic_type" in nic:
        fail(f"--nic {text!r}: a port has its own vnic type; vnic-type goes with net-id",
             EXIT_USAGE)
    kind = nic.get("vnic_type")
    if kind is not None and kind not in {v.value for v in VnicType}:
        fail(f"--nic {text!r}: vnic-type {kind!r} is not one of "
             f"{', '.join(v.value for v in VnicType)}", EXIT_USAGE)
    return nic


def parse_nics(values: Sequence[str] | None) -> list[dict[str, str]]:
    return [parse_nic(v) for v in values or ()]
