"""The one way the CLI and the host agent talk to the control plane.

Every call goes through :meth:`ApiClient.request`, which turns an error reply's
``{"code", "message", "field"}`` body back into the matching :mod:`pcipass.errors` class, and
a transport failure (refused connection, timeout) into :class:`ServerUnreachable`, so callers
handle one error tree whichever side of the wire a problem came from.

Replies stay JSON (what ``--json`` prints); the ``*_record`` functions below turn them into the
plain values of :mod:`pcipass.records` for rendering and for the agent's decisions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx

from pcipass import errors
from pcipass.pci.address import PciAddress
from pcipass.pci.device import DevType
from pcipass.pci.inventory import parse_device, parse_host
from pcipass.records import DeviceRecord, DeviceState, HostRecord, PoolRecord, ReportResult

JSON = dict[str, Any]
Params = Sequence[tuple[str, str]]

DEFAULT_TIMEOUT_S = 10.0


def _error_classes() -> dict[str, type[errors.PcipassError]]:
    """Every error class by its stable code, found by walking the tree (so new ones map too)."""
    found: dict[str, type[errors.PcipassError]] = {}
    todo: list[type[errors.PcipassError]] = [errors.PcipassError]
    while todo:
        cls = todo.pop()
        found.setdefault(cls.code, cls)
        todo.extend(cls.__subclasses__())
    return found


_BY_STATUS: dict[int, type[errors.PcipassError]] = {
    400: errors.InvalidInput,
    401: errors.AuthError,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
    422: errors.InvalidInput,
}


def error_from_response(status: int, body: Any, fallback: str) -> errors.PcipassError:
    """Rebuild the server's error; the code is kept even when this client does not know it."""
    code = message = field = None
    if isinstance(body, Mapping):
        code = body.get("code") if isinstance(body.get("code"), str) else None
        message = body.get("message") if isinstance(body.get("message"), str) else None
        field = body.get("field") if isinstance(body.get("field"), str) else None
        if message is None and "detail" in body:  # a framework error that escaped our handler
            message = str(body["detail"])
    cls = _error_classes().get(code or "") or _BY_STATUS.get(status) or (
        errors.InvalidInput if 400 <= status < 500 else errors.InfrastructureError
    )
    return cls(message or fallback, field=field, code=code)


@dataclass(frozen=True, slots=True)
class Listing:
    """The items of one or more pages, and the marker of the page after them (if any)."""

    items: list[JSON]
    next: str | None = None


