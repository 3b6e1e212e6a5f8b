"""PCI aliases: the names tenants ask for devices by, in Nova's ``[pci] alias`` JSON.

The body is read raw and handed to the one alias parser (``pcipass.pci.alias``), so a
refusal names the alias and the key exactly as a bad nova.conf line would be named.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response

from pcipass.api.auth import Admin, CloudDep, User
from pcipass.api.reports import raw_body
from pcipass.api.schemas import AliasesMade, AliasList, AliasOut
from pcipass.api.views import alias_view
from pcipass.errors import InvalidAlias

router = APIRouter(tags=["aliases"])

_NOVA_ALIAS = {"type": "object", "additionalProperties": True,
               "example": {"name": "gpu", "vendor_id": "10de", "product_id": "20b5",
                           "device_type": "type-PCI", "numa_policy": "preferred"}}
_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "oneOf": [_NOVA_ALIAS, {"type": "array", "items": _NOVA_ALIAS}]}}}}}


def alias_body(body: bytes) -> object:
    if not body.strip():
        raise InvalidAlias("the request body is empty: send a Nova alias object or a list",
                           field="alias")
    try:
        obj: object = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidAlias(f"the request body is not JSON: {exc}", field="alias") from None
    if not isinstance(obj, dict | list):
        # The parser also takes nova.conf lines (JSON text); a body is JSON already.
        raise InvalidAlias("the body must be a Nova alias object or a list of them",
                           field="alias")
    return obj


@router.post("/aliases", response_model=AliasesMade, status_code=201, openapi_extra=_BODY)
def create_aliases(caller: Admin, cloud: CloudDep,
                   body: Annotated[bytes, Depends(raw_body)]) -> Any:
    """Entries of a name that exists already join it as alternatives (checked together)."""
    made = cloud.create_aliases(caller, alias_body(body))
    return {"aliases": [alias_view(a) for a in made]}


@router.get("/aliases", response_model=AliasList)
def list_aliases(caller: User, cloud: CloudDep) -> Any:
    """From the configuration file and from this API, by name."""
    return {"aliases": [alias_view(a) for a in cloud.list_aliases(caller)], "next": None}


@router.get("/aliases/{name}", response_model=AliasOut)
def get_alias(name: str, caller: User, cloud: CloudDep) -> Any:
    return alias_view(cloud.get_alias(caller, name))


@router.delete("/aliases/{name}", status_code=204, response_class=Response)
def delete_alias(name: str, caller: Admin, cloud: CloudDep) -> Response:
    """Refused (409) while a flavor names it, and for aliases from the configuration file."""
    cloud.delete_alias(caller, name)
    return Response(status_code=204)
