"""A per-process cache of what discovery found on hosts, keyed by the host's generation.

A scheduling decision reads a few hosts' devices two or three times (judge, claim); their
discovered facts (ids, groups, tags: JSON columns, most of the cost of a read) only change
with an inventory report, which always bumps the host's generation. So the facts are read
once per generation and the hot path reads only the bookkeeping columns (state, owner...).

Facts are loaded with the generation in the same statement, so what is cached under a
generation is what the database held at it; a bookkeeping read that names a device the
cached facts lack (a report committed in between, on PostgreSQL) reloads them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Sequence
from threading import Lock

from sqlalchemy import Connection, select

from pcipass.pci.device import PciDevice
from pcipass.store.rows import to_device
from pcipass.store.schema import devices, hosts

_FACT_COLUMNS = [c for c in devices.c if c.name not in (
    "id", "state", "held_state", "reserved", "owner", "owner_alias", "pool_id", "updated_at",
    "reason")]

Devices = dict[str, PciDevice]   # by address text


class FactsCache:
    """The newest facts of up to ``size`` hosts; safe to share between threads."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._lru: OrderedDict[int, tuple[int, Devices]] = OrderedDict()
        self._lock = Lock()

    def get(self, conn: Connection, wanted: Sequence[tuple[int, int, Collection[str]]]
            ) -> dict[int, Devices]:
        """For each ``(host id, generation, addresses)``: the facts of those devices."""
        out: dict[int, Devices] = {}
        missing: list[int] = []
        with self._lock:
            for host_id, generation, addresses in wanted:
                hit = self._lru.get(host_id)
                if hit is not None and hit[0] == generation and all(
                        a in hit[1] for a in addresses):
                    self._lru.move_to_end(host_id)
                    out[host_id] = hit[1]
                else:
                    missing.append(host_id)
        if missing:
            loaded = self._load(conn, missing)
            with self._lock:
                for host_id, (generation, found) in loaded.items():
                    self._lru[host_id] = (generation, found)
                    self._lru.move_to_end(host_id)
                    out[host_id] = found
                while len(self._lru) > self.size:
                    self._lru.popitem(last=False)
        return out

    @staticmethod
    def _load(conn: Connection, host_ids: Sequence[int]) -> dict[int, tuple[int, Devices]]:
        out: dict[int, tuple[int, Devices]] = {}
        q = (select(hosts.c.generation, *_FACT_COLUMNS)
             .join(hosts, hosts.c.id == devices.c.host_id)
             .where(devices.c.host_id.in_(host_ids)))
        for r in conn.execute(q):
            entry = out.get(r.host_id)
            if entry is None:
                entry = out[r.host_id] = (r.generation, {})
            entry[1][r.address] = to_device(r._mapping)
        return out
