"""Derived device state, and the one writer that keeps it in step with ownership.

Ownership is primary: ``state`` (claimed, allocated, removed), ``owner``, ``owner_alias`` and the
``reserved`` flag. Everything else about a host's devices follows from those and the
discovered facts, and is recomputed for the whole host by every writer, in its transaction,
with the host row locked:

- dependants (:func:`pcipass.sched.units.dependants`) are ``unavailable``, and a device that
  stops being one is ``available`` again;
- ``reason``: why a device cannot be handed out now (None while a server holds it);
- pool counts: ``total``, ``free`` (available, not reserved) and ``usable`` (free with no
  reason: what a claim may take, and what the scheduler's SQL counts), recounted from the
  devices rather than moved by deltas, so they cannot drift;
- the host's ``pci_free`` (its pools' usable sum).

A writer loads the host's rows (:func:`load_rows`), says what every device should be
(:class:`Target`: the primary state) and calls :func:`write_host`, then
:func:`~pcipass.store.pools.drop_empty_pools` once no device points at an emptied pool.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, update

from pcipass.errors import NotFound
from pcipass.pci.address import PciAddress
from pcipass.pci.pool import pool_key
from pcipass.pci.reconcile import Tracked
from pcipass.records import DeviceRecord, DeviceState
from pcipass.sched.snapshot import DeviceView
from pcipass.sched.units import dependants, unit_reasons
from pcipass.store.engine import Transactions
from pcipass.store.facts import FactsCache
from pcipass.store.kinds import Kind, KindIds, StoreKey
from pcipass.store.kindsets import move_host_sets, sync_host_sets
from pcipass.store.pools import drop_empty_pools
from pcipass.store.rows import pool_values, to_record, to_tracked, tracked_values
from pcipass.store.schema import device_tags, devices, host_kinds, hosts, pools

# Bump when the rules below change: hosts computed with an older version are recomputed
# when the store opens (refresh_hosts).
DERIVED_VERSION = 1

_BOOKKEEPING = ("state", "held_state", "reserved", "owner", "owner_alias", "reason", "pool_id")


@dataclass(frozen=True, slots=True)
class Row:
    """A device row as stored."""

    id: int
    tracked: Tracked
    owner_alias: str | None
    reason: str | None
    pool_id: int | None

    @property
    def address(self) -> PciAddress:
        return self.tracked.address


@dataclass(frozen=True, slots=True)
class Target:
    """What a writer wants a device to be: facts and primary state (``unavailable`` is
    recomputed whatever it says)."""

    tracked: Tracked
    owner_alias: str | None = None

    @property
    def address(self) -> PciAddress:
        return self.tracked.address


@dataclass(frozen=True, slots=True)
class Derived:
    tracked: Tracked
    owner_alias: str | None
    reason: str | None
    usable: bool
    key: StoreKey | None

    @property
    def address(self) -> PciAddress:
        return self.tracked.address

    @property
    def free(self) -> bool:
        return self.tracked.state is DeviceState.AVAILABLE and not self.tracked.reserved


def shown_reason(t: Tracked, unit_reason: str | None) -> str | None:
    """The reason ``device show`` prints: the store's own words for its own states, else the
    scheduler's (IOMMU groups, VMD, PF/VF exclusion); None while a server holds the device."""
    if t.state is DeviceState.REMOVED:
        return "vanished from the host while in use; kept for its owner"
    if not t.device.assignable:
        if t.in_use:
            return "no longer selected by the device spec; leaves service when freed"
        return "not selected by the device spec"
    if t.in_use:
        return None
    if t.reserved:
        return "reserved by an operator"
    return unit_reason


