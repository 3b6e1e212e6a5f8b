"""PCI requests: what a boot asks for, from its flavor's extra specs and its image's properties.

Flavor extra specs (Nova's names and syntax):

- ``pci_passthrough:alias`` = ``"gpu:2, fpga:1"``: hard requests; the value must match Nova's
  API pattern ``[^:]+:\\d+(\\s*,\\s*[^:]+:\\d+)*`` in full, names are stripped.
- ``pci_passthrough:alias_preferred``: same syntax, soft requests (ours): granted when the
  chosen host can, otherwise the server boots without them and records which were not granted.
- ``hw:pci_numa_affinity_policy``: overrides every alias's ``numa_policy``.
- ``hw:numa_nodes``: the guest's NUMA node count (an integer >= 1).

Image properties: ``hw_pci_numa_affinity_policy`` and ``hw_numa_nodes`` as in Nova, and
``hw_pci_supported_aliases`` (ours, comma-separated): when present, the aliases the guest OS
can drive; a boot asking for any other alias, hard or soft, is refused. An empty value means
the guest drives none.

Precedence as Nova's ``get_pci_numa_policy_constraint``: alias ``numa_policy`` < flavor or
image policy; flavor and image may both set it only to the same value. As Nova's
``_get_numa_node_count_constraint``: an image may not set ``hw_numa_nodes`` when the flavor
sets ``hw:numa_nodes``, and vCPUs and RAM must split evenly over the nodes
(``_get_numa_topology_auto``).

Where we are stricter than Nova: a count of 0 is refused (Nova builds an empty request), and
empty items (``"gpu:1,,fpga:1"``, which Nova's pattern lets through and its parser then fails
on) are refused with a message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pcipass.errors import AliasNotSupportedByImage, InvalidPciRequest, UnknownAlias
from pcipass.pci.alias import Alias, AliasEntry, NumaPolicy
from pcipass.pci.device import DevType, PciDevice

__all__ = [
    "ALIAS_PREFERRED_SPEC",
    "ALIAS_SPEC",
    "BAREMETAL_SPEC",
    "FLAVOR_NUMA_NODES",
    "FLAVOR_PCI_NUMA_POLICY",
    "IMAGE_NUMA_NODES",
    "IMAGE_PCI_NUMA_POLICY",
    "IMAGE_SUPPORTED_ALIASES",
    "PciRequest",
    "baremetal_requested",
    "numa_node_count",
    "parse_alias_counts",
    "pci_numa_policy",
    "pci_requests",
    "requested_aliases",
    "supported_aliases",
    "validate_flavor_specs",
    "validate_image_properties",
]

ALIAS_SPEC = "pci_passthrough:alias"
ALIAS_PREFERRED_SPEC = "pci_passthrough:alias_preferred"
FLAVOR_PCI_NUMA_POLICY = "hw:pci_numa_affinity_policy"
FLAVOR_NUMA_NODES = "hw:numa_nodes"
IMAGE_PCI_NUMA_POLICY = "hw_pci_numa_affinity_policy"
IMAGE_NUMA_NODES = "hw_numa_nodes"
IMAGE_SUPPORTED_ALIASES = "hw_pci_supported_aliases"
# A flavor for a whole bare-metal machine (``"true"``): it lands only on a bare-metal host with
# no server, and takes every assignable device there.
BAREMETAL_SPEC = "pcipass:baremetal"

# Nova's validator pattern (nova/api/validation/extra_specs/pci_passthrough.py), ASCII digits.
_ALIAS_COUNTS = re.compile(r"[^:]+:[0-9]+(?:\s*,\s*[^:]+:[0-9]+)*")
_INT = re.compile(r"^\s*[+-]?[0-9]+\s*$")

Specs = Mapping[str, object]


@dataclass(frozen=True, slots=True)
class PciRequest:
    """``count`` devices matching any of ``alternatives`` (one alias's entries)."""

    alias: str
    count: int
    alternatives: tuple[AliasEntry, ...]
    numa_policy: NumaPolicy = NumaPolicy.LEGACY
    soft: bool = False
    port: str | None = None    # the SR-IOV port (its id) this request binds, if any
    label: str | None = None   # how a port request names what it wants: "VF on physnet2"
    port_name: str | None = None   # the port's name, for messages (its id when None)

    @property
    def dev_type(self) -> DevType | None:
        return self.alternatives[0].dev_type if self.alternatives else None

    def matches(self, dev: PciDevice) -> bool:
        return any(e.matches(dev) for e in self.alternatives)

    @property
    def port_shown(self) -> str:
        """``port 'web'`` (its id when unnamed); only meaningful for a port request."""
        return f"port {self.port_name or self.port or self.alias!r}"

    @property
    def wanted(self) -> str:
        """What the request's devices are, without a count: ``'gpu' device`` for an alias,
        ``VF on physnet2 for port 'web'`` for a port."""
        if self.port is None:
            return f"{self.alias!r} device"
        return f"{self.label or 'device'} for {self.port_shown}"

    def shortage(self) -> str:
        """The noun phrase after "lacks": ``2 free 'gpu' devices``, ``a free VF on physnet2
        for port 'web'``."""
        if self.port is None:
            return f"{self.count} free {self.wanted}{'s' if self.count > 1 else ''}"
        if self.count == 1:
            return f"a free {self.wanted}"
        return f"{self.count} free {self.label or 'device'}s for {self.port_shown}"

    def __str__(self) -> str:
        if self.port is None:
            return f"{self.count} x {self.alias}"
        return f"{self.port_shown} ({self.label})" if self.label else self.port_shown


def _flavor_field(key: str) -> str:
    return f"extra_specs.{key}"


def _image_field(key: str) -> str:
    return f"properties.{key}"


def parse_alias_counts(value: object, *, key: str = ALIAS_SPEC) -> tuple[tuple[str, int], ...]:
    """``"gpu:2, fpga:1"`` → ``(("gpu", 2), ("fpga", 1))``, in order, repeats kept (as Nova)."""
    field = _flavor_field(key)
    if not isinstance(value, str):
        raise InvalidPciRequest(f"{key} must be a string like 'gpu:2, fpga:1'", field=field)
    if not _ALIAS_COUNTS.fullmatch(value):
        raise InvalidPciRequest(
            f"{key} {value!r} is not of the form 'alias:count[, alias:count...]'", field=field)
    out = []
    for item in value.split(","):
        name, sep, count = item.partition(":")
        name = name.strip()
        if not sep or not name:
            problem = (f"item {name!r} without ':count'" if name and not sep
                       else "an item without an alias name")
            raise InvalidPciRequest(f"{key} {value!r} has {problem}", field=field)
        n = int(count.strip())
        if n < 1:
            raise InvalidPciRequest(f"{key} asks for {n} of alias {name!r}: a count must be "
                                    "at least 1", field=field)
        out.append((name, n))
    return tuple(out)


def _policy(value: object, what: str, field: str) -> NumaPolicy | None:
    if value is None or value == "":
        return None
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return NumaPolicy(value)
    except ValueError:
        raise InvalidPciRequest(
            f"{what} {value!r} is not one of {', '.join(p.value for p in NumaPolicy)}",
            field=field) from None


def pci_numa_policy(extra_specs: Specs, image_props: Specs | None = None, *,
                    image: str | None = None) -> NumaPolicy | None:
    """The flavor's or image's PCI NUMA policy, which overrides every alias's; None if neither."""
    flavor_policy = _policy(extra_specs.get(FLAVOR_PCI_NUMA_POLICY),
                            f"flavor extra spec {FLAVOR_PCI_NUMA_POLICY}",
                            _flavor_field(FLAVOR_PCI_NUMA_POLICY))
    image_policy = _policy((image_props or {}).get(IMAGE_PCI_NUMA_POLICY),
                           f"{_image_name(image)} property {IMAGE_PCI_NUMA_POLICY}",
                           _image_field(IMAGE_PCI_NUMA_POLICY))
    if flavor_policy and image_policy and flavor_policy is not image_policy:
        raise InvalidPciRequest(
            f"{_image_name(image)} property {IMAGE_PCI_NUMA_POLICY}={image_policy.value!r} may "
            f"not override the flavor's {FLAVOR_PCI_NUMA_POLICY}={flavor_policy.value!r}",
            field=_image_field(IMAGE_PCI_NUMA_POLICY))
    return flavor_policy or image_policy


def _node_count(value: object, what: str, field: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, str) and _INT.match(value))):
        raise InvalidPciRequest(f"{what} {value!r} is not a whole number", field=field)
    n = int(value)
    if n < 1:
        raise InvalidPciRequest(f"{what} {n} must be at least 1", field=field)
    return n


