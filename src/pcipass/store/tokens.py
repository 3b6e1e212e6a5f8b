"""API tokens: random, shown once, stored only as their sha256.

A token carries 256 random bits, so an unsalted fast hash is enough: nobody can guess its
preimage, and a lookup by hash needs no scan.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, insert, select
from sqlalchemy.exc import IntegrityError

from pcipass.errors import Conflict, InvalidInput
from pcipass.pci.inventory import valid_host_name
from pcipass.records import Principal, Role
from pcipass.store.engine import Transactions
from pcipass.store.schema import tokens

TOKEN_BYTES = 32


class _Raced(Exception):
    """A concurrent insert of the same token won; the transaction is void, read again."""


def token_hash(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def check_binding(role: Role, project: str | None, host: str | None) -> None:
    """Members are bound to a project, agents to a host, admins to neither."""
    if role is Role.MEMBER and not project:
        raise InvalidInput("a member token needs a project", field="project")
    if role is Role.AGENT:
        if not host:
            raise InvalidInput("an agent token needs a host", field="host")
        if not valid_host_name(host):
            raise InvalidInput(f"{host!r} is not a valid host name", field="host")
    if project is not None and role is not Role.MEMBER:
        raise InvalidInput(f"a {role.value} token is not bound to a project", field="project")
    if host is not None and role is not Role.AGENT:
        raise InvalidInput(f"a {role.value} token is not bound to a host", field="host")


def _principal(row: Row[Any]) -> Principal:
    return Principal(token_id=row.id, role=Role(row.role), project=row.project, host=row.host)


def _find(conn: Connection, digest: str) -> Principal | None:
    row = conn.execute(select(tokens).where(tokens.c.hash == digest)).first()
    return None if row is None else _principal(row)


def _insert(conn: Connection, digest: str, role: Role, project: str | None, host: str | None,
            now: datetime) -> Principal:
    token_id = uuid.uuid4().hex
    conn.execute(insert(tokens), {"id": token_id, "hash": digest, "role": role.value,
                                  "project": project, "host": host, "created_at": now})
    return Principal(token_id=token_id, role=role, project=project, host=host)


def create_token(tx: Transactions, role: Role, project: str | None, host: str | None,
                 now: datetime) -> tuple[Principal, str]:
    role = Role(role)
    check_binding(role, project, host)
    plaintext = secrets.token_urlsafe(TOKEN_BYTES)
    with tx.write() as conn:
        return _insert(conn, token_hash(plaintext), role, project, host, now), plaintext


def ensure_token(tx: Transactions, plaintext: str, role: Role, now: datetime) -> Principal:
    """Make a configured token (the bootstrap admin's) known; a no-op when it already is."""
    role = Role(role)
    check_binding(role, None, None)
    if not plaintext or plaintext != plaintext.strip():
        raise InvalidInput("a token must be non-empty, without surrounding spaces",
                           field="token")
    digest = token_hash(plaintext)
    for _ in range(2):
        try:
            with tx.write() as conn:
                found = _find(conn, digest)
                if found is None:
                    try:
                        return _insert(conn, digest, role, None, None, now)
                    except IntegrityError:
                        raise _Raced from None
        except _Raced:
            continue  # another API worker inserted it at the same moment: read it back
        if found.role is not role:
            raise Conflict(f"that token is already known with role {found.role.value}",
                           field="token")
        return found
    raise Conflict("the token could not be stored", field="token")


def authenticate(tx: Transactions, plaintext: str) -> Principal | None:
    if not plaintext:
        return None
    with tx.read() as conn:
        return _find(conn, token_hash(plaintext))
