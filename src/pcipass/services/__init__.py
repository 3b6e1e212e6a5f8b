"""Services: the use cases the API calls (boot, delete, catalog, quotas, usage, explain).

:class:`Cloud` checks permissions, parses input once, asks :mod:`pcipass.sched` for a choice
over hosts the store narrowed, and has the store commit it.
"""

from pcipass.services.cloud import Cloud
from pcipass.services.explain import Explanation, HostVerdict

__all__ = ["Cloud", "Explanation", "HostVerdict"]
