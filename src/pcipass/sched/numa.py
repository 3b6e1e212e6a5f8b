"""Guest NUMA placement and Nova's PCI NUMA affinity policies.

A guest with ``hw:numa_nodes`` N gets N distinct host nodes, each giving vCPUs/N and RAM/N
(Nova's automatic topology). A guest without one is not placed on nodes and its devices are
not constrained (Nova returns every pool when the instance has no NUMA cells).

Where a device may sit, relative to the guest's host nodes, per policy
(``nova/pci/stats.py::_filter_pools_for_numa_cells``):

- ``required``: on one of the guest's nodes; a device that reports no node does not qualify.
- ``legacy`` (the default): on one of the guest's nodes, or reporting no node.
- ``preferred``: anywhere; local first, then no-node, then the rest.
- ``socket``: on a node of the same socket as one of the guest's nodes; a device reporting no
  node does not qualify, and when any host node lacks socket information only the guest's own
  nodes qualify (Nova's socket filter then returns nothing, leaving the strict-local pools).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from itertools import combinations

from pcipass.pci.alias import NumaPolicy
from pcipass.sched.snapshot import NumaCell

__all__ = ["GuestNodes", "Locality", "allowed", "cell_choices", "locality"]


class Locality(IntEnum):
    """How near a device is to the guest: lower is nearer, and preferred first."""

    LOCAL = 0      # on the guest's nodes
    UNKNOWN = 1    # reports no node (the rest, if any, local)
    SOCKET = 2     # on another node of a socket the guest is on
    REMOTE = 3


@dataclass(frozen=True, slots=True)
class GuestNodes:
    """The host nodes a guest got, and which nodes share their sockets."""

    cells: tuple[int, ...]
    socket_nodes: frozenset[int]   # empty when the host lacks socket information

    @classmethod
    def of(cls, chosen: Sequence[NumaCell], all_cells: Sequence[NumaCell]) -> GuestNodes:
        ids = tuple(sorted(c.id for c in chosen))
        if any(c.socket is None for c in all_cells):
            return cls(ids, frozenset())
        sockets = {c.socket for c in chosen}
        return cls(ids, frozenset(c.id for c in all_cells if c.socket in sockets))


def locality(nodes: Iterable[int | None], where: GuestNodes | None) -> Locality:
    """Where devices on ``nodes`` stand relative to a guest placed at ``where``."""
    if where is None:
        return Locality.LOCAL
    known = set(nodes)
    unknown = None in known
    known.discard(None)
    if known <= set(where.cells):
        return Locality.UNKNOWN if unknown else Locality.LOCAL
    if not unknown and where.socket_nodes and known <= where.socket_nodes:
        return Locality.SOCKET
    return Locality.REMOTE


def allowed(policy: NumaPolicy, where: Locality) -> bool:
    if policy is NumaPolicy.REQUIRED:
        return where is Locality.LOCAL
    if policy is NumaPolicy.LEGACY:
        return where <= Locality.UNKNOWN
    if policy is NumaPolicy.SOCKET:
        return where is Locality.LOCAL or where is Locality.SOCKET
    return True


def cell_choices(cells: Sequence[NumaCell], nodes: int, vcpus: int, ram_mb: int
                 ) -> tuple[tuple[NumaCell, ...], ...]:
    """Every set of ``nodes`` host cells that can each take vCPUs/nodes and RAM/nodes."""
    per_cpu, per_ram = vcpus // nodes, ram_mb // nodes
    fitting = [c for c in sorted(cells, key=lambda c: c.id)
               if c.free_cpus >= per_cpu and c.free_ram_mb >= per_ram]
    return tuple(combinations(fitting, nodes))
