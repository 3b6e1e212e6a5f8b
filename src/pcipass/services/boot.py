"""Placing a boot: narrow in SQL, fit in Python, claim in one transaction, retry on races.

1. The boot's hard PCI requests become :class:`~pcipass.store.candidates.Need` s (the pool
   kinds their alias matches); the store returns the hosts that pass the SQL narrowing, in
   the weigher's order (pack: fewest matching usable devices first), a page at a time.
2. The first candidate is claimed straight away (:meth:`pcipass.store.Store.claim`): the
   claim runs ``sched.fit`` on the host's devices as they are under its lock, and keeps the
   fit if nothing could beat it (every soft request granted, no device off the guest's NUMA
   nodes). Most boots end here: one read for the candidates, one write transaction.
3. Otherwise the next candidates are read and judged with ``fit``, up to ``candidates`` fits
   are ranked with ``sched.weigh``, and the best claimed (``fit`` again, under the lock).
4. A claim that finds the host emptied by another worker since the narrowing read it is a
   lost race: the candidates are read again (and one of the first few taken at random, so
   that workers that collided once do not collide again), up to ``max_attempts`` races, and
   only then does the boot fail, saying so.

Soft requests: a first pass asks for them as if hard, so a host that can grant them all is
found even when it ranks low on the hard ones; the second pass asks for the hard ones only
and grants what the chosen host can.

When nothing fits, the fault counts hosts per reason: the SQL counts for the many hosts the
narrowing left out, and ``fit``'s verdicts for the ones it let through, worded as
``sched.explain`` words them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain
from typing import Any

from pcipass.errors import ClaimConflict
from pcipass.pci.alias import Alias
from pcipass.pci.device import PciDevice
from pcipass.pci.request import PciRequest, numa_node_count, pci_requests
from pcipass.records import FlavorRecord, ImageRecord, ServerRecord
from pcipass.sched.explain import explain
from pcipass.sched.fit import Fit, NoFit, NoFitCode, fit, fit_machine, shortage_verdict
from pcipass.sched.snapshot import BootRequest, HostView
from pcipass.sched.weigh import WeighPolicy, weigh
from pcipass.services.baremetal import machine_verdicts
from pcipass.store import Store
from pcipass.store.candidates import Counts, MachineCounts, Need
from pcipass.store.claims import (
    Decide,
    NewServer,
    down_verdict,
    kind_verdict,
    reserved_verdict,
)
from pcipass.store.usage import over_quota

# Hosts judged with ``fit`` per pass at most: past this, a boot that passes the SQL
# narrowing everywhere but fits nowhere is refused, saying how many were not judged.
MAX_EXAMINED = 256


def needs(requests: Sequence[PciRequest], kinds: Mapping[int, PciDevice]) -> list[Need]:
    """Per request, the pool kinds its alias matches (an alias matches a kind wholly)."""
    return [Need(frozenset(k for k, dev in kinds.items() if r.matches(dev)), r.count)
            for r in requests]


def count_verdicts(req: BootRequest, counts: Counts) -> list[tuple[int, NoFit]]:
    """The SQL counts as ``fit``'s verdicts would read, with how many hosts each."""
    out = []
    for r, n in zip(req.hard, counts.lack, strict=True):
        out.append((n, shortage_verdict("", r)))
    out.append((counts.vcpus, NoFit("", NoFitCode.VCPUS, "lacks vCPUs", "lack vCPUs")))
    out.append((counts.ram, NoFit("", NoFitCode.RAM, "lacks RAM", "lack RAM")))
    out.append((counts.reserved, reserved_verdict("")))
    out.append((counts.down, down_verdict("")))
    out.append((counts.baremetal, kind_verdict("", False)))
    return [(n, v) for n, v in out if n]


