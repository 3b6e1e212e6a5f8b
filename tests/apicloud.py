"""Helpers for the issue-3 API tests: aliases, flavors, images, tokens, hosts and boots.

The API test modules share one server per database, so every test makes names of its own
(:func:`tag`) and tags its hosts' devices with them: an alias that matches ``{"rack": tag}``
only sees this test's devices, whatever the other tests left on the server.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from apiserver import ApiServer, inventory, report
from fleet import host_inventory
from pcipass.host.profiles import suggested_device_spec
from pcipass.pci.device import PciDevice
from pcipass.pci.inventory import Inventory

JSON = dict[str, Any]


def tag(prefix: str = "t") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def tagged(devices: Iterable[PciDevice], rack: str) -> list[PciDevice]:
    """Copies whose assignable devices carry ``rack``, as a device spec tag would."""
    return [replace(d, tags={**d.tags, "rack": rack}) if d.assignable else d for d in devices]


def isolated(devices: Iterable[PciDevice]) -> list[PciDevice]:
    """Copies where every device without an IOMMU group gets one of its own (``nic()``'s VFs
    have none, and VFIO hands out no device it cannot isolate)."""
    out = []
    for n, dev in enumerate(devices):
        if dev.iommu_group is None:
            dev = replace(dev, iommu_group=1000 + n, iommu_group_members=(dev.address,))
        out.append(dev)
    return out


def profile_inventory(root: Path, profile: str, *, rack: str, index: int = 0) -> Inventory:
    """A host built from one of the demo's profiles, discovered from its simulated sysfs and
    marked assignable by the device spec its operator would write, plus a ``rack`` tag."""
    return host_inventory(root, profile, [{**entry, "rack": rack}
                                          for entry in suggested_device_spec(profile)], index)


def put_host(http: httpx.Client, host: str, inv: Inventory | Sequence[PciDevice]) -> int:
    """Report a new host; its generation."""
    body = report(inv if isinstance(inv, Inventory) else inventory(list(inv)), None)
    reply = http.put(f"/v1/hosts/{host}/inventory", json=body)
    assert reply.status_code == 200, reply.text
    generation: int = reply.json()["generation"]
    return generation


def make_token(api: ApiServer, **body: Any) -> str:
    with api.client() as http:
        reply = http.post("/v1/tokens", json=body)
    assert reply.status_code == 201, reply.text
    token: str = reply.json()["token"]
    return token


def member(api: ApiServer, project: str) -> str:
    return make_token(api, role="member", project=project)


def created(reply: httpx.Response, status: int = 201) -> JSON:
    assert reply.status_code == status, reply.text
    body: JSON = reply.json()
    return body


def make_alias(http: httpx.Client, name: str, rack: str | None = None, **entry: Any) -> JSON:
    """An alias of NVIDIA devices (vendor 10de unless told) narrowed to one rack's devices."""
    body: JSON = {"name": name, "vendor_id": "10de", **entry}
    if rack is not None:
        body["match"] = {**body.get("match", {}), "rack": rack}
    (alias,) = created(http.post("/v1/aliases", json=body))["aliases"]
    return dict(alias)


def make_flavor(http: httpx.Client, name: str, *, pci: str | None = None,
                preferred: str | None = None, vcpus: int = 1, ram_mb: int = 512,
                **extra: Any) -> JSON:
    specs: dict[str, str] = dict(extra.pop("extra_specs", {}))
    if pci is not None:
        specs["pci_passthrough:alias"] = pci
    if preferred is not None:
        specs["pci_passthrough:alias_preferred"] = preferred
    body = {"name": name, "vcpus": vcpus, "ram_mb": ram_mb, "disk_gb": 1,
            "extra_specs": specs, **extra}
    return created(http.post("/v1/flavors", json=body))


def make_image(http: httpx.Client, name: str, **properties: str) -> JSON:
    body = {"name": name, "source": f"/var/lib/images/{name}.qcow2",
            "properties": properties}
    return created(http.post("/v1/images", json=body))


def boot(http: httpx.Client, name: str, flavor: str, image: str, **extra: Any) -> JSON:
    """POST /v1/servers; the server (202), placed or in ERROR."""
    body = {"name": name, "flavor": flavor, "image": image, **extra}
    return created(http.post("/v1/servers", json=body), 202)


def devices_of(http: httpx.Client, host: str) -> dict[str, JSON]:
    reply = http.get("/v1/devices", params={"host": host, "limit": 1000})
    assert reply.status_code == 200, reply.text
    return {d["address"]: d for d in reply.json()["devices"]}


def listed(http: httpx.Client, path: str, key: str, **params: Any) -> list[JSON]:
    """Every item of a list endpoint, following ``next``."""
    items: list[JSON] = []
    marker = None
    for _ in range(1000):
        query = {**params, **({"marker": marker} if marker else {})}
        reply = http.get(path, params=query)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        items.extend(body[key])
        marker = body["next"]
        if marker is None:
            return items
    raise AssertionError("pagination never ended")


def names(items: Iterable[JSON]) -> set[str]:
    return {i["name"] for i in items}


def confirm_destroys(http: httpx.Client, host: str) -> None:
    """Play the host's agent for deletes (an admin may): each open destroy task succeeds."""
    reply = http.get(f"/v1/hosts/{host}/tasks")
    assert reply.status_code == 200, reply.text
    for task in reply.json()["tasks"]:
        if task["kind"] == "destroy":
            done = http.post(f"/v1/tasks/{task['id']}/result", json={"ok": True})
            assert done.json() == {"accepted": True, "state": "done"}, done.text


def confirm_all_destroys(http: httpx.Client) -> None:
    """:func:`confirm_destroys` on every host (``http`` an admin's client)."""
    reply = http.get("/v1/hosts", params={"limit": 1000})
    assert reply.status_code == 200, reply.text
    for host in reply.json()["hosts"]:
        confirm_destroys(http, host["name"])
