"""The vocabulary of networks and ports, and how a port becomes a PCI request.

Pure: no I/O, no configuration, no clock (a caller passes its own ``random.Random``).

A port's ``vnic_type`` uses Neutron's names. ``normal`` needs no device; the others want one
PCI function on the port's physical network, matched against the device spec's tags exactly
as Nova's ``DEVICE_TYPE_FOR_VNIC_TYPE`` and ``PCI_NET_TAG`` / ``PCI_TRUSTED_TAG`` do:

==================  ===========  ================================================
vnic_type           device       device-spec tags it needs
==================  ===========  ================================================
``direct``          ``type-VF``  ``physical_network`` (and ``trusted`` if trusted)
``macvtap``         ``type-VF``  ``physical_network`` (and ``trusted`` if trusted)
``direct-physical`` ``type-PF``  ``physical_network``
``normal``          none
==================  ===========  ================================================

A port's request is an ordinary :class:`~pcipass.pci.request.PciRequest` whose alias is
``port:<id>`` (:func:`port_alias`; the device's ``owner_alias`` and usage metering read it back
with :func:`port_of`) and whose ``port`` names the port, so the scheduler needs nothing new:
PF/VF exclusion, IOMMU units and NUMA policies apply to ports and aliases alike.

NUMA policy: the port's own ``numa_affinity_policy`` wins, else the flavor's or image's
``pci_numa_affinity_policy``, else ``legacy``.
"""

from __future__ import annotations

import random
import re
from enum import StrEnum

from pcipass.errors import InvalidInput
from pcipass.pci.alias import AliasEntry, Constraint, NumaPolicy
from pcipass.pci.device import DevType
from pcipass.pci.request import PciRequest

__all__ = [
    "DEFAULT_MAC_PREFIX",
    "MAX_RATE_MBPS",
    "PORT_ALIAS_PREFIX",
    "Segmentation",
    "VnicType",
    "check_rate",
    "check_segmentation",
    "parse_mac",
    "parse_mac_prefix",
    "parse_numa_policy",
    "parse_physnet",
    "parse_vnic_type",
    "port_alias",
    "port_of",
    "port_request",
    "random_mac",
]


class VnicType(StrEnum):
    """Neutron's ``binding:vnic_type`` values that pcipass binds."""

    NORMAL = "normal"
    DIRECT = "direct"
    MACVTAP = "macvtap"
    DIRECT_PHYSICAL = "direct-physical"

    @property
    def dev_type(self) -> DevType | None:
        """The PCI function the port needs (None: no device)."""
        return _DEV_TYPE[self]


_DEV_TYPE: dict[VnicType, DevType | None] = {
    VnicType.NORMAL: None,
    VnicType.DIRECT: DevType.VF,
    VnicType.MACVTAP: DevType.VF,
    VnicType.DIRECT_PHYSICAL: DevType.PF,
}


class Segmentation(StrEnum):
    """How a network's traffic is kept apart on its physical network."""

    VLAN = "vlan"
    FLAT = "flat"


DEFAULT_MAC_PREFIX = "fa:16:3e"   # OpenStack's default base_mac
PORT_ALIAS_PREFIX = "port:"
MIN_VLAN, MAX_VLAN = 1, 4094      # 0 and 4095 are reserved by 802.1Q
MAX_RATE_MBPS = 2**32 - 1         # the kernel's ifla_vf_rate fields are u32 Mbit/s
MAX_PHYSNET = 64

_OCTET = re.compile(r"^[0-9a-fA-F]{2}$")
_PHYSNET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string" if isinstance(value, str) else type(value).__name__


def _octets(text: str) -> list[str] | None:
    """``aa:bb:cc`` or ``aa-bb-cc`` as octets, or None if it is not that shape."""
    sep = "-" if "-" in text and ":" not in text else ":"
    parts = text.strip().split(sep)
    if not all(_OCTET.match(p) for p in parts):
        return None
    return [p.lower() for p in parts]