def derive(targets: Sequence[Target]) -> list[Derived]:
    """Every device of one host with its derived state, reason, usability and pool."""
    # The primary states: ``unavailable`` is what this recomputes, so it reads as available.
    primary = [DeviceView(t.tracked.device, DeviceState.AVAILABLE
                          if t.tracked.state is DeviceState.UNAVAILABLE else t.tracked.state,
                          t.tracked.reserved) for t in targets]
    deps = dependants(primary)
    final: list[Tracked] = []
    for t in targets:
        tr = t.tracked
        if tr.address in deps:
            tr = replace(tr, state=DeviceState.UNAVAILABLE)
        elif tr.state is DeviceState.UNAVAILABLE:
            tr = replace(tr, state=DeviceState.AVAILABLE)
        final.append(tr)
    # Reasons from the primary states name the cause (a reserved mate, a used VF) rather
    # than the dependant's own "unavailable"; they block no less than fit does on the final
    # states, so the usable counts stay an upper bound of what fit can take.
    why = unit_reasons(primary)
    out = []
    for t, tr in zip(targets, final, strict=True):
        unit_reason = why.get(tr.address)
        pk = pool_key(tr.device)
        key = None if pk is None or tr.state is DeviceState.REMOVED else StoreKey(
            pk, Kind.of(tr.device))
        usable = (key is not None and tr.state is DeviceState.AVAILABLE and not tr.reserved
                  and unit_reason is None)
        owner_alias = t.owner_alias if tr.owner is not None else None
        out.append(Derived(tr, owner_alias, shown_reason(tr, unit_reason), usable, key))
    return out


# --- reading -------------------------------------------------------------------------------

_ROW_COLUMNS = [c for c in devices.c if c.name not in ("host_id", "updated_at")]


_BOOKKEEPING_COLUMNS = (devices.c.id, devices.c.address, devices.c.state,
                        devices.c.held_state, devices.c.reserved, devices.c.owner,
                        devices.c.owner_alias, devices.c.reason, devices.c.pool_id)


_BOOKKEEPING_Q = select(*_BOOKKEEPING_COLUMNS).where(devices.c.host_id == bindparam("host_id"))


def load_rows(conn: Connection, host_id: int, *,
              cached: tuple[FactsCache, int] | None = None) -> dict[PciAddress, Row]:
    """The host's devices as stored, by address. With ``cached`` (the facts cache and the
    host's generation, read under its lock) only the bookkeeping columns are read."""
    out: dict[PciAddress, Row] = {}
    if cached is None:
        for r in conn.execute(select(*_ROW_COLUMNS).where(devices.c.host_id == host_id)):
            t = to_tracked(r)
            out[t.address] = Row(r.id, t, r.owner_alias, r.reason, r.pool_id)
        return out
    cache, generation = cached
    rows = conn.execute(_BOOKKEEPING_Q, {"host_id": host_id}).all()
    facts = cache.get(conn, [(host_id, generation, [r.address for r in rows])]).get(
        host_id, {})
    for r in rows:
        held = r.held_state
        t = Tracked(device=facts[r.address], state=DeviceState(r.state),
                    reserved=bool(r.reserved), owner=r.owner,
                    held_state=None if held is None else DeviceState(held))
        out[t.address] = Row(r.id, t, r.owner_alias, r.reason, r.pool_id)
    return out


def targets_of(rows: Iterable[Row]) -> list[Target]:
    """The rows as they are, to be re-derived (or changed by the caller)."""
    return [Target(r.tracked, r.owner_alias) for r in sorted(rows, key=lambda r: r.address)]


# --- writing -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PoolCount:
    total: int = 0
    free: int = 0
    usable: int = 0


def recount(derived: Iterable[Derived]) -> dict[StoreKey, PoolCount]:
    counts: dict[StoreKey, PoolCount] = {}
    for d in derived:
        if d.key is None:
            continue
        c = counts.get(d.key, PoolCount())
        counts[d.key] = PoolCount(c.total + 1, c.free + d.free, c.usable + d.usable)
    return counts


_POOL_COUNTS = (update(pools).where(pools.c.id == bindparam("b_id"))
                .values(total=bindparam("b_total"), free=bindparam("b_free"),
                        usable=bindparam("b_usable")))
_HOST_POOLS = select(pools.c.id, pools.c.key, pools.c.total, pools.c.free, pools.c.usable,
                     pools.c.kind_id).where(pools.c.host_id == bindparam("host_id"))


def _stored_key(r: Row) -> StoreKey | None:
    pk = pool_key(r.tracked.device) if r.pool_id is not None else None
    return None if pk is None else StoreKey(pk, Kind.of(r.tracked.device))


