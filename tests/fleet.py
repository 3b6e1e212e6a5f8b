"""Builders and invariant checks shared by the services, claims and concurrency tests.

Hosts come from the demo's profiles (discovered once per profile and session) or from small
hand-made device lists; :func:`check_invariants` recounts everything the store derives
from ownership and compares it with what the store keeps.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import select

from pcipass.config import Settings, load_settings
from pcipass.host.discovery import discover
from pcipass.host.profiles import build_host, suggested_device_spec
from pcipass.pci.address import PciAddress
from pcipass.pci.device import DevType, HostInfo, NumaNode, PciDevice
from pcipass.pci.devspec import DeviceSpecSet, parse_device_spec
from pcipass.pci.inventory import Inventory
from pcipass.records import DeviceState, Principal, Role, ServerStatus
from pcipass.sched.snapshot import HostView
from pcipass.services import Cloud
from pcipass.store import Store
from pcipass.store.derive import Target, derive, kind_usable, load_rows, recount
from pcipass.store.schema import (
    devices,
    host_kind_sets,
    host_kinds,
    hosts,
    kind_sets,
    moves,
    pool_kinds,
    pools,
    servers,
)

T0 = datetime(2024, 11, 26, 12, 0, tzinfo=UTC)


class Clock:
    """The store's clock, moved by the test: time-outs without sleeping."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


ADMIN = Principal("admin-token", Role.ADMIN)
LIVE = (ServerStatus.BUILDING, ServerStatus.ACTIVE, ServerStatus.DELETING,
        ServerStatus.RESIZE, ServerStatus.MIGRATING, ServerStatus.VERIFY_RESIZE)
OPEN_MOVES = ("claimed", "moving", "verify", "confirming", "reverting", "deleting")


def current_mark(move: Any) -> int | None:
    """The ``devices.move_id`` of the side a moving server's row describes (the other side's
    devices carry the other value): the destination's devices keep the move's id until the
    move is confirmed, when the marks swap."""
    return int(move.id) if move.on_dest and move.status in ("verify", "reverting") else None


def other_side(move: Any) -> tuple[int, dict[str, Any]] | None:
    """The host and values of a move's side that the server row does not describe, while it
    still holds devices (and vCPUs and RAM) there."""
    if move.status not in OPEN_MOVES or move.status == "deleting" or (
            move.status == "reverting" and not move.on_dest):
        return None
    return ((move.source_host_id, move.source) if move.on_dest
            else (move.dest_host_id, move.dest))


def member(project: str) -> Principal:
    return Principal(f"member-{project}", Role.MEMBER, project=project)


def a(text: str) -> PciAddress:
    return PciAddress.parse(text)


# --- hand-made devices ----------------------------------------------------------------------

HOST = HostInfo(hostname="h", cpus=64, memory_mb=262144,
                numa_nodes=(NumaNode(0, tuple(range(32)), 131072),
                            NumaNode(1, tuple(range(32, 64)), 131072)))


def gpu(address: str, *, group: int, numa: int = 0, product: str = "20f1",
        members: Sequence[str] = (), **kw: Any) -> PciDevice:
    addr = a(address)
    return PciDevice(address=addr, vendor_id="10de", product_id=product,
                     class_code="030200", numa_node=numa, iommu_group=group,
                     iommu_group_members=tuple(a(m) for m in members) or (addr,),
                     driver="vfio-pci", assignable=True, **kw)


def audio(address: str, *, group: int, numa: int = 0, members: Sequence[str] = ()
          ) -> PciDevice:
    addr = a(address)
    return PciDevice(address=addr, vendor_id="10de", product_id="1aef", class_code="040300",
                     numa_node=numa, iommu_group=group,
                     iommu_group_members=tuple(a(m) for m in members) or (addr,),
                     driver="vfio-pci", assignable=True)


