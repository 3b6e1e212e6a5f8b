"""SR-IOV VF programming on the host: MAC, VLAN, spoof-check, trust, link state, tx rates.

The agent programs a VF on its PF before a spawn and restores what the VF had on release::

    previous = programmer.program(VfSlot("ens1f0", 3), VfConfig(mac=..., vlan=100))
    ...
    programmer.restore(VfSlot("ens1f0", 3), previous)

``model`` holds the values, ``programmer`` the interface (and the program/rollback/restore
logic every backend shares), ``netlink`` the pyroute2 backend, ``fake`` the recording fake for
the demo and tests. Every failure is a :class:`~pcipass.errors.VfProgrammingError`.
"""

from pcipass.host.sriov.fake import FRESH_VF, RecordingVfProgrammer, VfCall
from pcipass.host.sriov.model import (
    LINK_STATES,
    VLAN_PROTOS,
    ZERO_MAC,
    LinkState,
    VfAttribute,
    VfConfig,
    VfSlot,
    VlanProto,
    changed_attributes,
    effective,
)
from pcipass.host.sriov.netlink import NetlinkVfProgrammer
from pcipass.host.sriov.programmer import VfProgrammer

__all__ = [
    "FRESH_VF",
    "LINK_STATES",
    "VLAN_PROTOS",
    "ZERO_MAC",
    "LinkState",
    "NetlinkVfProgrammer",
    "RecordingVfProgrammer",
    "VfAttribute",
    "VfCall",
    "VfConfig",
    "VfProgrammer",
    "VfSlot",
    "VlanProto",
    "changed_attributes",
    "effective",
]
