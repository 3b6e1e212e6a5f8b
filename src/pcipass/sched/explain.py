"""Why a boot found no host, in one sentence an operator can act on.

``No host can satisfy 2 x gpu: 14 hosts lack 2 free 'gpu' devices; 3 hosts have them only
outside the guest's NUMA node (policy required); 2 hosts lack RAM``: hosts are counted per
reason, the most common first. A port's request reads as the port:
``No host can satisfy port 'web' (VF on physnet2): 3 hosts have no free VF on physnet2 for
port 'web'`` (the wording of each reason is :func:`pcipass.sched.fit.shortage_verdict`'s and
its neighbours', so the store's SQL counts read the same).
"""

from __future__ import annotations

from collections.abc import Iterable

from pcipass.sched.fit import Fit, NoFit
from pcipass.sched.snapshot import BootRequest

__all__ = ["explain", "reason_counts"]


def reason_counts(verdicts: Iterable[Fit | NoFit]) -> list[tuple[int, NoFit]]:
    """(hosts, an example verdict) per distinct reason, most hosts first, then first seen."""
    counts: dict[tuple[str, str], list[NoFit]] = {}
    for v in verdicts:
        if isinstance(v, NoFit):
            counts.setdefault((v.code.value, v.text), []).append(v)
    ranked = sorted(counts.values(), key=lambda vs: -len(vs))
    return [(len(vs), vs[0]) for vs in ranked]


def explain(verdicts: Iterable[Fit | NoFit], req: BootRequest | None = None) -> str:
    """One sentence over every host's verdict."""
    verdicts = list(verdicts)
    what = req.describe() if req is not None else "the request"
    fits = sum(1 for v in verdicts if isinstance(v, Fit))
    parts = [f"{n} {'host' if n == 1 else 'hosts'} {v.text if n == 1 else v.plural}"
             for n, v in reason_counts(verdicts)]
    if not verdicts:
        return f"No host can satisfy {what}: there are no hosts"
    if fits:
        head = f"{fits} {'host' if fits == 1 else 'hosts'} can satisfy {what}"
        return head + ("; " + "; ".join(parts) if parts else "")
    return f"No host can satisfy {what}: " + "; ".join(parts)
