"""Reads: hosts, devices and pools as records, in pages with opaque markers.

Pages are keyset pages in a stable order (host name, then device address or pool id): a
marker is the last item's sort key, so pages neither skip nor repeat rows when others are
inserted meanwhile, and no query ever counts or offsets.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, and_, func, or_, select

from pcipass.errors import InvalidInput, NotFound
from pcipass.pci.address import PciAddress
from pcipass.records import (
    DeviceFilter,
    DeviceRecord,
    DeviceState,
    HostRecord,
    Page,
    PoolRecord,
)
from pcipass.store.rows import empty_counts, shown_state, to_host, to_pool, to_record, to_tracked
from pcipass.store.schema import device_tags, devices, hosts, pools

MAX_LIMIT = 1000


def encode_marker(*parts: str | int) -> str:
    raw = json.dumps(list(parts), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_marker(marker: str, kinds: tuple[type, ...]) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(marker + "=" * (-len(marker) % 4))
        parts = json.loads(raw)
    except (binascii.Error, ValueError):
        parts = None
    if (not isinstance(parts, list) or len(parts) != len(kinds)
            or not all(isinstance(p, k) for p, k in zip(parts, kinds, strict=True))):
        raise InvalidInput(f"marker {marker!r} is not one this server handed out",
                           field="marker")
    return parts


def check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}", field="limit")


def _norm_hex(value: str) -> str:
    return value.lower().removeprefix("0x")


# --- hosts -------------------------------------------------------------------------------

def device_counts(conn: Connection, host_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """Devices per shown state for each host, in one grouped query."""
    out: dict[int, dict[str, int]] = defaultdict(empty_counts)
    if not host_ids:
        return out
    rows = conn.execute(
        select(devices.c.host_id, devices.c.state, devices.c.reserved, func.count())
        .where(devices.c.host_id.in_(host_ids))
        .group_by(devices.c.host_id, devices.c.state, devices.c.reserved)
    )
    for host_id, state, reserved, n in rows:
        counts = out[host_id]
        counts[shown_state(DeviceState(state), bool(reserved)).value] += n
        counts["total"] += n
    return out


def list_hosts(conn: Connection, limit: int, marker: str | None) -> Page[HostRecord]:
    check_limit(limit)
    q = select(hosts).order_by(hosts.c.name).limit(limit + 1)
    if marker is not None:
        (after,) = decode_marker(marker, (str,))
        q = q.where(hosts.c.name > after)
    rows = conn.execute(q).all()
    page = rows[:limit]
    counts = device_counts(conn, [r.id for r in page])
    items = tuple(to_host(r, counts[r.id]) for r in page)
    nxt = encode_marker(page[-1].name) if len(rows) > limit else None
    return Page(items, nxt)


def get_host(conn: Connection, name: str) -> HostRecord:
    row = conn.execute(select(hosts).where(hosts.c.name == name)).first()
    if row is None:
        raise NotFound(f"host {name} is not known")
    return to_host(row, device_counts(conn, [row.id])[row.id])


# --- devices -----------------------------------------------------------------------------

def _state_clause(state: DeviceState) -> ColumnElement[bool]:
    if state is DeviceState.RESERVED:
        return and_(devices.c.state == DeviceState.AVAILABLE.value, devices.c.reserved)
    if state is DeviceState.AVAILABLE:
        return and_(devices.c.state == state.value, ~devices.c.reserved)
    return devices.c.state == state.value


def _device_query() -> Select[Any]:
    return select(devices, hosts.c.name.label("host_name")).join(
        hosts, hosts.c.id == devices.c.host_id)


def filter_devices(q: Select[Any], flt: DeviceFilter) -> Select[Any]:
    if flt.host is not None:
        q = q.where(hosts.c.name == flt.host)
    if flt.state is not None:
        q = q.where(_state_clause(flt.state))
    if flt.vendor_id is not None:
        q = q.where(devices.c.vendor_id == _norm_hex(flt.vendor_id))
    if flt.product_id is not None:
        q = q.where(devices.c.product_id == _norm_hex(flt.product_id))
    if flt.dev_type is not None:
        q = q.where(devices.c.dev_type == flt.dev_type.value)
    if flt.assignable is not None:
        q = q.where(devices.c.assignable == flt.assignable)
    for key, value in flt.tags:
        q = q.where(devices.c.id.in_(
            select(device_tags.c.device_id)
            .where(device_tags.c.key == key, device_tags.c.value == value)
        ))
    return q


def list_devices(conn: Connection, flt: DeviceFilter, limit: int,
                 marker: str | None) -> Page[DeviceRecord]:
    check_limit(limit)
    q = filter_devices(_device_query(), flt)
    if marker is not None:
        host, address = decode_marker(marker, (str, str))
        q = q.where(or_(hosts.c.name > host,
                        and_(hosts.c.name == host, devices.c.address > address)))
    rows = conn.execute(q.order_by(hosts.c.name, devices.c.address).limit(limit + 1)).all()
    page = rows[:limit]
    items = tuple(to_record(r.host_name, to_tracked(r), r.reason) for r in page)
    nxt = encode_marker(page[-1].host_name, page[-1].address) if len(rows) > limit else None
    return Page(items, nxt)


def get_device(conn: Connection, host: str, address: PciAddress) -> DeviceRecord:
    row = conn.execute(
        _device_query().where(hosts.c.name == host, devices.c.address == str(address))
    ).first()
    if row is None:
        raise NotFound(f"host {host} has no device {address}")
    return to_record(host, to_tracked(row), row.reason)


# --- pools -------------------------------------------------------------------------------

def list_pools(conn: Connection, host: str | None, limit: int,
               marker: str | None) -> Page[PoolRecord]:
    check_limit(limit)
    q = select(pools, hosts.c.name.label("host_name")).join(hosts, hosts.c.id == pools.c.host_id)
    if host is not None:
        q = q.where(hosts.c.name == host)
    if marker is not None:
        after_host, after_id = decode_marker(marker, (str, int))
        q = q.where(or_(hosts.c.name > after_host,
                        and_(hosts.c.name == after_host, pools.c.id > after_id)))
    rows = conn.execute(q.where(pools.c.total > 0)
                        .order_by(hosts.c.name, pools.c.id).limit(limit + 1)).all()
    page = rows[:limit]
    items = tuple(to_pool(r.host_name, r) for r in page)
    nxt = encode_marker(page[-1].host_name, page[-1].id) if len(rows) > limit else None
    return Page(items, nxt)
