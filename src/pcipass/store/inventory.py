"""The inventory report: one transaction that makes the store agree with what a host says.

Optimistic concurrency, as a compare-and-swap on the host's generation::

    UPDATE hosts SET generation = generation + 1, ... WHERE id = ? AND generation = ?

Zero rows updated means another writer got there first: :class:`GenerationConflict`, nothing
written. The host row is read ``FOR NO KEY UPDATE`` first (a no-op on SQLite, where ``BEGIN
IMMEDIATE`` already holds the write lock), so a second agent waits for the first to commit and
then fails fast on the generation instead of computing a plan from stale rows. The devices are
read once, compared in Python (:func:`pcipass.pci.reconcile.reconcile`), and written with one
executemany per kind of change; an unchanged report only touches ``last_report_at`` (and
clears ``down``: the agent is alive).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Row, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from pcipass.errors import GenerationConflict, InvalidInput
from pcipass.pci.address import PciAddress
from pcipass.pci.inventory import Inventory, valid_host_name
from pcipass.pci.reconcile import Plan, apply_plan, reconcile
from pcipass.records import ReportResult
from pcipass.store.derive import DERIVED_VERSION, Target, load_rows, targets_of, write_host
from pcipass.store.derive import Row as DevRow
from pcipass.store.engine import Transactions
from pcipass.store.kinds import KindIds
from pcipass.store.pools import drop_empty_pools
from pcipass.store.rows import host_info, host_values
from pcipass.store.schema import device_tags, devices, hosts

T = TypeVar("T")
CHUNK = 1000

def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    """Bound IN lists: SQLite and the drivers cap the number of parameters per statement."""
    for i in range(0, len(items), size):
        yield items[i:i + size]


def check_host_name(host: str) -> None:
    if not valid_host_name(host):
        raise InvalidInput(f"{host!r} is not a valid host name", field="host")


def _conflict(host: str, current: int, given: int | None) -> GenerationConflict:
    return GenerationConflict(
        f"host {host} is at generation {current}, not {given}: "
        f"resend the report with generation {current}",
        field="generation",
    )


def load_devices(conn: Connection, host_id: int) -> dict[PciAddress, DevRow]:
    """The host's devices as the store holds them (a seam tests use to slip a writer in)."""
    return load_rows(conn, host_id)


def report_inventory(tx: Transactions, host: str, generation: int | None,
                     inventory: Inventory, now: datetime, kind_ids: KindIds) -> ReportResult:
    check_host_name(host)
    with tx.write() as conn:
        row = conn.execute(
            select(hosts).where(hosts.c.name == host).with_for_update(key_share=True)
        ).first()
        if row is None:
            return _create(conn, host, generation, inventory, now, kind_ids)
        return _replace(conn, row, generation, inventory, now, kind_ids)


def _result(host: str, generation: int, plan: Plan) -> ReportResult:
    return ReportResult(
        host=host, generation=generation, changed=True,
        added=len(plan.added), updated=len(plan.updated),
        removed=len(plan.removed), gone=len(plan.gone),
    )


def _create(conn: Connection, host: str, generation: int | None, inventory: Inventory,
            now: datetime, kind_ids: KindIds) -> ReportResult:
    if generation is not None:
        raise GenerationConflict(
            f"host {host} is not known yet: send generation null to create it",
            field="generation",
        )
    try:
        host_id = conn.execute(
            insert(hosts).returning(hosts.c.id),
            {"name": host, "generation": 1, **host_values(inventory.host),
             "last_report_at": now, "created_at": now},
        ).scalar_one()
    except IntegrityError:
        # Another creator committed the same name first (PostgreSQL; SQLite queues writers).
        raise GenerationConflict(
            f"host {host} was just created, at generation 1, by another report: "
            "read it and resend",
            field="generation",
        ) from None
    plan = reconcile((), inventory)
    _write_plan(conn, host_id, plan, {}, now, kind_ids)
    return _result(host, 1, plan)


def _replace(conn: Connection, row: Row[Any], generation: int | None, inventory: Inventory,
             now: datetime, kind_ids: KindIds) -> ReportResult:
    host: str = row.name
    if generation is None:
        raise GenerationConflict(
            f"host {host} already exists at generation {row.generation}: "
            "send that generation to replace its inventory",
            field="generation",
        )
    if row.generation != generation:
        raise _conflict(host, row.generation, generation)
    stored = load_devices(conn, row.id)
    plan = reconcile([r.tracked for r in stored.values()], inventory)
    changed = plan.changed or host_info(row) != inventory.host
    values: dict[str, Any] = {"last_report_at": now, "down": False}  # its agent is alive
    if changed:
        values |= host_values(inventory.host)
        values["generation"] = hosts.c.generation + 1
    cas = conn.execute(
        update(hosts).where(hosts.c.id == row.id, hosts.c.generation == generation)
        .values(values)
    )
    if cas.rowcount != 1:
        current_generation = conn.execute(
            select(hosts.c.generation).where(hosts.c.id == row.id)
        ).scalar_one()
        raise _conflict(host, current_generation, generation)
    if not changed:
        if row.derived < DERIVED_VERSION:
            write_host(conn, row.id, stored, targets_of(stored.values()), kind_ids, now)
            drop_empty_pools(conn, row.id)
        return ReportResult(host=host, generation=generation, changed=False)
    _write_plan(conn, row.id, plan, stored, now, kind_ids)
    return _result(host, generation + 1, plan)


def _write_plan(conn: Connection, host_id: int, plan: Plan, stored: Mapping[PciAddress, DevRow],
                now: datetime, kind_ids: KindIds) -> None:
    """Write the plan and everything derived from it (dependants, reasons, pools)."""
    after = apply_plan([r.tracked for r in stored.values()], plan)
    targets = [Target(t, stored[t.address].owner_alias if t.address in stored else None)
               for t in after]
    facts = {c.after.address for c in plan.updated if c.before.device != c.after.device}
    write_host(conn, host_id, stored, targets, kind_ids, now, facts=facts)

    changes = (*plan.updated, *plan.removed)
    retagged = [c for c in changes if c.before.device.tags != c.after.device.tags]
    for part in chunks([stored[c.after.address].id for c in retagged]):
        conn.execute(delete(device_tags).where(device_tags.c.device_id.in_(part)))
    tag_rows = [
        {"device_id": stored[c.after.address].id, "key": k, "value": v}
        for c in retagged for k, v in c.after.device.tags.items()
    ]
    tagged = {str(t.address): t for t in plan.added if t.device.tags}
    if tagged:
        for address, dev_id in conn.execute(
            select(devices.c.address, devices.c.id).where(devices.c.host_id == host_id)
        ):
            t = tagged.get(address)
            if t is not None:
                tag_rows += [{"device_id": dev_id, "key": k, "value": v}
                             for k, v in t.device.tags.items()]
    if tag_rows:
        conn.execute(insert(device_tags), tag_rows)
    drop_empty_pools(conn, host_id)
