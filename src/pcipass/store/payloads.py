"""What a host is told to do: the spawn and destroy tasks' payloads (see ``pcipass.virt.payload``,
the agent's parser of the same shapes).

``devices`` are the functions the domain gets as ``<hostdev>``; ``interfaces`` are the
server's ports, in order. A ``direct`` or ``macvtap`` port's VF is in ``interfaces`` only
(it becomes an ``<interface>``); a ``direct-physical`` port's PF is in both (a ``<hostdev>``,
and an interface for the switch binding); a ``normal`` port has no device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pcipass.pci.address import PciAddress
from pcipass.records import PortRecord

UNMANAGED = ("no", "false")


def managed(tags: Mapping[str, str]) -> bool:
    """Whether libvirt detaches the device itself (the device spec may tag it ``managed: no``)."""
    return str(tags.get("managed", "yes")).lower() not in UNMANAGED


def numa(cells: Sequence[int], vcpus: int, ram_mb: int) -> dict[str, Any] | None:
    """Guest cells over the host nodes the scheduler chose, vCPUs and memory split evenly."""
    if not cells:
        return None
    n = len(cells)
    return {"cells": [{"id": i, "host_node": node,
                       "vcpus": vcpus // n + (1 if i < vcpus % n else 0),
                       "memory_mb": ram_mb // n + (1 if i < ram_mb % n else 0)}
                      for i, node in enumerate(cells)]}


def spawn(server: Mapping[str, Any], flavor: Mapping[str, Any], image: Mapping[str, Any],
          devices: Sequence[Mapping[str, Any]], cells: Sequence[int],
          interfaces: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    return {"server": dict(server), "flavor": dict(flavor), "image": dict(image),
            "devices": [dict(d) for d in devices],
            "interfaces": [dict(i) for i in interfaces],
            "numa": numa(cells, int(flavor["vcpus"]), int(flavor["ram_mb"]))}


def device(address: PciAddress, alias: str | None, tags: Mapping[str, str],
           unit: int) -> dict[str, Any]:
    return {"address": str(address), "alias": alias, "managed": managed(tags), "unit": unit}


def interface(port: PortRecord, managed: bool = True) -> dict[str, Any]:
    """A port as the host sees it: what to program on its VF and bind on the switch."""
    b = port.binding
    return {"port": port.id, "vnic_type": port.vnic_type, "mac": port.mac,
            "vlan": port.segmentation_id,
            "address": None if b is None else str(b.address),
            "pf": None if b is None else b.pf_netdev,
            "vf_index": None if b is None else b.vf_index,
            "vf_netdev": None if b is None else b.vf_netdev,
            "managed": managed, "trusted": port.trusted, "spoofchk": port.spoofchk,
            "max_tx_rate_mbps": port.max_tx_rate_mbps,
            "min_tx_rate_mbps": port.min_tx_rate_mbps,
            "network": port.network, "physical_network": port.physical_network}
