"""Does a boot fit on one host, and with which concrete devices?

``fit(host, req)`` is a pure function of one host's snapshot: the store narrows thousands of
hosts to a few with SQL over pool summaries and calls it on those, so it must stay cheap and
independent per host.

Choosing devices is a small backtracking search. Free units (:mod:`pcipass.sched.units`) that
no constraint can tell apart (same matching counts per request, same NUMA nodes, same parent
PF, no PF of their own) form one class, so the search picks *how many* from each class rather
than which ones, and never tries two orders of interchangeable units. Taking units bumps
per-PF counters (VFs of a PF in use, a PF in use) that block the PF or its VFs; backtracking
undoes the bumps, nothing is copied. A unit counts for a request as many devices as it has
functions the request matches (a GPU with its audio counts one), and a request takes units
whose counts sum to exactly what it asks: it never gets more matching devices than it paid
for. A unit holding a PF serves only a request for ``type-PF``.

With a guest NUMA topology every fitting set of host nodes is tried, best first, keeping the
choice with the most soft requests granted and the fewest devices off the guest's nodes.
Soft requests are granted greedily, in order, on top of the hard choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from pcipass.pci.address import PciAddress
from pcipass.pci.alias import NumaPolicy
from pcipass.pci.device import DevType, PciDevice
from pcipass.pci.request import PciRequest
from pcipass.sched.numa import GuestNodes, Locality, allowed, cell_choices, locality
from pcipass.sched.snapshot import BootRequest, HostView
from pcipass.sched.units import Unit, free_units

__all__ = ["DEFAULT_MAX_STEPS", "Assignment", "Fit", "NoFit", "NoFitCode", "fit", "fit_machine",
           "shortage_verdict"]

DEFAULT_MAX_STEPS = 50_000
_NO_NODES: frozenset[int | None] = frozenset()


class NoFitCode(StrEnum):
    VCPUS = "vcpus"
    RAM = "ram"
    NUMA_NODES = "numa_nodes"              # the host has fewer NUMA nodes than the guest
    NUMA_RESOURCES = "numa_resources"      # not enough nodes with vCPUs and RAM free
    PCI_COUNT = "pci_count"                # too few free matching devices
    PCI_GROUPS = "pci_groups"              # enough, but only in IOMMU units that give too many
    PCI_NUMA = "pci_numa"                  # enough, but not where the NUMA policy allows
    PCI_TOGETHER = "pci_together"          # each request fits alone, not all at once
    SEARCH_LIMIT = "search_limit"          # gave up: the device search grew too large
    HOST_RESERVED = "host_reserved"        # an admin reserved (is draining) the host
    HOST_DOWN = "host_down"                # its agent went silent: a spawn would time out
    HOST_OCCUPIED = "host_occupied"        # bare metal: a server has the machine already
    HOST_KIND = "host_kind"                # not the kind of host the boot needs (bare metal)


@dataclass(frozen=True, slots=True)
class NoFit:
    """Why a host cannot take the boot: ``text`` after a host's name (singular), ``plural``
    after a count of hosts; ``detail`` adds this host's numbers."""

    host: str
    code: NoFitCode
    text: str
    plural: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.host} {self.text}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True, slots=True)
class Assignment:
    """What one request got: whole units; ``devices`` matched it, ``riders`` came along."""

    request: PciRequest
    units: tuple[Unit, ...]
    devices: tuple[PciAddress, ...]
    riders: tuple[PciAddress, ...]

    @property
    def addresses(self) -> tuple[PciAddress, ...]:
        return tuple(sorted((*self.devices, *self.riders)))


@dataclass(frozen=True, slots=True)
class Fit:
    """A host that can take the boot, the devices and NUMA nodes it would give, and the
    figures the weigher ranks by."""

    host: str
    assignments: tuple[Assignment, ...] = ()
    cells: tuple[int, ...] = ()
    not_granted: tuple[PciRequest, ...] = ()
    wants_pci: bool = False
    free_matching: int = 0     # free devices matching the boot's requests, before it
    free_units: int = 0        # free assignable units on the host, before it
    remote: int = 0            # chosen devices not on the guest's NUMA nodes
    free_vcpus: int = 0        # left after the boot
    free_ram_mb: int = 0
    # Bare metal (:func:`fit_machine`): the free devices that come with the whole machine
    # besides those the requests got (no request's, like a rider's).
    machine: tuple[PciAddress, ...] = ()

    @property
    def addresses(self) -> tuple[PciAddress, ...]:
        return tuple(sorted((*(a for x in self.assignments for a in x.addresses),
                             *self.machine)))

    @property
    def granted_soft(self) -> int:
        return sum(1 for a in self.assignments if a.request.soft)