def sync_known_pools(conn: Connection, rows: Mapping[PciAddress, Row],
                     counts: Mapping[StoreKey, PoolCount]) -> dict[StoreKey, int] | None:
    """When every pool ``counts`` names already holds one of ``rows`` (a bookkeeping write:
    claims, frees, ``reserved``): move the counts without reading the pool rows, since the
    stored counts are the recount of the stored rows. None when a pool is new."""
    ids: dict[StoreKey, int] = {}
    before: dict[int, list[int]] = {}
    for r in rows.values():
        key = _stored_key(r)
        if key is None or r.pool_id is None:
            continue
        ids[key] = r.pool_id
        c = before.setdefault(r.pool_id, [0, 0, 0])
        t = r.tracked
        free = t.state is DeviceState.AVAILABLE and not t.reserved
        c[0] += 1
        c[1] += free
        c[2] += free and r.reason is None
    if any(k not in ids for k in counts):
        return None
    after = {ids[k]: [c.total, c.free, c.usable] for k, c in counts.items()}
    changed = [{"b_id": i, "b_total": a[0], "b_free": a[1], "b_usable": a[2]}
               for i, a in after.items() if before.get(i) != a]
    changed += [{"b_id": i, "b_total": 0, "b_free": 0, "b_usable": 0}
                for i in before if i not in after]
    if changed:
        conn.execute(_POOL_COUNTS, changed)
    return {k: ids[k] for k in counts}


def sync_pool_rows(conn: Connection, host_id: int, counts: Mapping[StoreKey, PoolCount],
                   kind_ids: KindIds) -> dict[StoreKey, int]:
    """Make the host's pool rows hold ``counts``; pools no longer counted get zeros (and go
    with drop_empty_pools once no device points at them). Returns each key's pool id."""
    existing = {r.key: r for r in conn.execute(_HOST_POOLS, {"host_id": host_id})}
    unkinded = [(r.id, k) for k in counts if (r := existing.get(k.digest)) is not None
                and r.kind_id is None]   # rows written before pool kinds existed
    if unkinded:
        known = kind_ids.ensure(conn, {k.kind for _i, k in unkinded})
        conn.execute(update(pools).where(pools.c.id == bindparam("b_id"))
                     .values(kind_id=bindparam("b_kind")),
                     [{"b_id": i, "b_kind": known[k.kind]} for i, k in unkinded])
    ids: dict[StoreKey, int] = {}
    changed: list[dict[str, Any]] = []
    missing: list[StoreKey] = []
    for key, c in counts.items():
        row = existing.pop(key.digest, None)
        if row is None:
            missing.append(key)
            continue
        ids[key] = row.id
        if (row.total, row.free, row.usable) != (c.total, c.free, c.usable):
            changed.append({"b_id": row.id, "b_total": c.total, "b_free": c.free,
                            "b_usable": c.usable})
    changed += [{"b_id": r.id, "b_total": 0, "b_free": 0, "b_usable": 0}
                for r in existing.values() if (r.total, r.free, r.usable) != (0, 0, 0)]
    if changed:
        conn.execute(_POOL_COUNTS, changed)
    if missing:
        missing.sort(key=lambda k: (k.pool.sort_key, k.kind.digest))
        kinds = kind_ids.ensure(conn, {k.kind for k in missing})
        created: dict[str, int] = dict(conn.execute(
            insert(pools).returning(pools.c.key, pools.c.id),
            [{"host_id": host_id, **pool_values(k.pool), "key": k.digest,
              "kind_id": kinds[k.kind], "total": counts[k].total, "free": counts[k].free,
              "usable": counts[k].usable} for k in missing],
        ).all())
        for key in missing:
            ids[key] = created[key.digest]
    return ids


def _bookkeeping(d: Derived, pool_id: int | None) -> dict[str, Any]:
    t = d.tracked
    return {
        "state": t.state.value,
        "held_state": None if t.held_state is None else t.held_state.value,
        "reserved": t.reserved,
        "owner": t.owner,
        "owner_alias": d.owner_alias,
        "reason": d.reason,
        "pool_id": pool_id,
    }


def _stored_bookkeeping(r: Row) -> dict[str, Any]:
    t = r.tracked
    return {
        "state": t.state.value,
        "held_state": None if t.held_state is None else t.held_state.value,
        "reserved": t.reserved,
        "owner": t.owner,
        "owner_alias": r.owner_alias,
        "reason": r.reason,
        "pool_id": r.pool_id,
    }


_FULL_UPDATE = (
    update(devices)
    .where(devices.c.id == bindparam("b_id"))
    .values({c.name: bindparam(f"b_{c.name}")
             for c in devices.c if c.name not in ("id", "host_id", "move_id")})
)
_BOOKKEEPING_UPDATE = (
    update(devices)
    .where(devices.c.id == bindparam("b_id"))
    .values({name: bindparam(f"b_{name}") for name in (*_BOOKKEEPING, "updated_at")})
)


