"""The one way the CLI and the host agent talk to the control plane.

Every call goes through :meth:`ApiClient.request`, which turns an error reply's
``{"code", "message", "field"}`` body back into the matching :mod:`pcipass.errors` class, and
a transport failure (refused connection, timeout) into :class:`ServerUnreachable`, so callers
handle one error tree whichever side of the wire a problem came from.

Replies stay JSON (what ``--json`` prints); the ``*_record`` functions below turn them into the
plain values of :mod:`pcipass.records` for rendering and for the agent's decisions.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx

from pcipass import errors
from pcipass.pci.address import PciAddress
from pcipass.pci.alias import Alias, parse_alias_entry
from pcipass.pci.device import DevType
from pcipass.pci.inventory import parse_device, parse_host
from pcipass.records import (
    DeviceRecord,
    DeviceState,
    EventRecord,
    FlavorRecord,
    HostRecord,
    ImageRecord,
    NetworkRecord,
    PoolRecord,
    PortBinding,
    PortRecord,
    QuotaRecord,
    ReportResult,
    ServerDevice,
    ServerRecord,
    ServerStatus,
    UsageRecord,
)

JSON = dict[str, Any]
Params = Sequence[tuple[str, str]]

DEFAULT_TIMEOUT_S = 10.0
DISK_TIMEOUT_S = 3600.0   # a boot disk handed over between hosts: gigabytes, not a JSON call


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
    # Every error class takes (message, field=, code=): what the wire carries.
    return cls(message or fallback, field=field, code=code or cls.code)


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
                body: Any = None, timeout: float | None = None) -> Any:
        """One call; the parsed JSON reply, or the error the server meant, raised.
        ``timeout`` overrides the client's (a long poll waits longer than a plain call)."""
        reply = self._send(method, path, params=params, body=body, timeout=timeout)
        return reply.json() if reply.content else None

    def _send(self, method: str, path: str, *, params: Params | None = None,
              body: Any = None, timeout: float | None = None,
              content: Any = None) -> httpx.Response:
        """The successful reply as it came, or the error the server meant, raised.
        ``content``: a raw body (bytes, or a file streamed as it is read) instead of JSON."""
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        if content is not None:
            extra["content"] = content
        else:
            extra["json"] = body
        try:
            reply = self._http.request(method, path, params=list(params or ()), **extra)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if not reply.is_success:
            raise self._failure(method, path, reply)
        return reply

    def _unreachable(self, exc: httpx.TransportError) -> errors.PcipassError:
        return errors.ServerUnreachable(
            f"cannot reach {self.url}: {exc.__class__.__name__}: {exc}")

    @staticmethod
    def _failure(method: str, path: str, reply: httpx.Response) -> errors.PcipassError:
        """The error the server meant by a reply that failed (read whole)."""
        try:
            payload: Any = reply.json()
        except ValueError:
            payload = None
        return error_from_response(
            reply.status_code, payload,
            f"{method} {path} failed: HTTP {reply.status_code} {reply.reason_phrase}",
        )

    # --- a cold move's disk (agents) -----------------------------------------------------

    def put_move_disk(self, move_id: str, disk: Path) -> None:
        """Hand the stopped server's disk over to the move's destination (the source host's
        agent), streamed as it is read."""
        with disk.open("rb") as f:
            self._send("PUT", f"/v1/moves/{_seg(move_id)}/disk", content=f,
                       timeout=DISK_TIMEOUT_S)

    def get_move_disk(self, move_id: str, target: Path) -> None:
        """Write the disk the move's source handed over to ``target``, whole or not at all
        (the destination host's agent)."""
        path = f"/v1/moves/{_seg(move_id)}/disk"
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
        try:
            with os.fdopen(fd, "wb") as out, \
                    self._http.stream("GET", path, timeout=DISK_TIMEOUT_S) as reply:
                if not reply.is_success:
                    reply.read()
                    raise self._failure("GET", path, reply)
                for chunk in reply.iter_bytes():
                    out.write(chunk)
            os.replace(tmp, target)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

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

    def reserve_host(self, host: str, reserved: bool, *, reason: str | None = None) -> JSON:
        """Drain the host (nothing new placed there) or take it back into service."""
        if reserved:
            body = {"reason": reason} if reason is not None else None
            result: JSON = self.request("POST", f"/v1/hosts/{_seg(host)}/reserve", body=body)
        else:
            result = self.request("POST", f"/v1/hosts/{_seg(host)}/unreserve")
        return result

    def host_drain(self, host: str) -> JSON:
        """What still runs on the host, and whether each server could move live."""
        return self._get(f"/v1/hosts/{_seg(host)}/drain")

    def host_drain_live(self, host: str) -> JSON:
        """Live-migrate every server of the host that can move; what stays, and why."""
        result: JSON = self.request("POST", f"/v1/hosts/{_seg(host)}/drain",
                                    body={"live_migrate": True})
        return result

    def live_migrate(self, ref: str, *, host: str | None = None) -> JSON:
        """Start moving the running server to ``host`` (any that fits when None)."""
        result: JSON = self.request("POST", f"/v1/servers/{_seg(ref)}/live-migrate",
                                    body={"host": host} if host is not None else {})
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

    # --- catalog: aliases, flavors, images ---------------------------------------------

    def create_aliases(self, body: Any) -> list[JSON]:
        """One Nova alias dict or a list of them; the aliases they created or extended."""
        reply = self.request("POST", "/v1/aliases", body=body)
        return list(reply.get("aliases") or [])

    def aliases(self) -> Listing:
        return self.listing("/v1/aliases", "aliases")

    def alias(self, name: str) -> JSON:
        return self._get(f"/v1/aliases/{_seg(name)}")

    def delete_alias(self, name: str) -> None:
        self.request("DELETE", f"/v1/aliases/{_seg(name)}")

    def create_flavor(self, *, name: str, vcpus: int, ram_mb: int, disk_gb: int,
                      extra_specs: Mapping[str, str], is_public: bool = True,
                      projects: Sequence[str] = ()) -> JSON:
        body = {"name": name, "vcpus": vcpus, "ram_mb": ram_mb, "disk_gb": disk_gb,
                "extra_specs": dict(extra_specs), "is_public": is_public,
                "projects": list(projects)}
        result: JSON = self.request("POST", "/v1/flavors", body=body)
        return result

    def flavors(self) -> Listing:
        return self.listing("/v1/flavors", "flavors")

    def flavor(self, ref: str) -> JSON:
        return self._get(f"/v1/flavors/{_seg(ref)}")

    def delete_flavor(self, ref: str) -> None:
        self.request("DELETE", f"/v1/flavors/{_seg(ref)}")

    def flavor_access(self, ref: str, *, add: Sequence[str] = (),
                      remove: Sequence[str] = ()) -> JSON:
        result: JSON = self.request("POST", f"/v1/flavors/{_seg(ref)}/access",
                                    body={"add": list(add), "remove": list(remove)})
        return result

    def create_image(self, *, name: str, source: str, properties: Mapping[str, str]) -> JSON:
        result: JSON = self.request("POST", "/v1/images", body={
            "name": name, "source": source, "properties": dict(properties)})
        return result

    def images(self) -> Listing:
        return self.listing("/v1/images", "images")

    def image(self, ref: str) -> JSON:
        return self._get(f"/v1/images/{_seg(ref)}")

    def delete_image(self, ref: str) -> None:
        self.request("DELETE", f"/v1/images/{_seg(ref)}")

    # --- servers, scheduler, quotas, usage -----------------------------------------------

    def create_server(self, *, name: str, flavor: str, image: str,
                      project: str | None = None,
                      nics: Sequence[Mapping[str, str]] = ()) -> JSON:
        """``nics``: ``{"net_id": N, "vnic_type": T}`` or ``{"port_id": P}`` each."""
        body: JSON = {"name": name, "flavor": flavor, "image": image}
        if project is not None:
            body["project"] = project
        if nics:
            body["nics"] = [dict(n) for n in nics]
        result: JSON = self.request("POST", "/v1/servers", body=body)
        return result

    def servers(self, params: Params = (), *, limit: int | None = None,
                marker: str | None = None, all_pages: bool = True) -> Listing:
        return self.listing("/v1/servers", "servers", params, limit=limit, marker=marker,
                            all_pages=all_pages)

    def server(self, ref: str) -> JSON:
        return self._get(f"/v1/servers/{_seg(ref)}")

    def server_events(self, ref: str) -> list[JSON]:
        """The server's action log, oldest first."""
        return list(self._get(f"/v1/servers/{_seg(ref)}/events").get("events") or [])

    def delete_server(self, ref: str, *, force: bool = False) -> JSON:
        params = [("force", "true")] if force else []
        result: JSON = self.request("DELETE", f"/v1/servers/{_seg(ref)}", params=params)
        return result

    def resize_server(self, ref: str, *, flavor: str) -> JSON:
        """Start moving the server to ``flavor`` (VERIFY_RESIZE once it runs there)."""
        result: JSON = self.request("POST", f"/v1/servers/{_seg(ref)}/resize",
                                    body={"flavor": flavor})
        return result

    def migrate_server(self, ref: str, *, host: str | None = None,
                       auto_confirm: bool = False) -> JSON:
        """Start a cold migration to ``host`` (any other that fits when None)."""
        body: dict[str, Any] = {"auto_confirm": auto_confirm}
        if host is not None:
            body["host"] = host
        result: JSON = self.request("POST", f"/v1/servers/{_seg(ref)}/migrate", body=body)
        return result

    def confirm_resize(self, ref: str) -> JSON:
        result: JSON = self.request("POST", f"/v1/servers/{_seg(ref)}/resize/confirm")
        return result

    def revert_resize(self, ref: str) -> JSON:
        result: JSON = self.request("POST", f"/v1/servers/{_seg(ref)}/resize/revert")
        return result

    def server_moves(self, ref: str) -> list[JSON]:
        """The server's resizes and migrations, oldest first."""
        return list(self._get(f"/v1/servers/{_seg(ref)}/moves").get("moves") or [])

    def attach_device(self, ref: str, *, alias: str, count: int = 1) -> JSON:
        """Hot-plug ``count`` devices of ``alias`` from the server's own host."""
        result: JSON = self.request("POST", f"/v1/servers/{_seg(ref)}/devices",
                                    body={"alias": alias, "count": count})
        return result

    def detach_device(self, ref: str, address: str) -> JSON:
        result: JSON = self.request(
            "DELETE", f"/v1/servers/{_seg(ref)}/devices/{_seg(address)}")
        return result

    def attach_interface(self, ref: str, nic: Mapping[str, str]) -> JSON:
        """``nic``: ``{"net_id": N, "vnic_type": T}`` or ``{"port_id": P}``."""
        result: JSON = self.request("POST", f"/v1/servers/{_seg(ref)}/interfaces",
                                    body=dict(nic))
        return result

    def detach_interface(self, ref: str, port: str) -> JSON:
        result: JSON = self.request(
            "DELETE", f"/v1/servers/{_seg(ref)}/interfaces/{_seg(port)}")
        return result

    def explain(self, *, flavor: str, image: str | None = None,
                project: str | None = None, nics: Sequence[Mapping[str, str]] = ()) -> JSON:
        body: JSON = {"flavor": flavor}
        if image is not None:
            body["image"] = image
        if project is not None:
            body["project"] = project
        if nics:
            body["nics"] = [dict(n) for n in nics]
        result: JSON = self.request("POST", "/v1/scheduler/explain", body=body)
        return result

    def set_quota(self, project: str, alias: str, limit: int) -> JSON:
        result: JSON = self.request("PUT", f"/v1/quotas/{_seg(project)}/{_seg(alias)}",
                                    body={"limit": limit})
        return result

    def quotas(self, *, project: str | None = None) -> Listing:
        return self.listing("/v1/quotas", "quotas", [("project", project)] if project else [])

    def delete_quota(self, project: str, alias: str) -> None:
        self.request("DELETE", f"/v1/quotas/{_seg(project)}/{_seg(alias)}")

    def usage(self, *, project: str | None = None, start: datetime | None = None,
              end: datetime | None = None) -> Listing:
        params = [(k, v) for k, v in (
            ("project", project),
            ("start", start.isoformat() if start else None),
            ("end", end.isoformat() if end else None),
        ) if v is not None]
        return self.listing("/v1/usage", "usage", params)

    # --- networks and ports ------------------------------------------------------------------

    def item(self, path: str, ref: str) -> JSON:
        """One resource of a collection (``/v1/networks``) by name or id."""
        return self._get(f"{path}/{_seg(ref)}")

    def delete_item(self, path: str, ref: str) -> None:
        self.request("DELETE", f"{path}/{_seg(ref)}")

    def create_network(self, *, name: str, physical_network: str, segmentation: str,
                       segmentation_id: int | None = None, project: str | None = None) -> JSON:
        result: JSON = self.request("POST", "/v1/networks", body={
            "name": name, "physical_network": physical_network, "segmentation": segmentation,
            "segmentation_id": segmentation_id, "project": project})
        return result

    def networks(self) -> Listing:
        return self.listing("/v1/networks", "networks")

    def network(self, ref: str) -> JSON:
        return self.item("/v1/networks", ref)

    def delete_network(self, ref: str) -> None:
        self.delete_item("/v1/networks", ref)

    def create_port(self, *, network: str, **fields: Any) -> JSON:
        """``fields``: the optional ones of ``POST /v1/ports`` (name, vnic_type, mac, trusted,
        spoofchk, max_tx_rate_mbps, min_tx_rate_mbps, numa_affinity_policy, project); None
        values are left out."""
        body = {"network": network, **{k: v for k, v in fields.items() if v is not None}}
        result: JSON = self.request("POST", "/v1/ports", body=body)
        return result

    def ports(self, params: Params = ()) -> Listing:
        return self.listing("/v1/ports", "ports", params)

    def port(self, ref: str) -> JSON:
        return self.item("/v1/ports", ref)

    def delete_port(self, ref: str) -> None:
        self.delete_item("/v1/ports", ref)

    def server_domain_xml(self, ref: str) -> str:
        """The libvirt XML the host's agent defined for the server (admin)."""
        return self._send("GET", f"/v1/servers/{_seg(ref)}/domain-xml").text

    # --- agent tasks ------------------------------------------------------------------------

    def poll_tasks(self, host: str, wait: float = 0.0) -> list[JSON]:
        """The host's queued and running tasks; the server holds the reply up to ``wait``
        seconds until there is one (a long poll, so an agent behind NAT needs no inbound
        port)."""
        reply = self.request("GET", f"/v1/hosts/{_seg(host)}/tasks",
                             params=[("wait", f"{max(wait, 0.0):g}")],
                             timeout=max(wait, 0.0) + (self._http.timeout.read
                                                       or DEFAULT_TIMEOUT_S))
        return list(reply.get("tasks") or [])

    def start_task(self, task_id: str) -> JSON:
        """Tell the server the agent runs the task now; a :class:`~pcipass.errors.Conflict`
        (``task_not_runnable``) when it is done, failed or expired and must not run."""
        result: JSON = self.request("POST", f"/v1/tasks/{_seg(task_id)}/start")
        return result

    def report_task(self, task_id: str, ok: bool, message: str | None = None,
                    domain_xml: str | None = None) -> JSON:
        """The task's outcome; the reply says whether the server took it (``accepted``)."""
        result: JSON = self.request("POST", f"/v1/tasks/{_seg(task_id)}/result", body={
            "ok": ok, "message": message, "domain_xml": domain_xml})
        return result

    def _get(self, path: str) -> JSON:
        result: JSON = self.request("GET", path)
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
                         "numa_nodes": obj.get("numa_nodes"), "kind": obj.get("kind")}),
        last_report_at=_datetime(obj.get("last_report_at")),
        device_counts={str(k): int(v) for k, v in counts.items()},
        reserved=bool(obj.get("reserved")),
        reserved_reason=obj.get("reserved_reason"),
        down=bool(obj.get("down", False)),
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


