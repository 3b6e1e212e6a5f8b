"""What a host is told to do: the spawn and destroy tasks' payloads (see ``pcipass.virt.payload``,
the agent's parser of the same shapes)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pcipass.pci.address import PciAddress

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
          devices: Sequence[Mapping[str, Any]], cells: Sequence[int]) -> dict[str, Any]:
    return {"server": dict(server), "flavor": dict(flavor), "image": dict(image),
            "devices": [dict(d) for d in devices],
            "numa": numa(cells, int(flavor["vcpus"]), int(flavor["ram_mb"]))}


def device(address: PciAddress, alias: str | None, tags: Mapping[str, str],
           unit: int) -> dict[str, Any]:
    return {"address": str(address), "alias": alias, "managed": managed(tags), "unit": unit}
