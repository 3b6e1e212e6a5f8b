"""Reading an inventory report off the wire: raw JSON, then the one inventory parser.

The body is not given to pydantic: ``parse_inventory`` is the single validator of reports
(the same one ``discover --json`` output is checked with), and its field paths
(``devices[3].address``) are what a 422 names.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from pcipass.errors import InvalidInventory
from pcipass.pci.inventory import Inventory, parse_inventory, valid_host_name

REPORT_SCHEMA_REF = {"$ref": "#/components/schemas/InventoryReport"}


async def raw_body(request: Request) -> bytes:
    return await request.body()


def parse_report(host: str, body: bytes) -> tuple[int | None, Inventory]:
    """The generation the agent last saw, and the inventory; nothing is stored on failure."""
    if not valid_host_name(host):
        raise InvalidInventory(f"{host!r} is not a host name (letters, digits, '.', '_', '-')",
                               field="path.host")
    if not body.strip():
        raise InvalidInventory("the request body is empty: send the report as JSON")
    try:
        obj: Any = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInventory(f"the request body is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidInventory("an inventory report must be a JSON object", field="")
    generation = obj.get("generation")
    if generation is not None and (
        isinstance(generation, bool) or not isinstance(generation, int) or generation < 0
    ):
        raise InvalidInventory("generation must be a whole number, or null for a new host",
                               field="generation")
    return generation, parse_inventory(obj)
