"""The store: the only code that writes the database; one method, one transaction."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import select, update

from pcipass.errors import NotFound
from pcipass.pci.address import PciAddress
from pcipass.pci.inventory import Inventory
from pcipass.pci.reconcile import Tracked
from pcipass.records import (
    DeviceFilter,
    DeviceRecord,
    HostRecord,
    Page,
    PoolRecord,
    Principal,
    ReportResult,
    Role,
)
from pcipass.store import inventory as _inventory
from pcipass.store import migrate as _migrate
from pcipass.store import queries as _queries
from pcipass.store import tokens as _tokens
from pcipass.store.engine import Transactions, make_engine
from pcipass.store.inventory import slot_of
from pcipass.store.pools import drop_empty_pools, sync_pools
from pcipass.store.rows import to_record, to_tracked
from pcipass.store.schema import devices, hosts


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Store:
    """Hosts, devices, pools and tokens, on SQLite (default) or PostgreSQL.

    Safe to share between threads and to run in several processes on one database.
    """

    def __init__(self, tx: Transactions, clock: Callable[[], datetime] = _utcnow) -> None:
        self._tx = tx
        self._clock = clock

    @classmethod
    def open(cls, url: str, *, migrate: bool = True,
             clock: Callable[[], datetime] = _utcnow) -> Store:
        """Connect to ``url`` and, unless told not to, bring the schema to the newest revision."""
        tx = Transactions(make_engine(url))
        try:
            if migrate:
                _migrate.upgrade(tx)
            else:
                with tx.read():
                    pass  # fail now, not on the first request, when the database is unreachable
        except BaseException:
            tx.engine.dispose()
            raise
        return cls(tx, clock)

    def close(self) -> None:
        self._tx.engine.dispose()

    # --- tokens ---------------------------------------------------------------------------

    def create_token(self, *, role: Role, project: str | None = None,
                     host: str | None = None) -> tuple[Principal, str]:
        """A new random token; the plaintext is returned here once and never stored."""
        return _tokens.create_token(self._tx, role, project, host, self._clock())

    def ensure_token(self, plaintext: str, *, role: Role) -> Principal:
        return _tokens.ensure_token(self._tx, plaintext, role, self._clock())

    def authenticate(self, plaintext: str) -> Principal | None:
        return _tokens.authenticate(self._tx, plaintext)

    # --- inventory ------------------------------------------------------------------------

    def report_inventory(self, host: str, generation: int | None, inventory: Inventory, *,
                         now: datetime) -> ReportResult:
        """Replace the host's inventory if ``generation`` is current (None: create the host)."""
        if now.tzinfo is None:
            raise ValueError("now must be an aware datetime")
        return _inventory.report_inventory(self._tx, host, generation, inventory, now)

    def list_hosts(self, *, limit: int = 100, marker: str | None = None) -> Page[HostRecord]:
        with self._tx.read() as conn:
            return _queries.list_hosts(conn, limit, marker)

    def get_host(self, name: str) -> HostRecord:
        with self._tx.read() as conn:
            return _queries.get_host(conn, name)

    def list_devices(self, flt: DeviceFilter, *, limit: int = 100,
                     marker: str | None = None) -> Page[DeviceRecord]:
        with self._tx.read() as conn:
            return _queries.list_devices(conn, flt, limit, marker)

    def get_device(self, host: str, address: PciAddress) -> DeviceRecord:
        with self._tx.read() as conn:
            return _queries.get_device(conn, host, address)

    def set_reserved(self, host: str, address: PciAddress, reserved: bool) -> DeviceRecord:
        """Take a device out of service or put it back; its owner, if any, keeps it."""
        with self._tx.write() as conn:
            host_id = conn.execute(
                select(hosts.c.id).where(hosts.c.name == host).with_for_update()
            ).scalar()
            row = None if host_id is None else conn.execute(
                select(devices).where(devices.c.host_id == host_id,
                                      devices.c.address == str(address))
            ).first()
            if host_id is None or row is None:
                raise NotFound(f"host {host} has no device {address}")
            before = to_tracked(row)
            if before.reserved == reserved:
                return to_record(host, before)
            after = Tracked(before.device, before.state, reserved, before.owner,
                            before.held_state)
            sync_pools(conn, host_id, [(slot_of(before), slot_of(after))])
            conn.execute(update(devices).where(devices.c.id == row.id)
                         .values(reserved=reserved, updated_at=self._clock()))
            drop_empty_pools(conn, host_id)
            return to_record(host, after)

    def list_pools(self, *, host: str | None = None, limit: int = 100,
                   marker: str | None = None) -> Page[PoolRecord]:
        with self._tx.read() as conn:
            return _queries.list_pools(conn, host, limit, marker)