@dataclass(frozen=True, slots=True)
class Written:
    """The devices whose derived state was recomputed (every one, or those around the
    devices a bookkeeping write changed)."""

    derived: dict[PciAddress, Derived]


def _primary(t: Tracked, alias: str | None) -> tuple[object, ...]:
    state = DeviceState.AVAILABLE if t.state is DeviceState.UNAVAILABLE else t.state
    return (state, t.reserved, t.owner, t.held_state, alias if t.owner is not None else None)


def related(tracked: Mapping[PciAddress, Tracked], seeds: Iterable[PciAddress]
            ) -> set[PciAddress]:
    """``seeds`` and every device whose derived state can depend on theirs: the closure over
    IOMMU group mates (by group and by member list), parent PFs and PFs' VFs. Devices outside
    it keep their derived state whatever the seeds' states become."""
    by_group: dict[int, list[PciAddress]] = {}
    vfs_of: dict[PciAddress, list[PciAddress]] = {}
    for address, t in tracked.items():
        dev = t.device
        if dev.iommu_group is not None:
            by_group.setdefault(dev.iommu_group, []).append(address)
        if dev.parent_addr is not None:
            vfs_of.setdefault(dev.parent_addr, []).append(address)
    out: set[PciAddress] = set()
    stack = list(seeds)
    while stack:
        address = stack.pop()
        found = tracked.get(address)
        if found is None or address in out:
            continue
        out.add(address)
        dev = found.device
        if dev.iommu_group is not None:
            stack += by_group[dev.iommu_group]
        stack += dev.iommu_group_members
        if dev.parent_addr is not None:
            stack.append(dev.parent_addr)
        stack += vfs_of.get(address, ())
    return out


_POOL_MOVE = (update(pools).where(pools.c.id == bindparam("b_id"))
              .values(free=pools.c.free + bindparam("b_free"),
                      usable=pools.c.usable + bindparam("b_usable")))
_HOST_KIND_MOVE = (update(host_kinds)
                   .where(host_kinds.c.host_id == bindparam("b_host"),
                          host_kinds.c.kind_id == bindparam("b_kind"))
                   .values(usable=host_kinds.c.usable + bindparam("b_usable")))
_HOST_FREE_MOVE = (update(hosts).where(hosts.c.id == bindparam("b_id"))
                   .values(pci_free=hosts.c.pci_free + bindparam("b_pci_free")))


def _write_bookkeeping(conn: Connection, host_id: int, rows: Mapping[PciAddress, Row],
                       targets: Sequence[Target], kind_ids: KindIds, now: datetime,
                       host: Mapping[str, Any] | None,
                       current: Mapping[PciAddress, Row] | None) -> Written | None:
    """A write that moves only bookkeeping (claims, frees, ``reserved``): re-derive the
    devices :func:`related` to those it changes, and move the counts by their difference
    (the host row is locked, so adding to what is stored is safe). None when the write is not
    one (a pool would be left or joined): the caller recounts everything."""
    changed = [t.address for t in targets if _primary(t.tracked, t.owner_alias)
               != _primary(rows[t.address].tracked, rows[t.address].owner_alias)]
    near = related({t.address: t.tracked for t in targets}, changed)
    sub = derive([t for t in targets if t.address in near])
    pool_moves: dict[int, list[int]] = {}
    kind_moves: dict[Kind, int] = {}
    pci_free = 0
    narrow: list[dict[str, Any]] = []
    now_rows = rows if current is None else current
    for d in sub:
        row = rows[d.address]
        if (d.key is None) != (row.pool_id is None):
            return None
        if row.pool_id is not None and d.key is not None:
            t = row.tracked
            was_free = t.state is DeviceState.AVAILABLE and not t.reserved
            was_usable = was_free and row.reason is None
            move = pool_moves.setdefault(row.pool_id, [0, 0])
            move[0] += d.free - was_free
            move[1] += d.usable - was_usable
            kind_moves[d.key.kind] = kind_moves.get(d.key.kind, 0) + d.usable - was_usable
            pci_free += d.usable - was_usable
        values = _bookkeeping(d, row.pool_id)
        if values != _stored_bookkeeping(now_rows[d.address]):
            narrow.append({"b_id": row.id, "b_updated_at": now,
                           **{f"b_{k}": v for k, v in values.items()}})
    moves = [{"b_id": i, "b_free": f, "b_usable": u} for i, (f, u) in pool_moves.items()
             if f or u]
    if moves:
        conn.execute(_POOL_MOVE, moves)
    if narrow:
        conn.execute(_BOOKKEEPING_UPDATE, narrow)
    kinds = {k: n for k, n in kind_moves.items() if n}
    if kinds:
        ids = kind_ids.ensure(conn, kinds)
        conn.execute(_HOST_KIND_MOVE, [{"b_host": host_id, "b_kind": ids[k], "b_usable": n}
                                       for k, n in kinds.items()])
        move_host_sets(conn, host_id, {ids[k]: n for k, n in kinds.items()}, kind_ids.sets)
    conn.execute(_HOST_FREE_MOVE, {"b_id": host_id, "b_pci_free": pci_free,
                                   "derived": DERIVED_VERSION, **(host or {})})
    return Written({d.address: d for d in sub})


