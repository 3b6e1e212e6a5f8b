"""Aliases, flavors, images, quotas and usage through the real API, on SQLite and PostgreSQL.

Every refusal is checked three ways: the status and stable code, the field it names, and that
nothing changed (the list reads the same afterwards).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from apicloud import (
    JSON,
    boot,
    confirm_destroys,
    created,
    devices_of,
    make_alias,
    make_flavor,
    make_image,
    member,
    names,
    put_host,
    tag,
    tagged,
)
from apiserver import ApiServer, assert_error, gpu
from pcipass.store import Store


@pytest.fixture
def http(api: ApiServer) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client


def aliases(http: httpx.Client) -> list[JSON]:
    reply = http.get("/v1/aliases")
    assert reply.status_code == 200, reply.text
    assert reply.json()["next"] is None
    items: list[JSON] = reply.json()["aliases"]
    return items


def flavors(http: httpx.Client) -> list[JSON]:
    reply = http.get("/v1/flavors")
    assert reply.status_code == 200, reply.text
    items: list[JSON] = reply.json()["flavors"]
    return items


def images(http: httpx.Client) -> list[JSON]:
    reply = http.get("/v1/images")
    assert reply.status_code == 200, reply.text
    items: list[JSON] = reply.json()["images"]
    return items


# --- aliases ---------------------------------------------------------------------------------

def test_alias_create_single_and_read_back(http: httpx.Client) -> None:
    name = tag("gpu")
    body = {"name": name, "vendor_id": "10DE", "product_id": "20b5",
            "device_type": "type-PCI", "numa_policy": "preferred"}
    made = created(http.post("/v1/aliases", json=body))
    assert set(made) == {"aliases"}
    (alias,) = made["aliases"]
    assert alias == {
        "name": name, "device_type": "type-PCI", "numa_policy": "preferred",
        "entries": [{"name": name, "vendor_id": "10de", "product_id": "20b5",
                     "device_type": "type-PCI", "numa_policy": "preferred"}],
    }
    assert http.get(f"/v1/aliases/{name}").json() == alias
    assert alias in aliases(http)


def test_alias_list_body_gives_alternatives(http: httpx.Client) -> None:
    name = tag("nic")
    body = [
        {"name": name, "vendor_id": "8086", "product_id": "154c", "device_type": "type-VF",
         "match": {"physical_network": "physnet1", "trusted": True}},
        {"name": name, "vendor_id": "15b3", "product_id": "101e", "device_type": "type-VF",
         "match": {"physical_network": ["physnet1", "physnet2"]}},
    ]
    (alias,) = created(http.post("/v1/aliases", json=body))["aliases"]
    assert alias["name"] == name
    assert alias["device_type"] == "type-VF"
    assert alias["numa_policy"] == "legacy"
    assert [e["vendor_id"] for e in alias["entries"]] == ["8086", "15b3"]
    assert alias["entries"][0]["match"] == {"physical_network": "physnet1", "trusted": True}
    assert alias["entries"][1]["match"] == {"physical_network": ["physnet1", "physnet2"]}

    # a later entry of the same name joins it as a third alternative
    more = {"name": name, "vendor_id": "14e4", "device_type": "type-VF"}
    (grown,) = created(http.post("/v1/aliases", json=more))["aliases"]
    assert len(grown["entries"]) == 3
    assert http.get(f"/v1/aliases/{name}").json()["entries"] == grown["entries"]


def test_alias_delete(http: httpx.Client) -> None:
    name = tag("gone")
    make_alias(http, name)
    reply = http.delete(f"/v1/aliases/{name}")
    assert reply.status_code == 204, reply.text
    assert reply.content == b""
    assert_error(http.get(f"/v1/aliases/{name}"), 404, "not_found")
    assert name not in names(aliases(http))
    assert_error(http.delete(f"/v1/aliases/{name}"), 404, "not_found")


def test_alias_in_use_cannot_be_deleted(http: httpx.Client) -> None:
    name = tag("used")
    make_alias(http, name)
    flavor = make_flavor(http, tag("f"), pci=f"{name}:1")
    body = assert_error(http.delete(f"/v1/aliases/{name}"), 409, "conflict")
    assert flavor["name"] in body["message"] or flavor["id"] in body["message"]
    assert http.get(f"/v1/aliases/{name}").status_code == 200
    assert http.delete(f"/v1/flavors/{flavor['id']}").status_code == 204
    assert http.delete(f"/v1/aliases/{name}").status_code == 204


def _bad_aliases(name: str) -> list[tuple[Any, str, str]]:
    """(body, field, a word the message must hold) for each way an alias is refused."""
    return [
        ({"name": name, "vendor_id": "10de", "colour": "red"}, "alias[0].colour", "colour"),
        ({"name": name, "device_type": "type-VF"}, "alias[0]", "constrains nothing"),
        ({"name": name, "match": {}}, "alias[0]", "constrains nothing"),
        ({"name": name, "vendor_id": "nvidia"}, "alias[0].vendor_id", "vendor_id"),
        ({"name": name, "vendor_id": "10de", "device_type": "type-GPU"},
         "alias[0].device_type", "type-GPU"),
        ({"name": name, "vendor_id": "10de", "numa_policy": "nearby"},
         "alias[0].numa_policy", "nearby"),
        ({"name": name, "vendor_id": "10de", "match": {"physical_network": []}},
         "alias[0].match.physical_network", "no value"),
        ({"name": f"{name}:2", "vendor_id": "10de"}, "alias[0].name", "':'"),
        ([{"name": name, "vendor_id": "10de", "device_type": "type-PCI"},
          {"name": name, "vendor_id": "8086", "device_type": "type-VF"}],
         "device_type", "device type mismatch"),
        ([{"name": name, "vendor_id": "10de", "numa_policy": "required"},
          {"name": name, "vendor_id": "8086"}],
         "numa_policy", "NUMA policy mismatch"),
        ([{"name": tag("ok"), "vendor_id": "10de"}, {"name": name, "vendor_id": "10de",
                                                     "bogus": 1}],
         "alias[1].bogus", "bogus"),
        ("gpu", "alias", "object"),
        ([1], "alias[0]", "object"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_aliases("x"))))
def test_bad_alias_refused_and_nothing_changed(http: httpx.Client, case: int) -> None:
    name = tag("bad")
    body, field, word = _bad_aliases(name)[case]
    before = aliases(http)
    error = assert_error(http.post("/v1/aliases", json=body), 400, "invalid_alias", field)
    assert word in error["message"]
    if field != "alias" and not (isinstance(body, list) and body and body[0] == 1):
        assert name in error["message"]  # the alias is named
    assert aliases(http) == before
    assert_error(http.get(f"/v1/aliases/{name}"), 404, "not_found")


def test_new_entry_must_agree_with_the_existing_alias(http: httpx.Client) -> None:
    name = tag("agree")
    make_alias(http, name, device_type="type-PCI", numa_policy="required")
    before = aliases(http)
    error = assert_error(http.post("/v1/aliases", json={
        "name": name, "vendor_id": "8086", "device_type": "type-VF",
        "numa_policy": "required"}), 400, "invalid_alias", "device_type")
    assert name in error["message"]
    assert_error(http.post("/v1/aliases", json={
        "name": name, "vendor_id": "8086", "device_type": "type-PCI"}),
        400, "invalid_alias", "numa_policy")
    assert aliases(http) == before
    assert len(http.get(f"/v1/aliases/{name}").json()["entries"]) == 1


@pytest.mark.parametrize("content", [b"", b"{not json", b"[{]"])
def test_alias_body_that_is_not_json(http: httpx.Client, content: bytes) -> None:
    before = aliases(http)
    reply = http.post("/v1/aliases", content=content,
                      headers={"Content-Type": "application/json"})
    assert_error(reply, 400, "invalid_alias", "alias")
    assert aliases(http) == before


def test_config_aliases_are_listed_and_kept(db_url: str,
                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    """Aliases from ``[pci] alias`` are read like the others, and cannot be deleted."""
    from apiserver import api_server

    conf = '[{"name": "cfg-gpu", "vendor_id": "10de", "product_id": "20b5"}]'
    with api_server(db_url, tmp_path_factory.mktemp("cfg"),
                    env={"PCIPASS_PCI_ALIAS": conf}) as server, server.client() as http:
        alias = http.get("/v1/aliases/cfg-gpu").json()
        assert alias["entries"] == [{"name": "cfg-gpu", "vendor_id": "10de",
                                     "product_id": "20b5", "numa_policy": "legacy"}]
        assert "cfg-gpu" in names(aliases(http))
        make_flavor(http, "cfg-flavor", pci="cfg-gpu:1")  # flavors may name it
        assert_error(http.delete("/v1/aliases/cfg-gpu"), 409, "conflict")
        assert http.get("/v1/aliases/cfg-gpu").status_code == 200


# --- flavors ---------------------------------------------------------------------------------

def test_flavor_create_show_delete(http: httpx.Client) -> None:
    alias = tag("gpu")
    make_alias(http, alias)
    name = tag("flavor")
    made = make_flavor(http, name, pci=f"{alias}:2", vcpus=4, ram_mb=8192,
                       extra_specs={"hw:numa_nodes": "2", "hw:pci_numa_affinity_policy":
                                    "preferred", "quota:cpu_shares": "1024"})
    assert set(made) == {"id", "name", "vcpus", "ram_mb", "disk_gb", "extra_specs",
                         "is_public", "projects"}
    assert (made["name"], made["vcpus"], made["ram_mb"], made["disk_gb"]) == (name, 4, 8192, 1)
    assert made["extra_specs"] == {"pci_passthrough:alias": f"{alias}:2", "hw:numa_nodes": "2",
                                   "hw:pci_numa_affinity_policy": "preferred",
                                   "quota:cpu_shares": "1024"}
    assert (made["is_public"], made["projects"]) == (True, [])
    assert http.get(f"/v1/flavors/{name}").json() == made
    assert http.get(f"/v1/flavors/{made['id']}").json() == made
    assert made in flavors(http)
    assert http.delete(f"/v1/flavors/{name}").status_code == 204
    assert_error(http.get(f"/v1/flavors/{made['id']}"), 404, "not_found")
    assert name not in names(flavors(http))


def test_flavor_access_add_and_remove(http: httpx.Client) -> None:
    name = tag("private")
    made = make_flavor(http, name, is_public=False, projects=["proj-a"])
    assert (made["is_public"], made["projects"]) == (False, ["proj-a"])
    reply = http.post(f"/v1/flavors/{name}/access", json={"add": ["proj-b", "proj-c"],
                                                          "remove": ["proj-a"]})
    assert reply.status_code == 200, reply.text
    assert sorted(reply.json()["projects"]) == ["proj-b", "proj-c"]
    assert sorted(http.get(f"/v1/flavors/{name}").json()["projects"]) == ["proj-b", "proj-c"]
    assert_error(http.post("/v1/flavors/no-such-flavor/access", json={"add": ["x"]}),
                 404, "not_found")
    assert_error(http.post(f"/v1/flavors/{name}/access", json={"add": "proj-d"}),
                 422, "invalid_input", "body.add")


def _bad_flavor_specs(alias: str) -> list[tuple[dict[str, str], str, str, str]]:
    """(extra_specs, code, field, a word the message must hold)."""
    spec = "extra_specs.pci_passthrough:alias"
    return [
        ({"pci_passthrough:alias": "no-such-alias:1"}, "unknown_alias", spec, "no-such-alias"),
        ({"pci_passthrough:alias": f"{alias}:1, missing-too:2"}, "unknown_alias", spec,
         "missing-too"),
        ({"pci_passthrough:alias_preferred": "nope:1"}, "unknown_alias",
         "extra_specs.pci_passthrough:alias_preferred", "nope"),
        ({"pci_passthrough:alias": alias}, "invalid_pci_request", spec, alias),
        ({"pci_passthrough:alias": f"{alias}:two"}, "invalid_pci_request", spec, "two"),
        ({"pci_passthrough:alias": f"{alias}:0"}, "invalid_pci_request", spec, "at least 1"),
        ({"pci_passthrough:alias": f"{alias}:1,,{alias}:1"}, "invalid_pci_request", spec, ""),
        ({"hw:pci_numa_affinity_policy": "closest"}, "invalid_pci_request",
         "extra_specs.hw:pci_numa_affinity_policy", "closest"),
        ({"hw:numa_nodes": "zero"}, "invalid_pci_request", "extra_specs.hw:numa_nodes",
         "zero"),
        ({"hw:numa_nodes": "3"}, "invalid_pci_request", "extra_specs.hw:numa_nodes",
         "evenly"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_flavor_specs("x"))))
def test_bad_flavor_specs_refused(http: httpx.Client, case: int) -> None:
    alias = tag("gpu")
    make_alias(http, alias)
    specs, code, field, word = _bad_flavor_specs(alias)[case]
    name = tag("flavor")
    before = flavors(http)
    error = assert_error(http.post("/v1/flavors", json={
        "name": name, "vcpus": 4, "ram_mb": 4096, "disk_gb": 10, "extra_specs": specs}),
        400, code, field)
    assert word in error["message"]
    assert flavors(http) == before
    assert_error(http.get(f"/v1/flavors/{name}"), 404, "not_found")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"vcpus": 0}, "body.vcpus"),
        ({"ram_mb": -1}, "body.ram_mb"),
        ({"name": ""}, "body.name"),
        ({"colour": "red"}, "body.colour"),
        ({"extra_specs": {"pci_passthrough:alias": 2}}, "body.extra_specs.pci_passthrough:alias"),
        ({"is_public": "maybe"}, "body.is_public"),
        ({"projects": "proj"}, "body.projects"),
    ],
)
def test_flavor_shapes_refused(http: httpx.Client, body: dict[str, Any], field: str) -> None:
    before = flavors(http)
    full = {"name": tag("flavor"), "vcpus": 1, "ram_mb": 512, "disk_gb": 1, **body}
    assert_error(http.post("/v1/flavors", json=full), 422, "invalid_input", field)
    assert flavors(http) == before


def test_flavor_name_taken(http: httpx.Client) -> None:
    name = tag("flavor")
    make_flavor(http, name)
    before = flavors(http)
    assert_error(http.post("/v1/flavors", json={"name": name, "vcpus": 2, "ram_mb": 512}),
                 409, "conflict", "name")
    assert flavors(http) == before


# --- images ----------------------------------------------------------------------------------

def test_image_create_show_delete(api: ApiServer, http: httpx.Client) -> None:
    name = tag("image")
    made = make_image(http, name, hw_pci_supported_aliases="gpu, vf",
                      hw_pci_numa_affinity_policy="socket", os_distro="ubuntu")
    assert made["name"] == name
    assert made["source"] == f"/var/lib/images/{name}.qcow2"
    assert made["properties"]["hw_pci_supported_aliases"] == "gpu, vf"
    assert made["project"] is None  # an admin's image is public
    assert set(made) == {"id", "name", "source", "properties", "project"}
    assert http.get(f"/v1/images/{made['id']}").json() == made
    assert http.get(f"/v1/images/{name}").json() == made
    assert made in images(http)

    with api.client(member(api, "img-proj")) as mine:
        own = created(mine.post("/v1/images", json={"name": tag("mine"), "source": "/x.qcow2"}))
        assert own["project"] == "img-proj"
        assert {made["id"], own["id"]} <= {i["id"] for i in images(mine)}
        assert_error(mine.delete(f"/v1/images/{made['id']}"), 403, "forbidden")
        assert mine.delete(f"/v1/images/{own['id']}").status_code == 204

    assert http.delete(f"/v1/images/{name}").status_code == 204
    assert_error(http.get(f"/v1/images/{name}"), 404, "not_found")


@pytest.mark.parametrize(
    ("properties", "field", "word"),
    [
        ({"hw_pci_numa_affinity_policy": "closest"},
         "properties.hw_pci_numa_affinity_policy", "closest"),
        ({"hw_numa_nodes": "two"}, "properties.hw_numa_nodes", "two"),
        ({"hw_numa_nodes": "0"}, "properties.hw_numa_nodes", "at least 1"),
    ],
)
def test_bad_image_properties_refused(http: httpx.Client, properties: dict[str, str],
                                      field: str, word: str) -> None:
    before = images(http)
    name = tag("image")
    error = assert_error(http.post("/v1/images", json={
        "name": name, "source": "/img.qcow2", "properties": properties}),
        400, "invalid_pci_request", field)
    assert word in error["message"]
    assert images(http) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [({"source": ""}, "body.source"), ({"properties": {"k": 1}}, "body.properties.k"),
     ({"name": None}, "body.name"), ({"size": 3}, "body.size")],
)
def test_image_shapes_refused(http: httpx.Client, body: dict[str, Any], field: str) -> None:
    before = images(http)
    full = {"name": tag("image"), "source": "/img.qcow2", **body}
    assert_error(http.post("/v1/images", json=full), 422, "invalid_input", field)
    assert images(http) == before


# --- quotas ----------------------------------------------------------------------------------

def test_quota_set_list_delete(api: ApiServer, http: httpx.Client) -> None:
    alias, project = tag("gpu"), tag("proj")
    make_alias(http, alias)
    reply = http.put(f"/v1/quotas/{project}/{alias}", json={"limit": 3})
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"project": project, "alias": alias, "limit": 3, "used": 0}
    # setting again replaces the limit
    assert http.put(f"/v1/quotas/{project}/{alias}", json={"limit": 5}).json()["limit"] == 5
    listed = http.get("/v1/quotas", params={"project": project}).json()
    assert listed == {"quotas": [{"project": project, "alias": alias, "limit": 5, "used": 0}],
                      "next": None}
    everything = http.get("/v1/quotas").json()["quotas"]
    assert {"project": project, "alias": alias, "limit": 5, "used": 0} in everything

    with api.client(member(api, project)) as mine:
        assert mine.get("/v1/quotas").json()["quotas"] == listed["quotas"]

    assert http.delete(f"/v1/quotas/{project}/{alias}").status_code == 204
    assert http.get("/v1/quotas", params={"project": project}).json()["quotas"] == []
    assert_error(http.delete(f"/v1/quotas/{project}/{alias}"), 404, "not_found")


@pytest.mark.parametrize(
    ("body", "field"),
    [({"limit": -1}, "body.limit"), ({"limit": "3"}, "body.limit"), ({}, "body.limit"),
     ({"limit": 1, "used": 0}, "body.used"), ({"limit": True}, "body.limit")],
)
def test_bad_quota_refused(http: httpx.Client, body: dict[str, Any], field: str) -> None:
    alias, project = tag("gpu"), tag("proj")
    make_alias(http, alias)
    assert_error(http.put(f"/v1/quotas/{project}/{alias}", json=body), 422, "invalid_input",
                 field)
    assert http.get("/v1/quotas", params={"project": project}).json()["quotas"] == []


def test_quota_for_an_unknown_alias(http: httpx.Client) -> None:
    project = tag("proj")
    error = assert_error(http.put(f"/v1/quotas/{project}/no-such-alias", json={"limit": 1}),
                         404, "not_found")
    assert "no-such-alias" in error["message"]
    assert http.get("/v1/quotas", params={"project": project}).json()["quotas"] == []


# --- usage -----------------------------------------------------------------------------------

def test_usage_shape_and_window(http: httpx.Client) -> None:
    reply = http.get("/v1/usage")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert set(body) == {"usage", "next"} and body["next"] is None
    for row in body["usage"]:
        assert set(row) == {"project", "alias", "device_seconds", "device_hours"}
        assert row["device_hours"] == pytest.approx(row["device_seconds"] / 3600)
    end = datetime.now(UTC)
    reply = http.get("/v1/usage", params={"project": tag("nobody"),
                                          "start": (end - timedelta(days=1)).isoformat(),
                                          "end": end.isoformat()})
    assert reply.json() == {"usage": [], "next": None}


@pytest.mark.parametrize(
    ("params", "status", "code", "field"),
    [
        ({"start": "yesterday"}, 422, "invalid_input", "query.start"),
        ({"end": "2024-13-01T00:00:00"}, 422, "invalid_input", "query.end"),
        ({"start": "2024-02-01T00:00:00Z", "end": "2024-01-01T00:00:00Z"}, 400,
         "invalid_input", "query.start"),
        ({"start": "2024-01-01T00:00:00Z", "end": "2024-01-01T00:00:00Z"}, 400,
         "invalid_input", "query.start"),
    ],
)
def test_bad_usage_window(http: httpx.Client, params: dict[str, str], status: int, code: str,
                          field: str) -> None:
    assert_error(http.get("/v1/usage", params=params), status, code, field)


def test_usage_meters_devices_from_allocation_to_free(api: ApiServer,
                                                      http: httpx.Client) -> None:
    """The spawn is completed with the store's own function (the agent of issue 4 will do it
    through the API): metering runs from then until the server is deleted."""
    rack, alias, host, project = tag("rack"), tag("gpu"), tag("host"), tag("proj")
    make_alias(http, alias, rack)
    put_host(http, host, tagged([gpu("0000:3b:00.0"), gpu("0000:5e:00.0")], rack))
    flavor = make_flavor(http, tag("f"), pci=f"{alias}:2")
    image = make_image(http, tag("image"))
    server = boot(http, tag("vm"), flavor["name"], image["name"], project=project)
    assert server["status"] == "BUILDING"

    def metered() -> list[JSON]:
        reply = http.get("/v1/usage", params={"project": project})
        assert reply.status_code == 200, reply.text
        rows: list[JSON] = reply.json()["usage"]
        return rows

    assert metered() == []  # a claim is not usage yet
    store = Store.open(api.db_url, migrate=False)
    try:
        active = store.complete_spawn(server["id"])
    finally:
        store.close()
    assert active.status.value == "ACTIVE"
    shown = http.get(f"/v1/servers/{server['id']}").json()
    assert shown["status"] == "ACTIVE"
    assert {d["state"] for d in shown["devices"]} == {"allocated"}
    assert {d["state"] for d in devices_of(http, host).values()} == {"allocated"}

    time.sleep(1.0)
    (running,) = metered()
    assert (running["project"], running["alias"]) == (project, alias)
    assert running["device_seconds"] >= 2.0  # two devices, a second each at least
    assert http.delete(f"/v1/servers/{server['id']}").status_code == 202
    confirm_destroys(http, host)
    assert {d["state"] for d in devices_of(http, host).values()} == {"available"}
    (final,) = metered()
    assert final["device_seconds"] >= running["device_seconds"]
    assert final["device_hours"] == pytest.approx(final["device_seconds"] / 3600)
    time.sleep(0.2)
    assert metered() == [final]  # freed: the meter stopped

    with api.client(member(api, project)) as mine:
        assert mine.get("/v1/usage").json()["usage"] == [final]
    # a window before the boot holds nothing
    long_ago = datetime.now(UTC) - timedelta(days=400)
    assert http.get("/v1/usage", params={
        "project": project, "start": long_ago.isoformat(),
        "end": (long_ago + timedelta(days=1)).isoformat()}).json()["usage"] == []