def _strings(obj: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (obj or {}).items()}


def alias_record(obj: Mapping[str, Any]) -> Alias:
    """An alias as the API shows it: its name and its Nova entries (the alternatives)."""
    name = str(obj["name"])
    entries = tuple(parse_alias_entry({"name": name, **e}, where=f"alias {name!r}")
                    for e in obj.get("entries") or [])
    return Alias(name, entries)


def flavor_record(obj: Mapping[str, Any]) -> FlavorRecord:
    return FlavorRecord(
        id=str(obj["id"]), name=str(obj["name"]), vcpus=int(obj.get("vcpus") or 0),
        ram_mb=int(obj.get("ram_mb") or 0), disk_gb=int(obj.get("disk_gb") or 0),
        extra_specs=_strings(obj.get("extra_specs")),
        is_public=bool(obj.get("is_public", True)),
        projects=tuple(str(p) for p in obj.get("projects") or ()),
    )


def image_record(obj: Mapping[str, Any]) -> ImageRecord:
    return ImageRecord(
        id=str(obj["id"]), name=str(obj["name"]), source=str(obj.get("source") or ""),
        properties=_strings(obj.get("properties")), project=obj.get("project"),
    )


def _server_device(obj: Mapping[str, Any]) -> ServerDevice:
    return ServerDevice(
        address=PciAddress.parse(str(obj["address"])),
        alias=obj.get("alias"),
        state=DeviceState(obj.get("state") or DeviceState.CLAIMED.value),
        vendor_id=str(obj.get("vendor_id") or ""),
        product_id=str(obj.get("product_id") or ""),
        dev_type=DevType(obj.get("dev_type") or DevType.PCI.value),
        numa_node=obj.get("numa_node"),
    )


