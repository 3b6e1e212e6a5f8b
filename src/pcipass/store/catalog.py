"""Aliases, flavors and images: what the services check a boot against.

Plain rows in, records out; permission rules (who may see what) are the services'. Names are
unique where a reference by name must be unambiguous: aliases and flavors fleet-wide, images
among the public ones and within a project.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, delete, func, insert, or_, select

from pcipass.errors import Conflict, NotFound
from pcipass.records import FlavorRecord, ImageRecord
from pcipass.store.schema import aliases, flavor_projects, flavors, images

# --- aliases -------------------------------------------------------------------------------


def alias_entries(conn: Connection, *, share_lock: bool = False) -> list[dict[str, Any]]:
    """Every stored alias entry (Nova JSON), by name then position. ``share_lock`` holds them
    against deletion until the transaction ends (PostgreSQL; SQLite writers queue anyway)."""
    q = select(aliases.c.entry).order_by(aliases.c.name, aliases.c.position)
    if share_lock:
        q = q.with_for_update(read=True)
    return [dict(e) for e in conn.execute(q).scalars()]


def lock_alias(conn: Connection, name: str) -> None:
    """Lock a name's entries (a flavor created meanwhile, holding them shared, goes first)."""
    conn.execute(select(aliases.c.id).where(aliases.c.name == name).with_for_update()).all()


def add_alias_entries(conn: Connection, entries: Sequence[dict[str, Any]],
                      now: datetime) -> None:
    """Append entries after the existing ones of their names."""
    last = dict(conn.execute(
        select(aliases.c.name, func.max(aliases.c.position))
        .where(aliases.c.name.in_({e["name"] for e in entries}))
        .group_by(aliases.c.name)).all())
    rows = []
    for e in entries:
        position = last.get(e["name"], -1) + 1
        last[e["name"]] = position
        rows.append({"name": e["name"], "position": position, "entry": e, "created_at": now})
    if rows:
        conn.execute(insert(aliases), rows)


def delete_alias(conn: Connection, name: str) -> int:
    return conn.execute(delete(aliases).where(aliases.c.name == name)).rowcount


# --- flavors -------------------------------------------------------------------------------

def _flavor(row: Row[Any], projects: Sequence[str]) -> FlavorRecord:
    return FlavorRecord(id=row.id, name=row.name, vcpus=row.vcpus, ram_mb=row.ram_mb,
                        disk_gb=row.disk_gb, extra_specs=dict(row.extra_specs),
                        is_public=bool(row.is_public), projects=tuple(sorted(projects)))


