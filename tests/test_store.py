"""The store on a real database, SQLite and PostgreSQL (``db_url``): every rule, and races."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.pool import NullPool

from pcipass.errors import (
    Conflict,
    GenerationConflict,
    InfrastructureError,
    InvalidConfig,
    InvalidInput,
    NotFound,
)
from pcipass.pci.address import PciAddress
from pcipass.pci.device import DevType, HostInfo, NumaNode, PciDevice
from pcipass.pci.inventory import Inventory
from pcipass.pci.pool import PoolDelta, PoolKey, pool_counts, slot
from pcipass.records import DeviceFilter, DeviceRecord, DeviceState, Role
from pcipass.store import Store
from pcipass.store import inventory as store_inventory
from pcipass.store.migrate import current_revision, head_revision
from pcipass.store.rows import device_facts
from pcipass.store.schema import metadata
from pcipass.store.testing import force_device_state

T0 = datetime(2024, 11, 26, 12, 0, tzinfo=UTC)
PF0 = PciAddress.parse("0000:3b:00.0")
HOST = HostInfo(hostname="node1", cpus=64, memory_mb=262144,
                numa_nodes=(NumaNode(0, (0, 1), 131072), NumaNode(1, (2, 3), 131072)))


def a(text: str) -> PciAddress:
    return PciAddress.parse(text)


def gpu(address: str, **kw: Any) -> PciDevice:
    base = PciDevice(address=a(address), vendor_id="10de", product_id="20b5",
                     class_code="030200", numa_node=0, iommu_group=7,
                     iommu_group_members=(a(address),), driver="vfio-pci", assignable=True,
                     tags={"gpu": "a100"})
    return replace(base, **kw)


def pf(address: str = "0000:3b:00.0", **kw: Any) -> PciDevice:
    base = PciDevice(address=a(address), vendor_id="8086", product_id="1592",
                     class_code="020000", dev_type=DevType.PF, total_vfs=256, num_vfs=2,
                     numa_node=0, driver="ice", assignable=False)
    return replace(base, **kw)


def vf(address: str, parent: PciAddress = PF0, net: str = "physnet1", **kw: Any) -> PciDevice:
    base = PciDevice(address=a(address), vendor_id="8086", product_id="1889",
                     class_code="020000", dev_type=DevType.VF, parent_addr=parent, numa_node=0,
                     driver="iavf", assignable=True, tags={"physical_network": net})
    return replace(base, **kw)


def inv(*devices: PciDevice, host: HostInfo = HOST) -> Inventory:
    return Inventory(host, tuple(devices))


def sriov_host(pfs: int, vfs: int, extra: int = 0) -> Inventory:
    """``pfs`` PFs with ``vfs`` VFs each (``extra`` more on the first), as a big NIC host has."""
    devices: list[PciDevice] = []
    for p in range(pfs):
        parent = PciAddress(0, 0x3B + p, 0, 0)
        devices.append(pf(str(parent), num_vfs=vfs, numa_node=p % 2))
        for v in range(vfs + (extra if p == 0 else 0)):
            addr = PciAddress(0, 0x80 + 2 * p + v // 256, (v // 8) % 32, v % 8)
            devices.append(vf(str(addr), parent=parent, net=f"physnet{p}", vf_index=v,
                              numa_node=p % 2))
    return inv(*devices)


BASE = inv(pf(), vf("0000:3b:02.0"), vf("0000:3b:02.1"), gpu("0000:5e:00.0"),
           gpu("0000:86:00.0", numa_node=1))


def in_order(devices: Iterable[PciDevice]) -> list[PciDevice]:
    return sorted(devices, key=lambda d: d.address)


def engine_of(store: Store) -> Engine:
    return store._tx.engine


@contextmanager
def statements(store: Store) -> Iterator[list[str]]:
    """Every SQL statement the store sends while the block runs."""
    seen: list[str] = []

    def hook(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(engine_of(store), "before_cursor_execute", hook)
    try:
        yield seen
    finally:
        event.remove(engine_of(store), "before_cursor_execute", hook)


def all_devices(store: Store, **flt: Any) -> list[DeviceRecord]:
    out: list[DeviceRecord] = []
    marker = None
    while True:
        page = store.list_devices(DeviceFilter(**flt), limit=1000, marker=marker)
        out += page.items
        if page.next is None:
            return out
        marker = page.next


def stored_state(rec: DeviceRecord) -> DeviceState:
    return DeviceState.AVAILABLE if rec.state is DeviceState.RESERVED else rec.state


def pools_of(store: Store, host: str | None = None) -> dict[PoolKey, PoolDelta]:
    return {
        PoolKey(p.vendor_id, p.product_id, p.dev_type, p.numa_node, p.parent_addr,
                tuple(sorted(p.tags.items()))): PoolDelta(p.total, p.free)
        for p in store.list_pools(host=host, limit=1000).items
    }


def assert_pools_consistent(store: Store, host: str = "node1") -> dict[PoolKey, PoolDelta]:
    """The maintained pool counts equal a recount from the devices."""
    recount = pool_counts(slot(r.device, stored_state(r), r.reserved)
                          for r in all_devices(store, host=host))
    assert pools_of(store, host) == recount
    return recount


def snapshot(store: Store, host: str = "node1") -> tuple[Any, ...]:
    h = store.get_host(host)
    return (h.generation, h.info, h.device_counts, all_devices(store, host=host),
            pools_of(store, host))


# --- opening and migrations ---------------------------------------------------------------

def test_migrations_create_the_schema_on_a_fresh_database(db_url: str) -> None:
    store = Store.open(db_url)
    store.close()
    engine = create_engine(db_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            assert current_revision(conn) == head_revision() == "0011"
            assert set(inspect(conn).get_table_names()) >= {
                "hosts", "devices", "device_tags", "pools", "tokens", "alembic_version"}
    finally:
        engine.dispose()


def test_migrations_match_the_schema_the_code_uses(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    Store.open(db_url).close()
    engine = create_engine(db_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, metadata) == []
    finally:
        engine.dispose()


def test_migration_0010_adds_the_card_serial_and_keeps_devices_both_ways(db_url: str) -> None:
    from alembic import command

    from pcipass.store.migrate import alembic_config

    card = inv(pf(card_serial_number="MT2245X00007"),
               vf("0000:3b:02.0", card_serial_number="MT2245X00007"))
    store = Store.open(db_url)
    store.report_inventory("node1", None, card, now=T0)
    store.close()
    engine = create_engine(db_url, poolclass=NullPool)
    try:
        for revision in ("0009", "0010"):
            with engine.begin() as conn:
                step = command.downgrade if revision == "0009" else command.upgrade
                step(alembic_config(conn), revision)
            with engine.connect() as conn:
                columns = {c["name"] for c in inspect(conn).get_columns("devices")}
                assert ("card_serial_number" in columns) is (revision == "0010")
                assert conn.execute(text("SELECT count(*) FROM devices")).scalar() == 2
        reopened = Store.open(db_url)
        try:
            assert [r.device.card_serial_number for r in all_devices(reopened)] == [None] * 2
            # The next report puts it back, as an update of facts.
            again = reopened.report_inventory("node1", 1, card, now=T0)
            assert again.updated == 2
            assert {r.device.card_serial_number for r in all_devices(reopened)} == {
                "MT2245X00007"}
        finally:
            reopened.close()
    finally:
        engine.dispose()


def test_migrations_that_copy_tables_keep_every_row(db_url: str) -> None:
    """On SQLite, 0008 and 0009 copy ``hosts`` and ``moves`` (batch mode) and 0010's
    downgrade copies ``devices``: dropping the old table must not cascade to the rows that
    reference it (the migration runs with foreign keys off, as SQLite's procedure says)."""
    from alembic import command

    from pcipass.store.engine import Transactions, make_engine
    from pcipass.store.migrate import alembic_config, upgrade

    store = Store.open(db_url)
    store.report_inventory("node1", None, BASE, now=T0)
    store.close()

    def rows() -> tuple[int, int, int]:
        with engine.connect() as conn:
            return tuple(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                         for t in ("hosts", "devices", "device_tags"))  # type: ignore[return-value]

    engine = make_engine(db_url)
    try:
        before = rows()
        assert before[1] == len(BASE.devices) and before[2] > 0
        tx = Transactions(engine)
        with tx.schema_change() as conn:
            command.downgrade(alembic_config(conn), "0007")
        assert rows() == before
        upgrade(tx)
        assert rows() == before
        with engine.connect() as conn:
            assert current_revision(conn) == head_revision()
    finally:
        engine.dispose()
    again = Store.open(db_url)
    try:
        assert {r.device.address for r in all_devices(again)} == {
            d.address for d in BASE.devices}
    finally:
        again.close()


def test_opening_twice_is_idempotent_and_keeps_the_data(db_url: str) -> None:
    first = Store.open(db_url)
    first.report_inventory("node1", None, BASE, now=T0)
    first.close()
    again = Store.open(db_url)
    try:
        assert again.get_host("node1").generation == 1
        assert len(all_devices(again)) == len(BASE.devices)
    finally:
        again.close()
    Store.open(db_url, migrate=False).close()


def test_workers_opening_a_fresh_database_together_migrate_it_once(db_url: str) -> None:
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait(timeout=30)
            Store.open(db_url).close()
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    engine = create_engine(db_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
            assert current_revision(conn) == head_revision()
    finally:
        engine.dispose()


def test_opening_an_unreachable_database_is_an_infrastructure_error() -> None:
    with pytest.raises(InfrastructureError) as exc:
        Store.open("postgresql+psycopg://nobody@127.0.0.1:1/nothing?connect_timeout=2")
    assert exc.value.code == "infrastructure"


def test_opening_a_nonsense_url_is_a_config_error() -> None:
    with pytest.raises(InvalidConfig) as exc:
        Store.open("no-such-db://x")
    assert exc.value.field == "database_url"


def test_an_in_memory_database_works_for_quick_tests() -> None:
    store = Store.open("sqlite://")
    try:
        assert store.report_inventory("node1", None, BASE, now=T0).generation == 1
        assert len(all_devices(store)) == 5
    finally:
        store.close()


def test_every_discovered_fact_has_a_column() -> None:
    """A field added to PciDevice must be stored too, or reports would silently drop it."""
    assert set(device_facts(gpu("0000:5e:00.0"))) == {f.name for f in fields(PciDevice)}


# --- reporting: creation and the generation ------------------------------------------------

def test_first_report_creates_the_host_at_generation_one(store: Store) -> None:
    result = store.report_inventory("node1", None, BASE, now=T0)
    assert (result.host, result.generation, result.changed) == ("node1", 1, True)
    assert (result.added, result.updated, result.removed, result.gone) == (5, 0, 0, 0)
    host = store.get_host("node1")
    assert host.info == HOST
    assert host.last_report_at == T0
    assert host.device_counts["total"] == 5 and host.device_counts["available"] == 5
    assert [r.device for r in all_devices(store)] == in_order(BASE.devices)
    assert all(r.state is DeviceState.AVAILABLE and r.owner is None for r in all_devices(store))


def test_generation_null_for_an_existing_host_conflicts(store: Store) -> None:
    store.report_inventory("node1", None, BASE, now=T0)
    with pytest.raises(GenerationConflict) as exc:
        store.report_inventory("node1", None, BASE, now=T0)
    assert exc.value.field == "generation" and "generation 1" in exc.value.message
    assert exc.value.code == "generation_conflict"


def test_a_generation_for_an_unknown_host_conflicts(store: Store) -> None:
    with pytest.raises(GenerationConflict) as exc:
        store.report_inventory("node1", 3, BASE, now=T0)
    assert exc.value.field == "generation"
    with pytest.raises(NotFound):
        store.get_host("node1")


def test_stale_generation_conflicts_and_changes_nothing(store: Store) -> None:
    store.report_inventory("node1", None, BASE, now=T0)
    store.report_inventory("node1", 1, inv(*BASE.devices[:-1]), now=T0)
    before = snapshot(store)
    with pytest.raises(GenerationConflict) as exc:
        store.report_inventory("node1", 1, BASE, now=T0 + timedelta(1))
    assert "generation 2" in exc.value.message and exc.value.field == "generation"
    assert snapshot(store) == before
    assert store.get_host("node1").last_report_at == T0


def test_compare_and_swap_catches_a_writer_that_slipped_in(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even past the first read, the UPDATE ... WHERE generation = ? decides."""
    store.report_inventory("node1", None, BASE, now=T0)
    real = store_inventory.load_devices

    def racing_load(conn: Any, host_id: int) -> Any:
        conn.execute(text("UPDATE hosts SET generation = generation + 1 WHERE id = :id"),
                     {"id": host_id})
        return real(conn, host_id)

    monkeypatch.setattr(store_inventory, "load_devices", racing_load)
    with pytest.raises(GenerationConflict) as exc:
        store.report_inventory("node1", 1, inv(*BASE.devices[:2]), now=T0)
    assert "generation 2" in exc.value.message
    monkeypatch.undo()
    assert store.get_host("node1").generation == 1  # the whole transaction rolled back
    assert len(all_devices(store)) == 5


def test_unchanged_report_writes_no_device_and_keeps_the_generation(store: Store) -> None:
    store.report_inventory("node1", None, BASE, now=T0)
    before = snapshot(store)
    with statements(store) as sql:
        result = store.report_inventory("node1", 1, inv(*reversed(BASE.devices)),
                                        now=T0 + timedelta(minutes=1))
    assert (result.generation, result.changed) == (1, False)
    assert (result.added, result.updated, result.removed, result.gone) == (0, 0, 0, 0)
    writes = [s for s in sql if s.split()[0] in ("INSERT", "UPDATE", "DELETE")]
    assert len(writes) == 1 and writes[0].startswith("UPDATE hosts SET last_report_at")
    assert snapshot(store) == before
    assert store.get_host("node1").last_report_at == T0 + timedelta(minutes=1)


def test_host_facts_alone_are_a_change(store: Store) -> None:
    store.report_inventory("node1", None, BASE, now=T0)
    result = store.report_inventory("node1", 1, inv(*BASE.devices, host=replace(HOST, cpus=32)),
                                    now=T0)
    assert (result.generation, result.changed, result.updated) == (2, True, 0)
    assert store.get_host("node1").info.cpus == 32


def test_invalid_host_name_and_naive_time_are_refused(store: Store) -> None:
    with pytest.raises(InvalidInput) as exc:
        store.report_inventory("bad/name", None, BASE, now=T0)
    assert exc.value.field == "host"
    with pytest.raises(ValueError):
        store.report_inventory("node1", None, BASE, now=datetime(2024, 1, 1))


# --- reporting: reconciliation rules ------------------------------------------------------

def test_changed_attributes_apply(store: Store) -> None:
    store.report_inventory("node1", None, BASE, now=T0)
    new_gpu = gpu("0000:5e:00.0", driver="nvidia", tags={"gpu": "h100"}, numa_node=1)
    report = inv(*(new_gpu if d.address == new_gpu.address else d for d in BASE.devices))
    result = store.report_inventory("node1", 1, report, now=T0)
    assert (result.generation, result.updated, result.added, result.gone) == (2, 1, 0, 0)
    assert store.get_device("node1", new_gpu.address).device == new_gpu
    assert [r.device.address for r in all_devices(store, tags=(("gpu", "h100"),))] == [
        new_gpu.address]
    assert all_devices(store, tags=(("gpu", "a100"),))[0].device.address == a("0000:86:00.0")
    assert_pools_consistent(store)


def test_vanished_free_device_is_gone(store: Store) -> None:
    store.report_inventory("node1", None, BASE, now=T0)
    store.set_reserved("node1", a("0000:86:00.0"), True)
    result = store.report_inventory("node1", 1, inv(*BASE.devices[:3]), now=T0)
    assert (result.gone, result.removed) == (2, 0)
    for address in ("0000:5e:00.0", "0000:86:00.0"):
        with pytest.raises(NotFound):
            store.get_device("node1", a(address))
    assert all_devices(store, tags=(("gpu", "a100"),)) == []
    assert_pools_consistent(store)


def test_vanished_allocated_device_is_removed_keeps_its_owner_and_comes_back(
        store: Store) -> None:
    store.report_inventory("node1", None, BASE, now=T0)
    g = a("0000:5e:00.0")
    force_device_state(store, "node1", g, DeviceState.ALLOCATED, owner="vm-1")
    pools_before = assert_pools_consistent(store)

    result = store.report_inventory("node1", 1, inv(*(d for d in BASE.devices if d.address != g)),
                                    now=T0)
    assert (result.removed, result.gone, result.generation) == (1, 0, 2)
    rec = store.get_device("node1", g)
    assert (rec.state, rec.owner) == (DeviceState.REMOVED, "vm-1")
    assert rec.reason is not None and "vanished" in rec.reason
    assert store.get_host("node1").device_counts["removed"] == 1
    assert [r.device.address for r in all_devices(store, state=DeviceState.REMOVED)] == [g]
    # It is no longer on the host: its pool no longer counts it.
    pools_now = assert_pools_consistent(store)
    assert sum(p.total for p in pools_now.values()) == sum(
        p.total for p in pools_before.values()) - 1

    unchanged = store.report_inventory("node1", 2, inv(*(d for d in BASE.devices
                                                        if d.address != g)), now=T0)
    assert not unchanged.changed
    back = store.report_inventory("node1", 2, BASE, now=T0)
    assert (back.updated, back.added, back.generation) == (1, 0, 3)
    rec = store.get_device("node1", g)
    assert (rec.state, rec.owner, rec.reason) == (DeviceState.ALLOCATED, "vm-1", None)
    assert assert_pools_consistent(store) == pools_before


def test_claimed_device_that_vanishes_comes_back_claimed(store: Store) -> None:
    store.report_inventory("node1", None, BASE, now=T0)
    g = a("0000:86:00.0")
    force_device_state(store, "node1", g, DeviceState.CLAIMED, owner="vm-2")
    store.report_inventory("node1", 1, inv(*BASE.devices[:-1]), now=T0)
    assert store.get_device("node1", g).state is DeviceState.REMOVED
    store.report_inventory("node1", 2, BASE, now=T0)
    rec = store.get_device("node1", g)
    assert (rec.state, rec.owner) == (DeviceState.CLAIMED, "vm-2")


def test_device_no_longer_selected_while_allocated_stays_with_its_owner(store: Store) -> None:
    store.report_inventory("node1", None, BASE, now=T0)
    g = a("0000:5e:00.0")
    force_device_state(store, "node1", g, DeviceState.ALLOCATED, owner="vm-1")
    report = inv(*(replace(d, assignable=False) if d.address == g else d for d in BASE.devices))
    store.report_inventory("node1", 1, report, now=T0)
    rec = store.get_device("node1", g)
    assert (rec.state, rec.owner, rec.device.assignable) == (DeviceState.ALLOCATED, "vm-1",
                                                             False)
    assert rec.reason is not None and "when freed" in rec.reason
    pools = assert_pools_consistent(store)
    gpu_pools = [v for k, v in pools.items() if k.vendor_id == "10de"]
    assert gpu_pools == [PoolDelta(1, 1)]  # only the other GPU is left in a pool
    # Once freed it is available but in no pool: never handed out again.
    force_device_state(store, "node1", g, DeviceState.AVAILABLE)
    assert assert_pools_consistent(store) == pools


def test_new_devices_appear_available(store: Store) -> None:
    store.report_inventory("node1", None, BASE, now=T0)
    extra = vf("0000:3b:02.2")
    result = store.report_inventory("node1", 1, inv(*BASE.devices, extra), now=T0)
    assert (result.added, result.generation) == (1, 2)
    rec = store.get_device("node1", extra.address)
    assert (rec.state, rec.reserved, rec.owner, rec.device) == (
        DeviceState.AVAILABLE, False, None, extra)
    assert_pools_consistent(store)


def test_failed_report_leaves_the_old_inventory_intact(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store.report_inventory("node1", None, BASE, now=T0)
    store.set_reserved("node1", a("0000:3b:02.0"), True)
    before = snapshot(store)

    def boom(conn: Any, host_id: int) -> None:
        raise RuntimeError("disk on fire")

    # Fails after the generation bump and every device write, just before commit.
    monkeypatch.setattr(store_inventory, "drop_empty_pools", boom)
    changed = inv(gpu("0000:af:00.0"), *BASE.devices[2:])
    with pytest.raises(RuntimeError):
        store.report_inventory("node1", 1, changed, now=T0 + timedelta(1))
    monkeypatch.undo()
    assert snapshot(store) == before
    assert store.get_host("node1").last_report_at == T0
    # And the store still works afterwards.
    assert store.report_inventory("node1", 1, changed, now=T0).generation == 2


# --- reserved ------------------------------------------------------------------------------

def test_reserved_round_trip_moves_free_counts(store: Store) -> None:
    store.report_inventory("node1", None, BASE, now=T0)
    v = a("0000:3b:02.1")
    free_before = sum(p.free for p in pools_of(store).values())
    rec = store.set_reserved("node1", v, True)
    assert (rec.state, rec.reserved) == (DeviceState.RESERVED, True)
    assert rec.reason == "reserved by an operator"
    assert store.get_device("node1", v) == rec
    assert sum(p.free for p in pools_of(store).values()) == free_before - 1
    assert store.get_host("node1").device_counts["reserved"] == 1
    assert [r.device.address for r in all_devices(store, state=DeviceState.RESERVED)] == [v]
    assert v not in {r.device.address for r in all_devices(store, state=DeviceState.AVAILABLE)}
    assert store.set_reserved("node1", v, True) == rec  # idempotent
    assert_pools_consistent(store)
    rec = store.set_reserved("node1", v, False)
    assert (rec.state, rec.reserved) == (DeviceState.AVAILABLE, False)
    assert sum(p.free for p in pools_of(store).values()) == free_before
    assert_pools_consistent(store)


def test_reserved_survives_reports_and_an_allocated_reserved_device_shows_allocated(
        store: Store) -> None:
    store.report_inventory("node1", None, BASE, now=T0)
    v, g = a("0000:3b:02.1"), a("0000:5e:00.0")
    store.set_reserved("node1", v, True)
    force_device_state(store, "node1", g, DeviceState.ALLOCATED, owner="vm-1")
    store.set_reserved("node1", g, True)
    report = inv(*(replace(d, driver="vfio-pci") for d in BASE.devices))
    assert store.report_inventory("node1", 1, report, now=T0).updated == 3
    assert store.get_device("node1", v).state is DeviceState.RESERVED
    rec = store.get_device("node1", g)
    assert (rec.state, rec.reserved, rec.owner) == (DeviceState.ALLOCATED, True, "vm-1")
    assert_pools_consistent(store)


def test_set_reserved_on_an_unknown_device_is_not_found(store: Store) -> None:
    store.report_inventory("node1", None, BASE, now=T0)
    with pytest.raises(NotFound):
        store.set_reserved("node1", a("0000:ff:00.0"), True)
    with pytest.raises(NotFound):
        store.set_reserved("node9", a("0000:3b:02.1"), True)
    with pytest.raises(NotFound):
        store.get_device("node1", a("0000:ff:00.0"))


# --- pools ---------------------------------------------------------------------------------

def test_pools_group_interchangeable_assignable_devices(store: Store) -> None:
    other_pf = a("0000:5e:00.0")
    report = inv(pf(), vf("0000:3b:02.0"), vf("0000:3b:02.1"),
                 vf("0000:3b:02.2", tags={"physical_network": "physnet1", "trusted": "true"}),
                 pf(str(other_pf)), vf("0000:5e:02.0", parent=other_pf),
                 gpu("0000:86:00.0", iommu_group=86), gpu("0000:87:00.0", iommu_group=87),
                 gpu("0000:88:00.0", numa_node=1, iommu_group=88))
    store.report_inventory("node1", None, report, now=T0)
    page = store.list_pools(host="node1")
    summary = sorted((p.vendor_id, p.dev_type.value, p.numa_node, str(p.parent_addr),
                      tuple(sorted(p.tags.items())), p.total, p.free) for p in page.items)
    assert summary == [
        ("10de", "type-PCI", 0, "None", (("gpu", "a100"),), 2, 2),
        ("10de", "type-PCI", 1, "None", (("gpu", "a100"),), 1, 1),
        ("8086", "type-VF", 0, "0000:3b:00.0", (("physical_network", "physnet1"),), 2, 2),
        ("8086", "type-VF", 0, "0000:3b:00.0",
         (("physical_network", "physnet1"), ("trusted", "true")), 1, 1),
        ("8086", "type-VF", 0, "0000:5e:00.0", (("physical_network", "physnet1"),), 1, 1),
    ]
    assert_pools_consistent(store)
    force_device_state(store, "node1", a("0000:86:00.0"), DeviceState.ALLOCATED, owner="vm")
    gpus = {k.numa_node: v for k, v in pools_of(store).items() if k.vendor_id == "10de"}
    assert gpus == {0: PoolDelta(2, 1), 1: PoolDelta(1, 1)}


def test_pools_follow_devices_that_change_pool_and_empty_pools_go(store: Store) -> None:
    store.report_inventory("node1", None, BASE, now=T0)
    moved = inv(*(replace(d, tags={"physical_network": "physnet2"})
                  if d.dev_type is DevType.VF else d for d in BASE.devices))
    store.report_inventory("node1", 1, moved, now=T0)
    nets = {k.tags_dict.get("physical_network") for k in pools_of(store)}
    assert nets == {None, "physnet2"}
    assert_pools_consistent(store)
    store.report_inventory("node1", 2, inv(pf()), now=T0)  # everything assignable gone
    assert store.list_pools().items == ()


def test_pools_are_per_host_and_filtered(store: Store) -> None:
    store.report_inventory("node1", None, BASE, now=T0)
    store.report_inventory("node2", None, BASE, now=T0)
    assert {p.host for p in store.list_pools().items} == {"node1", "node2"}
    assert {p.host for p in store.list_pools(host="node2").items} == {"node2"}
    assert store.list_pools(host="nope").items == ()


# --- listing, filters and markers ---------------------------------------------------------

def test_hosts_page_through_in_name_order(store: Store) -> None:
    names = [f"host{i:02d}" for i in range(7)]
    for name in reversed(names):
        store.report_inventory(name, None, BASE if name == "host03" else inv(), now=T0)
    seen: list[str] = []
    marker = None
    pages = 0
    while True:
        page = store.list_hosts(limit=3, marker=marker)
        seen += [h.name for h in page.items]
        pages += 1
        if page.next is None:
            break
        marker = page.next
    assert seen == names and pages == 3
    counts = {h.name: h.device_counts["total"] for h in store.list_hosts(limit=10).items}
    assert counts["host03"] == 5 and counts["host00"] == 0
    assert store.list_hosts(limit=7).next is None


def test_devices_page_through_across_hosts_in_host_and_address_order(store: Store) -> None:
    store.report_inventory("b-node", None, BASE, now=T0)
    store.report_inventory("a-node", None, BASE, now=T0)
    expected = [(h, d.address) for h in ("a-node", "b-node")
                for d in sorted(BASE.devices, key=lambda d: d.address)]
    seen: list[tuple[str, PciAddress]] = []
    marker = None
    while True:
        page = store.list_devices(DeviceFilter(), limit=3, marker=marker)
        seen += [(r.host, r.device.address) for r in page.items]
        if page.next is None:
            break
        marker = page.next
    assert seen == expected


@pytest.mark.parametrize("marker", ["garbage!", "WyJhIl0", "W10", "bnVsbA"])
def test_bad_markers_and_limits_are_invalid_input(store: Store, marker: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        store.list_devices(DeviceFilter(), marker=marker)
    assert exc.value.field == "marker"
    with pytest.raises(InvalidInput):
        store.list_pools(marker=marker)
    for limit in (0, 1001):
        with pytest.raises(InvalidInput) as exc:
            store.list_hosts(limit=limit)
        assert exc.value.field == "limit"


def test_device_filters(store: Store) -> None:
    store.report_inventory("node1", None, BASE, now=T0)
    store.report_inventory("node2", None, inv(gpu("0000:5e:00.0", tags={"gpu": "h100"})),
                           now=T0)

    def addrs(**flt: Any) -> list[tuple[str, str]]:
        return [(r.host, str(r.device.address)) for r in all_devices(store, **flt)]

    assert addrs(host="node2") == [("node2", "0000:5e:00.0")]
    assert addrs(vendor_id="10DE") == addrs(vendor_id="0x10de") == [
        ("node1", "0000:5e:00.0"), ("node1", "0000:86:00.0"), ("node2", "0000:5e:00.0")]
    assert addrs(product_id="1592") == [("node1", "0000:3b:00.0")]
    assert addrs(dev_type=DevType.VF) == [("node1", "0000:3b:02.0"), ("node1", "0000:3b:02.1")]
    assert addrs(assignable=False) == [("node1", "0000:3b:00.0")]
    assert addrs(tags=(("gpu", "a100"),)) == [("node1", "0000:5e:00.0"),
                                              ("node1", "0000:86:00.0")]
    assert addrs(tags=(("gpu", "h100"),)) == [("node2", "0000:5e:00.0")]
    assert addrs(tags=(("physical_network", "physnet1"), ("gpu", "a100"))) == []
    assert addrs(tags=(("gpu", "a100"),), host="node2") == []
    assert addrs(state=DeviceState.ALLOCATED) == []
    assert len(addrs(state=DeviceState.AVAILABLE)) == 6
    assert addrs(host="nope") == []


# --- tokens --------------------------------------------------------------------------------

@pytest.mark.parametrize("role, project, host", [
    (Role.ADMIN, None, None), (Role.MEMBER, "proj-1", None), (Role.AGENT, None, "node1"),
])
def test_created_token_authenticates_and_only_its_hash_is_stored(
        store: Store, role: Role, project: str | None, host: str | None) -> None:
    principal, plaintext = store.create_token(role=role, project=project, host=host)
    assert (principal.role, principal.project, principal.host) == (role, project, host)
    assert len(plaintext) >= 40
    assert store.authenticate(plaintext) == principal
    assert store.authenticate(plaintext + "x") is None
    assert store.authenticate("") is None
    with engine_of(store).connect() as conn:
        rows = conn.execute(text("SELECT * FROM tokens")).all()
    stored = " ".join(str(v) for row in rows for v in row)
    assert plaintext not in stored
    import hashlib
    assert hashlib.sha256(plaintext.encode()).hexdigest() in stored


def test_tokens_are_unique(store: Store) -> None:
    tokens = {store.create_token(role=Role.ADMIN)[1] for _ in range(5)}
    assert len(tokens) == 5


@pytest.mark.parametrize("role, project, host, field", [
    (Role.MEMBER, None, None, "project"), (Role.AGENT, None, None, "host"),
    (Role.AGENT, None, "bad/host", "host"), (Role.ADMIN, "p", None, "project"),
    (Role.ADMIN, None, "node1", "host"), (Role.MEMBER, "p", "node1", "host"),
    (Role.AGENT, "p", "node1", "project"),
])
def test_token_bindings_are_checked(store: Store, role: Role, project: str | None,
                                    host: str | None, field: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        store.create_token(role=role, project=project, host=host)
    assert exc.value.field == field


def test_ensure_token_is_idempotent(store: Store) -> None:
    first = store.ensure_token("bootstrap-admin-secret", role=Role.ADMIN)
    again = store.ensure_token("bootstrap-admin-secret", role=Role.ADMIN)
    assert first == again and first.role is Role.ADMIN
    assert store.authenticate("bootstrap-admin-secret") == first
    _, agent_token = store.create_token(role=Role.AGENT, host="node1")
    with pytest.raises(Conflict):  # an operator pasted an agent's token as the admin token
        store.ensure_token(agent_token, role=Role.ADMIN)
    with pytest.raises(InvalidInput):
        store.ensure_token("member-secret", role=Role.MEMBER)  # would need a project
    with pytest.raises(InvalidInput):
        store.ensure_token("", role=Role.ADMIN)


# --- a big host ----------------------------------------------------------------------------

def test_a_host_with_1028_devices_syncs_in_a_few_statements(store: Store) -> None:
    big = sriov_host(4, 256)
    assert len(big.devices) == 1028
    with statements(store) as sql:
        first = store.report_inventory("node1", None, big, now=T0)
    assert (first.added, first.generation) == (1028, 1)
    assert len(sql) < 40, sql  # bulk writes, not a statement per device
    with statements(store) as sql:
        assert not store.report_inventory("node1", 1, big, now=T0).changed
    assert len(sql) <= 6, sql
    with statements(store) as sql:
        one_more = store.report_inventory("node1", 1, sriov_host(4, 256, extra=1), now=T0)
    assert (one_more.added, one_more.updated, one_more.generation) == (1, 0, 2)
    assert len(sql) <= 12, sql
    pools = assert_pools_consistent(store)
    assert sorted(p.total for p in pools.values()) == [256, 256, 256, 257]


# --- races between processes --------------------------------------------------------------

ROUNDS = 8


def race_report(worker: int, rnd: int) -> Inventory:
    """Each worker's report differs from the other's and from its own previous one."""
    mine = gpu(f"0000:{0x5e + worker:02x}:00.0", tags={"round": str(rnd)})
    return inv(pf(), vf("0000:3b:02.0", tags={"w": str(worker), "r": str(rnd)}), mine)


def race_agent(url: str, worker: int, barrier: Any, results: Any) -> None:
    store = Store.open(url, migrate=False)
    try:
        for rnd in range(ROUNDS):
            barrier.wait(timeout=60)
            try:
                generation: int | None = store.get_host("node1").generation
            except NotFound:
                generation = None
            barrier.wait(timeout=60)  # both read the same generation before either writes
            try:
                res = store.report_inventory("node1", generation, race_report(worker, rnd),
                                             now=datetime.now(UTC))
                results.put((worker, rnd, generation, "won", res.generation))
            except GenerationConflict as exc:
                results.put((worker, rnd, generation, "lost", exc.message))
    finally:
        store.close()


def test_two_agents_reporting_at_once_exactly_one_wins_each_generation(db_url: str) -> None:
    Store.open(db_url).close()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=race_agent, args=(db_url, w, barrier, results))
             for w in (0, 1)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in range(2 * ROUNDS)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    winners: dict[int, list[tuple[int, int | None, int]]] = {}
    for worker, rnd, generation, outcome, detail in outcomes:
        if outcome == "won":
            winners.setdefault(rnd, []).append((worker, generation, detail))
        else:
            assert "generation" in detail
    assert sorted(winners) == list(range(ROUNDS))
    assert all(len(w) == 1 for w in winners.values()), winners
    won_generations = [winners[r][0][2] for r in range(ROUNDS)]
    assert won_generations == list(range(1, ROUNDS + 1))
    assert [winners[r][0][1] for r in range(ROUNDS)] == [None, *range(1, ROUNDS)]
    store = Store.open(db_url, migrate=False)
    try:
        last_winner = winners[ROUNDS - 1][0][0]
        assert store.get_host("node1").generation == ROUNDS
        assert [r.device for r in all_devices(store)] == in_order(
            race_report(last_winner, ROUNDS - 1).devices)
        assert_pools_consistent(store)
    finally:
        store.close()
