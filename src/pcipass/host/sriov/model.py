"""What a VF is told: its slot on a PF and the configuration its PF enforces on it.

Values only, validated once when built (:class:`~pcipass.errors.InvalidInput` naming the
field), plus the pure arithmetic the programmers share: what a VF ends up with when a partial
configuration is applied (:func:`effective`) and which attributes that changes
(:func:`changed_attributes`), so program, restore and rollback touch nothing they need not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal, TypeVar

from pcipass.errors import InvalidInput

_T = TypeVar("_T")

VlanProto = Literal["802.1Q", "802.1ad"]
LinkState = Literal["auto", "enable", "disable"]

VLAN_PROTOS: tuple[VlanProto, ...] = ("802.1Q", "802.1ad")
LINK_STATES: tuple[LinkState, ...] = ("auto", "enable", "disable")
ZERO_MAC = "00:00:00:00:00:00"
# A kernel rate is a u32 in Mbit/s.
MAX_RATE_MBPS = 0xFFFFFFFF

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# IFNAMSIZ is 16 with the NUL; the kernel refuses '/', ':' and whitespace in names.
_NETDEV = re.compile(r"^[^/:\s]{1,15}$")


class VfAttribute(StrEnum):
    """What one netlink request sets; also the order in which :meth:`program` sets them."""

    MAC = "mac"
    VLAN = "vlan"  # vlan id, qos and protocol travel together
    SPOOFCHK = "spoofchk"
    TRUST = "trust"
    LINK_STATE = "link_state"
    RATE = "rate"  # min and max tx rate travel together


@dataclass(frozen=True, slots=True)
class VfSlot:
    """A VF as its PF knows it: the PF's netdev and the VF's index under it."""

    pf_netdev: str
    vf_index: int

    def __post_init__(self) -> None:
        if not isinstance(self.pf_netdev, str) or not _NETDEV.match(self.pf_netdev) \
                or self.pf_netdev in (".", ".."):
            raise InvalidInput(f"PF netdev {self.pf_netdev!r} is not a network interface name",
                               field="pf_netdev")
        if not _is_int(self.vf_index) or self.vf_index < 0:
            raise InvalidInput(f"VF index must be an integer >= 0, not {self.vf_index!r}",
                               field="vf_index")

    def __str__(self) -> str:
        return f"VF {self.vf_index} on PF {self.pf_netdev}"


@dataclass(frozen=True, slots=True)
class VfConfig:
    """The PF-side configuration of one VF.

    ``None`` means "leave as it is" (and, read back, "the driver does not say"), except for
    ``vlan``: ``None`` or 0 is untagged, so a port on a flat network clears a VLAN left behind.
    ``qos`` and an ``802.1ad`` protocol need a VLAN. A rate of 0 is no limit, so ``min <= max``
    is only checked when both are set and ``max`` is not 0. The all-zero MAC is accepted because
    it is what an unused VF has, and restoring one must be able to say so.
    """

    mac: str | None = None
    vlan: int | None = None
    qos: int = 0
    vlan_proto: VlanProto = "802.1Q"
    spoofchk: bool | None = None
    trust: bool | None = None
    link_state: LinkState | None = None
    min_tx_rate_mbps: int | None = None
    max_tx_rate_mbps: int | None = None

    def __post_init__(self) -> None:
        if self.mac is not None:
            object.__setattr__(self, "mac", _parse_mac(self.mac))
        if self.vlan is not None:
            if not _is_int(self.vlan) or not 0 <= self.vlan <= 4094:
                raise InvalidInput(f"VLAN must be an integer from 0 to 4094 (0 is untagged), "
                                   f"not {self.vlan!r}", field="vlan")
            if self.vlan == 0:
                object.__setattr__(self, "vlan", None)
        if not _is_int(self.qos) or not 0 <= self.qos <= 7:
            raise InvalidInput(f"qos must be an integer from 0 to 7, not {self.qos!r}",
                               field="qos")
        if self.vlan_proto not in VLAN_PROTOS:
            raise InvalidInput(f"vlan_proto must be one of {', '.join(VLAN_PROTOS)}, "
                               f"not {self.vlan_proto!r}", field="vlan_proto")
        if self.vlan is None and self.qos:
            raise InvalidInput(f"qos {self.qos} needs a VLAN: an untagged VF has no priority "
                               f"field to carry it", field="qos")
        if self.vlan is None and self.vlan_proto != "802.1Q":
            raise InvalidInput(f"vlan_proto {self.vlan_proto} needs a VLAN", field="vlan_proto")
        for name in ("spoofchk", "trust"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise InvalidInput(f"{name} must be true, false or unset, not {value!r}",
                                   field=name)
        if self.link_state is not None and self.link_state not in LINK_STATES:
            raise InvalidInput(f"link_state must be one of {', '.join(LINK_STATES)}, "
                               f"not {self.link_state!r}", field="link_state")
        for name in ("min_tx_rate_mbps", "max_tx_rate_mbps"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or not 0 <= value <= MAX_RATE_MBPS):
                raise InvalidInput(f"{name} must be an integer >= 0 (Mbit/s, 0 is no limit), "
                                   f"not {value!r}", field=name)
        low, high = self.min_tx_rate_mbps, self.max_tx_rate_mbps
        if low is not None and high is not None and high and low > high:
            raise InvalidInput(f"min_tx_rate_mbps {low} is above max_tx_rate_mbps {high}",
                               field="min_tx_rate_mbps")

    def value_of(self, attribute: VfAttribute) -> object:
        """The part of this config one attribute request carries (compared, and shown in logs)."""
        if attribute is VfAttribute.MAC:
            return self.mac
        if attribute is VfAttribute.VLAN:
            return (self.vlan or 0, self.qos, self.vlan_proto)
        if attribute is VfAttribute.SPOOFCHK:
            return self.spoofchk
        if attribute is VfAttribute.TRUST:
            return self.trust
        if attribute is VfAttribute.LINK_STATE:
            return self.link_state
        if self.min_tx_rate_mbps is None and self.max_tx_rate_mbps is None:
            return None
        return (self.min_tx_rate_mbps or 0, self.max_tx_rate_mbps or 0)


def effective(current: VfConfig, target: VfConfig) -> VfConfig:
    """What the VF has once ``target`` is applied over ``current`` (its unset fields kept).

    The VLAN is always the target's. Rates merge field by field unless the merged pair would
    be inconsistent (a new min above the old max): then the target's pair is taken whole, an
    unset half meaning no limit.
    """
    low = _first(target.min_tx_rate_mbps, current.min_tx_rate_mbps)
    high = _first(target.max_tx_rate_mbps, current.max_tx_rate_mbps)
    if low is not None and high and low > high:
        low, high = target.min_tx_rate_mbps or 0, target.max_tx_rate_mbps or 0
    return replace(
        current,
        mac=_first(target.mac, current.mac),
        vlan=target.vlan,
        qos=target.qos,
        vlan_proto=target.vlan_proto,
        spoofchk=_first(target.spoofchk, current.spoofchk),
        trust=_first(target.trust, current.trust),
        link_state=_first(target.link_state, current.link_state),
        min_tx_rate_mbps=low,
        max_tx_rate_mbps=high,
    )


def changed_attributes(current: VfConfig, target: VfConfig) -> tuple[VfAttribute, ...]:
    """The attributes that differ between ``current`` and ``effective(current, target)``.

    In :class:`VfAttribute` order. An attribute the target leaves unset is never listed.
    """
    after = effective(current, target)
    return tuple(a for a in VfAttribute
                 if after.value_of(a) is not None and after.value_of(a) != current.value_of(a))


def _first(a: _T | None, b: _T | None) -> _T | None:
    return a if a is not None else b


def _parse_mac(text: object) -> str:
    mac = text.strip().lower().replace("-", ":") if isinstance(text, str) else ""
    if not _MAC.match(mac):
        raise InvalidInput(f"MAC {text!r} is not six hex octets like fa:16:3e:12:34:56",
                           field="mac")
    if int(mac[:2], 16) & 1:
        raise InvalidInput(f"MAC {mac} is a multicast/broadcast address: a VF needs a "
                           f"unicast one (first octet even)", field="mac")
    return mac


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
