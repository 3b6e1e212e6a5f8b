"""Narrowing 10,000 hosts to a few in SQL, and counting why the others were left out.

A boot's hard PCI requests become :class:`Need` s: the pool kinds that match the request's
alias (matched in Python against the few kinds there are) and a count. ``host_kinds`` holds
each host's usable devices per kind, kept by every device writer, so:

- one need of one kind (the common case) walks the ``(kind_id, usable, host_id)`` index in
  the weigher's order and stops at the end of the page::

      SELECT h.id, h.name FROM host_kinds hk JOIN hosts h ON h.id = hk.host_id
      WHERE hk.kind_id = :kind AND hk.usable >= :n
        AND h.cpus - h.used_vcpus >= :vcpus AND h.memory_mb - h.used_ram_mb >= :ram
      ORDER BY hk.usable, hk.host_id LIMIT :limit       -- pack; spread: DESC

- one need whose alias matches several kinds does the same on ``host_kind_sets``, the sums
  over a registered set of kinds (:mod:`pcipass.store.kindsets`);

- several needs sum per host first::

      ... JOIN (SELECT host_id, SUM(CASE WHEN kind_id IN (..) THEN usable ELSE 0 END) AS f0, ..
                FROM host_kinds WHERE kind_id IN (..) AND usable > 0 GROUP BY host_id
                HAVING f0 >= :n0 AND ...) a ON a.host_id = h.id ... ORDER BY f0 + ..., h.id

- a boot without PCI requests walks ``(pci_free, id)``: hosts with no usable device first.

Usable counts what ``sched.fit`` counts (free devices in units it may hand out), so a host
left out here could not have taken the boot; those let through are judged by ``fit``. The
statements are built once per shape and take their values as parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    bindparam,
    case,
    func,
    literal,
    literal_column,
    select,
)

from pcipass.pci.device import HostKind
from pcipass.store.schema import host_kind_sets, host_kinds, hosts, servers
from pcipass.store.servers import LIVE

NO_PCI = -1    # codes of a host's first failing check, in the order sched.fit checks
VCPUS = -2
RAM = -3
PASSED = -4
RESERVED = -5  # reserved by an admin (draining): checked before anything else
OTHER_KIND = -6  # a bare-metal host for a hypervisor boot, or the other way round
OCCUPIED = -7    # a bare-metal host that runs a server already
DOWN = -8        # its agent went silent (pcipass.store.liveness): checked after RESERVED


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


def _open() -> ColumnElement[bool]:
    """The host takes new guests: not reserved, not down, and a hypervisor (bare-metal
    hosts take only bare-metal boots: :func:`machines`)."""
    return and_(~hosts.c.reserved, ~hosts.c.down, hosts.c.kind == HostKind.HYPERVISOR.value)


def _compute() -> ColumnElement[bool]:
    """The host takes new guests (:func:`_open`) and has the vCPUs and RAM."""
    return and_(_open(), _free_vcpus() >= bindparam("vcpus"),
                _free_ram() >= bindparam("ram"))


def _sums(count: int) -> list[ColumnElement[Any]]:
    if count == 1:   # the WHERE keeps only its kinds
        return [func.sum(host_kinds.c.usable)]
    return [func.sum(case((host_kinds.c.kind_id.in_(bindparam(f"k{i}", expanding=True)),
                           host_kinds.c.usable), else_=0)) for i in range(count)]


def _aggregate(count: int, having: bool) -> Any:
    sums = _sums(count)
    q = (select(host_kinds.c.host_id.label("host_id"),
                *(s.label(f"f{i}") for i, s in enumerate(sums)))
         .where(host_kinds.c.kind_id.in_(bindparam("kinds", expanding=True)),
                host_kinds.c.usable > 0)
         .group_by(host_kinds.c.host_id))
    if having:
        q = q.having(and_(*(s >= bindparam(f"n{i}") for i, s in enumerate(sums))))
    return q.subquery()


def _direction(column: Any, spread: bool) -> Any:
    return column.desc() if spread else column


@lru_cache(maxsize=64)
def _statement(shape: str, spread: bool, only: bool) -> Any:
    """The candidate query of ``shape`` (``none``, ``kind`` or ``set``), built once.

    Order: pack puts the fewest matching usable devices first, spread the most; ties go by
    host id (fill one host, then the next). No need: hosts by usable devices, fewest first.
    One need of one kind, or of one registered kind set, walks the index of ``host_kinds``
    or ``host_kind_sets`` in that order and stops at the end of the page. (Several needs:
    :func:`_ranked`.)
    """
    if shape == "none":
        q = (select(hosts.c.id, hosts.c.name).where(_compute())
             .order_by(hosts.c.pci_free, _direction(hosts.c.id, spread)))
    else:
        t, key = ((host_kinds, host_kinds.c.kind_id) if shape == "kind"
                  else (host_kind_sets, host_kind_sets.c.set_id))
        q = (select(hosts.c.id, hosts.c.name)
             .select_from(t.join(hosts, hosts.c.id == t.c.host_id))
             .where(key == bindparam("kind"), t.c.usable >= bindparam("n0"), _compute())
             .order_by(_direction(t.c.usable, spread), _direction(t.c.host_id, spread)))
    if only:
        q = q.where(hosts.c.id == bindparam("only"))
    return q.limit(bindparam("limit")).offset(bindparam("offset"))


@lru_cache(maxsize=64)
def _ranked(count: int, spread: bool) -> Any:
    """Hosts with enough usable devices for ``count`` needs, ranked, a batch at a time.

    Summing per host is the cost here (every host with a matching kind), so the compute
    filter runs after, on the batch only (:data:`_COMPUTE_OK`), instead of on every host.
    """
    agg = _aggregate(count, having=True)
    matching = sum((agg.c[f"f{i}"] for i in range(count)), start=literal(0))
    return (select(agg.c.host_id)
            .order_by(_direction(matching, spread), _direction(agg.c.host_id, spread))
            .limit(bindparam("limit")).offset(bindparam("offset")))


_COMPUTE_OK = select(hosts.c.id, hosts.c.name).where(
    hosts.c.id.in_(bindparam("ids", expanding=True)), _compute())
RANK_BATCH = 64


def _params(needs: Sequence[Need]) -> dict[str, Any]:
    params: dict[str, Any] = {"kinds": sorted(set().union(*(n.kind_ids for n in needs)))}
    for i, n in enumerate(needs):
        params[f"k{i}"] = sorted(n.kind_ids)
        params[f"n{i}"] = n.count
    if len(needs) == 1 and len(needs[0].kind_ids) == 1:
        (params["kind"],) = needs[0].kind_ids
    return params


def candidates(conn: Connection, needs: Sequence[Need], vcpus: int, ram_mb: int, *,
               spread: bool, limit: int, offset: int = 0, only: int | None = None,
               kind_set: int | None = None) -> list[Candidate]:
    """One page of the hosts that pass, best first (``only``: whether that host does).
    ``kind_set``: the registered set of the one need's kinds, when it has several."""
    if any(not n.kind_ids for n in needs):
        return []
    params = {**_params(needs), "vcpus": vcpus, "ram": ram_mb, "limit": limit,
              "offset": offset, "only": only}
    shape = None
    if not needs:
        shape = "none"
    elif len(needs) == 1 and len(needs[0].kind_ids) == 1:
        shape = "kind"
    elif len(needs) == 1 and kind_set is not None:
        shape, params["kind"] = "set", kind_set
    if shape is not None:
        q = _statement(shape, spread, only is not None)
        return [Candidate(r.id, r.name) for r in conn.execute(q, params)]
    if only is not None:
        params["limit"], params["offset"] = 1, 0
        q = _ranked(len(needs), spread).where(literal_column("host_id") == bindparam("only"))
        ids = list(conn.execute(q, params).scalars())
    else:
        ids = None
    found: list[Candidate] = []
    batch = max(RANK_BATCH, 4 * (offset + limit))
    start = 0
    while True:
        if ids is None:
            ranked = list(conn.execute(_ranked(len(needs), spread),
                                       {**params, "limit": batch, "offset": start})
                          .scalars())
        else:
            ranked = ids
        passing = dict(conn.execute(_COMPUTE_OK, {**params, "ids": ranked}).all()) \
            if ranked else {}
        found += [Candidate(i, passing[i]) for i in ranked if i in passing]
        if len(found) >= offset + limit or ids is not None or len(ranked) < batch:
            return found[offset:offset + limit]
        start += batch


