"""Whether a host's agent is alive: hosts whose agent went silent take no new servers.

Every task poll and inventory report says the agent is alive (``last_seen`` /
``last_report_at``, and ``down`` cleared in the same write). The sweep marks ``down`` the
hosts whose agent has polled before and has neither polled nor reported since the cutoff,
as Nova's ``service_down_time`` does for its compute services. A down host is left out of
the SQL narrowing (:mod:`pcipass.store.candidates`) and refused under the claim's host lock
(:mod:`pcipass.store.claims`), like a reserved one, so a boot is not queued to a host that
would let it time out; what runs there keeps its devices. A host only ever reported through
the API (no agent polling it) has no ``last_seen`` and is never marked down.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Connection, or_, update

from pcipass.store.schema import hosts


def mark_down(conn: Connection, now: datetime, after_s: float) -> list[str]:
    """Mark down the hosts silent for more than ``after_s`` seconds; their names, sorted."""
    cutoff = now - timedelta(seconds=after_s)
    done = conn.execute(
        update(hosts)
        .where(~hosts.c.down, hosts.c.last_seen.is_not(None), hosts.c.last_seen < cutoff,
               or_(hosts.c.last_report_at.is_(None), hosts.c.last_report_at < cutoff))
        .values(down=True)
        .returning(hosts.c.name))
    return sorted(done.scalars())
