"""Property tests: the scheduler against a brute-force oracle on tiny random hosts.

The oracle is written independently of ``pcipass.sched`` (its own IOMMU units, PF/VF and NUMA
rules) and enumerates every assignment of free units to requests. Checked: ``fit`` says "no"
only when no assignment exists, every choice it makes obeys the rules, and over a stream of
boots against a small fleet no device is handed out twice, no PF is out together with one of
its VFs, and IOMMU units stay whole.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pcipass.pci.address import PciAddress
from pcipass.pci.alias import NumaPolicy
from pcipass.pci.device import DevType
from pcipass.pci.request import PciRequest
from pcipass.records import DeviceState
from pcipass.sched import (
    BootRequest,
    DeviceView,
    Fit,
    HostView,
    NoPlacement,
    NumaCell,
    Placement,
    dependants,
    fit,
    free_units,
    schedule,
    unit_reasons,
    units,
)
from test_sched import ALIASES, audio, boot, bridge, cells, gpu, host, nvme, pf, vf

USED = {DeviceState.CLAIMED, DeviceState.ALLOCATED, DeviceState.REMOVED}
STATES = [DeviceState.AVAILABLE] * 8 + [DeviceState.ALLOCATED, DeviceState.CLAIMED,
                                        DeviceState.RESERVED]


# --- generators -----------------------------------------------------------------------------------

@st.composite
def tiny_hosts(draw: st.DrawFn, name: str = "h") -> HostView:
    n_cells = draw(st.sampled_from([2, 1]))
    layout = draw(st.sampled_from(["same", "split", "none"]))
    numa_cells = cells(*(
        (i, draw(st.sampled_from([8, 0, 2, 8])), draw(st.sampled_from([8192, 0, 2048, 8192])),
         {"same": 0, "split": i, "none": None}[layout]) for i in range(n_cells)))
    node = st.sampled_from([*range(n_cells), None])
    buses = itertools.count(0x10)
    groups = itertools.count(10)
    devices: list[DeviceView] = []
    for _ in range(draw(st.integers(0, 4)) or draw(st.integers(0, 4))):
        bus, group = next(buses), next(groups)
        state, numa = draw(st.sampled_from(STATES)), draw(node)
        product = draw(st.sampled_from(["20b5", "1eb8"]))
        extra = draw(st.sampled_from(["alone", "alone", "audio", "audio-spec-off", "gpu",
                                      "bridge", "nvme", "no-group", "unreported"]))
        gid: int | None = None if extra == "no-group" else group
        also = [f"0000:{bus:02x}:00.7"] if extra == "unreported" else []
        devices.append(gpu(f"0000:{bus:02x}:00.0", gid, product=product, numa=numa,
                           state=state, reserved=draw(st.booleans()) and draw(st.booleans()),
                           also_in_group=also))
        if extra == "audio":
            devices.append(audio(f"0000:{bus:02x}:00.1", group, numa=numa))
        elif extra == "audio-spec-off":
            devices.append(audio(f"0000:{bus:02x}:00.1", group, numa=numa, assignable=False))
        elif extra == "gpu":
            devices.append(gpu(f"0000:{bus:02x}:00.2", group, numa=numa))
        elif extra == "bridge":
            devices.append(bridge(f"0000:{bus:02x}:00.3", group))
        elif extra == "nvme":
            devices.append(nvme(f"0000:{bus:02x}:00.4", group))
    for _ in range(draw(st.integers(0, 2)) or draw(st.integers(0, 2))):
        bus = next(buses)
        parent = f"0000:{bus:02x}:00.0"
        shared = draw(st.integers(0, 9)) == 0      # no ACS: VFs in the PF's group
        pf_group = next(groups)
        devices.append(pf(parent, pf_group, physnet=draw(st.sampled_from(["physnet1",
                                                                         "physnet2"])),
                          numa=draw(node), state=draw(st.sampled_from(STATES))))
        for i in range(draw(st.integers(0, 3)) or draw(st.integers(0, 3))):
            devices.append(vf(f"0000:{bus:02x}:01.{i}", parent,
                              pf_group if shared else next(groups),
                              physnet=draw(st.sampled_from(["physnet1", "physnet2"])),
                              numa=draw(node), state=draw(st.sampled_from(STATES))))
    return host(*devices, name=name, numa=numa_cells, vcpus=draw(st.sampled_from([16, 2, 16])),
                ram=draw(st.sampled_from([16384, 2048, 16384])))


NAMES = ["gpu", "a100", "vf", "vf2", "pf"]


@st.composite
def boots(draw: st.DrawFn, near: HostView | None = None) -> BootRequest:
    """A boot; with ``near``, mostly one asking for aliases that host has devices for."""
    names = NAMES
    if near is not None and draw(st.integers(0, 4)):
        free = [m.device for u in oracle_free(near) for m in u]
        names = [n for n in NAMES if any(ALIASES[n].matches(d) for d in free)] or NAMES
    picks = draw(st.lists(st.tuples(st.sampled_from(names), st.sampled_from([1, 1, 2])),
                          min_size=1, max_size=2))
    if draw(st.integers(0, 9)) == 0:
        picks = []
    hard = ", ".join(f"{n}:{c}" for n, c in picks) or None
    if draw(st.integers(0, 3)) == 0:   # requests that compete for the same cards
        hard = draw(st.sampled_from(["pf:1, vf:1", "vf:2, pf:1", "gpu:1, a100:1",
                                     "a100:1, gpu:2", "vf:1, vf2:1, pf:1"]))
    soft = draw(st.sampled_from([None, None, None, "gpu:1", "vf:1"]))
    numa = draw(st.sampled_from([1, None, 2, 1]))
    vcpus, ram = draw(st.sampled_from([(2, 2048), (4, 4096), (2, 4096)]))
    policy = draw(st.sampled_from([None, "required", "legacy", "preferred", "socket"]))
    return boot(hard, soft=soft, vcpus=vcpus, ram=ram, numa=numa, policy=policy)


# --- the oracle --------------------------------------------------------------------------------

Unit = tuple[DeviceView, ...]


def oracle_units(h: HostView) -> list[Unit]:
    by = {d.address: d for d in h.devices}
    groups: dict[int, set[PciAddress]] = {}
    for d in h.devices:
        g = d.device.iommu_group
        if g is not None:
            groups.setdefault(g, set()).update({d.address, *d.device.iommu_group_members})
    out = []
    for g, addrs in groups.items():
        if any(x not in by or by[x].device.iommu_group != g for x in addrs):
            continue
        endpoints = [by[x] for x in sorted(addrs)
                     if not by[x].device.class_code.startswith(("0604", "0609"))]
        if endpoints and all(e.device.assignable for e in endpoints):
            out.append(tuple(endpoints))
    return out


def oracle_held(h: HostView, units: list[Unit]) -> set[PciAddress]:
    held = {d.address for d in h.devices if d.state in USED}
    for u in units:
        if any(m.address in held for m in u):
            held.update(m.address for m in u)
    return held


def conflicts(u: Unit, others: set[PciAddress], h: HostView) -> bool:
    """Whether using ``u`` breaks PF/VF exclusion against devices ``others`` in use."""
    inside = {m.address for m in u}
    for m in u:
        dev = m.device
        if dev.dev_type is DevType.VF and dev.parent_addr not in inside \
                and dev.parent_addr in others:
            return True
        if dev.dev_type is DevType.PF and any(
                d.device.parent_addr == m.address and d.address not in inside
                and d.address in others for d in h.devices):
            return True
    return False


def oracle_free(h: HostView) -> list[Unit]:
    units = oracle_units(h)
    held = oracle_held(h, units)
    return [u for u in units
            if all(m.state is DeviceState.AVAILABLE and not m.reserved for m in u)
            and not conflicts(u, held, h)]


def weight(u: Unit, r: PciRequest) -> int:
    if any(m.device.dev_type is DevType.PF for m in u) and r.dev_type is not DevType.PF:
        return 0
    return sum(1 for m in u if r.matches(m.device))


Where = tuple[frozenset[int], frozenset[int] | None]


def numa_ok(policy: NumaPolicy, u: Unit, r: PciRequest, where: Where | None) -> bool:
    if where is None:
        return True
    ids, socket_nodes = where
    nodes = {m.device.numa_node for m in u if r.matches(m.device)}
    known = {n for n in nodes if n is not None}
    unknown = None in nodes
    local = not unknown and known <= ids
    if policy is NumaPolicy.REQUIRED:
        return local
    if policy is NumaPolicy.LEGACY:
        return known <= ids
    if policy is NumaPolicy.SOCKET:
        return local or (not unknown and socket_nodes is not None and known <= socket_nodes)
    return True


def wheres(h: HostView, req: BootRequest) -> list[Where | None]:
    if req.numa_nodes is None:
        return [None]
    n = req.numa_nodes
    fitting = [c for c in h.numa if c.free_cpus >= req.vcpus // n
               and c.free_ram_mb >= req.ram_mb // n]
    sockets_known = all(c.socket is not None for c in h.numa)
    out: list[Where | None] = []
    for combo in itertools.combinations(fitting, n):
        socks = {c.socket for c in combo}
        out.append((frozenset(c.id for c in combo),
                    frozenset(c.id for c in h.numa if c.socket in socks)
                    if sockets_known else None))
    return out


def valid(h: HostView, reqs: Sequence[PciRequest], chosen: Sequence[Sequence[Unit]],
          where: Where | None) -> bool:
    flat = [u for us in chosen for u in us]
    if len({u[0].address for u in flat}) != len(flat):
        return False
    for r, us in zip(reqs, chosen, strict=True):
        if sum(weight(u, r) for u in us) != r.count:
            return False
        if any(weight(u, r) == 0 or not numa_ok(r.numa_policy, u, r, where) for u in us):
            return False
    for u in flat:
        others = {m.address for v in flat if v is not u for m in v}
        if conflicts(u, others, h):
            return False
    return True


def _subsets(units: list[Unit], r: PciRequest) -> list[tuple[Unit, ...]]:
    """Every set of units whose matching functions add up to exactly ``r.count``."""
    useful = [u for u in units if weight(u, r)]
    return [combo for k in range(1, r.count + 1) for combo in itertools.combinations(useful, k)
            if sum(weight(u, r) for u in combo) == r.count]


def _assignments(units: list[Unit], reqs: Sequence[PciRequest]
                 ) -> list[list[tuple[Unit, ...]]]:
    """Every way to give each request its own units (exhaustive: a unit counts >= 1)."""
    if not reqs:
        return [[]]
    out = []
    for combo in _subsets(units, reqs[0]):
        rest = [u for u in units if u not in combo]
        out.extend([[combo, *tail] for tail in _assignments(rest, reqs[1:])])
    return out


def oracle_fits(h: HostView, req: BootRequest) -> bool:
    if req.vcpus > h.free_vcpus or req.ram_mb > h.free_ram_mb:
        return False
    if req.numa_nodes is not None and len(h.numa) < req.numa_nodes:
        return False
    hard = req.hard
    options = _assignments(oracle_free(h), hard)
    return any(valid(h, hard, chosen, where)
               for where in wheres(h, req) for chosen in options)


def check_fit(h: HostView, req: BootRequest, f: Fit) -> None:
    """Everything a Fit claims obeys the rules, judged by the oracle's own reading."""
    free = {u[0].address: u for u in oracle_free(h)}
    reqs = [x.request for x in f.assignments]
    chosen = []
    for x in f.assignments:
        us = []
        for unit in x.units:
            assert unit.key in free, f"{unit.key} is not a free unit"
            ours = free[unit.key]
            assert tuple(m.address for m in ours) == unit.addresses
            us.append(ours)
        chosen.append(us)
        matched = {m.address for u in us for m in u if x.request.matches(m.device)}
        assert set(x.devices) == matched
    where: Where | None = None
    if req.numa_nodes is not None:
        assert len(f.cells) == req.numa_nodes
        sockets_known = all(c.socket is not None for c in h.numa)
        socks = {c.socket for c in h.numa if c.id in f.cells}
        where = (frozenset(f.cells), frozenset(c.id for c in h.numa if c.socket in socks)
                 if sockets_known else None)
        for c in h.numa:
            if c.id in f.cells:
                assert c.free_cpus >= req.vcpus // req.numa_nodes
                assert c.free_ram_mb >= req.ram_mb // req.numa_nodes
    assert valid(h, reqs, chosen, where)
    assert {r.alias for r in req.hard} <= {x.request.alias for x in f.assignments}
    assert len(f.assignments) + len(f.not_granted) == len(req.pci)