class _Budget(Exception):
    pass


class _Class:
    """Interchangeable free units; ``taken`` moves during the search and is always undone."""

    __slots__ = ("nodes", "parents", "partial", "pfs", "size", "taken", "units", "weights")

    def __init__(self, units: list[Unit], weights: tuple[int, ...],
                 nodes: tuple[frozenset[int | None], ...], parents: frozenset[PciAddress],
                 pfs: frozenset[PciAddress], size: int) -> None:
        self.units = units
        self.weights = weights
        self.nodes = nodes
        self.parents = parents
        self.pfs = pfs
        self.size = size
        self.taken = 0
        self.partial = False


def _signature(dev: PciDevice) -> tuple[object, ...]:
    """Everything an alias can look at, minus the address: VFs of one PF usually share it."""
    return (dev.vendor_id, dev.product_id, dev.class_code, dev.dev_type, dev.driver,
            dev.subsystem_vendor_id, dev.subsystem_product_id,
            tuple(dev.tags.items()) if dev.tags else ())


def _classes(free: Sequence[Unit], reqs: Sequence[PciRequest]) -> list[_Class]:
    by_key: dict[tuple[object, ...], _Class] = {}
    seen: dict[tuple[object, ...], tuple[bool, ...]] = {}

    def hits(dev: PciDevice) -> tuple[bool, ...]:
        sig = _signature(dev)
        got = seen.get(sig)
        if got is None:
            got = seen[sig] = tuple(r.matches(dev) for r in reqs)
        return got

    for unit in free:
        weights: list[int] = []
        nodes: list[frozenset[int | None]] = []
        matched = [hits(m.device) for m in unit.members]
        for i, r in enumerate(reqs):
            if unit.pfs and r.dev_type is not DevType.PF:
                weights.append(0)       # a PF is never handed out as a rider
                nodes.append(_NO_NODES)
                continue
            hit = [m for m, h in zip(unit.members, matched, strict=True) if h[i]]
            weights.append(len(hit))
            nodes.append(frozenset(m.device.numa_node for m in hit) if hit else _NO_NODES)
        if not any(weights):
            continue
        key = (tuple(weights), tuple(nodes), unit.parents,
               unit.pfs or None, len(unit.members), unit.key if unit.pfs else None)
        cls = by_key.get(key)
        if cls is None:
            cls = by_key[key] = _Class([], tuple(weights), tuple(nodes), unit.parents,
                                       unit.pfs, len(unit.members))
        cls.units.append(unit)
    return list(by_key.values())