@dataclass(frozen=True, slots=True)
class Counts:
    """How many hosts fail which check first (the order of ``sched.fit``)."""

    total: int
    lack: tuple[int, ...]     # per need: hosts whose first unmet need it is
    vcpus: int
    ram: int
    passed: int               # hosts the candidate query lets through
    reserved: int = 0         # hosts reserved by an admin (draining), counted for nothing else
    baremetal: int = 0        # bare-metal hosts (not reserved, not down): they take no guest
    down: int = 0             # hosts whose agent went silent (not reserved)


def _code(needs: Sequence[Need], sums: Sequence[ColumnElement[Any]],
          vcpus: int, ram_mb: int) -> ColumnElement[int]:
    whens: list[tuple[ColumnElement[bool], int]] = [
        (func.coalesce(s, 0) < bindparam(f"n{i}"), i) for i, (s, _n) in enumerate(zip(
            sums, needs, strict=True))]
    whens += [(_free_vcpus() < vcpus, VCPUS), (_free_ram() < ram_mb, RAM)]
    return case(*whens, else_=PASSED)


@lru_cache(maxsize=8)
def _enough(shape: str) -> Any:
    """Per first failing check, the hosts with enough usable devices for one need of one
    kind or kind set: a walk of its index from the count up, not a sum over every host."""
    t, key = ((host_kinds, host_kinds.c.kind_id) if shape == "kind"
              else (host_kind_sets, host_kind_sets.c.set_id))
    code = case((_free_vcpus() < bindparam("vcpus"), VCPUS),
                (_free_ram() < bindparam("ram"), RAM), else_=PASSED).label("code")
    return (select(code, func.count()).select_from(t.join(hosts, hosts.c.id == t.c.host_id))
            .where(key == bindparam("kind"), t.c.usable >= bindparam("n0"), _open())
            .group_by(code))