def sentence(req: BootRequest, counted: Iterable[tuple[int, NoFit]],
             verdicts: Iterable[Fit | NoFit]) -> str:
    """``sched.explain``'s sentence over hosts given as counts and as verdicts (counting
    10,000 hosts one verdict at a time would cost more than the decision)."""
    tally: dict[tuple[str, str], list[Any]] = {}
    fits = 0
    for n, v in chain(counted, ((1, v) for v in verdicts)):
        if isinstance(v, Fit):
            fits += n
            continue
        entry = tally.setdefault((v.code.value, v.text), [0, v])
        entry[0] += n
    pairs = [(n, v) for n, v in tally.values() if n]
    if not fits and not pairs:
        return explain((), req)   # there are no hosts
    # As sched.explain: ranked by hosts, then first seen; worded for one or many.
    pairs.sort(key=lambda p: -p[0])
    parts = [f"{n} {'host' if n == 1 else 'hosts'} {v.text if n == 1 else v.plural}"
             for n, v in pairs]
    what = req.describe()
    if fits:
        head = f"{fits} {'host' if fits == 1 else 'hosts'} can satisfy {what}"
        return head + ("; " + "; ".join(parts) if parts else "")
    return f"No host can satisfy {what}: " + "; ".join(parts)


def machine_sentence(req: BootRequest, machines: MachineCounts,
                     verdicts: Iterable[Fit | NoFit]) -> str:
    """:func:`sentence` for a bare-metal boot: the hosts as whole machines."""
    return sentence(req, machine_verdicts(req, machines), verdicts).replace(
        "No host can satisfy", "No bare-metal machine can satisfy", 1)


def _perfect(f: Fit, req: BootRequest) -> bool:
    return f.granted_soft == len(req.soft) and f.remote == 0


def as_hard(req: BootRequest) -> BootRequest:
    return replace(req, pci=tuple(replace(r, soft=False) for r in req.pci))


def hard_only(req: BootRequest) -> BootRequest:
    return replace(req, pci=req.hard)


# Verdicts under the claim's lock that a race may explain: the SQL narrowing, a moment
# before, counted enough free devices, vCPUs and RAM on that host. It was a race if the
# host no longer passes the narrowing (else the narrowing's counts were only too kind: a
# VF in one IOMMU group with its PF counts in SQL, not in ``fit``).
RACE_CODES = frozenset({NoFitCode.PCI_COUNT, NoFitCode.VCPUS, NoFitCode.RAM})
# ... and for a bare-metal boot, the machine taken meanwhile (or reserved, or its kind
# changed by its agent's report).
MACHINE_RACE_CODES = frozenset({NoFitCode.HOST_OCCUPIED, NoFitCode.HOST_RESERVED,
                                NoFitCode.HOST_DOWN, NoFitCode.HOST_KIND})
# Hosts reserved or gone down while a boot tried them: the SQL counts have them already.
CLOSED_CODES = frozenset({NoFitCode.HOST_RESERVED, NoFitCode.HOST_DOWN})


@dataclass
class Outcome:
    """What one pass found: the server, or why not."""

    server: ServerRecord | None = None
    verdicts: list[NoFit] = field(default_factory=list)
    examined: int = 0
    capped: bool = False


def quota_trim(req: BootRequest, project: str, limits: Mapping[str, int],
               held: Mapping[str, int]) -> tuple[BootRequest, tuple[PciRequest, ...]]:
    """Refuse a boot whose hard requests would take ``project`` over a quota; drop the
    soft ones its quota cannot cover (returned apart: they are not granted). The claim
    checks again, under a lock, with what the project holds then."""
    hard: dict[str, int] = {}
    for r in req.hard:
        hard[r.alias] = hard.get(r.alias, 0) + r.count
    problem = over_quota(project, hard, limits, held)
    if problem is not None:
        raise problem
    room = {a: n - held.get(a, 0) - hard.get(a, 0) for a, n in limits.items()}
    kept: list[PciRequest] = []
    dropped: list[PciRequest] = []
    for r in req.pci:
        if r.soft and r.alias in room:
            if r.count > room[r.alias]:
                dropped.append(r)
                continue
            room[r.alias] -= r.count
        kept.append(r)
    return replace(req, pci=tuple(kept)), tuple(dropped)


