"""Client commands for what a tenant may ask for: PCI aliases, flavors, images.

What the user typed is checked here first with the same pure parsers the server uses (alias
entries, ``name:count`` lists), so a typo is a usage error (exit 2) before any request; what only
the server can judge (an alias a flavor names that does not exist, entries that disagree with
ones already stored) comes back as the API's error (exit 1).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any

import typer

from pcipass import errors
from pcipass.cli import render
from pcipass.cli.client import ApiClient, alias_record, flavor_record, image_record
from pcipass.cli.common import (
    DEFAULT_URL,
    EXIT_USAGE,
    JsonOpt,
    TokenOpt,
    UrlOpt,
    console,
    fail,
    pairs_dict,
    parse_pairs,
    print_json,
    reported,
)
from pcipass.cli.resource import Resource
from pcipass.pci.alias import Alias, NumaPolicy, parse_alias_entry, parse_aliases
from pcipass.pci.device import DevType
from pcipass.pci.request import ALIAS_PREFERRED_SPEC, ALIAS_SPEC, parse_alias_counts
from pcipass.records import FlavorRecord, ImageRecord

alias_app = typer.Typer(help="PCI aliases: the names flavors ask for devices by.",
                        no_args_is_help=True)
flavor_app = typer.Typer(help="Flavors: sizes, and the devices that come with them.",
                         no_args_is_help=True)
image_app = typer.Typer(help="Images: guest disks, and the devices their OS can drive.",
                        no_args_is_help=True)

PropertyOpt = Annotated[list[str] | None, typer.Option(
    "--property", help="key=value, repeatable.", show_default=False)]


ALIASES: Resource[Alias] = Resource(
    "alias", "/v1/aliases", "aliases", alias_record, render.aliases_table, render.alias_view)
FLAVORS: Resource[FlavorRecord] = Resource(
    "flavor", "/v1/flavors", "flavors", flavor_record, render.flavors_table,
    render.flavor_view)
IMAGES: Resource[ImageRecord] = Resource(
    "image", "/v1/images", "images", image_record, render.images_table, render.image_view)


# --- aliases -----------------------------------------------------------------------------

def alias_body(name: str, *, vendor_id: str | None, product_id: str | None,
               device_type: DevType | None, numa_policy: NumaPolicy | None,
               match: Sequence[str] | None) -> dict[str, Any]:
    """A Nova alias dict from options; ``--match key=value`` given twice for one key allows
    either value."""
    body: dict[str, Any] = {"name": name}
    for key, value in (("vendor_id", vendor_id), ("product_id", product_id),
                       ("device_type", device_type.value if device_type else None),
                       ("numa_policy", numa_policy.value if numa_policy else None)):
        if value is not None:
            body[key] = value
    constraints: dict[str, list[str]] = {}
    for key, value in parse_pairs(match, "--match"):
        constraints.setdefault(key, []).append(value)
    if constraints:
        body["match"] = {k: v[0] if len(v) == 1 else v for k, v in constraints.items()}
    return body


def _json_body(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        fail(f"--json-body is not valid JSON: {exc}", EXIT_USAGE)


@alias_app.command("create")
def alias_create(
    name: Annotated[str | None, typer.Argument(help="Alias name (what flavors ask for).",
                                               show_default=False)] = None,
    vendor_id: Annotated[str | None, typer.Option("--vendor-id", help="Four hex digits.",
                                                  show_default=False)] = None,
    product_id: Annotated[str | None, typer.Option("--product-id", help="Four hex digits.",
                                                   show_default=False)] = None,
    device_type: Annotated[DevType | None, typer.Option(
        "--device-type", help="type-PCI, type-PF or type-VF.", show_default=False)] = None,
    numa_policy: Annotated[NumaPolicy | None, typer.Option(
        "--numa-policy", help="required, legacy (default), preferred or socket.",
        show_default=False)] = None,
    match: Annotated[list[str] | None, typer.Option(
        "--match", help="key=value on a discovered attribute or tag (driver, class_code, "
        "physical_network, trusted, custom tags); repeat a key to allow several values.",
        show_default=False)] = None,
    json_body: Annotated[str | None, typer.Option(
        "--json-body", help="A Nova alias dict (or a list of them), sent as is.",
        show_default=False)] = None,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Define a PCI alias, or add an alternative to an existing one of the same name."""
    body: Any
    if json_body is not None:
        if any(v is not None for v in (name, vendor_id, product_id, device_type,
                                       numa_policy)) or match:
            fail("--json-body is the whole alias: give no NAME or other options with it",
                 EXIT_USAGE)
        body = _json_body(json_body)
        with reported(EXIT_USAGE):
            parse_aliases(body)
    else:
        if name is None:
            fail("give the alias NAME (with --vendor-id/--product-id or --match), "
                 "or --json-body", EXIT_USAGE)
        body = alias_body(name, vendor_id=vendor_id, product_id=product_id,
                          device_type=device_type, numa_policy=numa_policy, match=match)
        with reported(EXIT_USAGE):
            parse_alias_entry(body, where="alias")
    with reported(), ApiClient(url, token) as client:
        made = client.create_aliases(body)
    if as_json:
        print_json({"aliases": made})
        return
    with reported():
        console().print(render.aliases_table([alias_record(a) for a in made],
                                             title="Aliases created or extended"))


