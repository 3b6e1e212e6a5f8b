"""Pools: the host's groups of interchangeable devices, counted by :mod:`pcipass.store.derive`.

Every writer of device rows recounts the host's pools from its devices
(:func:`pcipass.store.derive.write_host`), then calls :func:`drop_empty_pools` once no device
points at an emptied pool any more. The caller holds the host row lock (see
:mod:`pcipass.store.schema`), so counts never race.
"""

from __future__ import annotations

from sqlalchemy import Connection, delete

from pcipass.store.schema import pools


def drop_empty_pools(conn: Connection, host_id: int) -> None:
    conn.execute(delete(pools).where(pools.c.host_id == host_id, pools.c.total == 0))
