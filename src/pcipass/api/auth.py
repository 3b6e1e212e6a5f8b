"""Who is calling, and may they: bearer tokens and the role rules of the ``/v1`` API.

A token travels only in ``Authorization: Bearer <token>``; the store looks it up by its
SHA-256 hash, so the plaintext is never stored or compared. Roles:

- ``admin``: everything;
- ``member``: bound to a project; no access to hosts, devices or pools yet; reads aliases,
  the flavors and images it may use, and its project's servers, quotas and usage; boots;
- ``agent``: bound to one host; may report and read that host only.

Which flavor, image or server a member may see is the :class:`~pcipass.services.Cloud`'s
call (a private one of another project is "not found", not "forbidden"); the roles a route
admits at all are checked here, before its body is read.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pcipass.errors import AuthError, Forbidden
from pcipass.records import Principal, Role
from pcipass.services import Cloud
from pcipass.store import Store

MAX_TOKEN_LEN = 512

# Declared for OpenAPI's "Authorize" button only; the header is parsed below so that every
# failure is our 401 body rather than the framework's.
_bearer_scheme = HTTPBearer(auto_error=False, description="A pcipass token: Bearer <token>")


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


StoreDep = Annotated[Store, Depends(get_store)]


def get_cloud(request: Request) -> Cloud:
    cloud: Cloud = request.app.state.cloud
    return cloud


CloudDep = Annotated[Cloud, Depends(get_cloud)]


def bearer_token(header: str | None) -> str:
    """The token out of an ``Authorization`` header value, or :class:`AuthError`."""
    if not header:
        raise AuthError("no token: send Authorization: Bearer <token>", field="Authorization")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if (scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_LEN
            or any(c.isspace() for c in token) or not token.isascii()):
        raise AuthError("malformed Authorization header: expected Bearer <token>",
                        field="Authorization")
    return token


def authenticate(
    request: Request,
    store: StoreDep,
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)],
) -> Principal:
    principal = store.authenticate(bearer_token(request.headers.get("authorization")))
    if principal is None:
        raise AuthError("unknown token", field="Authorization")
    return principal


Caller = Annotated[Principal, Depends(authenticate)]


def require_admin(caller: Principal) -> None:
    if caller.role is not Role.ADMIN:
        raise Forbidden(f"this needs an admin token; the caller's role is {caller.role.value}")


def require_host(caller: Principal, host: str) -> None:
    """Admins reach every host; an agent only the host its token was made for."""
    if caller.role is Role.ADMIN:
        return
    if caller.role is Role.AGENT:
        if caller.host == host:
            return
        raise Forbidden(f"this agent token is for host {caller.host!r}, not {host!r}",
                        field="host")
    raise Forbidden(f"the {caller.role.value} role may not read or report hosts")


def require_listing(caller: Principal, host: str | None) -> None:
    """Lists are for admins, or for an agent that narrows them to its own host."""
    if caller.role is Role.ADMIN:
        return
    if caller.role is Role.AGENT and host is None:
        raise Forbidden(f"this agent token may only list host {caller.host!r} "
                        f"(add ?host={caller.host})", field="host")
    require_host(caller, host or "")


def _admin(caller: Caller) -> Principal:
    require_admin(caller)
    return caller


def require_user(caller: Principal) -> None:
    """Tenants' routes (flavors, images, servers, quotas, usage) are for admins and members."""
    if caller.role is Role.AGENT:
        raise Forbidden("an agent token may only report and read its own host")


def _user(caller: Caller) -> Principal:
    require_user(caller)
    return caller


def _host_caller(host: str, caller: Caller) -> Principal:
    require_host(caller, host)
    return caller


# As dependencies, these run before the body is validated: a caller who may not do a thing
# hears 403, not how their body was wrong.
Admin = Annotated[Principal, Depends(_admin)]
HostCaller = Annotated[Principal, Depends(_host_caller)]
User = Annotated[Principal, Depends(_user)]