# --- properties ---------------------------------------------------------------------------

SETTINGS = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.data())
def test_fit_agrees_with_the_oracle(data: st.DataObject) -> None:
    h = data.draw(tiny_hosts(), label="host")
    req = data.draw(boots(near=h), label="boot")
    verdict = fit(h, req)
    expected = oracle_fits(h, req)
    event("fit" if isinstance(verdict, Fit) else f"no fit: {verdict.code.value}")
    event(f"hard requests: {len(req.hard)}, guest NUMA: {req.numa_nodes}")
    assert isinstance(verdict, Fit) is expected, verdict
    if isinstance(verdict, Fit):
        check_fit(h, req, verdict)


@SETTINGS
@given(tiny_hosts())
def test_free_units_are_those_without_reasons(h: HostView) -> None:
    free, _held = free_units(h.devices)
    reasons = unit_reasons(h.devices)
    assert {u.key for u in free} == {
        u.key for u in units(h.devices) if not any(a in reasons for a in u.addresses)}
    assert {u[0].address for u in oracle_free(h)} == {u.key for u in free}
    for u in free:
        assert all(m.free for m in u.members)


def _apply(h: HostView, f: Fit, req: BootRequest) -> HostView:
    """What the store does after a claim: devices claimed, dependants recomputed."""
    claimed = {a for x in f.assignments for a in x.devices}
    devices = [replace(d, state=DeviceState.CLAIMED) if d.address in claimed else d
               for d in h.devices]
    deps = dependants(devices)
    devices = [replace(d, state=DeviceState.UNAVAILABLE if d.address in deps
                       else DeviceState.AVAILABLE)
               if d.state in (DeviceState.AVAILABLE, DeviceState.UNAVAILABLE) else d
               for d in devices]
    numa: tuple[NumaCell, ...] = h.numa
    if req.numa_nodes:
        per_cpu, per_ram = req.vcpus // req.numa_nodes, req.ram_mb // req.numa_nodes
        numa = tuple(replace(c, free_cpus=c.free_cpus - per_cpu,
                             free_ram_mb=c.free_ram_mb - per_ram) if c.id in f.cells else c
                     for c in h.numa)
    return replace(h, free_vcpus=h.free_vcpus - req.vcpus, free_ram_mb=h.free_ram_mb - req.ram_mb,
                   numa=numa, devices=tuple(devices))