def counts(conn: Connection, needs: Sequence[Need], vcpus: int, ram_mb: int, *,
           kind_set: int | None = None) -> Counts:
    everyone, reserved, down, baremetal = conn.execute(select(
        func.count(), func.coalesce(func.sum(case((hosts.c.reserved, 1), else_=0)), 0),
        func.coalesce(func.sum(case((and_(~hosts.c.reserved, hosts.c.down), 1), else_=0)), 0),
        func.coalesce(func.sum(case((and_(~hosts.c.reserved, ~hosts.c.down,
                                          hosts.c.kind != HostKind.HYPERVISOR.value), 1),
                                    else_=0)), 0))
        .select_from(hosts)).one()
    total = everyone - reserved - down - baremetal   # the hosts that take new guests
    lack = [0] * len(needs)
    by_code: dict[int, int] = {}
    if needs and any(not n.kind_ids for n in needs):
        first = next(i for i, n in enumerate(needs) if not n.kind_ids)
        lack[first] = total
        return Counts(everyone, tuple(lack), 0, 0, 0, reserved, baremetal, down)
    single = len(needs) == 1 and (len(needs[0].kind_ids) == 1 or kind_set is not None)
    if single:
        params = {**_params(needs), "vcpus": vcpus, "ram": ram_mb}
        if kind_set is not None and len(needs[0].kind_ids) > 1:
            params["kind"] = kind_set
        shape = "kind" if len(needs[0].kind_ids) == 1 else "set"
        by_code = dict(conn.execute(_enough(shape), params).all())
        lack[0] = total - sum(by_code.values())
    elif needs:
        agg = _aggregate(len(needs), having=False)
        code = _code(needs, [agg.c[f"f{i}"] for i in range(len(needs))], vcpus, ram_mb)
        inner = (select(code.label("code")).select_from(hosts)
                 .join(agg, agg.c.host_id == hosts.c.id).where(_open()).subquery())
        by_code = dict(conn.execute(select(inner.c.code, func.count())
                                    .group_by(inner.c.code), _params(needs)).all())
        seen = sum(by_code.values())
        lack[0] += total - seen   # hosts without a single usable matching device
    else:
        code = _code((), (), vcpus, ram_mb)
        inner = select(code.label("code")).select_from(hosts).where(_open()).subquery()
        by_code = dict(conn.execute(select(inner.c.code, func.count())
                                    .group_by(inner.c.code)).all())
    for i in range(len(needs)):
        lack[i] += by_code.get(i, 0) if not single else 0
    return Counts(everyone, tuple(lack), by_code.get(VCPUS, 0), by_code.get(RAM, 0),
                  by_code.get(PASSED, 0), reserved, baremetal, down)


