"""Kind sets: each host's usable devices summed over a set of kinds, kept ready for requests.

A request whose alias matches several kinds (alternatives, or one model under two drivers)
would otherwise sum ``host_kinds`` over every host with such a kind, per decision. Instead the
set is registered once (the first boot that asks for it) and every device writer keeps
``host_kind_sets`` in step for the sets its changes touch, so the candidates come from one
index walk, as for a single kind.

Registering a set computes it for every host from ``host_kinds``. On PostgreSQL it first
takes ``host_kinds`` in SHARE mode: writers that changed ``host_kinds`` before commit first
(and are counted), writers after it see the new set, because a writer reads the sets after
its own ``host_kinds`` write (:func:`sync_host_sets`), which waits for the registration.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from threading import Lock
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, literal, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from pcipass.store.engine import Transactions
from pcipass.store.schema import host_kind_sets, host_kinds, kind_sets


def _digest(kinds: Collection[int]) -> str:
    return hashlib.sha256(",".join(map(str, sorted(kinds))).encode()).hexdigest()


class KindSets:
    """The registered sets, by kinds and by id; reloaded when their number changes."""

    def __init__(self) -> None:
        self.ids: dict[frozenset[int], int] = {}
        self._lock = Lock()

    def refresh(self, conn: Connection) -> None:
        count = conn.execute(select(func.count()).select_from(kind_sets)).scalar_one()
        if count == len(self.ids):
            return
        found = {frozenset(kinds): set_id for set_id, kinds in conn.execute(
            select(kind_sets.c.id, kind_sets.c.kind_ids))}
        with self._lock:
            self.ids = found

    def ensure(self, tx: Transactions, kinds: frozenset[int]) -> int:
        """The set's id, registering it (in a transaction of its own) the first time."""
        set_id = self.ids.get(kinds)
        if set_id is not None:
            return set_id
        with tx.write() as conn:
            set_id = register(conn, kinds)
        if tx.engine.dialect.name == "postgresql":
            with tx.write() as conn:
                # Thousands of new rows: without fresh statistics the planner would take the
                # table for empty and sort every host instead of walking the index.
                conn.execute(text("ANALYZE host_kind_sets"))
        with self._lock:
            self.ids = {**self.ids, kinds: set_id}
        return set_id


def register(conn: Connection, kinds: frozenset[int]) -> int:
    if conn.dialect.name == "postgresql":
        conn.execute(text("LOCK TABLE host_kinds IN SHARE MODE"))
    dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    made = conn.execute(dialect.insert(kind_sets)
                        .values(digest=_digest(kinds), kind_ids=sorted(kinds))
                        .on_conflict_do_nothing(index_elements=["digest"])
                        .returning(kind_sets.c.id)).scalar()
    if made is None:   # registered meanwhile by another process: its sums stand
        found: int = conn.execute(select(kind_sets.c.id)
                                  .where(kind_sets.c.digest == _digest(kinds))).scalar_one()
        return found
    set_id: int = made
    conn.execute(insert(host_kind_sets).from_select(
        ["set_id", "host_id", "usable"],
        select(literal(set_id), host_kinds.c.host_id, func.sum(host_kinds.c.usable))
        .where(host_kinds.c.kind_id.in_(sorted(kinds)))
        .group_by(host_kinds.c.host_id)))
    return set_id


def _upsert(conn: Connection) -> Any:
    dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(host_kind_sets).values(
        set_id=bindparam("b_set"), host_id=bindparam("b_host"), usable=bindparam("b_usable"))
    return stmt.on_conflict_do_update(index_elements=["set_id", "host_id"],
                                      set_={"usable": stmt.excluded.usable})


def sync_host_sets(conn: Connection, host_id: int, usable: Mapping[int, int],
                   changed: Collection[int], sets: KindSets) -> None:
    """After the host's ``host_kinds`` changed for ``changed`` kinds (written already, see
    the module): the sets that hold one of them get the host's new sums."""
    if not changed:
        return
    sets.refresh(conn)
    touched = set(changed)
    rows = [{"b_set": set_id, "b_host": host_id,
             "b_usable": sum(usable.get(k, 0) for k in kinds)}
            for kinds, set_id in sets.ids.items() if kinds & touched]
    if rows:
        conn.execute(_upsert(conn), rows)


_MOVE = (update(host_kind_sets)
         .where(host_kind_sets.c.set_id == bindparam("b_set"),
                host_kind_sets.c.host_id == bindparam("b_host"))
         .values(usable=host_kind_sets.c.usable + bindparam("b_usable")))


def move_host_sets(conn: Connection, host_id: int, moves: Mapping[int, int],
                   sets: KindSets) -> None:
    """After the host's ``host_kinds`` moved by ``moves`` (kind id → change, written already,
    see the module): the sets that hold those kinds move alike. The host has a row in every
    set holding one of its kinds (registration and :func:`sync_host_sets` make them)."""
    sets.refresh(conn)
    rows = []
    for kinds, set_id in sets.ids.items():
        n = sum(moves.get(k, 0) for k in kinds)
        if n:
            rows.append({"b_set": set_id, "b_host": host_id, "b_usable": n})
    if rows:
        conn.execute(_MOVE, rows)


def host_rows(host_id: int, usable: Mapping[int, int], sets: KindSets) -> list[dict[str, Any]]:
    """A new host's rows, for the bulk loader."""
    return [{"set_id": set_id, "host_id": host_id,
             "usable": sum(usable.get(k, 0) for k in kinds)}
            for kinds, set_id in sets.ids.items() if any(k in usable for k in kinds)]
