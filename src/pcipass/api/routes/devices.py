"""Devices: every reported PCI function with its state, filterable; reserve and unreserve."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import StringConstraints

from pcipass.api.auth import Admin, Caller, HostCaller, StoreDep, require_listing
from pcipass.api.schemas import DeviceOut, DevicePage, DevicePatch
from pcipass.api.views import device_view
from pcipass.pci.address import PciAddress
from pcipass.pci.device import DevType
from pcipass.records import DeviceFilter, DeviceState

router = APIRouter(tags=["devices"])

_HEX4 = r"^[0-9a-fA-F]{4}$"
TagParam = Annotated[str, StringConstraints(pattern=r"^[^=]+=")]


def device_filter(
    host: str | None = None,
    state: DeviceState | None = None,
    vendor_id: Annotated[str | None, Query(pattern=_HEX4)] = None,
    product_id: Annotated[str | None, Query(pattern=_HEX4)] = None,
    dev_type: DevType | None = None,
    assignable: bool | None = None,
    tag: Annotated[list[TagParam] | None,
                   Query(description="key=value; repeat to require all")] = None,
) -> DeviceFilter:
    return DeviceFilter(
        host=host, state=state,
        vendor_id=vendor_id.lower() if vendor_id else None,
        product_id=product_id.lower() if product_id else None,
        dev_type=dev_type, assignable=assignable,
        tags=tuple(_tag(t) for t in tag or ()),
    )


def _tag(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key, value


@router.get("/devices", response_model=DevicePage)
def list_devices(
    caller: Caller, store: StoreDep, flt: Annotated[DeviceFilter, Depends(device_filter)],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, marker: str | None = None,
) -> Any:
    require_listing(caller, flt.host)
    page = store.list_devices(flt, limit=limit, marker=marker)
    return {"devices": [device_view(d) for d in page.items], "next": page.next}


@router.get("/devices/{host}/{address}", response_model=DeviceOut)
def get_device(host: str, address: str, caller: HostCaller, store: StoreDep) -> Any:
    return device_view(store.get_device(host, PciAddress.parse(address, field="path.address")))


@router.patch("/devices/{host}/{address}", response_model=DeviceOut)
def patch_device(host: str, address: str, caller: Admin, body: DevicePatch,
                 store: StoreDep) -> Any:
    """`reserved: true` takes the device out of service; an owner keeps it until freed."""
    addr = PciAddress.parse(address, field="path.address")
    return device_view(store.set_reserved(host, addr, body.reserved))
