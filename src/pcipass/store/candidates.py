"""Narrowing 10,000 hosts to a few in SQL, and counting why the others were left out.

A boot's hard PCI requests become :class:`Need` s: the pool kinds that match the request's
alias (matched in Python against the few kinds there are) and a count. One indexed query
over ``pools`` (``kind_id, usable, host_id``) sums each host's usable devices per need,
keeps the hosts that have enough of every need and enough free vCPUs and RAM, and returns
them in the weigher's order, a page at a time::

    SELECT h.id, h.name FROM hosts h JOIN (
        SELECT host_id, SUM(CASE WHEN kind_id IN (..) THEN usable ELSE 0 END) AS f0, ...
        FROM pools WHERE kind_id IN (..) AND usable > 0 GROUP BY host_id
        HAVING f0 >= :n0 AND ...) a ON a.host_id = h.id
    WHERE h.cpus - h.used_vcpus >= :vcpus AND h.memory_mb - h.used_ram_mb >= :ram
    ORDER BY f0 + ... (pack: fewest first; spread: most), free RAM, free vCPUs, name
    LIMIT :k OFFSET :o

Usable counts what ``sched.fit`` counts (free devices in units it may hand out), so a host
left out here could not have taken the boot; the hosts let through are then judged by
``fit`` itself. Boots without PCI requests get the hosts with the fewest usable devices
first (``hosts.pci_free``), keeping scarce devices reachable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, case, func, literal, select

from pcipass.store.schema import hosts, pools

NO_PCI = -1    # codes of a host's first failing check, in the order sched.fit checks
VCPUS = -2
RAM = -3
PASSED = -4


@dataclass(frozen=True, slots=True)
class Need:
    kind_ids: frozenset[int]
    count: int


@dataclass(frozen=True, slots=True)
class Candidate:
    host_id: int
    name: str


def _free_vcpus() -> ColumnElement[int]:
    return hosts.c.cpus - hosts.c.used_vcpus


def _free_ram() -> ColumnElement[int]:
    return hosts.c.memory_mb - hosts.c.used_ram_mb


def _sums(needs: Sequence[Need]) -> list[ColumnElement[Any]]:
    return [func.sum(case((pools.c.kind_id.in_(sorted(n.kind_ids)), pools.c.usable),
                          else_=0)) for n in needs]


def _all_kinds(needs: Sequence[Need]) -> list[int]:
    return sorted(set().union(*(n.kind_ids for n in needs)))


def candidates(conn: Connection, needs: Sequence[Need], vcpus: int, ram_mb: int, *,
               spread: bool, limit: int, offset: int = 0,
               only: int | None = None) -> list[Candidate]:
    """One page of the hosts that pass, best first (``only``: whether that host does)."""
    if any(not n.kind_ids for n in needs):
        return []
    compute = and_(_free_vcpus() >= vcpus, _free_ram() >= ram_mb)
    if only is not None:
        compute = and_(compute, hosts.c.id == only)
    sign = -1 if spread else 1
    if not needs:
        q = (select(hosts.c.id, hosts.c.name).where(compute)
             .order_by(hosts.c.pci_free, sign * _free_ram(), sign * _free_vcpus(),
                       hosts.c.name))
    else:
        sums = _sums(needs)
        agg = (select(pools.c.host_id.label("host_id"),
                      *(s.label(f"f{i}") for i, s in enumerate(sums)))
               .where(pools.c.kind_id.in_(_all_kinds(needs)), pools.c.usable > 0)
               .group_by(pools.c.host_id)
               .having(and_(*(s >= n.count for s, n in zip(sums, needs, strict=True))))
               .subquery())
        matching = sum((agg.c[f"f{i}"] for i in range(len(needs))), start=literal(0))
        q = (select(hosts.c.id, hosts.c.name)
             .join(agg, agg.c.host_id == hosts.c.id)
             .where(compute)
             .order_by(sign * matching, sign * _free_ram(), sign * _free_vcpus(),
                       hosts.c.name))
    rows = conn.execute(q.limit(limit).offset(offset)).all()
    return [Candidate(r.id, r.name) for r in rows]


@dataclass(frozen=True, slots=True)
class Counts:
    """How many hosts fail which check first (the order of ``sched.fit``)."""

    total: int
    lack: tuple[int, ...]     # per need: hosts whose first unmet need it is
    vcpus: int
    ram: int
    passed: int               # hosts the candidate query lets through


def _code(needs: Sequence[Need], sums: Sequence[ColumnElement[Any]],
          vcpus: int, ram_mb: int) -> ColumnElement[int]:
    whens: list[tuple[ColumnElement[bool], int]] = [
        (func.coalesce(s, 0) < n.count, i) for i, (s, n) in enumerate(zip(sums, needs,
                                                                            strict=True))]
    whens += [(_free_vcpus() < vcpus, VCPUS), (_free_ram() < ram_mb, RAM)]
    return case(*whens, else_=PASSED)


def counts(conn: Connection, needs: Sequence[Need], vcpus: int, ram_mb: int) -> Counts:
    total = conn.execute(select(func.count()).select_from(hosts)).scalar_one()
    lack = [0] * len(needs)
    by_code: dict[int, int] = {}
    if needs and any(not n.kind_ids for n in needs):
        first = next(i for i, n in enumerate(needs) if not n.kind_ids)
        lack[first] = total
        return Counts(total, tuple(lack), 0, 0, 0)
    if needs:
        agg = (select(pools.c.host_id.label("host_id"),
                      *(s.label(f"f{i}") for i, s in enumerate(_sums(needs))))
               .where(pools.c.kind_id.in_(_all_kinds(needs)), pools.c.usable > 0)
               .group_by(pools.c.host_id).subquery())
        code = _code(needs, [agg.c[f"f{i}"] for i in range(len(needs))], vcpus, ram_mb)
        inner = (select(code.label("code")).select_from(hosts)
                 .join(agg, agg.c.host_id == hosts.c.id).subquery())
        by_code = dict(conn.execute(select(inner.c.code, func.count())
                                    .group_by(inner.c.code)).all())
        seen = sum(by_code.values())
        lack[0] += total - seen   # hosts without a single usable matching device
    else:
        code = _code((), (), vcpus, ram_mb)
        inner = select(code.label("code")).select_from(hosts).subquery()
        by_code = dict(conn.execute(select(inner.c.code, func.count())
                                    .group_by(inner.c.code)).all())
    for i in range(len(needs)):
        lack[i] += by_code.get(i, 0)
    return Counts(total, tuple(lack), by_code.get(VCPUS, 0), by_code.get(RAM, 0),
                  by_code.get(PASSED, 0))


def host_codes(conn: Connection, needs: Sequence[Need], vcpus: int, ram_mb: int,
               limit: int) -> list[tuple[int, str, int]]:
    """(host id, name, code) of the first ``limit`` hosts by name, for per-host verdicts."""
    if needs and any(not n.kind_ids for n in needs):
        first = next(i for i, n in enumerate(needs) if not n.kind_ids)
        return [(r.id, r.name, first) for r in conn.execute(
            select(hosts.c.id, hosts.c.name).order_by(hosts.c.name).limit(limit))]
    if needs:
        agg = (select(pools.c.host_id.label("host_id"),
                      *(s.label(f"f{i}") for i, s in enumerate(_sums(needs))))
               .where(pools.c.kind_id.in_(_all_kinds(needs)), pools.c.usable > 0)
               .group_by(pools.c.host_id).subquery())
        code = _code(needs, [agg.c[f"f{i}"] for i in range(len(needs))], vcpus, ram_mb)
        q = select(hosts.c.id, hosts.c.name, code).select_from(
            hosts.outerjoin(agg, agg.c.host_id == hosts.c.id))
    else:
        q = select(hosts.c.id, hosts.c.name, _code((), (), vcpus, ram_mb))
    return [(r[0], r[1], r[2]) for r in conn.execute(q.order_by(hosts.c.name).limit(limit))]