def _flavor_projects(conn: Connection, ids: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {i: [] for i in ids}
    if ids:
        for fid, project in conn.execute(
                select(flavor_projects.c.flavor_id, flavor_projects.c.project)
                .where(flavor_projects.c.flavor_id.in_(ids))):
            out[fid].append(project)
    return out


def create_flavor(conn: Connection, *, name: str, vcpus: int, ram_mb: int, disk_gb: int,
                  extra_specs: dict[str, str], is_public: bool, projects: Sequence[str],
                  now: datetime) -> FlavorRecord:
    if conn.execute(select(flavors.c.id).where(flavors.c.name == name)).first() is not None:
        raise Conflict(f"a flavor named {name!r} exists already", field="name")
    flavor_id = str(uuid.uuid4())
    conn.execute(insert(flavors), {
        "id": flavor_id, "name": name, "vcpus": vcpus, "ram_mb": ram_mb, "disk_gb": disk_gb,
        "extra_specs": extra_specs, "is_public": is_public, "created_at": now})
    unique = sorted(set(projects))
    if unique:
        conn.execute(insert(flavor_projects),
                     [{"flavor_id": flavor_id, "project": p} for p in unique])
    return FlavorRecord(flavor_id, name, vcpus, ram_mb, disk_gb, dict(extra_specs), is_public,
                        tuple(unique))


def list_flavors(conn: Connection, project: str | None) -> tuple[FlavorRecord, ...]:
    """Every flavor (``project`` None), or those public or shared with ``project``."""
    q = select(flavors).order_by(flavors.c.name)
    if project is not None:
        q = q.where(or_(flavors.c.is_public, flavors.c.id.in_(
            select(flavor_projects.c.flavor_id).where(flavor_projects.c.project == project))))
    rows = conn.execute(q).all()
    projects = _flavor_projects(conn, [r.id for r in rows])
    return tuple(_flavor(r, projects[r.id]) for r in rows)


_FLAVOR = select(flavors).where(or_(flavors.c.id == bindparam("ref"),
                                   flavors.c.name == bindparam("ref")))


def find_flavor(conn: Connection, ref: str, project: str | None) -> FlavorRecord:
    """By id or name, among those ``project`` may see (all when None); NotFound otherwise.
    (An id wins over another flavor's name.)"""
    found = conn.execute(_FLAVOR, {"ref": ref}).all()
    row = next((r for r in found if r.id == ref), found[0] if found else None)
    if row is not None:
        projects = [] if row.is_public else _flavor_projects(conn, [row.id])[row.id]
        if project is None or row.is_public or project in projects:
            return _flavor(row, projects)
    raise NotFound(f"flavor {ref!r} not found", field="flavor")


def delete_flavor(conn: Connection, flavor_id: str) -> None:
    conn.execute(delete(flavor_projects).where(flavor_projects.c.flavor_id == flavor_id))
    conn.execute(delete(flavors).where(flavors.c.id == flavor_id))


def set_flavor_access(conn: Connection, flavor_id: str, add: Sequence[str],
                      remove: Sequence[str]) -> None:
    current = set(_flavor_projects(conn, [flavor_id])[flavor_id])
    gone = set(remove) & current
    new = set(add) - current - set(remove)
    if gone:
        conn.execute(delete(flavor_projects).where(flavor_projects.c.flavor_id == flavor_id,
                                                   flavor_projects.c.project.in_(gone)))
    if new:
        conn.execute(insert(flavor_projects),
                     [{"flavor_id": flavor_id, "project": p} for p in sorted(new)])


def flavors_naming(conn: Connection) -> list[FlavorRecord]:
    """Every flavor (for checks that scan extra specs, e.g. before deleting an alias)."""
    return list(list_flavors(conn, None))


# --- images --------------------------------------------------------------------------------

def _image(row: Row[Any]) -> ImageRecord:
    return ImageRecord(id=row.id, name=row.name, source=row.source,
                       properties=dict(row.properties), project=row.project)


def create_image(conn: Connection, *, name: str, source: str, properties: dict[str, str],
                 project: str | None, now: datetime) -> ImageRecord:
    """A public image (``project`` None) or one private to ``project``. A name must pick one
    image for everyone who can see it: unique among public images and within a project, and
    a private image may not take a public one's name."""
    clash = select(images.c.id).where(images.c.name == name)
    if project is not None:
        clash = clash.where(or_(images.c.project.is_(None), images.c.project == project))
    if conn.execute(clash.limit(1)).first() is not None:
        raise Conflict(f"an image named {name!r} exists already", field="name")
    image_id = str(uuid.uuid4())
    conn.execute(insert(images), {"id": image_id, "name": name, "source": source,
                                  "properties": properties, "project": project,
                                  "created_at": now})
    return ImageRecord(image_id, name, source, dict(properties), project)


def list_images(conn: Connection, project: str | None) -> tuple[ImageRecord, ...]:
    q = select(images).order_by(images.c.name, images.c.id)
    if project is not None:
        q = q.where(or_(images.c.project.is_(None), images.c.project == project))
    return tuple(_image(r) for r in conn.execute(q))


_IMAGE = select(images).where(or_(images.c.id == bindparam("ref"),
                                 images.c.name == bindparam("ref"))).limit(3)
_VISIBLE_IMAGE = _IMAGE.where(or_(images.c.project.is_(None),
                                  images.c.project == bindparam("project")))


def find_image(conn: Connection, ref: str, project: str | None) -> ImageRecord:
    """By id or name among those ``project`` may see (all when None). Several images of one
    name (an admin looking across projects) are a Conflict asking for the id."""
    q = _IMAGE if project is None else _VISIBLE_IMAGE
    found = conn.execute(q, {"ref": ref, "project": project}).all()
    by_id = [r for r in found if r.id == ref]
    if by_id:
        return _image(by_id[0])
    if len(found) > 1:
        raise Conflict(f"several images are named {ref!r}: give the id", field="image")
    if found:
        return _image(found[0])
    raise NotFound(f"image {ref!r} not found", field="image")


def delete_image(conn: Connection, image_id: str) -> None:
    conn.execute(delete(images).where(images.c.id == image_id))