def host_codes(conn: Connection, needs: Sequence[Need], vcpus: int, ram_mb: int,
               limit: int) -> list[tuple[int, str, int]]:
    """(host id, name, code) of the first ``limit`` hosts by name, for per-host verdicts."""
    if needs and any(not n.kind_ids for n in needs):
        first = next(i for i, n in enumerate(needs) if not n.kind_ids)
        return [(r.id, r.name, first) for r in conn.execute(
            select(hosts.c.id, hosts.c.name).order_by(hosts.c.name).limit(limit))]
    params: dict[str, Any] = {}
    if needs:
        agg = _aggregate(len(needs), having=False)
        code = _code(needs, [agg.c[f"f{i}"] for i in range(len(needs))], vcpus, ram_mb)
        q = select(hosts.c.id, hosts.c.name, case((hosts.c.reserved, RESERVED),
                                                  (hosts.c.down, DOWN),
                                                  (_other_kind(), OTHER_KIND), else_=code)
                   ).select_from(hosts.outerjoin(agg, agg.c.host_id == hosts.c.id))
        params = _params(needs)
    else:
        q = select(hosts.c.id, hosts.c.name, case((hosts.c.reserved, RESERVED),
                                                  (hosts.c.down, DOWN),
                                                  (_other_kind(), OTHER_KIND),
                                                  else_=_code((), (), vcpus, ram_mb)))
    return [(r[0], r[1], r[2]) for r in conn.execute(q.order_by(hosts.c.name).limit(limit),
                                                      params)]


def _other_kind() -> ColumnElement[bool]:
    return hosts.c.kind != HostKind.HYPERVISOR.value


# --- bare metal: whole machines ------------------------------------------------------------
#
# A bare-metal boot takes a whole machine: a bare-metal host, not reserved, with no live
# server, whose capacity covers the flavor and whose usable devices cover each need. Such
# hosts are few next to hypervisors; the ``(kind, pci_free, id)`` index walks them in the
# weigher's order (pack: fewest usable devices first) and each need is a sum over the host's
# own ``host_kinds`` rows::
#
#     SELECT h.id, h.name FROM hosts h
#     WHERE h.kind = 'baremetal' AND NOT h.reserved AND NOT h.down AND h.cpus >= :vcpus
#       AND h.memory_mb >= :ram AND NOT EXISTS (SELECT 1 FROM servers s
#                                               WHERE s.host_id = h.id AND s.status IN LIVE)
#       AND (SELECT COALESCE(SUM(usable), 0) FROM host_kinds
#            WHERE host_id = h.id AND kind_id IN (:k0)) >= :n0 ...
#     ORDER BY h.pci_free, h.id LIMIT :limit

