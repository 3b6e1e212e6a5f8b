"""Loading many new hosts at once: for benchmarks and tests, not for agents.

Hosts of a fleet built from a few hardware models share their inventories, so each distinct
inventory is derived once (pools, kinds, reasons) and its rows are copied for every host,
with ids assigned here so nothing needs reading back. The result is exactly what
``report_inventory`` would have written for each host, about a hundred times faster.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Connection, func, insert, select, text

from pcipass.errors import Conflict
from pcipass.pci.inventory import Inventory
from pcipass.pci.reconcile import Tracked
from pcipass.store.derive import DERIVED_VERSION, Derived, Target, derive, recount
from pcipass.store.engine import Transactions
from pcipass.store.inventory import check_host_name
from pcipass.store.kinds import KindIds, StoreKey
from pcipass.store.kindsets import host_rows as kind_set_rows
from pcipass.store.rows import host_values, pool_values, tracked_values
from pcipass.store.schema import devices, host_kind_sets, host_kinds, hosts, pools

HOSTS_PER_TRANSACTION = 200


@dataclass(frozen=True, slots=True)
class _Template:
    derived: list[Derived]
    pools: list[tuple[StoreKey, int, int, int]]   # key, total, free, usable
    pci_free: int


def _template(inventory: Inventory) -> _Template:
    targets = [Target(Tracked(d)) for d in sorted(inventory.devices, key=lambda d: d.address)]
    derived = derive(targets)
    counts = recount(derived)
    return _Template(derived, [(k, c.total, c.free, c.usable) for k, c in counts.items()],
                     sum(1 for d in derived if d.usable))


class _Rows:
    """Device and tag rows of a template, bound once for the driver (JSON dumped, times
    formatted as the column types would), then copied per host with its ids."""

    _DEVICE = tuple(devices.c)

    def __init__(self, conn: Connection, t: _Template, now: datetime) -> None:
        dialect = conn.dialect
        self.copy = dialect.name == "postgresql"
        procs = [c.type.dialect_impl(dialect).bind_processor(dialect) for c in self._DEVICE]
        if self.copy:   # COPY takes JSON as text, and datetimes as they are
            procs = [_json_text if isinstance(c.type, JSON) else None for c in self._DEVICE]
        names = [c.name for c in self._DEVICE]
        self.names = names
        self.id_at = names.index("id")
        self.host_at = names.index("host_id")
        self.pool_at = names.index("pool_id")
        self.devices: list[list[Any]] = []
        self.pool_keys: list[StoreKey | None] = []
        self.tags: list[list[tuple[str, str]]] = []
        for d in t.derived:
            values = {**tracked_values(d.tracked), "owner_alias": None, "reason": d.reason,
                      "updated_at": now, "id": None, "host_id": None, "pool_id": None,
                      "move_id": None}
            self.devices.append([v if p is None or v is None else p(v)
                                 for p, v in zip(procs, (values[n] for n in names),
                                                 strict=True)])
            self.pool_keys.append(d.key)
            self.tags.append(sorted(d.tracked.device.tags.items()))
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        self.device_sql = (f"INSERT INTO devices ({', '.join(names)}) "
                           f"VALUES ({', '.join(mark for _ in names)})")
        self.tag_sql = f"INSERT INTO device_tags (device_id, key, value) VALUES ({mark}, " \
                       f"{mark}, {mark})"


def _next_id(conn: Connection, table: Any) -> int:
    return int(conn.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one()) + 1


def _advance_sequences(conn: Connection) -> None:
    if conn.dialect.name != "postgresql":
        return
    for table in ("hosts", "pools", "devices"):
        conn.execute(text(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
            f"(SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)"))


def load_hosts(tx: Transactions, kind_ids: KindIds, fleet: Sequence[tuple[str, Inventory]],
               now: datetime) -> int:
    """Create every ``(name, inventory)`` host (none may exist yet); returns the device
    count. One transaction per :data:`HOSTS_PER_TRANSACTION` hosts."""
    templates: dict[int, _Template] = {}
    for _name, inv in fleet:
        check_host_name(_name)
        if id(inv) not in templates:
            templates[id(inv)] = _template(inv)
    written = 0
    bound: dict[int, _Rows] = {}
    for start in range(0, len(fleet), HOSTS_PER_TRANSACTION):
        part = fleet[start:start + HOSTS_PER_TRANSACTION]
        with tx.write() as conn:
            if not bound:
                bound = {k: _Rows(conn, t, now) for k, t in templates.items()}
            written += _load(conn, kind_ids, part, templates, bound, now)
    if fleet:
        with tx.write() as conn:
            if conn.dialect.name == "postgresql":
                # Fresh statistics, or the planner takes these tables for empty ones.
                conn.execute(text("ANALYZE hosts, pools, host_kinds, host_kind_sets, devices, "
                                  "device_tags"))
    return written


def _load(conn: Connection, kind_ids: KindIds, part: Sequence[tuple[str, Inventory]],
          templates: dict[int, _Template], bound: dict[int, _Rows], now: datetime) -> int:
    names = [n for n, _i in part]
    taken = conn.execute(select(hosts.c.name).where(hosts.c.name.in_(names))).scalars().all()
    if taken:
        raise Conflict(f"hosts exist already: {', '.join(sorted(taken)[:5])}", field="host")
    kinds = kind_ids.ensure(conn, {k.kind for t in templates.values() for k, *_ in t.pools})
    host_id, pool_id, device_id = (_next_id(conn, hosts), _next_id(conn, pools),
                                   _next_id(conn, devices))
    host_rows: list[dict[str, Any]] = []
    kind_rows: list[dict[str, Any]] = []
    set_rows: list[dict[str, Any]] = []
    kind_ids.sets.refresh(conn)
    pool_rows: list[dict[str, Any]] = []
    device_rows: list[list[Any]] = []
    tag_rows: list[tuple[int, str, str]] = []
    for name, inv in part:
        t = templates[id(inv)]
        rows = bound[id(inv)]
        host_rows.append({"id": host_id, "name": name, "generation": 1,
                          **host_values(inv.host), "last_report_at": now, "created_at": now,
                          "used_vcpus": 0, "used_ram_mb": 0, "numa_used": {},
                          "pci_free": t.pci_free, "derived": DERIVED_VERSION})
        ids: dict[StoreKey, int] = {}
        per_kind: dict[int, int] = {}
        for key, _total, _free, usable in t.pools:
            per_kind[kinds[key.kind]] = per_kind.get(kinds[key.kind], 0) + usable
        kind_rows += [{"host_id": host_id, "kind_id": k, "usable": n}
                      for k, n in per_kind.items()]
        set_rows += kind_set_rows(host_id, per_kind, kind_ids.sets)
        for key, total, free, usable in t.pools:
            ids[key] = pool_id
            pool_rows.append({"id": pool_id, "host_id": host_id, **pool_values(key.pool),
                              "key": key.digest, "kind_id": kinds[key.kind], "total": total,
                              "free": free, "usable": usable})
            pool_id += 1
        for values, pk, tags in zip(rows.devices, rows.pool_keys, rows.tags, strict=True):
            row = list(values)
            row[rows.id_at] = device_id
            row[rows.host_at] = host_id
            row[rows.pool_at] = None if pk is None else ids[pk]
            device_rows.append(row)
            tag_rows += [(device_id, k, v) for k, v in tags]
            device_id += 1
        host_id += 1
    conn.execute(insert(hosts), host_rows)
    conn.execute(insert(pools), pool_rows)
    conn.execute(insert(host_kinds), kind_rows)
    if set_rows:
        conn.execute(insert(host_kind_sets), set_rows)
    some = next(iter(bound.values()))
    if some.copy:
        _copy(conn, f"COPY devices ({', '.join(some.names)}) FROM STDIN", device_rows)
        _copy(conn, "COPY device_tags (device_id, key, value) FROM STDIN", tag_rows)
    else:
        for i in range(0, len(device_rows), 5000):
            conn.exec_driver_sql(some.device_sql, [tuple(r) for r in device_rows[i:i + 5000]])
        for i in range(0, len(tag_rows), 10000):
            conn.exec_driver_sql(some.tag_sql, tag_rows[i:i + 10000])
    _advance_sequences(conn)
    return len(device_rows)


def _json_text(value: Any) -> str:
    return json.dumps(value)


def _copy(conn: Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """PostgreSQL's COPY, on the transaction's own connection: ten times an executemany."""
    driver: Any = conn.connection.driver_connection
    with driver.cursor() as cur, cur.copy(sql) as copy:
        for row in rows:
            copy.write_row(row)