def pf(address: str, *, group: int, numa: int = 0, assignable: bool = False,
       vfs: int = 4) -> PciDevice:
    addr = a(address)
    return PciDevice(address=addr, vendor_id="8086", product_id="1592", class_code="020000",
                     dev_type=DevType.PF, total_vfs=64, num_vfs=vfs, numa_node=numa,
                     iommu_group=group, iommu_group_members=(addr,), driver="ice",
                     assignable=assignable, tags={"physical_network": "physnet1"}
                     if assignable else {})


def vf(address: str, parent: str, *, group: int | None, numa: int = 0,
       net: str = "physnet1") -> PciDevice:
    addr = a(address)
    return PciDevice(address=addr, vendor_id="8086", product_id="1889", class_code="020000",
                     dev_type=DevType.VF, parent_addr=a(parent), numa_node=numa,
                     iommu_group=group, iommu_group_members=(addr,) if group is not None
                     else (), driver="iavf", assignable=True, tags={"physical_network": net})


def inventory(*devices: PciDevice, host: HostInfo = HOST) -> Inventory:
    return Inventory(host, tuple(devices))


def two_gpus(numa: tuple[int, int] = (0, 1)) -> Inventory:
    return inventory(gpu("0000:3b:00.0", group=10, numa=numa[0]),
                     gpu("0000:5e:00.0", group=11, numa=numa[1]))


# --- demo profiles --------------------------------------------------------------------------

def host_inventory(root: Path, profile: str, spec: Sequence[dict[str, str]] | None = None,
                   index: int = 0) -> Inventory:
    """Build ``profile``'s sysfs under ``root`` and discover it under ``spec`` (the profile's
    suggested device spec by default), as the host's agent would report it."""
    build_host(root, profile, index=index)
    entries = suggested_device_spec(profile) if spec is None else spec
    specs = DeviceSpecSet(tuple(s for i, entry in enumerate(entries)
                                for s in parse_device_spec(entry, position=i)))
    found = discover(root)
    return Inventory(host=found.host, devices=specs.apply(found.devices))


@cache
def profile_inventory(profile: str) -> Inventory:
    """A host of ``profile`` as its agent would report it, in a directory of its own."""
    return host_inventory(Path(tempfile.mkdtemp(prefix=f"pcipass-{profile}-")), profile)


def settings(**scheduler: Any) -> Settings:
    base = load_settings(None, {})
    return replace(base, scheduler=replace(base.scheduler, **scheduler))


def cloud_of(store: Store, **scheduler: Any) -> Cloud:
    return Cloud(store, settings(**scheduler))


GPU_ALIASES = [
    {"name": "gpu", "vendor_id": "10de", "product_id": "20f1", "device_type": "type-PCI"},
    {"name": "a6000", "vendor_id": "10de", "product_id": "2230", "device_type": "type-PCI"},
    {"name": "vf", "vendor_id": "8086", "device_type": "type-VF",
     "match": {"physical_network": "physnet1"}},
    {"name": "pf", "vendor_id": "8086", "product_id": "1592", "device_type": "type-PF"},
]


def catalog(cloud: Cloud, flavors: dict[str, dict[str, str]], *, vcpus: int = 2,
            ram_mb: int = 2048) -> None:
    """The usual aliases, one public image ``img`` and the given flavors."""
    cloud.create_aliases(ADMIN, GPU_ALIASES)
    cloud.create_image(ADMIN, name="img", source="/images/img.qcow2", properties={})
    for name, specs in flavors.items():
        cloud.create_flavor(ADMIN, name=name, vcpus=vcpus, ram_mb=ram_mb, disk_gb=1,
                            extra_specs=specs)


def report(store: Store, host: str, inv: Inventory) -> None:
    store.report_inventory(host, None, inv, now=T0)


