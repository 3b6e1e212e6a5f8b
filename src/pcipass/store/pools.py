"""Keeping ``pools`` counts in step with device writes, inside the caller's transaction.

Every writer of device rows (the inventory report, ``reserved``, the claims to come) turns its
writes into slot moves (:func:`pcipass.pci.pool.slot` before and after), then:

1. ``ids = sync_pools(conn, host_id, moves)``: creates missing pool rows, moves the counts, and
   gives each key's pool id for the devices' ``pool_id``;
2. writes its device rows;
3. ``drop_empty_pools(conn, host_id)`` once no device points at an emptied pool any more.

The caller holds the host row lock (see :mod:`pcipass.store.schema`), so counts never race.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import Connection, bindparam, delete, insert, select, update

from pcipass.pci.pool import PoolDelta, PoolKey, Slot, pool_deltas
from pcipass.store.rows import pool_values
from pcipass.store.schema import pools


def ensure_pools(conn: Connection, host_id: int, keys: Iterable[PoolKey]) -> dict[PoolKey, int]:
    """The pool id of each key, creating empty pools for keys the host has no pool for yet."""
    wanted = set(keys)
    if not wanted:
        return {}
    existing = {
        row.key: row.id
        for row in conn.execute(select(pools.c.id, pools.c.key).where(pools.c.host_id == host_id))
    }
    ids: dict[PoolKey, int] = {}
    missing: list[PoolKey] = []
    for key in wanted:
        pool_id = existing.get(key.digest)
        if pool_id is None:
            missing.append(key)
        else:
            ids[key] = pool_id
    if missing:
        missing.sort(key=lambda k: k.sort_key)
        created = {row[0]: row[1] for row in conn.execute(
            insert(pools).returning(pools.c.key, pools.c.id),
            [{"host_id": host_id, **pool_values(k), "total": 0, "free": 0} for k in missing],
        )}
        for key in missing:
            ids[key] = created[key.digest]
    return ids


def adjust_pools(conn: Connection, ids: Mapping[PoolKey, int],
                 deltas: Mapping[PoolKey, PoolDelta]) -> None:
    if not deltas:
        return
    conn.execute(
        update(pools)
        .where(pools.c.id == bindparam("b_id"))
        .values(total=pools.c.total + bindparam("b_total"),
                free=pools.c.free + bindparam("b_free")),
        [{"b_id": ids[k], "b_total": d.total, "b_free": d.free} for k, d in deltas.items()],
    )


def sync_pools(conn: Connection, host_id: int,
               moves: Iterable[tuple[Slot | None, Slot | None]]) -> dict[PoolKey, int]:
    """Move the counts for ``moves``; returns the pool id of every key they touch."""
    moves = list(moves)
    keys = {s.key for pair in moves for s in pair if s is not None}
    ids = ensure_pools(conn, host_id, keys)
    adjust_pools(conn, ids, pool_deltas(moves))
    return ids


def drop_empty_pools(conn: Connection, host_id: int) -> None:
    conn.execute(delete(pools).where(pools.c.host_id == host_id, pools.c.total == 0))