def write_host(conn: Connection, host_id: int, rows: Mapping[PciAddress, Row],
               targets: Sequence[Target], kind_ids: KindIds, now: datetime, *,
               facts: Collection[PciAddress] = (),
               derived: Sequence[Derived] | None = None,
               host: Mapping[str, Any] | None = None,
               current: Mapping[PciAddress, Row] | None = None,
               recount_pools: bool = False) -> Written:
    """Make the host's device rows, pools and ``pci_free`` agree with ``targets``.

    Devices in ``targets`` but not in ``rows`` are inserted, those only in ``rows`` deleted,
    those in ``facts`` rewritten whole, the others only where their bookkeeping moved.
    ``derived`` is ``derive(targets)`` when the caller computed it already; ``host`` more
    values for the host row, written in the same statement; ``current`` the rows as this
    transaction already rewrote them (a claim's predicate update), when not ``rows``: the
    pools move from ``rows``, the bookkeeping is compared with ``current``.
    ``recount_pools``: read the pool rows rather than trust that they hold the recount of
    ``rows`` (when re-deriving a host written under older rules).
    """
    if (derived is None and not facts and not recount_pools and len(targets) == len(rows)
            and all(t.address in rows for t in targets)):
        done = _write_bookkeeping(conn, host_id, rows, targets, kind_ids, now, host, current)
        if done is not None:
            return done
    if derived is None:
        derived = derive(targets)
    counts = recount(derived)
    known = None if facts or recount_pools or len(targets) != len(rows) else \
        sync_known_pools(conn, rows, counts)
    pool_ids = known if known is not None else sync_pool_rows(conn, host_id, counts, kind_ids)

    def pool_id(d: Derived) -> int | None:
        return None if d.key is None else pool_ids[d.key]

    by_addr = {d.address: d for d in derived}
    gone = [r.id for a, r in rows.items() if a not in by_addr]
    for part in _chunks(gone):
        conn.execute(delete(device_tags).where(device_tags.c.device_id.in_(part)))
        conn.execute(delete(devices).where(devices.c.id.in_(part)))
    full: list[dict[str, Any]] = []
    narrow: list[dict[str, Any]] = []
    added: list[dict[str, Any]] = []
    now_rows = rows if current is None else current
    for d in derived:
        row = now_rows.get(d.address)
        values = _bookkeeping(d, pool_id(d))
        if row is None:
            added.append({"host_id": host_id, "updated_at": now,
                          **tracked_values(d.tracked), **values})
        elif d.address in facts:
            full.append({"b_id": row.id, "b_updated_at": now,
                         **{f"b_{k}": v for k, v in tracked_values(d.tracked).items()},
                         **{f"b_{k}": v for k, v in values.items()}})
        elif values != _stored_bookkeeping(row):
            narrow.append({"b_id": row.id, "b_updated_at": now,
                           **{f"b_{k}": v for k, v in values.items()}})
    if full:
        conn.execute(_FULL_UPDATE, full)
    if narrow:
        conn.execute(_BOOKKEEPING_UPDATE, narrow)
    if added:
        # Plain executemany, no RETURNING: psycopg pipelines it; ids are read back by callers
        # that need them.
        conn.execute(insert(devices), added)
    sync_host_kinds(conn, host_id, counts, kind_ids)
    pci_free = sum(1 for d in derived if d.usable)
    conn.execute(_HOST_DERIVED, {"b_id": host_id, "pci_free": pci_free,
                                 "derived": DERIVED_VERSION, **(host or {})})
    return Written(by_addr)


