"""Who may do what: roles and projects, checked by every service first.

A member never learns that another project's private flavor, image, server, network or port
exists: those are NotFound for it, not Forbidden. Agents use none of the tenant-facing services.
"""

from __future__ import annotations

from pcipass.errors import Forbidden
from pcipass.records import Principal, Role

# The project an admin's boots and ports land in when it names none.
ADMIN_PROJECT = "admin"


def admin(p: Principal, what: str, *, field: str | None = None) -> None:
    if p.role is not Role.ADMIN:
        raise Forbidden(f"only an admin may {what}", field=field)


def tenant(p: Principal, what: str) -> str | None:
    """Admins and members; the project a member is bound to (None for an admin, who sees
    every project)."""
    if p.role is Role.ADMIN:
        return None
    if p.role is Role.MEMBER and p.project:
        return p.project
    raise Forbidden(f"a {p.role.value} token may not {what}")


def acting_project(p: Principal, project: str | None, what: str, *,
                   admin_default: str | None = None) -> str | None:
    """The project a call acts in: a member's own (asking for another is Forbidden); for
    an admin, the one named, else ``admin_default``."""
    own = tenant(p, what)
    if own is None:
        return project if project is not None else admin_default
    if project is not None and project != own:
        raise Forbidden(f"a member of project {own} may not {what} in project {project}",
                        field="project")
    return own