def boot_request(fl: FlavorRecord, im: ImageRecord, aliases: Mapping[str, Alias]
                 ) -> BootRequest:
    """What a flavor and image ask of a host: vCPUs, RAM, guest NUMA nodes, PCI requests."""
    pci = pci_requests(fl.extra_specs, im.properties, aliases, image=im.name or None)
    nodes = numa_node_count(fl.extra_specs, im.properties, vcpus=fl.vcpus,
                            ram_mb=fl.ram_mb, image=im.name or None)
    return BootRequest(fl.vcpus, fl.ram_mb, nodes, pci)


# Claims on a host for a placement other than a boot's (a move's destination): given the
# host, the decision and the acceptance test, as :meth:`pcipass.store.Store.claim`.
Claimer = Callable[[int, Decide, Callable[[Fit], bool] | None], ServerRecord | Fit | NoFit]


@dataclass
class Placer:
    """One boot's search (see the module). Candidate hosts come in the weigher's order; the
    first is claimed straight away, its fit judged under the claim's lock, and kept only if
    nothing could beat it (every soft request granted, no device off the guest's NUMA
    nodes). Otherwise hosts are judged from reads, up to ``window`` fits are ranked with
    ``sched.weigh``, and the best claimed. A claim that finds the host emptied by another
    boot meanwhile is a lost race: the candidates are read again, up to ``max_attempts``
    races.

    A move's destination is placed the same way: ``claimer`` claims instead of a boot's
    claim, ``exclude`` names hosts never to try (a migration's source), ``only`` the one
    host to try (a host the admin named)."""

    store: Store
    policy: WeighPolicy
    max_attempts: int
    window: int
    attempts: int = 0
    lost: list[str] = field(default_factory=list)
    rng: random.Random = field(default_factory=random.Random)
    # A whole bare-metal machine (:mod:`pcipass.services.baremetal`): free machines are
    # narrowed instead of hypervisors, judged by ``fit_machine``, and all fits of a window
    # weighed (the smallest machine that satisfies the boot under ``pack``).
    baremetal: bool = False
    claimer: Claimer | None = None
    exclude: frozenset[int] = frozenset()
    only: int | None = None

    def judge(self, view: HostView, req: BootRequest) -> Fit | NoFit:
        return fit_machine(view, req) if self.baremetal else fit(view, req)

    def place(self, server: NewServer, req: BootRequest,
              kinds: Mapping[int, PciDevice] | None = None) -> ServerRecord:
        """``kinds``: the pool kinds when the caller read them already."""
        found, fault = self.search(server, req, kinds)
        if found is not None:
            return found
        return self.store.record_failure(server, fault)

    def search(self, server: NewServer, req: BootRequest,
               kinds: Mapping[int, PciDevice] | None = None) -> tuple[ServerRecord | None, str]:
        """What the claim returned, or None and why nothing could be claimed."""
        if kinds is None:
            kinds = self.store.kinds()
        passes = [as_hard(req), req] if req.soft else [req]
        outcome = Outcome()
        for pass_req in passes:
            outcome = self.attempt(server, pass_req, needs(pass_req.hard, kinds))
            if outcome.server is not None:
                return outcome.server, ""
            if self.out_of_attempts:
                break
        final = passes[-1]
        return None, self.fault(final, needs(final.hard, kinds), outcome)

    def _claim(self, server: NewServer, host_id: int, decide: Decide,
               accept: Callable[[Fit], bool] | None = None) -> ServerRecord | Fit | NoFit:
        if self.claimer is not None:
            return self.claimer(host_id, decide, accept)
        return self.store.claim(server, host_id, decide, accept=accept)

    @property
    def out_of_attempts(self) -> bool:
        return self.attempts >= self.max_attempts

    def attempt(self, server: NewServer, req: BootRequest, need: Sequence[Need]) -> Outcome:
        out = Outcome()
        seen: set[int] = set(self.exclude)
        buffer: list[tuple[int, Fit]] = []

        def decide(view: HostView) -> Fit | NoFit:
            return self.judge(view, req)

        def perfect(f: Fit) -> bool:
            return not self.baremetal and _perfect(f, req)

        while not self.out_of_attempts:
            limit = self.window + len(seen)
            page = self.store.candidates(need, req.vcpus, req.ram_mb,
                                         spread=self.policy is WeighPolicy.SPREAD,
                                         limit=limit, baremetal=self.baremetal,
                                         only=self.only)
            fresh = [c for c in page if c.host_id not in seen][:self.window]
            if not fresh:
                break
            if self.attempts:
                # After a lost race, the other workers that read the same candidates are
                # heading for the same next host: take one of the first few at random, so
                # that they spread out instead of racing again (Nova's host_subset_size).
                k = self.rng.randrange(min(len(fresh), self.attempts + 1))
                fresh.insert(0, fresh.pop(k))
            raced = False
            for c in fresh:
                if out.examined >= MAX_EXAMINED:
                    out.capped = True
                    break
                seen.add(c.host_id)
                out.examined += 1
                if not buffer:
                    got = self._claim(server, c.host_id, decide, accept=perfect)
                    if isinstance(got, ServerRecord):
                        out.server = got
                        return out
                    if isinstance(got, NoFit):
                        out.verdicts.append(got)
                        if got.code in RACE_CODES | MACHINE_RACE_CODES and not \
                                self.store.passes(need, req.vcpus, req.ram_mb, c.host_id,
                                                  baremetal=self.baremetal):
                            self.race(got.host)   # it passed the narrowing a moment ago
                            raced = True
                            break
                        continue
                    found = got
                else:
                    views = self.store.host_views([c.host_id])
                    if not views:
                        continue
                    verdict = self.judge(views[0], req)
                    if isinstance(verdict, NoFit):
                        out.verdicts.append(verdict)
                        continue
                    found = verdict
                buffer.append((c.host_id, found))
                if perfect(found) or len(buffer) >= self.window:
                    if self.claim_best(server, req, buffer, out):
                        return out
                    buffer = []
                    raced = True
                    break
            if out.capped or (not raced and len(page) < limit):
                break
        if buffer and not self.out_of_attempts:
            self.claim_best(server, req, buffer, out)
        return out

    def race(self, host: str) -> None:
        self.attempts += 1
        self.lost.append(host)

    def claim_best(self, server: NewServer, req: BootRequest,
                   fits: list[tuple[int, Fit]], out: Outcome) -> bool:
        ids = {f.host: host_id for host_id, f in fits}

        def decide(view: HostView) -> Fit | NoFit:
            return self.judge(view, req)

        for best in weigh((f for _i, f in fits), self.policy):
            if self.out_of_attempts:
                return False
            try:
                got = self._claim(server, ids[best.host], decide)
            except ClaimConflict:
                self.race(best.host)
                continue
            if isinstance(got, NoFit):
                out.verdicts.append(got)
                self.race(best.host)
                continue
            if isinstance(got, ServerRecord):
                out.server = got
                return True
        return False

    def fault(self, req: BootRequest, need: Sequence[Need], out: Outcome) -> str:
        if self.out_of_attempts:
            hosts = ", ".join(dict.fromkeys(self.lost))
            return (f"No host could be claimed for {req.describe()}: other boots took the "
                    f"devices first on {len(self.lost)} "
                    f"{'host' if len(self.lost) == 1 else 'hosts'} ({hosts}); gave up after "
                    f"{self.max_attempts} attempts")
        if self.baremetal:
            machines = self.store.machine_counts(need, req.vcpus, req.ram_mb)
            # Hosts reserved or taken while this boot tried them are in the counts already.
            return machine_sentence(req, machines, [
                v for v in out.verdicts if v.code not in MACHINE_RACE_CODES])
        counts = self.store.placement_counts(need, req.vcpus, req.ram_mb)
        verdicts = [v for v in out.verdicts if v.code not in CLOSED_CODES]
        message = sentence(req, count_verdicts(req, counts), verdicts)
        unjudged = counts.passed - out.examined
        if out.capped and unjudged > 0:
            message += (f"; {unjudged} more {'host' if unjudged == 1 else 'hosts'} with "
                        f"enough free devices were not examined (limit {MAX_EXAMINED})")
        return message