def parse_mac_prefix(text: str, *, field: str = "network.mac_prefix") -> str:
    """A unicast MAC prefix of 1 to 5 octets, lower-case and colon-separated."""
    if not isinstance(text, str):
        raise InvalidInput(f"{field} must be a string like {DEFAULT_MAC_PREFIX!r}, not "
                           f"{_kind(text)}", field=field)
    octets = _octets(text)
    if octets is None or not 1 <= len(octets) <= 5:
        raise InvalidInput(f"{field} {text!r} is not a MAC prefix of 1 to 5 octets like "
                           f"{DEFAULT_MAC_PREFIX!r}", field=field)
    if int(octets[0], 16) & 1:
        raise InvalidInput(f"{field} {text!r} is a multicast prefix (the first octet's lowest "
                           "bit is set); a port needs a unicast MAC", field=field)
    return ":".join(octets)


def parse_mac(text: object, *, field: str = "mac") -> str:
    """A port's MAC: six octets, lower-case and colon-separated, unicast, not all zero."""
    if not isinstance(text, str):
        raise InvalidInput(f"{field} must be a string like 'fa:16:3e:12:34:56', not "
                           f"{_kind(text)}", field=field)
    octets = _octets(text)
    if octets is None or len(octets) != 6:
        raise InvalidInput(f"{field} {text!r} is not a MAC address like 'fa:16:3e:12:34:56'",
                           field=field)
    if int(octets[0], 16) & 1:
        raise InvalidInput(f"{field} {text!r} is a multicast address (the first octet's "
                           "lowest bit is set); a port needs a unicast MAC", field=field)
    if all(o == "00" for o in octets):
        raise InvalidInput(f"{field} {text!r} is the all-zero MAC", field=field)
    return ":".join(octets)


def random_mac(prefix: str, rng: random.Random) -> str:
    """``prefix`` followed by random octets; a valid :func:`parse_mac` result."""
    head = parse_mac_prefix(prefix)
    fixed = head.split(":")
    while True:
        tail = [f"{rng.randrange(256):02x}" for _ in range(6 - len(fixed))]
        mac = ":".join(fixed + tail)
        if mac != "00:00:00:00:00:00":
            return mac


def check_segmentation(segmentation: str, segmentation_id: int | None
                       ) -> tuple[Segmentation, int | None]:
    """A network's segmentation: ``vlan`` needs an id 1..4094, ``flat`` must not have one."""
    try:
        if not isinstance(segmentation, str):
            raise ValueError(segmentation)
        seg = Segmentation(segmentation.strip().lower())
    except ValueError:
        raise InvalidInput(f"segmentation {segmentation!r} is not one of "
                           f"{', '.join(s.value for s in Segmentation)}",
                           field="segmentation") from None
    if seg is Segmentation.FLAT:
        if segmentation_id is not None:
            raise InvalidInput(f"a flat network takes no segmentation_id (got "
                               f"{segmentation_id!r})", field="segmentation_id")
        return seg, None
    if segmentation_id is None:
        raise InvalidInput(f"a vlan network needs a segmentation_id ({MIN_VLAN} to "
                           f"{MAX_VLAN})", field="segmentation_id")
    if isinstance(segmentation_id, bool) or not isinstance(segmentation_id, int):
        raise InvalidInput(f"segmentation_id must be a whole number, not "
                           f"{_kind(segmentation_id)}", field="segmentation_id")
    if not MIN_VLAN <= segmentation_id <= MAX_VLAN:
        raise InvalidInput(f"segmentation_id {segmentation_id} is not a VLAN id ({MIN_VLAN} "
                           f"to {MAX_VLAN})", field="segmentation_id")
    return seg, segmentation_id


def _rate(value: object, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{field} must be a whole number of Mbit/s, not {_kind(value)}",
                           field=field)
    if not 0 <= value <= MAX_RATE_MBPS:
        raise InvalidInput(f"{field} {value} is not between 0 and {MAX_RATE_MBPS} Mbit/s",
                           field=field)
    return value


