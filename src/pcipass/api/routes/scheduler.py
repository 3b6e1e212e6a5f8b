"""What the scheduler would do with a flavor (and image), without booting: per-host verdicts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from pcipass.api.auth import Admin, CloudDep
from pcipass.api.schemas import ExplainOut, ExplainRequest
from pcipass.api.views import explanation_view

router = APIRouter(tags=["scheduler"])


@router.post("/scheduler/explain", response_model=ExplainOut)
def explain(caller: Admin, body: ExplainRequest, cloud: CloudDep) -> Any:
    """The sentence a failed boot's fault would carry, and why each host fits or not."""
    return explanation_view(cloud.explain(caller, flavor=body.flavor, image=body.image,
                                          project=body.project,
                                          nics=[n.given() for n in body.nics]))
