"""Ranking the hosts a boot fits on.

``pack`` (the default) puts PCI boots on the hosts with the fewest free matching devices, so
hosts with many stay whole for large requests; ``spread`` does the opposite. Either way a boot
granted more soft requests, then one with fewer devices off its NUMA nodes, ranks first, and
a boot without PCI requests goes to the hosts with the fewest free assignable units, keeping
scarce devices reachable. Compute breaks ties (least free RAM first for pack, most for
spread), then the host name, so a ranking is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from pcipass.sched.fit import Fit

__all__ = ["WeighPolicy", "weigh"]


class WeighPolicy(StrEnum):
    PACK = "pack"
    SPREAD = "spread"


def _key(f: Fit, policy: WeighPolicy) -> tuple[int, int, int, int, int, str]:
    sign = 1 if policy is WeighPolicy.PACK else -1
    if f.wants_pci:
        return (-f.granted_soft, f.remote, sign * f.free_matching, sign * f.free_ram_mb,
                sign * f.free_vcpus, f.host)
    return (0, 0, f.free_units, sign * f.free_ram_mb, sign * f.free_vcpus, f.host)


def weigh(candidates: Iterable[Fit], policy: WeighPolicy = WeighPolicy.PACK) -> tuple[Fit, ...]:
    """The candidates, best first."""
    return tuple(sorted(candidates, key=lambda f: _key(f, policy)))