def fault_message(obj: Mapping[str, Any]) -> str | None:
    """The server's fault as text: the API sends ``{"message": ...}`` or null."""
    fault = obj.get("fault")
    if isinstance(fault, Mapping):
        message = fault.get("message")
        return str(message) if message is not None else None
    return str(fault) if fault else None


_EPOCH = datetime.fromtimestamp(0, UTC)


def server_record(obj: Mapping[str, Any]) -> ServerRecord:
    return ServerRecord(
        id=str(obj["id"]), name=str(obj["name"]), project=str(obj.get("project") or ""),
        status=ServerStatus(obj["status"]), flavor=str(obj.get("flavor") or ""),
        image=str(obj.get("image") or ""), host=obj.get("host"),
        devices=tuple(_server_device(d) for d in obj.get("devices") or ()),
        not_granted=tuple(str(n) for n in obj.get("not_granted") or ()),
        fault=fault_message(obj),
        numa_cells=tuple(int(n) for n in obj.get("numa_cells") or ()),
        created_at=_datetime(obj.get("created_at")) or _EPOCH,
        updated_at=_datetime(obj.get("updated_at")) or _EPOCH,
        ports=tuple(port_record(x) for x in obj.get("ports") or ()),
    )


def event_record(obj: Mapping[str, Any]) -> EventRecord:
    return EventRecord(
        id=int(obj.get("id") or 0), server_id=str(obj.get("server_id") or ""),
        action=str(obj.get("action") or ""), outcome=str(obj.get("outcome") or ""),
        message=obj.get("message"), host=obj.get("host"),
        detail=dict(obj.get("detail") or {}),
        at=_datetime(obj.get("at")) or _EPOCH)