class ApiClient:
    """A thin, typed wrapper over ``httpx.Client`` for the ``/v1`` API."""

    def __init__(self, url: str, token: str | None, *, timeout: float = DEFAULT_TIMEOUT_S,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout,
                                  transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- transport --------------------------------------------------------------------

    def request(self, method: str, path: str, *, params: Params | None = None,
                body: Any = None) -> Any:
        """One call; the parsed JSON reply, or the error the server meant, raised."""
        try:
            reply = self._http.request(method, path, params=list(params or ()), json=body)
        except httpx.TransportError as exc:
            raise errors.ServerUnreachable(
                f"cannot reach {self.url}: {exc.__class__.__name__}: {exc}"
            ) from exc
        if reply.is_success:
            return reply.json() if reply.content else None
        try:
            payload: Any = reply.json()
        except ValueError:
            payload = None
        raise error_from_response(
            reply.status_code, payload,
            f"{method} {path} failed: HTTP {reply.status_code} {reply.reason_phrase}",
        )

    def listing(self, path: str, key: str, params: Params = (), *, limit: int | None = None,
                marker: str | None = None, all_pages: bool = True) -> Listing:
        """A paginated list from ``marker`` on, following ``next`` markers when ``all_pages``."""
        items: list[JSON] = []
        while True:
            query = list(params)
            if limit is not None:
                query.append(("limit", str(limit)))
            if marker is not None:
                query.append(("marker", marker))
            page = self.request("GET", path, params=query)
            items.extend(page.get(key) or [])
            marker = page.get("next")
            if not all_pages or not marker:
                return Listing(items, marker)

    # --- endpoints ----------------------------------------------------------------------

    def health(self) -> JSON:
        result: JSON = self.request("GET", "/v1/health")
        return result

    def hosts(self, *, limit: int | None = None, marker: str | None = None,
              all_pages: bool = True) -> Listing:
        return self.listing("/v1/hosts", "hosts", limit=limit, marker=marker,
                            all_pages=all_pages)

    def host(self, name: str) -> JSON:
        result: JSON = self.request("GET", f"/v1/hosts/{_seg(name)}")
        return result

    def put_inventory(self, host: str, generation: int | None, inventory: Mapping[str, Any]
                      ) -> JSON:
        body = {"generation": generation, **inventory}
        result: JSON = self.request("PUT", f"/v1/hosts/{_seg(host)}/inventory", body=body)
        return result

    def devices(self, params: Params = (), *, limit: int | None = None,
                marker: str | None = None, all_pages: bool = True) -> Listing:
        return self.listing("/v1/devices", "devices", params, limit=limit, marker=marker,
                            all_pages=all_pages)

    def device(self, host: str, address: str) -> JSON:
        result: JSON = self.request("GET", f"/v1/devices/{_seg(host)}/{_seg(address)}")
        return result

    def set_reserved(self, host: str, address: str, reserved: bool) -> JSON:
        result: JSON = self.request("PATCH", f"/v1/devices/{_seg(host)}/{_seg(address)}",
                                    body={"reserved": reserved})
        return result

    def pools(self, params: Params = (), *, limit: int | None = None,
              marker: str | None = None, all_pages: bool = True) -> Listing:
        return self.listing("/v1/pools", "pools", params, limit=limit, marker=marker,
                            all_pages=all_pages)

    def create_token(self, role: str, *, project: str | None = None,
                     host: str | None = None) -> JSON:
        result: JSON = self.request("POST", "/v1/tokens",
                                    body={"role": role, "project": project, "host": host})
        return result


def _seg(text: str) -> str:
    """One URL path segment: a host name or address never escapes its place in the path."""
    return quote(text, safe="")


# --- JSON replies to records ---------------------------------------------------------------

def _datetime(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def host_record(obj: Mapping[str, Any]) -> HostRecord:
    counts = obj.get("devices") or {}
    return HostRecord(
        name=str(obj["name"]),
        generation=int(obj.get("generation") or 0),
        info=parse_host({"hostname": obj.get("name"), "cpus": obj.get("cpus"),
                         "memory_mb": obj.get("memory_mb"),
                         "numa_nodes": obj.get("numa_nodes")}),
        last_report_at=_datetime(obj.get("last_report_at")),
        device_counts={str(k): int(v) for k, v in counts.items()},
    )


def device_record(obj: Mapping[str, Any]) -> DeviceRecord:
    return DeviceRecord(
        host=str(obj.get("host") or ""),
        device=parse_device(obj, "device"),
        state=DeviceState(obj.get("state") or DeviceState.AVAILABLE.value),
        reserved=bool(obj.get("reserved")),
        owner=obj.get("owner"),
        reason=obj.get("reason"),
    )


def pool_record(obj: Mapping[str, Any]) -> PoolRecord:
    parent = obj.get("parent_addr")
    return PoolRecord(
        host=str(obj["host"]),
        vendor_id=str(obj["vendor_id"]),
        product_id=str(obj["product_id"]),
        dev_type=DevType(obj["dev_type"]),
        numa_node=obj.get("numa_node"),
        parent_addr=PciAddress.parse(parent) if parent else None,
        tags={str(k): str(v) for k, v in (obj.get("tags") or {}).items()},
        total=int(obj.get("total") or 0),
        free=int(obj.get("free") or 0),
    )


def report_result(obj: Mapping[str, Any]) -> ReportResult:
    return ReportResult(
        host=str(obj["host"]),
        generation=int(obj["generation"]),
        changed=bool(obj.get("changed")),
        added=int(obj.get("added") or 0),
        updated=int(obj.get("updated") or 0),
        removed=int(obj.get("removed") or 0),
        gone=int(obj.get("gone") or 0),
    )