def check_rate(max_tx_rate_mbps: object, min_tx_rate_mbps: object
               ) -> tuple[int | None, int | None]:
    """A port's VF rate limits in Mbit/s: whole numbers >= 0 (0 or None: no limit), and the
    minimum no more than the maximum when a maximum is set."""
    most = _rate(max_tx_rate_mbps, "max_tx_rate_mbps")
    least = _rate(min_tx_rate_mbps, "min_tx_rate_mbps")
    if most and least is not None and least > most:
        raise InvalidInput(f"min_tx_rate_mbps {least} is above max_tx_rate_mbps {most}",
                           field="min_tx_rate_mbps")
    return most, least


def parse_vnic_type(text: object, *, field: str = "vnic_type") -> VnicType:
    """One of Neutron's vnic types that pcipass binds."""
    try:
        if not isinstance(text, str):
            raise ValueError(text)
        return VnicType(text.strip().lower())
    except ValueError:
        raise InvalidInput(f"{field} {text!r} is not one of "
                           f"{', '.join(v.value for v in VnicType)}", field=field) from None


def parse_numa_policy(text: object, *, field: str = "numa_affinity_policy"
                      ) -> NumaPolicy | None:
    """A port's ``numa_affinity_policy`` (Nova's names); None or empty: not set."""
    if text is None or text == "":
        return None
    try:
        if not isinstance(text, str):
            raise ValueError(text)
        return NumaPolicy(text.strip().lower())
    except ValueError:
        raise InvalidInput(f"{field} {text!r} is not one of "
                           f"{', '.join(p.value for p in NumaPolicy)}", field=field) from None


def parse_physnet(text: object, *, field: str = "physical_network") -> str:
    """A physical network name as device-spec tags carry it (``physnet1``)."""
    if not isinstance(text, str):
        raise InvalidInput(f"{field} must be a string like 'physnet1', not {_kind(text)}",
                           field=field)
    name = text.strip()
    if not name or len(name) > MAX_PHYSNET or not _PHYSNET.match(name):
        raise InvalidInput(f"{field} {text!r} is not a physical network name (letters, "
                           f"digits, '_', '.', ':', '-', at most {MAX_PHYSNET} characters)",
                           field=field)
    return name


def port_alias(port_id: str) -> str:
    """The alias a port's request (and the device it holds) goes by: ``port:<id>``."""
    return f"{PORT_ALIAS_PREFIX}{port_id}"


def port_of(alias: str | None) -> str | None:
    """The port id behind a :func:`port_alias`; None for a flavor alias (or none)."""
    if alias is None or not alias.startswith(PORT_ALIAS_PREFIX):
        return None
    return alias[len(PORT_ALIAS_PREFIX):] or None


def port_request(*, port_id: str, port_name: str | None, vnic_type: VnicType, physnet: str,
                 trusted: bool, numa_policy: NumaPolicy | None,
                 flavor_policy: NumaPolicy | None) -> PciRequest | None:
    """The device a port needs, as a hard request for one function; None for ``normal``."""
    dev_type = VnicType(vnic_type).dev_type
    if dev_type is None:
        return None
    match = [Constraint("physical_network", (physnet.strip().lower(),))]
    if trusted and dev_type is DevType.VF:
        match.append(Constraint("trusted", ("true",)))
    policy = numa_policy or flavor_policy or NumaPolicy.LEGACY
    alias = port_alias(port_id)
    entry = AliasEntry(name=alias, dev_type=dev_type, numa_policy=policy,
                       match=tuple(sorted(match, key=lambda c: c.key)))
    kind = "PF" if dev_type is DevType.PF else "VF"
    return PciRequest(alias=alias, count=1, alternatives=(entry,), numa_policy=policy,
                      soft=False, port=port_id, label=f"{kind} on {physnet.strip()}",
                      port_name=port_name or None)