def numa_node_count(extra_specs: Specs, image_props: Specs | None = None, *,
                    vcpus: int | None = None, ram_mb: int | None = None,
                    image: str | None = None) -> int | None:
    """How many NUMA nodes the guest has (None: no NUMA topology, so not constrained)."""
    flavor_nodes = _node_count(extra_specs.get(FLAVOR_NUMA_NODES),
                               f"flavor extra spec {FLAVOR_NUMA_NODES}",
                               _flavor_field(FLAVOR_NUMA_NODES))
    image_nodes = _node_count((image_props or {}).get(IMAGE_NUMA_NODES),
                              f"{_image_name(image)} property {IMAGE_NUMA_NODES}",
                              _image_field(IMAGE_NUMA_NODES))
    if flavor_nodes and image_nodes:
        raise InvalidPciRequest(
            f"{_image_name(image)} property {IMAGE_NUMA_NODES} may not be set when the flavor "
            f"sets {FLAVOR_NUMA_NODES}", field=_image_field(IMAGE_NUMA_NODES))
    nodes = flavor_nodes or image_nodes
    if nodes is not None and vcpus is not None and ram_mb is not None and (
            vcpus % nodes or ram_mb % nodes):
        field = (_flavor_field(FLAVOR_NUMA_NODES) if flavor_nodes
                 else _image_field(IMAGE_NUMA_NODES))
        raise InvalidPciRequest(
            f"{vcpus} vCPUs and {ram_mb} MB RAM cannot be split evenly over {nodes} NUMA "
            "nodes", field=field)
    return nodes


