"""Quotas (devices per project and alias) and usage (device-seconds from allocation to free).

A project's quota is checked inside the claim's transaction with the project's row locked
(``projects``, created with its first quota): two boots of one project on two hosts each
lock their host, then queue on the project row, and the second counts the first's devices.
What a project holds is counted from ``devices.owner_alias`` (ownership's one home), not
kept in a counter. Riders (group mates handed out with a unit) are not counted: the tenant
asked for, and pays for, the devices its aliases matched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from pcipass.errors import NotFound, QuotaExceeded
from pcipass.records import QuotaRecord, UsageRecord
from pcipass.store.schema import devices, projects, quotas, servers, usage_records


def held_per_alias(conn: Connection, project: str, aliases: Sequence[str] | None = None
                   ) -> dict[str, int]:
    q = (select(devices.c.owner_alias, func.count())
         .select_from(devices.join(servers, servers.c.id == devices.c.owner))
         .where(servers.c.project == project, devices.c.owner_alias.is_not(None))
         .group_by(devices.c.owner_alias))
    if aliases is not None:
        q = q.where(devices.c.owner_alias.in_(aliases))
    return {alias: n for alias, n in conn.execute(q)}


def project_limits(conn: Connection, project: str) -> dict[str, int]:
    return dict(conn.execute(select(quotas.c.alias, quotas.c.device_limit).where(
        quotas.c.project == project)).all())


def limits(conn: Connection, project: str, aliases: Sequence[str]) -> dict[str, int]:
    return dict(conn.execute(select(quotas.c.alias, quotas.c.device_limit).where(
        quotas.c.project == project, quotas.c.alias.in_(aliases))).all())


def quota_problem(project: str, alias: str, limit: int, held: int, asked: int) -> str:
    return (f"project {project} may hold {limit} {alias!r} device{'s' if limit != 1 else ''}, "
            f"holds {held}, asked for {asked}")


def over_quota(project: str, asked: Mapping[str, int], limit: Mapping[str, int],
               held: Mapping[str, int]) -> QuotaExceeded | None:
    for alias, n in asked.items():
        if n > 0 and alias in limit and held.get(alias, 0) + n > limit[alias]:
            return QuotaExceeded(quota_problem(project, alias, limit[alias],
                                               held.get(alias, 0), n), field="quota")
    return None


def check_quota(conn: Connection, project: str, asked: Mapping[str, int], *,
                lock: bool, credit: Mapping[str, int] | None = None) -> None:
    """Raise :class:`QuotaExceeded` if ``asked`` more devices would take ``project`` over a
    limit. ``lock``: inside a claim, lock the project's row first (see the module).
    ``credit``: devices it holds that it gives back when this claim wins (a resize's old
    side), not counted as held."""
    wanted = [a for a, n in asked.items() if n > 0]
    if not wanted:
        return
    limit = limits(conn, project, wanted)
    if not limit:
        return
    if lock:
        conn.execute(select(projects.c.name).where(projects.c.name == project)
                     .with_for_update()).first()
    held = held_per_alias(conn, project, list(limit))
    for alias, n in (credit or {}).items():
        if alias in held:
            held[alias] = max(held[alias] - n, 0)
    problem = over_quota(project, asked, limit, held)
    if problem is not None:
        raise problem


def set_quota(conn: Connection, project: str, alias: str, limit: int,
              now: datetime) -> QuotaRecord:
    dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(dialect.insert(projects).values(name=project, created_at=now)
                 .on_conflict_do_nothing(index_elements=["name"]))
    stmt = dialect.insert(quotas).values(project=project, alias=alias, device_limit=limit)
    conn.execute(stmt.on_conflict_do_update(index_elements=["project", "alias"],
                                            set_={"device_limit": limit}))
    return QuotaRecord(project, alias, limit, held_per_alias(conn, project, [alias])
                       .get(alias, 0))


def list_quotas(conn: Connection, project: str | None) -> tuple[QuotaRecord, ...]:
    q = select(quotas).order_by(quotas.c.project, quotas.c.alias)
    if project is not None:
        q = q.where(quotas.c.project == project)
    rows = conn.execute(q).all()
    held: dict[str, dict[str, int]] = {}
    out = []
    for r in rows:
        if r.project not in held:
            held[r.project] = held_per_alias(conn, r.project)
        out.append(QuotaRecord(r.project, r.alias, r.device_limit,
                               held[r.project].get(r.alias, 0)))
    return tuple(out)


def delete_quota(conn: Connection, project: str, alias: str) -> None:
    gone = conn.execute(delete(quotas).where(quotas.c.project == project,
                                             quotas.c.alias == alias)).rowcount
    if gone != 1:
        raise NotFound(f"project {project} has no quota for alias {alias!r}", field="alias")


# --- usage ---------------------------------------------------------------------------------

def start_usage(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        conn.execute(insert(usage_records), list(rows))


def end_usage(conn: Connection, server_id: str, now: datetime) -> None:
    conn.execute(update(usage_records)
                 .where(usage_records.c.server_id == server_id,
                        usage_records.c.ended_at.is_(None))
                 .values(ended_at=now))


def usage(conn: Connection, project: str | None, start: datetime, end: datetime,
          now: datetime) -> tuple[UsageRecord, ...]:
    """Device-seconds per project and alias, each record clipped to [start, end] (a device
    still held counts up to ``now``)."""
    q = select(usage_records.c.project, usage_records.c.alias, usage_records.c.started_at,
               usage_records.c.ended_at).where(
        usage_records.c.started_at < end,
        or_(usage_records.c.ended_at.is_(None), usage_records.c.ended_at > start))
    if project is not None:
        q = q.where(usage_records.c.project == project)
    totals: dict[tuple[str, str], float] = {}
    for r in conn.execute(q):
        stop = min(r.ended_at or now, end)
        seconds = (stop - max(r.started_at, start)).total_seconds()
        key = (r.project, r.alias)
        totals[key] = totals.get(key, 0.0) + max(seconds, 0.0)
    return tuple(UsageRecord(p, a, s) for (p, a), s in sorted(totals.items()))

