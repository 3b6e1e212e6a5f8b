"""The /v1 API against a real server process, on SQLite and on PostgreSQL.

Each test works on host names of its own, so the tests share one server per database.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest

from apiserver import ApiServer, api_server, assert_error, gpu, inventory, nic, report
from pcipass.api import create_app
from pcipass.config import load_settings
from pcipass.errors import InfrastructureError
from pcipass.records import Principal, Role


def new_host(prefix: str = "compute") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@pytest.fixture
def http(api: ApiServer) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client


def put_report(http: httpx.Client, host: str, body: Any) -> httpx.Response:
    return http.put(f"/v1/hosts/{host}/inventory", json=body)


def create_host(http: httpx.Client, host: str, devices: list[Any] | None = None) -> int:
    reply = put_report(http, host, report(inventory(devices), None))
    assert reply.status_code == 200, reply.text
    generation: int = reply.json()["generation"]
    return generation


def all_pages(http: httpx.Client, path: str, key: str, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
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


def addresses(devices: list[dict[str, Any]]) -> list[str]:
    return [d["address"] for d in devices]


# --- reports ---------------------------------------------------------------------------------

def test_health_needs_no_token(api: ApiServer) -> None:
    with api.client(admin=False) as anon:
        reply = anon.get("/v1/health")
    assert reply.status_code == 200
    assert reply.json() == {"status": "ok"}


def test_report_creates_host_and_reads_back(http: httpx.Client) -> None:
    host = new_host()
    inv = inventory()
    reply = put_report(http, host, report(inv, None))
    assert reply.status_code == 200, reply.text
    result = reply.json()
    assert result["host"] == host
    assert result["changed"] is True
    assert result["added"] == len(inv.devices) == 7
    assert set(result) == {"host", "generation", "changed", "added", "updated", "removed", "gone"}

    got = http.get(f"/v1/hosts/{host}").json()
    assert got["name"] == host
    assert got["generation"] == result["generation"]
    assert (got["cpus"], got["memory_mb"]) == (8, 65536)
    assert got["numa_nodes"] == [{"id": 0, "cpus": [0, 1, 2, 3], "memory_mb": 32768},
                                 {"id": 1, "cpus": [4, 5, 6, 7], "memory_mb": 32768}]
    assert got["last_report_at"] is not None and got["last_report_at"].startswith("20")
    assert got["devices"]["total"] == 7
    assert got["devices"]["available"] == 7

    listed = http.get("/v1/hosts", params={"limit": 1000}).json()
    assert host in [h["name"] for h in listed["hosts"]]

    devices = http.get("/v1/devices", params={"host": host}).json()["devices"]
    assert addresses(devices) == sorted(str(d.address) for d in inv.devices)
    vf = next(d for d in devices if d["dev_type"] == "type-VF")
    assert vf["host"] == host
    assert vf["parent_addr"] == "0000:af:00.0"
    assert vf["tags"] == {"physical_network": "physnet1"}
    assert (vf["state"], vf["reserved"], vf["owner"]) == ("available", False, None)
    assert "reason" in vf

    one = http.get(f"/v1/devices/{host}/0000:3b:00.0")
    assert one.status_code == 200
    assert one.json()["vendor_id"] == "10de"
    assert one.json()["iommu_group_members"] == ["0000:3b:00.0"]
    # addresses are parsed, so any spelling finds the device
    assert http.get(f"/v1/devices/{host}/0000:3B:00.0").json()["address"] == "0000:3b:00.0"


def test_pools_group_interchangeable_devices(http: httpx.Client) -> None:
    host = new_host()
    create_host(http, host, [gpu("0000:3b:00.0"), gpu("0000:5e:00.0"),
                             gpu("0000:86:00.0", numa=1), *nic("0000:af:00.0", 3)])
    pools = http.get("/v1/pools", params={"host": host}).json()["pools"]
    by_key = {(p["vendor_id"], p["dev_type"], p["numa_node"]): p for p in pools}
    assert by_key[("10de", "type-PCI", 0)]["total"] == 2
    assert by_key[("10de", "type-PCI", 1)]["free"] == 1
    vfs = by_key[("8086", "type-VF", 1)]
    assert (vfs["total"], vfs["free"]) == (3, 3)
    assert vfs["parent_addr"] == "0000:af:00.0"
    assert vfs["tags"] == {"physical_network": "physnet1"}
    assert all(p["host"] == host for p in pools)
    assert len(pools) == 3  # the PF is not assignable: no pool


def test_unchanged_report_changes_nothing(http: httpx.Client) -> None:
    host = new_host()
    generation = create_host(http, host)
    before = http.get(f"/v1/hosts/{host}").json()
    reply = put_report(http, host, report(inventory(), generation))
    assert reply.status_code == 200, reply.text
    assert reply.json()["changed"] is False
    assert reply.json()["generation"] == generation
    assert (reply.json()["added"], reply.json()["updated"], reply.json()["removed"]) == (0, 0, 0)
    assert http.get(f"/v1/hosts/{host}").json()["generation"] == before["generation"]


def test_changed_report_bumps_generation(http: httpx.Client) -> None:
    host = new_host()
    generation = create_host(http, host, [gpu("0000:3b:00.0"), gpu("0000:5e:00.0")])
    reply = put_report(http, host, report(
        inventory([gpu("0000:3b:00.0"), gpu("0000:86:00.0", numa=1)]), generation))
    assert reply.status_code == 200, reply.text
    result = reply.json()
    assert result["changed"] is True
    assert result["generation"] > generation
    assert result["added"] == 1
    assert result["removed"] + result["gone"] == 1
    live = [d for d in http.get("/v1/devices", params={"host": host}).json()["devices"]
            if d["state"] != "removed"]
    assert addresses(live) == ["0000:3b:00.0", "0000:86:00.0"]


def test_stale_generation_is_a_conflict(http: httpx.Client) -> None:
    host = new_host()
    generation = create_host(http, host)
    body = assert_error(put_report(http, host, report(inventory(), generation + 5)),
                        409, "generation_conflict", "generation")
    assert str(generation) in body["message"]
    # null means "create": refused once the host exists
    assert_error(put_report(http, host, report(inventory(), None)),
                 409, "generation_conflict", "generation")
    # a stale report changed nothing
    assert http.get(f"/v1/hosts/{host}").json()["generation"] == generation


def test_invalid_report_keeps_old_inventory(http: httpx.Client) -> None:
    host = new_host()
    generation = create_host(http, host)
    before = http.get("/v1/devices", params={"host": host}).json()
    body = report(inventory([gpu("0000:3b:00.0")]), generation)
    body["devices"].append({**body["devices"][0], "address": "0000:5e:00.0", "vendor_id": "nv"})
    assert_error(put_report(http, host, body), 422, "invalid_inventory", "devices[1].vendor_id")
    assert http.get("/v1/devices", params={"host": host}).json() == before
    assert http.get(f"/v1/hosts/{host}").json()["generation"] == generation


def test_a_card_serial_number_is_stored_shown_and_updated(http: httpx.Client) -> None:
    host = new_host()
    devices = nic("0000:af:00.0", 2)
    generation = create_host(http, host, [replace(d, card_serial_number="MT2245X00007")
                                          for d in devices])

    def serials() -> dict[str, str | None]:
        listed = http.get("/v1/devices", params={"host": host}).json()["devices"]
        return {d["address"]: d["card_serial_number"] for d in listed}

    assert serials() == {"0000:af:00.0": "MT2245X00007", "0000:af:02.0": "MT2245X00007",
                         "0000:af:02.1": "MT2245X00007"}
    shown = http.get(f"/v1/devices/{host}/0000:af:02.1").json()
    assert shown["card_serial_number"] == "MT2245X00007"
    # A card swapped in the same slot: a new serial is a change like any other.
    reply = put_report(http, host, report(inventory(
        [replace(d, card_serial_number="MT2301X00042") for d in devices]), generation))
    assert reply.status_code == 200, reply.text
    assert reply.json()["updated"] == 3
    assert set(serials().values()) == {"MT2301X00042"}


@pytest.mark.parametrize("serial", ["", "x" * 256, "MT\n2245", 12345])
def test_a_bad_card_serial_number_is_refused_naming_the_field(http: httpx.Client,
                                                             serial: Any) -> None:
    host = new_host()
    body = report(inventory([gpu("0000:3b:00.0")]), None)
    body["devices"][0]["card_serial_number"] = serial
    assert_error(put_report(http, host, body), 422, "invalid_inventory",
                 "devices[0].card_serial_number")
    assert_error(http.get(f"/v1/hosts/{host}"), 404, "not_found")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"generation": True, "host": {}, "devices": []}, "generation"),
        ({"generation": "1", "host": {}, "devices": []}, "generation"),
        ({"generation": None, "host": {}, "devices": {}}, "devices"),
        ([1, 2], ""),
        ({"generation": None, "host": {"cpus": -1}, "devices": []}, "host.cpus"),
    ],
)
def test_report_shapes_refused(http: httpx.Client, body: Any, field: str) -> None:
    host = new_host()
    assert_error(put_report(http, host, body), 422, "invalid_inventory", field)
    assert_error(http.get(f"/v1/hosts/{host}"), 404, "not_found")


def test_report_that_is_not_json(http: httpx.Client) -> None:
    host = new_host()
    reply = http.put(f"/v1/hosts/{host}/inventory", content=b"{not json",
                     headers={"Content-Type": "application/json"})
    assert_error(reply, 422, "invalid_inventory")
    assert_error(http.put(f"/v1/hosts/{host}/inventory", content=b""), 422, "invalid_inventory")


def test_report_for_a_bad_host_name(http: httpx.Client) -> None:
    assert_error(put_report(http, "bad%20name", report(inventory(), None)),
                 422, "invalid_inventory", "path.host")


# --- filters and pages -----------------------------------------------------------------------

def test_device_filters(http: httpx.Client) -> None:
    host, other = new_host(), new_host()
    create_host(http, host, [gpu("0000:3b:00.0"), gpu("0000:5e:00.0", product="2236"),
                             gpu("0000:86:00.0", assignable=False),
                             *nic("0000:af:00.0", 2, physnet="physnet1"),
                             *nic("0000:d8:00.0", 2, physnet="physnet2")])
    create_host(http, other)

    def find(**params: Any) -> list[str]:
        reply = http.get("/v1/devices", params={"host": host, **params})
        assert reply.status_code == 200, reply.text
        assert all(d["host"] == host for d in reply.json()["devices"])
        return addresses(reply.json()["devices"])

    assert len(find()) == 9
    assert find(vendor_id="10DE") == ["0000:3b:00.0", "0000:5e:00.0", "0000:86:00.0"]
    assert find(vendor_id="10de", product_id="2236") == ["0000:5e:00.0"]
    assert find(dev_type="type-PF") == ["0000:af:00.0", "0000:d8:00.0"]
    assert find(assignable="false") == ["0000:86:00.0", "0000:af:00.0", "0000:d8:00.0"]
    assert find(tag="physical_network=physnet2") == ["0000:d8:02.0", "0000:d8:02.1"]
    assert find(tag=["physical_network=physnet2", "x=y"]) == []
    assert find(state="available", dev_type="type-VF") == [
        "0000:af:02.0", "0000:af:02.1", "0000:d8:02.0", "0000:d8:02.1"]
    assert find(state="allocated") == []
    everywhere = addresses(http.get("/v1/devices", params={"vendor_id": "8086",
                                                           "limit": 1000}).json()["devices"])
    assert len(everywhere) >= 9  # both hosts, and whatever the other tests reported


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"state": "broken"}, "query.state"),
        ({"dev_type": "type-XX"}, "query.dev_type"),
        ({"vendor_id": "10de0"}, "query.vendor_id"),
        ({"assignable": "perhaps"}, "query.assignable"),
        ({"tag": "no-equals-sign"}, "query.tag.0"),
        ({"limit": 0}, "query.limit"),
        ({"limit": 1001}, "query.limit"),
        ({"limit": "ten"}, "query.limit"),
    ],
)
def test_bad_device_queries(http: httpx.Client, params: dict[str, Any], field: str) -> None:
    body = assert_error(http.get("/v1/devices", params=params), 422, "invalid_input", field)
    assert field in body["message"]


def test_bad_marker(http: httpx.Client) -> None:
    assert_error(http.get("/v1/devices", params={"marker": "garbage"}), 400, "invalid_input")


def test_device_pages_walk_everything_once(http: httpx.Client) -> None:
    host = new_host()
    create_host(http, host, [gpu(f"0000:{bus:02x}:00.0") for bus in range(1, 24)])
    seen = all_pages(http, "/v1/devices", "devices", host=host, limit=5)
    assert len(seen) == 23
    assert len(set(addresses(seen))) == 23
    first = http.get("/v1/devices", params={"host": host, "limit": 23}).json()
    assert first["next"] is None


def test_host_and_pool_pages(http: httpx.Client) -> None:
    prefix = new_host("paged")
    names = [f"{prefix}-{i}" for i in range(5)]
    for name in names:
        create_host(http, name, [gpu("0000:3b:00.0"), gpu("0000:5e:00.0", numa=1)])
    hosts = [h["name"] for h in all_pages(http, "/v1/hosts", "hosts", limit=2)]
    assert len(hosts) == len(set(hosts))
    assert set(names) <= set(hosts)
    pools = all_pages(http, "/v1/pools", "pools", limit=3)
    keys = [(p["host"], p["vendor_id"], p["product_id"], p["dev_type"], p["numa_node"],
             p["parent_addr"], tuple(sorted(p["tags"].items()))) for p in pools]
    assert len(keys) == len(set(keys))
    assert {(n, 1) for n in names} <= {(k[0], k[4]) for k in keys}


# --- reserve / unreserve ---------------------------------------------------------------------

def test_reserve_and_unreserve(http: httpx.Client) -> None:
    host = new_host()
    create_host(http, host, [gpu("0000:3b:00.0"), gpu("0000:5e:00.0")])

    def gpu_pool() -> tuple[int, int]:
        (pool,) = http.get("/v1/pools", params={"host": host}).json()["pools"]
        return pool["total"], pool["free"]

    assert gpu_pool() == (2, 2)
    reply = http.patch(f"/v1/devices/{host}/0000:3b:00.0", json={"reserved": True})
    assert reply.status_code == 200, reply.text
    assert (reply.json()["reserved"], reply.json()["state"]) == (True, "reserved")
    assert gpu_pool() == (2, 1)
    assert addresses(http.get("/v1/devices", params={"host": host, "state": "reserved"})
                     .json()["devices"]) == ["0000:3b:00.0"]
    assert http.get(f"/v1/hosts/{host}").json()["devices"]["reserved"] == 1
    # reserving twice is harmless
    assert http.patch(f"/v1/devices/{host}/0000:3b:00.0",
                      json={"reserved": True}).status_code == 200
    assert gpu_pool() == (2, 1)

    reply = http.patch(f"/v1/devices/{host}/0000:3b:00.0", json={"reserved": False})
    assert (reply.json()["reserved"], reply.json()["state"]) == (False, "available")
    assert gpu_pool() == (2, 2)


@pytest.mark.parametrize(
    ("body", "field"),
    [({"reserved": "yes"}, "body.reserved"), ({}, "body.reserved"),
     ({"reserved": True, "owner": "x"}, "body.owner")],
)
def test_bad_patch(http: httpx.Client, body: dict[str, Any], field: str) -> None:
    host = new_host()
    create_host(http, host, [gpu("0000:3b:00.0")])
    assert_error(http.patch(f"/v1/devices/{host}/0000:3b:00.0", json=body),
                 422, "invalid_input", field)
    assert http.get(f"/v1/devices/{host}/0000:3b:00.0").json()["reserved"] is False


# --- not found and other errors --------------------------------------------------------------

def test_not_found(http: httpx.Client) -> None:
    host = new_host()
    create_host(http, host, [gpu("0000:3b:00.0")])
    assert_error(http.get("/v1/hosts/no-such-host"), 404, "not_found")
    assert_error(http.get(f"/v1/devices/{host}/0000:99:00.0"), 404, "not_found")
    assert_error(http.get("/v1/devices/no-such-host/0000:3b:00.0"), 404, "not_found")
    assert_error(http.patch(f"/v1/devices/{host}/0000:99:00.0", json={"reserved": True}),
                 404, "not_found")
    assert_error(http.get("/v1/no-such-thing"), 404, "not_found")
    assert http.get("/v1/devices", params={"host": "no-such-host"}).json() == {
        "devices": [], "next": None}


def test_bad_address(http: httpx.Client) -> None:
    assert_error(http.get("/v1/devices/some-host/0000:3b:00"), 400, "invalid_address",
                 "path.address")


def test_wrong_method(http: httpx.Client) -> None:
    assert_error(http.delete("/v1/hosts"), 405, "method_not_allowed")


def test_openapi_documents_v1(api: ApiServer) -> None:
    with api.client(admin=False) as anon:
        doc = anon.get("/openapi.json").json()
    assert {"/v1/health", "/v1/tokens", "/v1/hosts", "/v1/hosts/{host}",
            "/v1/hosts/{host}/inventory", "/v1/devices", "/v1/devices/{host}/{address}",
            "/v1/pools"} <= set(doc["paths"])
    assert all(path.startswith("/v1/") for path in doc["paths"])
    put = doc["paths"]["/v1/hosts/{host}/inventory"]["put"]
    assert put["requestBody"]["content"]["application/json"]["schema"]["$ref"] == (
        "#/components/schemas/InventoryReport")
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
    # every reference resolves
    schemas = doc["components"]["schemas"]

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref":
                    yield v
                else:
                    yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    found = set(refs(doc))
    assert "#/components/schemas/DeviceIn" in found
    for ref in found:
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


def test_several_workers_share_the_database(api: ApiServer,
                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    """State lives in the database: a second server with two workers sees the first's data."""
    host = new_host()
    with api.client() as http:
        create_host(http, host)
    with api_server(api.db_url, tmp_path_factory.mktemp("workers"), workers=2,
                    env={"PCIPASS_ADMIN_TOKEN": api.admin_token}) as second, \
            second.client() as http:
        assert "Started parent process" in second.log()  # uvicorn's multi-process mode
        for _ in range(6):  # spread over both workers
            assert http.get(f"/v1/hosts/{host}").json()["devices"]["total"] == 7
        reply = http.patch(f"/v1/devices/{host}/0000:3b:00.0", json={"reserved": True})
        assert reply.status_code == 200, reply.text
    with api.client() as http:
        assert http.get(f"/v1/devices/{host}/0000:3b:00.0").json()["reserved"] is True


# --- in process: what a real server cannot be made to do -------------------------------------

class _BrokenStore:
    """Authenticates everyone as admin, then fails the way a bug would."""

    def authenticate(self, plaintext: str) -> Principal:
        return Principal(token_id="t", role=Role.ADMIN)

    def list_hosts(self, **kw: Any) -> Any:
        raise RuntimeError("secret internals: password=hunter2")

    def list_pools(self, **kw: Any) -> Any:
        raise InfrastructureError("database error: OperationalError: host db-7.internal")

    def close(self) -> None:
        pass


def test_unexpected_errors_do_not_leak(tmp_path: Any) -> None:
    settings = load_settings(None, {"PCIPASS_STATE_DIR": str(tmp_path)})
    app = create_app(settings, _BrokenStore())  # type: ignore[arg-type]

    async def get(path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path, headers={"Authorization": "Bearer x"})

    reply = asyncio.run(get("/v1/hosts"))
    body = assert_error(reply, 500, "internal")
    assert "hunter2" not in reply.text and "secret" not in body["message"]
    reply = asyncio.run(get("/v1/pools"))
    assert_error(reply, 503, "infrastructure")
    assert "db-7" not in reply.text
