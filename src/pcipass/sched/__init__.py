"""The scheduler: pure decisions over a snapshot of hosts.

No I/O, no configuration, no clock; inputs are never changed. "No fit" is a value with
reasons (:class:`NoFit`), exceptions are only for malformed input. The store proposes the
snapshot (or narrows hosts first), the scheduler proposes a choice, the store commits it.

- :mod:`.snapshot`: ``HostView``, ``NumaCell``, ``DeviceView``, ``BootRequest``
- :mod:`.units`: IOMMU-group units, PF/VF exclusion, why a device cannot be handed out
- :mod:`.numa`: guest NUMA placement and Nova's PCI NUMA policies
- :mod:`.fit`: one host: does the boot fit, with which devices
- :mod:`.weigh`: rank the hosts it fits on
- :mod:`.explain`: one sentence over the hosts it does not fit on
- :mod:`.schedule`: all of it over a list of hosts
"""

from pcipass.sched.explain import explain, reason_counts
from pcipass.sched.fit import Assignment, Fit, NoFit, NoFitCode, fit
from pcipass.sched.numa import GuestNodes, Locality
from pcipass.sched.schedule import NoPlacement, Placement, schedule
from pcipass.sched.snapshot import BootRequest, DeviceView, HostView, NumaCell
from pcipass.sched.units import Unit, dependants, free_units, is_bridge, unit_reasons, units
from pcipass.sched.weigh import WeighPolicy, weigh

__all__ = [
    "Assignment",
    "BootRequest",
    "DeviceView",
    "Fit",
    "GuestNodes",
    "HostView",
    "Locality",
    "NoFit",
    "NoFitCode",
    "NoPlacement",
    "NumaCell",
    "Placement",
    "Unit",
    "WeighPolicy",
    "dependants",
    "explain",
    "fit",
    "free_units",
    "is_bridge",
    "reason_counts",
    "schedule",
    "unit_reasons",
    "units",
    "weigh",
]