def supported_aliases(image_props: Specs | None, *, image: str | None = None
                      ) -> frozenset[str] | None:
    """The aliases the image says its guest can drive; None when it does not say."""
    if not image_props or IMAGE_SUPPORTED_ALIASES not in image_props:
        return None
    raw = image_props[IMAGE_SUPPORTED_ALIASES]
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise InvalidPciRequest(
            f"{_image_name(image)} property {IMAGE_SUPPORTED_ALIASES} must be a "
            "comma-separated string of alias names", field=_image_field(IMAGE_SUPPORTED_ALIASES))
    return frozenset(n.strip() for n in raw.split(",") if n.strip())


def _image_name(image: str | None) -> str:
    return f"image {image!r}" if image else "the image"


def _counts(extra_specs: Specs, key: str) -> tuple[tuple[str, int], ...]:
    value = extra_specs.get(key)
    if value is None:
        return ()
    return parse_alias_counts(value, key=key)


def _resolve(name: str, key: str, aliases: Mapping[str, Alias]) -> Alias:
    alias = aliases.get(name)
    if alias is None:
        raise UnknownAlias(f"{key} names PCI alias {name!r}, which is not defined",
                           field=_flavor_field(key))
    return alias


def pci_requests(extra_specs: Specs, image_props: Specs | None, aliases: Mapping[str, Alias],
                 *, image: str | None = None) -> tuple[PciRequest, ...]:
    """Hard then soft requests for a boot of this flavor and image, policies applied."""
    override = pci_numa_policy(extra_specs, image_props, image=image)
    supported = supported_aliases(image_props, image=image)
    out = []
    for key, soft in ((ALIAS_SPEC, False), (ALIAS_PREFERRED_SPEC, True)):
        for name, count in _counts(extra_specs, key):
            alias = _resolve(name, key, aliases)
            if supported is not None and name not in supported:
                listed = ", ".join(sorted(supported)) or "none"
                raise AliasNotSupportedByImage(
                    f"{_image_name(image)} does not support PCI alias {name!r} "
                    f"({IMAGE_SUPPORTED_ALIASES}: {listed})",
                    field=_image_field(IMAGE_SUPPORTED_ALIASES))
            out.append(PciRequest(alias=name, count=count, alternatives=alias.entries,
                                  numa_policy=override or alias.numa_policy, soft=soft))
    return tuple(out)


def baremetal_requested(extra_specs: Specs) -> bool:
    """Whether the flavor asks for a whole bare-metal machine (``pcipass:baremetal``:
    ``"true"`` or ``"false"``, any case; absent is false)."""
    value = extra_specs.get(BAREMETAL_SPEC)
    if value is None:
        return False
    text = value.strip().lower() if isinstance(value, str) else None
    if text not in ("true", "false"):
        raise InvalidPciRequest(
            f"flavor extra spec {BAREMETAL_SPEC} {value!r} is not \"true\" or \"false\"",
            field=_flavor_field(BAREMETAL_SPEC))
    return text == "true"


def validate_flavor_specs(extra_specs: Specs, aliases: Mapping[str, Alias], *,
                          vcpus: int | None = None, ram_mb: int | None = None) -> None:
    """Refuse, at flavor creation, what would make every boot of it fail."""
    baremetal_requested(extra_specs)
    for key in (ALIAS_SPEC, ALIAS_PREFERRED_SPEC):
        for name, _count in _counts(extra_specs, key):
            _resolve(name, key, aliases)
    pci_numa_policy(extra_specs)
    numa_node_count(extra_specs, vcpus=vcpus, ram_mb=ram_mb)


def validate_image_properties(properties: Specs, *, image: str | None = None) -> None:
    """Refuse, at image creation, malformed PCI and NUMA properties (aliases may come later)."""
    supported_aliases(properties, image=image)
    pci_numa_policy({}, properties, image=image)
    numa_node_count({}, properties, image=image)


def requested_aliases(requests: Iterable[PciRequest]) -> tuple[str, ...]:
    """Alias names in request order, once each (for quotas and messages)."""
    return tuple(dict.fromkeys(r.alias for r in requests))
