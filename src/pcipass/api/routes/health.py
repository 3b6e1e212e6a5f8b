"""Liveness, for load balancers and for tests waiting on a fresh server: no token needed."""

from __future__ import annotations

from fastapi import APIRouter

from pcipass.api.schemas import HealthOut

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthOut)
def health() -> HealthOut:
    return HealthOut()
