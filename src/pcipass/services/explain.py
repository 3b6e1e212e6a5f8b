"""What ``POST /v1/scheduler/explain`` answers: one sentence and the verdict per host.

The sentence counts every host (SQL counts for those the narrowing leaves out, ``fit``'s
verdicts for the rest); the per-host list is bounded: the hosts ``fit`` judged, best first,
then the first others by name with the check they fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pcipass.sched.fit import Fit, NoFit, fit, fit_machine
from pcipass.sched.snapshot import BootRequest
from pcipass.sched.weigh import WeighPolicy, weigh
from pcipass.services.boot import (
    MAX_EXAMINED,
    count_verdicts,
    machine_sentence,
    needs,
    sentence,
)
from pcipass.store import Store
from pcipass.store.candidates import DOWN, OTHER_KIND, RAM, RESERVED, VCPUS
from pcipass.store.claims import down_verdict, kind_verdict, reserved_verdict

__all__ = ["Explanation", "HostVerdict", "explain_boot"]


@dataclass(frozen=True, slots=True)
class HostVerdict:
    """One host's verdict: ``devices`` it would give when it fits, ``reason`` when not."""

    host: str
    fits: bool
    reason: str | None = None
    devices: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Explanation:
    message: str
    fits: bool
    hosts: tuple[HostVerdict, ...] = ()


# Per-host verdicts an explanation lists at most (the message counts every host).
MAX_VERDICTS = 100


def explain_boot(store: Store, req: BootRequest, policy: WeighPolicy, *,
                 baremetal: bool = False) -> Explanation:
    """Would ``req`` fit, where, and why not elsewhere; nothing is claimed. ``baremetal``:
    a whole-machine boot (judged as the boot judges it, by ``fit_machine`` over free
    bare-metal machines)."""
    kinds = store.kinds()
    need = needs(req.hard, kinds)
    judge = fit_machine if baremetal else fit
    judged: dict[str, Fit | NoFit] = {}
    offset = 0
    while len(judged) < MAX_EXAMINED:
        page = store.candidates(need, req.vcpus, req.ram_mb,
                                spread=policy is WeighPolicy.SPREAD, limit=MAX_VERDICTS,
                                offset=offset, baremetal=baremetal)
        for view in store.host_views([c.host_id for c in page]):
            judged[view.name] = judge(view, req)
        if len(page) < MAX_VERDICTS:
            break
        offset += len(page)
    if baremetal:
        machines = store.machine_counts(need, req.vcpus, req.ram_mb)
        message, passed = machine_sentence(req, machines, judged.values()), machines.passed
    else:
        counts = store.placement_counts(need, req.vcpus, req.ram_mb)
        message, passed = sentence(req, count_verdicts(req, counts), judged.values()), \
            counts.passed
    unjudged = passed - len(judged)
    if unjudged > 0:
        message += (f"; {unjudged} more {'host' if unjudged == 1 else 'hosts'} with enough "
                    f"free devices were not examined (limit {MAX_EXAMINED})")
    fits = [v for v in judged.values() if isinstance(v, Fit)]
    hosts = [HostVerdict(f.host, True, None, tuple(str(a) for a in f.addresses))
             for f in weigh(fits, policy)]
    hosts += [HostVerdict(v.host, False, str(v).removeprefix(f"{v.host} "))
              for v in judged.values() if isinstance(v, NoFit)]
    if not baremetal:   # the others, by name, with the SQL check each fails first
        reasons = {code: v for code, v in _sql_reasons(req)}
        for _host_id, name, code in store.host_verdict_codes(need, req.vcpus, req.ram_mb,
                                                             MAX_VERDICTS):
            if len(hosts) >= MAX_VERDICTS:
                break
            if name not in judged and code in reasons:
                hosts.append(HostVerdict(name, False, reasons[code]))
    return Explanation(message, bool(fits), tuple(hosts))


def _sql_reasons(req: BootRequest) -> Iterator[tuple[int, str]]:
    for i, r in enumerate(req.hard):
        yield i, f"lacks {r.count} free {r.alias!r} device{'s' if r.count > 1 else ''}"
    yield VCPUS, "lacks vCPUs"
    yield RAM, "lacks RAM"
    yield RESERVED, reserved_verdict("").text
    yield DOWN, down_verdict("").text
    yield OTHER_KIND, kind_verdict("", False).text