_HOST_KINDS = select(host_kinds.c.kind_id, host_kinds.c.usable).where(
    host_kinds.c.host_id == bindparam("host_id"))
_HOST_KIND_SET = (update(host_kinds)
                  .where(host_kinds.c.host_id == bindparam("b_host"),
                         host_kinds.c.kind_id == bindparam("b_kind"))
                  .values(usable=bindparam("b_usable")))


def kind_usable(counts: Mapping[StoreKey, PoolCount]) -> dict[Kind, int]:
    out: dict[Kind, int] = {}
    for key, c in counts.items():
        out[key.kind] = out.get(key.kind, 0) + c.usable
    return out


def sync_host_kinds(conn: Connection, host_id: int, counts: Mapping[StoreKey, PoolCount],
                    kind_ids: KindIds) -> None:
    """``host_kinds`` for the host (one row per kind it has a pool of), and the kind sets
    its changes touch."""
    per_kind = kind_usable(counts)
    ids = kind_ids.ensure(conn, per_kind)
    wanted = {ids[k]: n for k, n in per_kind.items()}
    stored = dict(conn.execute(_HOST_KINDS, {"host_id": host_id}).all())
    changed = [{"b_host": host_id, "b_kind": k, "b_usable": n} for k, n in wanted.items()
               if k in stored and stored[k] != n]
    if changed:
        conn.execute(_HOST_KIND_SET, changed)
    new = [{"host_id": host_id, "kind_id": k, "usable": n} for k, n in wanted.items()
           if k not in stored]
    if new:
        conn.execute(insert(host_kinds), new)
    gone = [k for k in stored if k not in wanted]
    if gone:
        conn.execute(delete(host_kinds).where(host_kinds.c.host_id == host_id,
                                              host_kinds.c.kind_id.in_(gone)))
    moved = {c["b_kind"] for c in changed} | {n["kind_id"] for n in new} | set(gone)
    sync_host_sets(conn, host_id, wanted, moved, kind_ids.sets)


def _chunks(items: Sequence[int], size: int = 1000) -> Iterable[Sequence[int]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# SET follows the parameters given: pci_free and derived, and what callers add (used_*).
_HOST_DERIVED = update(hosts).where(hosts.c.id == bindparam("b_id"))


# --- one device's bookkeeping ----------------------------------------------------------------

def lock_host_id(conn: Connection, host: str) -> int | None:
    """The host's id, its row locked for this transaction (see the schema's lock order)."""
    host_id: int | None = conn.execute(
        select(hosts.c.id).where(hosts.c.name == host)
        .with_for_update(key_share=True)).scalar()
    return host_id


def change_device(conn: Connection, host: str, address: PciAddress,
                  change: Callable[[Tracked], Tracked], kind_ids: KindIds,
                  now: datetime) -> DeviceRecord:
    """Apply ``change`` to one device's primary state and re-derive its host."""
    host_id = lock_host_id(conn, host)
    rows = {} if host_id is None else load_rows(conn, host_id)
    row = rows.get(address)
    if host_id is None or row is None:
        raise NotFound(f"host {host} has no device {address}")
    after = change(row.tracked)
    if after == row.tracked:
        return to_record(host, row.tracked, row.reason)
    targets = [Target(after, row.owner_alias) if r.address == address else Target(
        r.tracked, r.owner_alias) for r in rows.values()]
    written = write_host(conn, host_id, rows, targets, kind_ids, now)
    drop_empty_pools(conn, host_id)
    d = written.derived[address]
    return to_record(host, d.tracked, d.reason)


def refresh_hosts(tx: Transactions, kind_ids: KindIds, now: datetime) -> int:
    """Recompute the derived columns of hosts written under older rules (or before 0002);
    one transaction per host. Returns how many were recomputed."""
    with tx.read() as conn:
        stale = list(conn.execute(select(hosts.c.id)
                                  .where(hosts.c.derived < DERIVED_VERSION)).scalars())
    done = 0
    for host_id in stale:
        with tx.write() as conn:
            current = conn.execute(select(hosts.c.derived).where(hosts.c.id == host_id)
                                   .with_for_update(key_share=True)).scalar()
            if current is None or current >= DERIVED_VERSION:
                continue  # another process got there first
            rows = load_rows(conn, host_id)
            write_host(conn, host_id, rows, targets_of(rows.values()), kind_ids, now,
                       recount_pools=True)
            drop_empty_pools(conn, host_id)
            done += 1
    return done
