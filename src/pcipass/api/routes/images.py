"""Images: a disk on the hosts, and the properties that say which devices its guest drives."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from pcipass.api.auth import CloudDep, User
from pcipass.api.schemas import ImageCreate, ImageList, ImageOut
from pcipass.api.views import image_view

router = APIRouter(tags=["images"])


@router.post("/images", response_model=ImageOut, status_code=201)
def create_image(caller: User, body: ImageCreate, cloud: CloudDep) -> Any:
    """An admin's image is public; a member's is private to its project."""
    made = cloud.create_image(caller, name=body.name, source=body.source,
                              properties=body.properties)
    return image_view(made)


@router.get("/images", response_model=ImageList)
def list_images(caller: User, cloud: CloudDep) -> Any:
    return {"images": [image_view(i) for i in cloud.list_images(caller)], "next": None}


@router.get("/images/{ref}", response_model=ImageOut)
def get_image(ref: str, caller: User, cloud: CloudDep) -> Any:
    return image_view(cloud.get_image(caller, ref))


@router.delete("/images/{ref}", status_code=204, response_class=Response)
def delete_image(ref: str, caller: User, cloud: CloudDep) -> Response:
    cloud.delete_image(caller, ref)
    return Response(status_code=204)