@alias_app.command("list")
def alias_list(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
               as_json: JsonOpt = False) -> None:
    """List aliases, from the configuration and defined through the API."""
    ALIASES.list(url, token, as_json)


@alias_app.command("show")
def alias_show(name: Annotated[str, typer.Argument(help="Alias name.")],
               url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
               as_json: JsonOpt = False) -> None:
    """Show one alias and its alternatives."""
    ALIASES.show(name, url, token, as_json)


@alias_app.command("delete")
def alias_delete(name: Annotated[str, typer.Argument(help="Alias name.")],
                 url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Delete an alias (refused while a flavor asks for it, or when it is configured)."""
    ALIASES.delete(name, url, token, as_json)


# --- flavors -----------------------------------------------------------------------------

def pci_spec(values: Sequence[str] | None, option: str, key: str) -> str | None:
    """Repeated ``--pci gpu:2`` options joined into Nova's ``"gpu:2, fpga:1"``."""
    if not values:
        return None
    joined = ", ".join(v.strip() for v in values)
    try:
        parse_alias_counts(joined, key=key)
    except errors.InvalidPciRequest as exc:
        fail(f"{option}: {exc.message}", EXIT_USAGE)
    return joined


def flavor_specs(pci: Sequence[str] | None, pci_preferred: Sequence[str] | None,
                 properties: Sequence[str] | None) -> dict[str, str]:
    specs = pairs_dict(properties, "--property")
    for values, option, key in ((pci, "--pci", ALIAS_SPEC),
                                (pci_preferred, "--pci-preferred", ALIAS_PREFERRED_SPEC)):
        joined = pci_spec(values, option, key)
        if joined is None:
            continue
        if key in specs:
            fail(f"{option} and --property {key}=... say the same thing: give one",
                 EXIT_USAGE)
        specs[key] = joined
    return specs


@flavor_app.command("create")
def flavor_create(
    name: Annotated[str, typer.Argument(help="Flavor name.")],
    vcpus: Annotated[int, typer.Option("--vcpus", min=1, help="Guest vCPUs.")],
    ram: Annotated[int, typer.Option("--ram", min=1, help="Guest RAM in MiB.")],
    disk: Annotated[int, typer.Option("--disk", min=0, help="Root disk in GB.")] = 0,
    pci: Annotated[list[str] | None, typer.Option(
        "--pci", help="ALIAS:COUNT the guest must get, repeatable "
        "(pci_passthrough:alias).", show_default=False)] = None,
    pci_preferred: Annotated[list[str] | None, typer.Option(
        "--pci-preferred", help="ALIAS:COUNT granted when the host can, repeatable "
        "(pci_passthrough:alias_preferred).", show_default=False)] = None,
    properties: PropertyOpt = None,
    private: Annotated[bool, typer.Option(
        "--private", help="Only the --project(s) may see and use it.")] = False,
    project: Annotated[list[str] | None, typer.Option(
        "--project", help="A project a private flavor is shared with, repeatable.",
        show_default=False)] = None,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Create a flavor; extra specs as Nova's (hw:numa_nodes, hw:pci_numa_affinity_policy)."""
    if project and not private:
        fail("--project shares a private flavor: add --private", EXIT_USAGE)
    specs = flavor_specs(pci, pci_preferred, properties)
    with reported(), ApiClient(url, token) as client:
        obj = client.create_flavor(name=name, vcpus=vcpus, ram_mb=ram, disk_gb=disk,
                                   extra_specs=specs, is_public=not private,
                                   projects=project or ())
    FLAVORS.print(obj, as_json)


@flavor_app.command("list")
def flavor_list(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
                as_json: JsonOpt = False) -> None:
    """List the flavors this token may use."""
    FLAVORS.list(url, token, as_json)


@flavor_app.command("show")
def flavor_show(flavor: Annotated[str, typer.Argument(help="Flavor name or id.")],
                url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
                as_json: JsonOpt = False) -> None:
    """Show one flavor and its extra specs."""
    FLAVORS.show(flavor, url, token, as_json)


@flavor_app.command("delete")
def flavor_delete(flavor: Annotated[str, typer.Argument(help="Flavor name or id.")],
                  url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
                  as_json: JsonOpt = False) -> None:
    """Delete a flavor (servers already booted from it keep what they have)."""
    FLAVORS.delete(flavor, url, token, as_json)


@flavor_app.command("access")
def flavor_access(
    flavor: Annotated[str, typer.Argument(help="Flavor name or id.")],
    add: Annotated[list[str] | None, typer.Option(
        "--add", help="Share with this project, repeatable.", show_default=False)] = None,
    remove: Annotated[list[str] | None, typer.Option(
        "--remove", help="Stop sharing with this project, repeatable.",
        show_default=False)] = None,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Share a private flavor with projects, or stop sharing it."""
    if not add and not remove:
        fail("give --add PROJECT and/or --remove PROJECT", EXIT_USAGE)
    with reported(), ApiClient(url, token) as client:
        obj = client.flavor_access(flavor, add=add or (), remove=remove or ())
    FLAVORS.print(obj, as_json)


# --- images ------------------------------------------------------------------------------

@image_app.command("create")
def image_create(
    name: Annotated[str, typer.Argument(help="Image name.")],
    source: Annotated[str, typer.Option("--source", help="The disk file's path on the hosts.")],
    properties: PropertyOpt = None,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Register an image; hw_pci_supported_aliases=a,b names the aliases its guest can drive."""
    props = pairs_dict(properties, "--property")
    with reported(), ApiClient(url, token) as client:
        obj = client.create_image(name=name, source=source, properties=props)
    IMAGES.print(obj, as_json)


@image_app.command("list")
def image_list(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
               as_json: JsonOpt = False) -> None:
    """List the images this token may use."""
    IMAGES.list(url, token, as_json)


@image_app.command("show")
def image_show(image: Annotated[str, typer.Argument(help="Image name or id.")],
               url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
               as_json: JsonOpt = False) -> None:
    """Show one image and its properties."""
    IMAGES.show(image, url, token, as_json)


@image_app.command("delete")
def image_delete(image: Annotated[str, typer.Argument(help="Image name or id.")],
                 url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Delete an image."""
    IMAGES.delete(image, url, token, as_json)