class _Search:
    """Backtracking over class counts, with PF/VF exclusion as undoable counters."""

    def __init__(self, classes: list[_Class], reqs: Sequence[PciRequest],
                 pf_used: dict[PciAddress, int], vf_used: dict[PciAddress, int],
                 max_steps: int) -> None:
        self.classes = classes
        self.reqs = reqs
        self.pf_used = pf_used
        self.vf_used = vf_used
        self.steps = 0
        self.max_steps = max_steps
        self.stack: list[tuple[int, _Class, int]] = []
        self.where: GuestNodes | None = None
        self.options: list[list[_Class]] = []
        for cls in classes:
            cls.partial = any(vf_used.get(p, 0) for p in cls.parents)

    def place(self, where: GuestNodes | None) -> None:
        """Which classes each request may use at ``where``, nearest and best packed first."""
        self.where = where
        self.options = []
        for i, r in enumerate(self.reqs):
            ranked = []
            for cls in self.classes:
                if not cls.weights[i]:
                    continue
                near = self.loc(cls, i)
                if allowed(r.numa_policy, near):
                    ranked.append(((near, not cls.partial, cls.size, cls.units[0].key), cls))
            ranked.sort(key=lambda pair: pair[0])
            self.options.append([cls for _key, cls in ranked])

    def loc(self, cls: _Class, i: int) -> Locality:
        return locality(cls.nodes[i], self.where)

    def available(self, cls: _Class) -> int:
        if any(self.pf_used.get(p, 0) for p in cls.parents):
            return 0
        if any(self.vf_used.get(p, 0) for p in cls.pfs):
            return 0
        if any(self.pf_used.get(p, 0) for p in cls.pfs):
            return 0
        return len(cls.units) - cls.taken

    def _take(self, i: int, cls: _Class, n: int) -> None:
        cls.taken += n
        for p in cls.parents:
            self.vf_used[p] = self.vf_used.get(p, 0) + n
        for p in cls.pfs:
            self.pf_used[p] = self.pf_used.get(p, 0) + n
        self.stack.append((i, cls, n))

    def _untake(self) -> None:
        _i, cls, n = self.stack.pop()
        cls.taken -= n
        for p in cls.parents:
            self.vf_used[p] -= n
        for p in cls.pfs:
            self.pf_used[p] -= n

    def capacity(self, i: int) -> int:
        return sum(self.available(c) * c.weights[i] for c in self.options[i])

    def solve(self, order: Sequence[int]) -> bool:
        """Satisfy every request in ``order`` on top of what the stack holds; on failure the
        stack is as it was."""
        return self._request(order, 0)

    def _request(self, order: Sequence[int], k: int) -> bool:
        if k == len(order):
            return True
        i = order[k]
        return self._choose(order, k, 0, self.reqs[i].count)

    def _choose(self, order: Sequence[int], k: int, ci: int, need: int) -> bool:
        if need == 0:
            return self._request(order, k + 1)
        self.steps += 1
        if self.steps > self.max_steps:
            raise _Budget
        i = order[k]
        opts = self.options[i]
        if sum(self.available(c) * c.weights[i] for c in opts[ci:]) < need:
            return False
        for cj in range(ci, len(opts)):
            cls = opts[cj]
            w = cls.weights[i]
            most = min(self.available(cls), need // w)
            for n in range(most, 0, -1):
                self._take(i, cls, n)
                if self._choose(order, k, cj + 1, need - n * w):
                    return True
                self._untake()
        return False

    def rollback(self, depth: int) -> None:
        while len(self.stack) > depth:
            self._untake()


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _nofit(host: str, code: NoFitCode, verb: tuple[str, str], rest: str,
           detail: str = "") -> NoFit:
    return NoFit(host, code, f"{verb[0]} {rest}", f"{verb[1]} {rest}", detail)


_LACK = ("lacks", "lack")
_HAVE = ("has", "have")


def shortage_verdict(host: str, r: PciRequest, detail: str = "") -> NoFit:
    """``PCI_COUNT``: too few free devices for ``r``. The one wording of it, shared with the
    store's SQL counts (``services.boot.count_verdicts``): ``lacks 2 free 'gpu' devices`` for
    an alias, ``has no free VF on physnet2 for port 'web'`` for a port."""
    if r.port is not None and r.count == 1:
        return _nofit(host, NoFitCode.PCI_COUNT, _HAVE, f"no free {r.wanted}", detail)
    return _nofit(host, NoFitCode.PCI_COUNT, _LACK, r.shortage(), detail)


def _groups_text(r: PciRequest) -> str:
    """``PCI_GROUPS``: matching devices exist, but only in units that give too many."""
    what = f"free {r.wanted}s" if r.port is None else r.shortage()
    return f"{what} only in IOMMU groups that hold more than {r.count}"


def _where_text(policy: NumaPolicy, nodes: int) -> str:
    if policy is NumaPolicy.SOCKET:
        return "outside the sockets of the guest's NUMA nodes (policy socket)"
    return f"outside the guest's NUMA node{'s' if nodes > 1 else ''} (policy {policy.value})"


def fit(host: HostView, req: BootRequest, *, max_steps: int = DEFAULT_MAX_STEPS) -> Fit | NoFit:
    """Whether ``req`` fits on ``host``, and with what; never changes its inputs."""
    reqs = req.pci
    free, held = free_units(host.devices)
    classes = _classes(free, reqs)
    caps = [sum(len(c.units) * c.weights[i] for c in classes) for i in range(len(reqs))]
    hard = [i for i, r in enumerate(reqs) if not r.soft]
    soft = [i for i, r in enumerate(reqs) if r.soft]
    for i in hard:
        r = reqs[i]
        if caps[i] < r.count:
            return shortage_verdict(host.name, r, f"{caps[i]} free")
    if req.vcpus > host.free_vcpus:
        return _nofit(host.name, NoFitCode.VCPUS, _LACK, "vCPUs",
                      f"needs {req.vcpus}, {host.free_vcpus} free")
    if req.ram_mb > host.free_ram_mb:
        return _nofit(host.name, NoFitCode.RAM, _LACK, "RAM",
                      f"needs {req.ram_mb} MB, {host.free_ram_mb} MB free")
    wheres: list[GuestNodes | None] = [None]
    if req.numa_nodes is not None:
        n = req.numa_nodes
        if len(host.numa) < n:
            return _nofit(host.name, NoFitCode.NUMA_NODES, _HAVE,
                          f"fewer than {_plural(n, 'NUMA node')}",
                          f"{len(host.numa)} reported")
        choices = cell_choices(host.numa, n, req.vcpus, req.ram_mb)
        if not choices:
            return _nofit(host.name, NoFitCode.NUMA_RESOURCES, _LACK,
                          f"{_plural(n, 'NUMA node')} with {req.vcpus // n} vCPUs and "
                          f"{req.ram_mb // n} MB RAM free each")
        wheres = [GuestNodes.of(c, host.numa) for c in choices]
    by_addr = {v.address: v for v in host.devices}
    pf_used: dict[PciAddress, int] = {}
    vf_used: dict[PciAddress, int] = {}
    for addr in held:
        view = by_addr.get(addr)
        if view is None:
            continue
        if view.device.dev_type is DevType.PF:
            pf_used[addr] = 1
        elif view.device.dev_type is DevType.VF and view.device.parent_addr is not None:
            vf_used[view.device.parent_addr] = vf_used.get(view.device.parent_addr, 0) + 1
    search = _Search(classes, reqs, pf_used, vf_used, max_steps)
    if req.numa_nodes is not None:
        wheres = _order_wheres(search, wheres, hard, free, bool(reqs))

    best: tuple[tuple[int, int], list[tuple[int, _Class, int]], GuestNodes | None] | None = None
    try:
        for where in wheres:
            search.place(where)
            order = sorted(hard, key=lambda i: (search.capacity(i) - reqs[i].count, i))
            if not search.solve(order):
                continue
            for j in soft:
                depth = len(search.stack)
                if not search.solve([j]):
                    search.rollback(depth)
            remote = sum(n * cls.weights[i] for i, cls, n in search.stack
                         if search.loc(cls, i) is not Locality.LOCAL)
            granted = len({i for i, _c, _n in search.stack if reqs[i].soft})
            score = (-granted, remote)
            if best is None or score < best[0]:
                best = (score, list(search.stack), where)
            search.rollback(0)
            if score == (-len(soft), 0):
                break
    except _Budget:
        search.rollback(0)
        if best is None:
            return _nofit(host.name, NoFitCode.SEARCH_LIMIT, ("needs", "need"),
                          "a longer device search than allowed",
                          f"gave up after {max_steps} steps")
    if best is None:
        return _diagnose(host.name, req, search, wheres)
    (_g, remote), stack, where = best
    return Fit(
        host=host.name,
        assignments=_assignments(reqs, stack),
        cells=where.cells if where is not None else (),
        not_granted=tuple(reqs[j] for j in soft if all(i != j for i, _c, _n in stack)),
        wants_pci=bool(reqs),
        free_matching=sum(caps[i] for i in (hard or soft)),
        free_units=len(free),
        remote=remote,
        free_vcpus=host.free_vcpus - req.vcpus,
        free_ram_mb=host.free_ram_mb - req.ram_mb,
    )


def fit_machine(host: HostView, req: BootRequest, *,
                max_steps: int = DEFAULT_MAX_STEPS) -> Fit | NoFit:
    """A bare-metal boot on ``host``: the whole machine, or nothing.

    The machine must be free (no device held by a server: one server per machine) and its
    devices must satisfy the requests, judged as :func:`fit` judges them (whole units, PF/VF
    exclusion) but without a guest NUMA topology (there is no guest). The requests get what
    ``fit`` picks; every other free unit comes along in ``machine``, PFs before their VFs
    and never both (a PF a request's VF leaves unusable stays behind, as do the VFs of a PF
    taken). The host's vCPUs and RAM all go (nothing is left free). ``free_matching`` counts
    every device the machine brings, so the weigher's ``pack`` picks the smallest machine
    that satisfies the boot and ``spread`` the largest. Never changes its inputs.
    """
    free, held = free_units(host.devices)
    if held:
        return _nofit(host.name, NoFitCode.HOST_OCCUPIED, ("runs", "run"),
                      "a server already (a bare-metal machine takes one)",
                      f"{_plural(len(held), 'device')} held")
    got = fit(host, BootRequest(req.vcpus, req.ram_mb, None, req.pci), max_steps=max_steps)
    if isinstance(got, NoFit):
        return got
    taken = set(got.addresses)
    pf_used: set[PciAddress] = set()
    vf_used: set[PciAddress] = set()
    for unit in free:
        if taken.intersection(unit.addresses):
            pf_used |= unit.pfs
            vf_used |= unit.parents
    machine: list[PciAddress] = []
    for unit in sorted(free, key=lambda u: (not u.pfs, u.key)):
        if taken.intersection(unit.addresses):
            continue
        if unit.pfs & vf_used or unit.parents & pf_used:
            continue
        pf_used |= unit.pfs
        vf_used |= unit.parents
        machine.extend(unit.addresses)
    brought = len(taken) + len(machine)
    return replace(got, cells=(), machine=tuple(sorted(machine)), wants_pci=True,
                   free_matching=brought, remote=0, free_vcpus=0, free_ram_mb=0)


def _order_wheres(search: _Search, wheres: list[GuestNodes | None], hard: list[int],
                  free: Sequence[Unit], wants_pci: bool) -> list[GuestNodes | None]:
    """Most promising node sets first: for PCI boots, where most wanted devices are local;
    for others, nodes with fewest free devices (Nova keeps such guests off PCI nodes)."""
    def local_devices(where: GuestNodes | None) -> int:
        total = 0
        for i in hard:
            here = sum(len(c.units) * c.weights[i] for c in search.classes
                       if c.weights[i] and locality(c.nodes[i], where) is Locality.LOCAL)
            total += min(here, search.reqs[i].count)
        return total

    def pci_nearby(where: GuestNodes | None) -> int:
        cells = set(where.cells) if where is not None else set()
        return sum(1 for u in free if any(m.device.numa_node in cells for m in u.members))

    if wants_pci:
        return sorted(wheres, key=lambda w: -local_devices(w))
    return sorted(wheres, key=pci_nearby)


def _assignments(reqs: Sequence[PciRequest], stack: list[tuple[int, _Class, int]]
                 ) -> tuple[Assignment, ...]:
    cursor: dict[int, int] = {}
    got: dict[int, list[Unit]] = {}
    for i, cls, n in stack:
        start = cursor.get(id(cls), 0)
        got.setdefault(i, []).extend(cls.units[start:start + n])
        cursor[id(cls)] = start + n
    out = []
    for i in sorted(got):
        r = reqs[i]
        units = tuple(sorted(got[i], key=lambda u: u.key))
        devices = tuple(m.address for u in units for m in u.members if r.matches(m.device))
        riders = tuple(m.address for u in units for m in u.members if not r.matches(m.device))
        out.append(Assignment(r, units, devices, riders))
    return tuple(out)


def _diagnose(host: str, req: BootRequest, search: _Search,
              wheres: list[GuestNodes | None]) -> NoFit:
    """The first reason, in the order a tenant can act on: too few devices at all, devices
    only in too-large units, devices only on the wrong NUMA nodes, or requests that collide."""
    reqs = req.pci
    hard = [i for i, r in enumerate(reqs) if not r.soft]
    single = len(hard) == 1
    try:
        for i in hard:
            r = reqs[i]
            search.place(None)
            alone = search.solve([i])
            search.rollback(0)
            if not alone:
                return _nofit(host, NoFitCode.PCI_GROUPS, _HAVE, _groups_text(r))
        if req.numa_nodes is not None:
            for i in hard:
                r = reqs[i]
                ok = False
                for where in wheres:
                    search.place(where)
                    ok = search.solve([i])
                    search.rollback(0)
                    if ok:
                        break
                if not ok:
                    what = "them" if single and r.port is None else r.shortage()
                    return _nofit(host, NoFitCode.PCI_NUMA, _HAVE,
                                  f"{what} only {_where_text(r.numa_policy, req.numa_nodes)}")
    except _Budget:
        search.rollback(0)
        return _nofit(host, NoFitCode.SEARCH_LIMIT, ("needs", "need"),
                      "a longer device search than allowed")
    wanted = ", ".join(str(reqs[i]) for i in hard)
    return _nofit(host, NoFitCode.PCI_TOGETHER, ("cannot give", "cannot give"),
                  f"{wanted} at once (PF/VF exclusion or devices wanted by two requests)")