def _occupied() -> ColumnElement[bool]:
    return (select(servers.c.id)
            .where(servers.c.host_id == hosts.c.id, servers.c.status.in_(LIVE)).exists())


def _machine_sum(i: int) -> Any:
    return (select(func.coalesce(func.sum(host_kinds.c.usable), 0))
            .where(host_kinds.c.host_id == hosts.c.id,
                   host_kinds.c.kind_id.in_(bindparam(f"k{i}", expanding=True)))
            .scalar_subquery())


@lru_cache(maxsize=32)
def _machines(count: int, spread: bool, only: bool) -> Any:
    q = (select(hosts.c.id, hosts.c.name)
         .where(hosts.c.kind == HostKind.BAREMETAL.value, ~hosts.c.reserved, ~hosts.c.down,
                hosts.c.cpus >= bindparam("vcpus"), hosts.c.memory_mb >= bindparam("ram"),
                ~_occupied(), *(_machine_sum(i) >= bindparam(f"n{i}") for i in range(count)))
         .order_by(_direction(hosts.c.pci_free, spread), _direction(hosts.c.id, spread)))
    if only:
        q = q.where(hosts.c.id == bindparam("only"))
    return q.limit(bindparam("limit")).offset(bindparam("offset"))


def machines(conn: Connection, needs: Sequence[Need], vcpus: int, ram_mb: int, *,
             spread: bool, limit: int, offset: int = 0, only: int | None = None
             ) -> list[Candidate]:
    """One page of the free bare-metal machines that pass, best first (``only``: whether
    that host does)."""
    if any(not n.kind_ids for n in needs):
        return []
    params: dict[str, Any] = {"vcpus": vcpus, "ram": ram_mb, "limit": limit,
                              "offset": offset, "only": only}
    for i, n in enumerate(needs):
        params[f"k{i}"] = sorted(n.kind_ids)
        params[f"n{i}"] = n.count
    q = _machines(len(needs), spread, only is not None)
    return [Candidate(r.id, r.name) for r in conn.execute(q, params)]


@dataclass(frozen=True, slots=True)
class MachineCounts:
    """How many hosts fail a bare-metal boot at which check first."""

    hypervisors: int          # hosts that are not bare metal (reserved or not)
    reserved: int             # bare-metal hosts reserved by an admin
    occupied: int             # bare-metal hosts running a server
    vcpus: int
    ram: int
    lack: tuple[int, ...]     # per need: bare-metal hosts whose first unmet need it is
    passed: int
    down: int = 0             # bare-metal hosts whose agent went silent (not reserved)


def machine_counts(conn: Connection, needs: Sequence[Need], vcpus: int, ram_mb: int
                   ) -> MachineCounts:
    params: dict[str, Any] = {}
    whens: list[tuple[ColumnElement[bool], int]] = [
        (hosts.c.reserved, RESERVED), (hosts.c.down, DOWN), (_occupied(), OCCUPIED),
        (hosts.c.cpus < vcpus, VCPUS), (hosts.c.memory_mb < ram_mb, RAM)]
    for i, n in enumerate(needs):
        params[f"k{i}"] = sorted(n.kind_ids) or [-1]
        whens.append((_machine_sum(i) < n.count, i))
    code = case(*whens, else_=PASSED).label("code")
    inner = (select(code).select_from(hosts)
             .where(hosts.c.kind == HostKind.BAREMETAL.value).subquery())
    by_code: dict[int, int] = dict(conn.execute(
        select(inner.c.code, func.count()).group_by(inner.c.code), params).all())
    others = conn.execute(select(func.count()).select_from(hosts)
                          .where(hosts.c.kind != HostKind.BAREMETAL.value)).scalar_one()
    return MachineCounts(others, by_code.get(RESERVED, 0), by_code.get(OCCUPIED, 0),
                         by_code.get(VCPUS, 0), by_code.get(RAM, 0),
                         tuple(by_code.get(i, 0) for i in range(len(needs))),
                         by_code.get(PASSED, 0), by_code.get(DOWN, 0))