def confirm_destroys(cloud: Cloud) -> None:
    """Play every host's agent for deletes: each open destroy task succeeds."""
    for host in cloud.store.list_hosts(limit=1000).items:
        for task in cloud.tasks.poll(ADMIN, host.name):
            if task.kind == "destroy":
                assert cloud.tasks.result(ADMIN, task.id, ok=True, message=None,
                                          domain_xml=None)


# --- invariants -----------------------------------------------------------------------------

def everything(store: Store) -> list[HostView]:
    """Every host as the scheduler would see it: a full snapshot."""
    with store._tx.read() as conn:
        ids = list(conn.execute(select(hosts.c.id).order_by(hosts.c.name)).scalars())
    return store.host_views(ids)


def check_invariants(store: Store) -> None:
    """Everything the store derives from ownership equals a recount from the devices:

    every device has at most one owner, and only a live server owns devices; every live
    server holds exactly what it asked for (hard and granted soft requests) and nothing
    else, on its host; a moving server holds, besides, exactly what its move's other side
    asked for, on that side's host, told apart by ``devices.move_id`` (no device carries a
    move id outside an open move); dependants, reasons and pool counts are what ``derive``
    says; hosts' vCPU, RAM and ``pci_free`` counters equal the sum over their live servers
    (and moves' other sides) and pools; every server in ERROR says why.
    """
    with store._tx.read() as conn:
        server_rows = {r.id: r for r in conn.execute(select(servers))}
        host_rows = list(conn.execute(select(hosts)))
        owned: Counter[tuple[str, str]] = Counter()
        owned_other: Counter[tuple[str, str]] = Counter()
        move_of = dict(conn.execute(select(devices.c.id, devices.c.move_id)).all())
        open_rows = list(conn.execute(select(moves).where(moves.c.status.in_(OPEN_MOVES))))
        open_moves = {r.server_id: r for r in open_rows}
        assert len(open_moves) == len(open_rows), "a server with two open moves"
        for h in host_rows:
            rows = load_rows(conn, h.id)
            derived = derive([Target(r.tracked, r.owner_alias) for r in
                              sorted(rows.values(), key=lambda r: r.address)])
            for d in derived:
                stored = rows[d.address]
                assert stored.tracked.state is d.tracked.state, (h.name, d.address)
                assert stored.reason == d.reason, (h.name, d.address, stored.reason, d.reason)
                owner = stored.tracked.owner
                if owner is not None:
                    server = server_rows.get(owner)
                    assert server is not None, f"{d.address} owned by unknown {owner}"
                    assert ServerStatus(server.status) in LIVE, (owner, server.status)
                    mv = open_moves.get(owner)
                    mark = move_of[stored.id]
                    if mv is not None and mv.status == "deleting":
                        # Deleted mid-move: each host holds its part until it destroys it.
                        assert h.id in (mv.source_host_id, mv.dest_host_id), (owner, h.name)
                        assert mark in (None, mv.id), (owner, d.address, mark)
                        assert ServerStatus(server.status) is ServerStatus.DELETING
                        continue
                    if mv is None or mark == current_mark(mv):
                        assert mv is not None or mark is None, (owner, d.address, mark)
                        assert server.host_id == h.id, (owner, h.name)
                        side = owned
                    else:
                        assert mark in (None, mv.id), (owner, d.address, mark)
                        held = other_side(mv)
                        assert held is not None and held[0] == h.id, (owner, h.name, mv.status)
                        side = owned_other
                    if stored.owner_alias is not None:
                        side[(owner, stored.owner_alias)] += 1
                else:
                    assert stored.owner_alias is None
                    assert move_of[stored.id] is None, (h.name, d.address)
                    assert d.tracked.state not in (DeviceState.CLAIMED, DeviceState.ALLOCATED)
            counts = recount(derived)
            kept = {r.key: (r.total, r.free, r.usable, r.kind) for r in conn.execute(
                select(pools, pool_kinds.c.digest.label("kind"))
                .join(pool_kinds, pool_kinds.c.id == pools.c.kind_id, isouter=True)
                .where(pools.c.host_id == h.id, pools.c.total > 0))}
            assert kept == {k.digest: (c.total, c.free, c.usable, k.kind.digest)
                            for k, c in counts.items()}
            assert h.pci_free == sum(1 for d in derived if d.usable), h.name
            per_kind = {kind.digest: n for kind, n in kind_usable(counts).items()}
            by_id = dict(conn.execute(
                select(pool_kinds.c.digest, host_kinds.c.kind_id)
                .join(pool_kinds, pool_kinds.c.id == host_kinds.c.kind_id)
                .where(host_kinds.c.host_id == h.id)).all())
            assert dict(conn.execute(
                select(pool_kinds.c.digest, host_kinds.c.usable)
                .join(pool_kinds, pool_kinds.c.id == host_kinds.c.kind_id)
                .where(host_kinds.c.host_id == h.id)).all()) == per_kind, h.name
            usable_by_id = {by_id[d]: n for d, n in per_kind.items()}
            sums = dict(conn.execute(select(host_kind_sets.c.set_id, host_kind_sets.c.usable)
                                     .where(host_kind_sets.c.host_id == h.id)).all())
            for set_id, kinds in conn.execute(select(kind_sets.c.id, kind_sets.c.kind_ids)):
                assert sums.get(set_id, 0) == sum(usable_by_id.get(k, 0) for k in kinds), (
                    h.name, kinds)
            live = [(s.vcpus, s.ram_mb, s.numa_cells) for s in server_rows.values()
                    if s.host_id == h.id and ServerStatus(s.status) in LIVE]
            live += [(side["vcpus"], side["ram_mb"], side["numa_cells"])
                     for mv in open_moves.values() for held in [other_side(mv)]
                     if held is not None and held[0] == h.id for side in [held[1]]]
            assert h.used_vcpus == sum(v for v, _r, _c in live), h.name
            assert h.used_ram_mb == sum(r for _v, r, _c in live), h.name
            per_node: Counter[str] = Counter()
            for vcpus, _ram, cells in live:
                for cell in cells:
                    per_node[str(cell)] += vcpus // len(cells)
            assert {k: v[0] for k, v in h.numa_used.items() if v[0]} == dict(per_node)
    for s in server_rows.values():
        status = ServerStatus(s.status)
        if status is ServerStatus.ERROR:
            assert s.fault, s.id
        wanted: Counter[str] = Counter()
        if status in LIVE:
            skipped = Counter(str(x) for x in s.not_granted)
            for alias, count, soft in s.requests:
                if soft and skipped[f"{count} x {alias}"]:
                    skipped[f"{count} x {alias}"] -= 1
                    continue
                wanted[alias] += count
        mv = open_moves.get(s.id)
        if mv is not None and mv.status == "deleting":
            continue    # what each host still holds was checked above
        got = Counter({alias: n for (owner, alias), n in owned.items() if owner == s.id})
        assert got == wanted, (s.id, s.status, dict(got), dict(wanted))
        held = other_side(mv) if mv is not None else None
        wanted_other = _wanted(held[1]["requests"], held[1]["not_granted"]) if held else Counter()
        got_other = Counter({alias: n for (owner, alias), n in owned_other.items()
                             if owner == s.id})
        assert got_other == wanted_other, (s.id, s.status, dict(got_other), dict(wanted_other))


def _wanted(requests: Iterable[Sequence[Any]], not_granted: Iterable[str]) -> Counter[str]:
    skipped = Counter(str(x) for x in not_granted)
    wanted: Counter[str] = Counter()
    for alias, count, soft in requests:
        if soft and skipped[f"{count} x {alias}"]:
            skipped[f"{count} x {alias}"] -= 1
            continue
        wanted[alias] += count
    return wanted


def statuses(records: Iterable[Any]) -> list[str]:
    return [r.status.value for r in records]