def _check_fleet(fleet: dict[str, HostView], owners: dict[tuple[str, PciAddress], int]) -> None:
    for name, h in fleet.items():
        by = {d.address: d for d in h.devices}

        def holder(addr: PciAddress, name: str = name,
                   by: dict[PciAddress, DeviceView] = by) -> int | str | None:
            """Our server holding ``addr``, "other" for a use that predates the stream."""
            if (name, addr) in owners:
                return owners[(name, addr)]
            d = by.get(addr)
            return "other" if d is not None and d.state in USED else None

        for u in oracle_units(h):
            owned = {owners.get((name, m.address)) for m in u}
            if owned - {None}:
                # A unit a boot took is wholly that boot's, and wholly out of the pool.
                assert len(owned) == 1, f"unit {u[0].address} split between servers"
                assert all(m.state is not DeviceState.AVAILABLE for m in u)
        for d in h.devices:
            mine = owners.get((name, d.address))
            if mine is None:
                continue
            assert d.state is not DeviceState.AVAILABLE
            dev = d.device
            if dev.dev_type is DevType.VF and dev.parent_addr is not None:
                theirs = holder(dev.parent_addr)
                assert theirs in (None, mine), f"{d.address} handed out while its PF is used"
            if dev.dev_type is DevType.PF:
                for v in h.devices:
                    if v.device.parent_addr == d.address:
                        theirs = holder(v.address)
                        assert theirs in (None, mine), f"PF {d.address} out with VF {v.address}"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_streams_never_double_assign(data: st.DataObject) -> None:
    hosts = data.draw(st.lists(tiny_hosts(), min_size=1, max_size=3), label="fleet")
    length = data.draw(st.integers(1, 8), label="boots")
    fleet = {f"h{i}": replace(h, name=f"h{i}") for i, h in enumerate(hosts)}
    owners: dict[tuple[str, PciAddress], int] = {}
    for server in range(length):
        near = data.draw(st.sampled_from(sorted(fleet)), label="aimed at")
        req = data.draw(boots(near=fleet[near]), label=f"boot {server}")
        placed = schedule(list(fleet.values()), req)
        event("placed" if isinstance(placed, Placement) else "refused")
        if isinstance(placed, NoPlacement):
            for h in fleet.values():
                assert not oracle_fits(h, req), f"{h.name} could have taken {req.describe()}"
            assert placed.message.startswith("No host can satisfy")
            continue
        assert isinstance(placed, Placement)
        best = placed.best
        h = fleet[best.host]
        check_fit(h, req, best)
        for x in best.assignments:
            for addr in x.addresses:
                assert (h.name, addr) not in owners, f"{addr} handed out twice"
                owners[(h.name, addr)] = server
        fleet[best.host] = _apply(h, best, req)
        _check_fleet(fleet, owners)


def test_oracle_sees_a_simple_fit() -> None:
    # Guards the oracle itself: it must find what is plainly there, and refuse what is not.
    h = host(gpu("0000:3b:00.0", 10), pf("0000:af:00.0", 20),
             vf("0000:af:01.0", "0000:af:00.0", 21))
    assert oracle_fits(h, boot("gpu:1, vf:1"))
    assert not oracle_fits(h, boot("pf:1, vf:1"))
    assert not oracle_fits(h, boot("gpu:2"))
    assert ALIASES["gpu"].matches(h.devices[0].device)
