"""The list, show and delete commands every API collection shares, written once."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from rich.console import RenderableType

from pcipass.cli.client import ApiClient, Params
from pcipass.cli.common import console, print_json, reported

T = TypeVar("T")


def deleted(kind: str, name: str, as_json: bool) -> None:
    if as_json:
        print_json({"deleted": kind, "name": name})
    else:
        console().print(f"deleted {kind} {name}")


@dataclass(frozen=True)
class Resource(Generic[T]):
    """A collection of the API (``/v1/networks``) and how its items read for people."""

    noun: str
    path: str
    key: str
    record: Callable[[Mapping[str, Any]], T]
    table: Callable[[Sequence[T]], RenderableType]
    view: Callable[[T], RenderableType]

    def print(self, obj: Mapping[str, Any], as_json: bool) -> None:
        if as_json:
            print_json(obj)
            return
        with reported():
            console().print(self.view(self.record(obj)))

    def list(self, url: str, token: str | None, as_json: bool, params: Params = ()) -> None:
        with reported(), ApiClient(url, token) as client:
            listing = client.listing(self.path, self.key, params)
        if as_json:
            print_json({self.key: listing.items, "next": listing.next})
            return
        with reported():
            console().print(self.table([self.record(x) for x in listing.items]))

    def show(self, ref: str, url: str, token: str | None, as_json: bool) -> None:
        with reported(), ApiClient(url, token) as client:
            obj = client.item(self.path, ref)
        self.print(obj, as_json)

    def delete(self, ref: str, url: str, token: str | None, as_json: bool) -> None:
        with reported(), ApiClient(url, token) as client:
            client.delete_item(self.path, ref)
        deleted(self.noun, ref, as_json)
