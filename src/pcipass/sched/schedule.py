"""Filter, weigh and choose over a list of hosts in one pure call.

For tests and small fleets. At fleet scale the store narrows hosts with SQL over pool
summaries and calls :func:`~pcipass.sched.fit.fit` and :func:`~pcipass.sched.weigh.weigh` on
the few left; a claim that loses a race moves on to the next of ``ranked``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pcipass.sched.explain import explain
from pcipass.sched.fit import Fit, NoFit, fit
from pcipass.sched.snapshot import BootRequest, HostView
from pcipass.sched.weigh import WeighPolicy, weigh

__all__ = ["NoPlacement", "Placement", "schedule"]


@dataclass(frozen=True, slots=True)
class Placement:
    """The chosen host first in ``ranked``; the rest are where to retry after a lost race."""

    ranked: tuple[Fit, ...]

    @property
    def best(self) -> Fit:
        return self.ranked[0]


@dataclass(frozen=True, slots=True)
class NoPlacement:
    verdicts: tuple[NoFit, ...]
    message: str


def schedule(hosts: Sequence[HostView], req: BootRequest,
             policy: WeighPolicy = WeighPolicy.PACK) -> Placement | NoPlacement:
    verdicts = [fit(h, req) for h in hosts]
    fits = [v for v in verdicts if isinstance(v, Fit)]
    if fits:
        return Placement(weigh(fits, policy))
    misses = tuple(v for v in verdicts if isinstance(v, NoFit))
    return NoPlacement(misses, explain(misses, req))