def quota_record(obj: Mapping[str, Any]) -> QuotaRecord:
    return QuotaRecord(project=str(obj["project"]), alias=str(obj["alias"]),
                       limit=int(obj["limit"]), used=int(obj.get("used") or 0))


def usage_record(obj: Mapping[str, Any]) -> UsageRecord:
    return UsageRecord(project=str(obj["project"]), alias=str(obj["alias"]),
                       device_seconds=float(obj.get("device_seconds") or 0.0))


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def network_record(obj: Mapping[str, Any]) -> NetworkRecord:
    return NetworkRecord(
        id=str(obj["id"]), name=str(obj["name"]), project=obj.get("project"),
        physical_network=str(obj.get("physical_network") or ""),
        segmentation=str(obj.get("segmentation") or ""),
        segmentation_id=_int(obj.get("segmentation_id")),
        created_at=_datetime(obj.get("created_at")) or _EPOCH,
        ports=int(obj.get("ports") or 0),
    )


def _binding(obj: Any) -> PortBinding | None:
    if not isinstance(obj, Mapping):
        return None
    return PortBinding(host=str(obj["host"]), address=PciAddress.parse(str(obj["address"])),
                       pf_netdev=obj.get("pf_netdev"), vf_index=_int(obj.get("vf_index")),
                       vf_netdev=obj.get("vf_netdev"))


def port_record(obj: Mapping[str, Any]) -> PortRecord:
    return PortRecord(
        id=str(obj["id"]), name=obj.get("name"), project=str(obj.get("project") or ""),
        network_id=str(obj.get("network_id") or ""), network=str(obj.get("network") or ""),
        physical_network=str(obj.get("physical_network") or ""),
        segmentation_id=_int(obj.get("segmentation_id")),
        vnic_type=str(obj.get("vnic_type") or "normal"), mac=str(obj.get("mac") or ""),
        trusted=bool(obj.get("trusted")), spoofchk=bool(obj.get("spoofchk", True)),
        max_tx_rate_mbps=_int(obj.get("max_tx_rate_mbps")),
        min_tx_rate_mbps=_int(obj.get("min_tx_rate_mbps")),
        numa_affinity_policy=obj.get("numa_affinity_policy"), server_id=obj.get("server_id"),
        auto_delete=bool(obj.get("auto_delete")), status=str(obj.get("status") or "DOWN"),
        binding=_binding(obj.get("binding")),
        created_at=_datetime(obj.get("created_at")) or _EPOCH,
    )
