"""Issuing tokens: admins make member, agent and further admin tokens."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from pcipass.api.auth import Admin, StoreDep
from pcipass.api.schemas import TokenCreate, TokenOut
from pcipass.api.views import token_view

router = APIRouter(tags=["tokens"])


@router.post("/tokens", response_model=TokenOut, status_code=201)
def create_token(caller: Admin, body: TokenCreate, store: StoreDep) -> Any:
    """The secret is in this reply only; the server keeps its hash."""
    principal, secret = store.create_token(role=body.role, project=body.project, host=body.host)
    return token_view(principal, secret)
