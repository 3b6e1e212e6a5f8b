"""Pool kinds: the distinct sets of attributes an alias can look at, fleet-wide.

A kind is what :meth:`pcipass.pci.alias.AliasEntry.matches` reads of a device (vendor, product,
type, class code, driver, subsystem ids, tags) and nothing else, so an alias matches every
device of a kind or none. A fleet of 10,000 hosts built from a few hardware models has a few
dozen kinds: the scheduler matches aliases against kinds in Python, then pools by ``kind_id``
in SQL. Kinds are only ever added, so a reader caches them by the highest id it has seen.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.dialects import postgresql, sqlite

from pcipass.pci.address import PciAddress
from pcipass.pci.device import DevType, PciDevice
from pcipass.pci.pool import PoolKey
from pcipass.store.kindsets import KindSets
from pcipass.store.schema import pool_kinds

_NOWHERE = PciAddress(0, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class Kind:
    vendor_id: str
    product_id: str
    dev_type: DevType
    class_code: str
    driver: str | None
    subsystem_vendor_id: str | None
    subsystem_product_id: str | None
    tags: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, dev: PciDevice) -> Kind:
        return cls(dev.vendor_id, dev.product_id, dev.dev_type, dev.class_code, dev.driver,
                   dev.subsystem_vendor_id, dev.subsystem_product_id,
                   tuple(sorted(dev.tags.items())))

    def descriptor(self) -> dict[str, Any]:
        return {
            "vendor_id": self.vendor_id, "product_id": self.product_id,
            "dev_type": self.dev_type.value, "class_code": self.class_code,
            "driver": self.driver, "subsystem_vendor_id": self.subsystem_vendor_id,
            "subsystem_product_id": self.subsystem_product_id, "tags": dict(self.tags),
        }

    @classmethod
    def from_descriptor(cls, d: Mapping[str, Any]) -> Kind:
        return cls(d["vendor_id"], d["product_id"], DevType(d["dev_type"]), d["class_code"],
                   d["driver"], d["subsystem_vendor_id"], d["subsystem_product_id"],
                   tuple(sorted(d["tags"].items())))

    @property
    def digest(self) -> str:
        text = json.dumps(self.descriptor(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def example(self) -> PciDevice:
        """A device of this kind, for asking an alias whether it matches the kind."""
        return PciDevice(address=_NOWHERE, vendor_id=self.vendor_id,
                         product_id=self.product_id, class_code=self.class_code,
                         dev_type=self.dev_type, driver=self.driver,
                         subsystem_vendor_id=self.subsystem_vendor_id,
                         subsystem_product_id=self.subsystem_product_id,
                         assignable=True, tags=dict(self.tags))


@dataclass(frozen=True, slots=True)
class StoreKey:
    """A pool row's identity: the pool key and the kind (a pool holds one kind)."""

    pool: PoolKey
    kind: Kind

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.pool.digest}:{self.kind.digest}".encode()).hexdigest()


class KindIds:
    """digest → id for kinds known to be committed; new ones are looked up again next time
    (an id read inside a transaction that rolls back must not be remembered). Also carries
    the registered kind sets (:mod:`pcipass.store.kindsets`) every device writer keeps."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self.sets = KindSets()

    def ensure(self, conn: Connection, kinds: Iterable[Kind]) -> dict[Kind, int]:
        wanted = {k.digest: k for k in kinds}
        out = {k: self._ids[d] for d, k in wanted.items() if d in self._ids}
        missing = {d: k for d, k in wanted.items() if d not in self._ids}
        if not missing:
            return out
        found = dict(conn.execute(select(pool_kinds.c.digest, pool_kinds.c.id)
                                  .where(pool_kinds.c.digest.in_(list(missing)))).all())
        self._ids.update(found)
        new = [{"digest": d, "descriptor": k.descriptor()} for d, k in missing.items()
               if d not in found]
        if new:
            ins: Any = (postgresql.insert(pool_kinds) if conn.dialect.name == "postgresql"
                        else sqlite.insert(pool_kinds))
            conn.execute(ins.on_conflict_do_nothing(index_elements=["digest"]), new)
            found.update(conn.execute(
                select(pool_kinds.c.digest, pool_kinds.c.id)
                .where(pool_kinds.c.digest.in_([n["digest"] for n in new]))).all())
        out.update({k: found[d] for d, k in missing.items()})
        return out


class KindCatalog:
    """Every kind by id, for matching aliases; reloaded when the number of kinds grows.

    (By count, not by the highest id: on PostgreSQL a smaller id can commit after a larger.)
    """

    def __init__(self) -> None:
        self.kinds: dict[int, Kind] = {}
        self.examples: dict[int, PciDevice] = {}

    def refresh(self, conn: Connection) -> None:
        count = conn.execute(select(func.count()).select_from(pool_kinds)).scalar_one()
        if count == len(self.kinds):
            return
        for kind_id, descriptor in conn.execute(
                select(pool_kinds.c.id, pool_kinds.c.descriptor)):
            if kind_id not in self.kinds:
                kind = Kind.from_descriptor(descriptor)
                self.kinds[kind_id] = kind
                self.examples[kind_id] = kind.example()
