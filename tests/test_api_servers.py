"""Booting through the real API: placement, claims, refusals and explanations.

Each test tags its hosts' devices with a rack of its own and asks through aliases that match
only that rack, so tests sharing the server never take each other's devices.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from apicloud import (
    JSON,
    boot,
    confirm_all_destroys,
    devices_of,
    isolated,
    listed,
    make_alias,
    make_flavor,
    make_image,
    member,
    profile_inventory,
    put_host,
    tag,
    tagged,
)
from apiserver import ApiServer, assert_error, gpu, nic
from pcipass.host.profiles import A100, INTEL, NVIDIA, P4510, RTX_A6000, RTX_A6000_AUDIO

SERVER_KEYS = {"id", "name", "project", "status", "flavor", "image", "host", "devices",
               "not_granted", "fault", "numa_cells", "ports", "created_at", "updated_at"}
DEVICE_KEYS = {"address", "alias", "state", "vendor_id", "product_id", "dev_type", "numa_node"}


@pytest.fixture
def http(api: ApiServer) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client


@pytest.fixture
def image(http: httpx.Client) -> JSON:
    return make_image(http, tag("image"))


def three_gpus(rack: str) -> list[Any]:
    """Two GPUs on NUMA node 0, one on node 1, and a NIC with VFs (not GPUs)."""
    return tagged([gpu("0000:3b:00.0"), gpu("0000:5e:00.0"), gpu("0000:86:00.0", numa=1),
                   *nic("0000:af:00.0", 2)], rack)


def states(http: httpx.Client, host: str) -> dict[str, tuple[str, str | None]]:
    return {a: (d["state"], d["owner"]) for a, d in devices_of(http, host).items()}


# --- placing and freeing ---------------------------------------------------------------------

def test_boot_claims_devices_and_delete_frees_them(http: httpx.Client, image: JSON) -> None:
    rack, alias, host = tag("rack"), tag("gpu"), tag("host")
    make_alias(http, alias, rack, product_id="20b5")
    put_host(http, host, three_gpus(rack))
    before = states(http, host)
    assert {s for s, _ in before.values()} == {"available"}
    flavor = make_flavor(http, tag("f"), pci=f"{alias}:2", vcpus=2, ram_mb=2048)

    server = boot(http, tag("vm"), flavor["name"], image["name"], project="proj-boot")
    assert set(server) == SERVER_KEYS
    assert server["status"] == "BUILDING", server
    assert server["host"] == host
    assert server["project"] == "proj-boot"
    assert server["fault"] is None and server["not_granted"] == []
    assert len(server["devices"]) == 2
    gpus = {"0000:3b:00.0", "0000:5e:00.0", "0000:86:00.0"}
    for dev in server["devices"]:
        assert set(dev) == DEVICE_KEYS
        assert dev["alias"] == alias
        assert dev["state"] == "claimed"
        assert (dev["vendor_id"], dev["product_id"], dev["dev_type"]) == (
            "10de", "20b5", "type-PCI")
        assert dev["address"] in gpus
    taken = {d["address"] for d in server["devices"]}

    after = states(http, host)
    for addr, (state, owner) in after.items():
        if addr in taken:
            assert (state, owner) == ("claimed", server["id"]), addr
        else:
            assert (state, owner) == ("available", None), addr
    assert http.get(f"/v1/servers/{server['id']}").json() == server
    assert http.get(f"/v1/servers/{server['name']}").json()["id"] == server["id"]
    gpu_pools = [p for p in http.get("/v1/pools", params={"host": host}).json()["pools"]
                 if p["vendor_id"] == "10de"]
    assert (sum(p["total"] for p in gpu_pools), sum(p["free"] for p in gpu_pools)) == (3, 1)
    assert http.get(f"/v1/hosts/{host}").json()["devices"].get("claimed") == 2

    reply = http.delete(f"/v1/servers/{server['name']}")
    confirm_all_destroys(http)
    assert reply.status_code == 202, reply.text
    gone = reply.json()
    assert gone["id"] == server["id"]
    assert gone["status"] in ("DELETING", "DELETED")
    assert states(http, host) == before
    # the freed devices serve the next boot
    again = boot(http, tag("vm"), flavor["id"], image["id"], project="proj-boot")
    assert again["status"] == "BUILDING" and again["host"] == host
    assert http.delete(f"/v1/servers/{again['id']}").status_code == 202
    confirm_all_destroys(http)


def test_member_boot_is_in_its_project(api: ApiServer, http: httpx.Client,
                                       image: JSON) -> None:
    rack, alias, host = tag("rack"), tag("gpu"), tag("host")
    make_alias(http, alias, rack)
    put_host(http, host, three_gpus(rack))
    flavor = make_flavor(http, tag("f"), pci=f"{alias}:1")
    project = tag("proj")
    with api.client(member(api, project)) as mine:
        server = boot(mine, tag("vm"), flavor["name"], image["name"])
        assert (server["status"], server["project"], server["host"]) == (
            "BUILDING", project, host)
        assert [s["id"] for s in mine.get("/v1/servers").json()["servers"]] == [server["id"]]
        assert mine.delete(f"/v1/servers/{server['id']}").status_code == 202
        confirm_all_destroys(http)
    assert {s for s, _ in states(http, host).values()} == {"available"}


def test_boot_on_a_discovered_gpu_server(http: httpx.Client, image: JSON,
                                         tmp_path: Path) -> None:
    """A host as discovery finds the demo's gpu-server: A6000s come with their audio."""
    rack, host = tag("rack"), tag("gpu-server")
    put_host(http, host, profile_inventory(tmp_path / "host", "gpu-server", rack=rack))
    a100, a6000 = tag("a100"), tag("a6000")
    make_alias(http, a100, rack, vendor_id=NVIDIA, product_id=A100, device_type="type-PCI",
               numa_policy="preferred")
    make_alias(http, a6000, rack, vendor_id=NVIDIA, product_id=RTX_A6000,
               device_type="type-PCI")
    both = make_flavor(http, tag("f"), pci=f"{a100}:2, {a6000}:1", vcpus=8, ram_mb=16384,
                       extra_specs={"hw:numa_nodes": "1"})

    server = boot(http, tag("vm"), both["name"], image["name"], project="proj-gpu")
    assert server["status"] == "BUILDING", server
    assert server["host"] == host
    by_alias: dict[str | None, list[JSON]] = {}
    for dev in server["devices"]:
        by_alias.setdefault(dev["alias"], []).append(dev)
    assert len(by_alias[a100]) == 2
    assert {d["product_id"] for d in by_alias[a100]} == {A100}
    (display,) = by_alias[a6000]
    (audio,) = by_alias[None]  # the display GPU's HDMI audio rides along: one IOMMU group
    assert audio["product_id"] == RTX_A6000_AUDIO
    assert audio["address"][:-1] == display["address"][:-1]
    assert len(server["numa_cells"]) == 1
    # preferred: the A100s sit on the guest's node when they can
    assert {d["numa_node"] for d in by_alias[a100]} == set(server["numa_cells"])

    now = devices_of(http, host)
    for dev in server["devices"]:
        assert (now[dev["address"]]["state"], now[dev["address"]]["owner"]) == (
            "claimed", server["id"])
    assert http.delete(f"/v1/servers/{server['id']}").status_code == 202
    confirm_all_destroys(http)
    assert all(d["state"] == "available" for d in devices_of(http, host).values()
               if d["assignable"])


def test_devices_behind_vmd_are_never_handed_out(http: httpx.Client, image: JSON,
                                                 tmp_path: Path) -> None:
    rack, host, alias = tag("rack"), tag("vmd-host"), tag("nvme")
    put_host(http, host, profile_inventory(tmp_path / "host", "vmd-host", rack=rack))
    make_alias(http, alias, rack, vendor_id=INTEL, product_id=P4510)
    flavor = make_flavor(http, tag("f"), pci=f"{alias}:1")
    first = boot(http, tag("vm"), flavor["name"], image["name"], project="proj-vmd")
    assert first["status"] == "BUILDING", first
    assert [d["address"] for d in first["devices"]] == ["0000:b1:00.0"]
    second = boot(http, tag("vm"), flavor["name"], image["name"], project="proj-vmd")
    assert second["status"] == "ERROR"
    assert second["host"] is None and second["devices"] == []
    assert f"No host can satisfy 1 x {alias}" in second["fault"]["message"]
    behind = [d for a, d in devices_of(http, host).items() if a.startswith("10000:")
              and d["assignable"]]
    assert len(behind) == 2
    for dev in behind:
        assert dev["state"] == "available" and dev["owner"] is None
        assert dev["reason"] is not None and "VMD" in dev["reason"], dev
    assert http.delete(f"/v1/servers/{first['id']}").status_code == 202
    confirm_all_destroys(http)


def test_vf_on_a_physical_network(http: httpx.Client, image: JSON) -> None:
    rack, host, alias = tag("rack"), tag("host"), tag("vf")
    put_host(http, host, tagged(isolated([*nic("0000:af:00.0", 3, physnet="physnet1"),
                                          *nic("0000:d8:00.0", 3, physnet="physnet2")]), rack))
    make_alias(http, alias, vendor_id="8086", product_id="154c", device_type="type-VF",
               match={"physical_network": "physnet2", "rack": rack})
    flavor = make_flavor(http, tag("f"), pci=f"{alias}:2")
    server = boot(http, tag("vm"), flavor["name"], image["name"], project="proj-vf")
    assert server["status"] == "BUILDING", server["fault"]
    assert all(d["dev_type"] == "type-VF" and d["address"].startswith("0000:d8:")
               for d in server["devices"])
    assert len(server["devices"]) == 2
    assert http.delete(f"/v1/servers/{server['id']}").status_code == 202
    confirm_all_destroys(http)


def test_pf_and_its_vfs_exclude_each_other(http: httpx.Client, image: JSON) -> None:
    rack, host, pf_alias, vf_alias = tag("rack"), tag("host"), tag("pf"), tag("vf")
    devices = isolated(nic("0000:af:00.0", 2))
    devices[0] = replace(devices[0], assignable=True)  # the PF may be passed through too
    put_host(http, host, tagged(devices, rack))
    make_alias(http, pf_alias, rack, vendor_id="8086", product_id="1572",
               device_type="type-PF")
    make_alias(http, vf_alias, rack, vendor_id="8086", product_id="154c",
               device_type="type-VF")
    pf_flavor = make_flavor(http, tag("f"), pci=f"{pf_alias}:1")
    vf_flavor = make_flavor(http, tag("f"), pci=f"{vf_alias}:1")

    vf_server = boot(http, tag("vm"), vf_flavor["name"], image["name"], project="proj-pf")
    assert vf_server["status"] == "BUILDING", vf_server["fault"]
    pf = devices_of(http, host)["0000:af:00.0"]
    assert pf["state"] == "unavailable", pf
    assert pf["reason"] and vf_server["devices"][0]["address"] in pf["reason"], pf
    refused = boot(http, tag("vm"), pf_flavor["name"], image["name"], project="proj-pf")
    assert refused["status"] == "ERROR"
    assert pf_alias in refused["fault"]["message"]

    assert http.delete(f"/v1/servers/{vf_server['id']}").status_code == 202
    confirm_all_destroys(http)
    assert devices_of(http, host)["0000:af:00.0"]["state"] == "available"
    pf_server = boot(http, tag("vm"), pf_flavor["name"], image["name"], project="proj-pf")
    assert pf_server["status"] == "BUILDING", pf_server["fault"]
    assert [d["address"] for d in pf_server["devices"]] == ["0000:af:00.0"]
    vfs = [d for d in devices_of(http, host).values() if d["dev_type"] == "type-VF"]
    assert {d["state"] for d in vfs} == {"unavailable"}
    assert boot(http, tag("vm"), vf_flavor["name"], image["name"],
                project="proj-pf")["status"] == "ERROR"
    assert http.delete(f"/v1/servers/{pf_server['id']}").status_code == 202
    confirm_all_destroys(http)


# --- refusals --------------------------------------------------------------------------------

FAULT = re.compile(r"^No host can satisfy (?P<what>[^:]+): (?P<parts>.+)$")


def reason_counts(message: str) -> dict[str, int]:
    """``3 hosts lack 2 free 'gpu' devices; 1 host has them only ...`` →
    {"2 free 'gpu' devices": 3, "them only ...": 1}: the count, without "host(s) verb"."""
    match = FAULT.match(message)
    assert match, message
    out: dict[str, int] = {}
    for part in match["parts"].split("; "):
        count, _, rest = part.partition(" ")
        assert count.isdigit(), part
        out[rest.split(" ", 2)[2]] = int(count)
    return out


def test_no_fit_is_an_error_server_counting_hosts_per_reason(http: httpx.Client,
                                                             image: JSON) -> None:
    rack, alias = tag("rack"), tag("gpu")
    make_alias(http, alias, rack, numa_policy="required")
    one_gpu, split = tag("one-gpu"), tag("split")
    put_host(http, one_gpu, tagged([gpu("0000:3b:00.0")], rack))
    put_host(http, split, tagged([gpu("0000:3b:00.0"), gpu("0000:86:00.0", numa=1)], rack))
    flavor = make_flavor(http, tag("f"), pci=f"{alias}:2", vcpus=2, ram_mb=2048,
                         extra_specs={"hw:numa_nodes": "1"})

    server = boot(http, tag("vm"), flavor["name"], image["name"], project="proj-nofit")
    assert server["status"] == "ERROR", server
    assert (server["host"], server["devices"]) == (None, [])
    message = server["fault"]["message"]
    assert message.startswith(f"No host can satisfy 2 x {alias}"), message
    counts = reason_counts(message)
    numa = "them only outside the guest's NUMA node (policy required)"
    assert counts[numa] == 1, message  # only host `split` has two, on two nodes
    lack = f"2 free '{alias}' devices"
    assert counts[lack] >= 1, message  # `one_gpu`, and every host of the other tests
    hosts = listed(http, "/v1/hosts", "hosts", limit=1000)
    assert sum(counts.values()) == len(hosts), message
    # nothing was claimed, and the server says the same when read again
    for host in (one_gpu, split):
        assert {s for s, _ in states(http, host).values()} == {"available"}
    assert http.get(f"/v1/servers/{server['id']}").json()["fault"] == server["fault"]

    explained = http.post("/v1/scheduler/explain", json={"flavor": flavor["name"],
                                                         "image": image["name"]})
    assert explained.status_code == 200, explained.text
    body = explained.json()
    assert body["fits"] is False
    assert body["message"] == message
    verdicts = {v["host"]: v for v in body["hosts"]}
    assert verdicts[split]["fits"] is False
    assert "NUMA" in verdicts[split]["reason"]
    assert all(not v["fits"] and v["devices"] == [] for v in body["hosts"])


def test_explain_a_flavor_that_fits(http: httpx.Client, image: JSON) -> None:
    rack, alias, host = tag("rack"), tag("gpu"), tag("host")
    make_alias(http, alias, rack)
    put_host(http, host, three_gpus(rack))
    flavor = make_flavor(http, tag("f"), pci=f"{alias}:3")
    reply = http.post("/v1/scheduler/explain", json={"flavor": flavor["id"]})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert set(body) == {"message", "fits", "hosts"}
    assert body["fits"] is True
    assert body["message"].startswith("1 host can satisfy 3 x"), body["message"]
    (mine,) = [v for v in body["hosts"] if v["host"] == host]
    assert mine["fits"] is True and mine["reason"] is None
    assert sorted(mine["devices"]) == ["0000:3b:00.0", "0000:5e:00.0", "0000:86:00.0"]
    # explaining claims nothing
    assert {s for s, _ in states(http, host).values()} == {"available"}
    assert_error(http.post("/v1/scheduler/explain", json={"flavor": "no-such-flavor"}),
                 404, "not_found")
    assert_error(http.post("/v1/scheduler/explain", json={}), 422, "invalid_input",
                 "body.flavor")


def test_image_that_cannot_drive_the_alias(http: httpx.Client) -> None:
    rack, alias, other, host = tag("rack"), tag("gpu"), tag("other"), tag("host")
    make_alias(http, alias, rack)
    make_alias(http, other, rack)
    put_host(http, host, three_gpus(rack))
    image = make_image(http, tag("image"), hw_pci_supported_aliases=f"{other}, vf")
    flavor = make_flavor(http, tag("f"), pci=f"{alias}:1")
    name = tag("vm")
    error = assert_error(http.post("/v1/servers", json={
        "name": name, "flavor": flavor["name"], "image": image["name"],
        "project": "proj-img"}), 400, "alias_not_supported_by_image",
        "properties.hw_pci_supported_aliases")
    assert alias in error["message"] and image["name"] in error["message"]
    assert name not in {s["name"] for s in listed(http, "/v1/servers", "servers",
                                                  project="proj-img")}
    assert {s for s, _ in states(http, host).values()} == {"available"}
    # a soft request is refused the same way
    soft = make_flavor(http, tag("f"), preferred=f"{alias}:1")
    assert_error(http.post("/v1/servers", json={
        "name": name, "flavor": soft["name"], "image": image["name"], "project": "proj-img"}),
        400, "alias_not_supported_by_image")
    # the alias it does support boots
    ok = make_flavor(http, tag("f"), pci=f"{other}:1")
    server = boot(http, name, ok["name"], image["name"], project="proj-img")
    assert server["status"] == "BUILDING"
    assert http.delete(f"/v1/servers/{server['id']}").status_code == 202
    confirm_all_destroys(http)


def test_over_quota_is_refused_with_the_numbers(api: ApiServer, http: httpx.Client,
                                                image: JSON) -> None:
    rack, alias, host, project = tag("rack"), tag("gpu"), tag("host"), tag("proj")
    make_alias(http, alias, rack)
    put_host(http, host, three_gpus(rack))
    one, two = (make_flavor(http, tag("f"), pci=f"{alias}:{n}") for n in (1, 2))
    assert http.put(f"/v1/quotas/{project}/{alias}", json={"limit": 1}).status_code == 200
    with api.client(member(api, project)) as mine:
        error = assert_error(mine.post("/v1/servers", json={
            "name": tag("vm"), "flavor": two["name"], "image": image["name"]}),
            403, "quota_exceeded")
        assert alias in error["message"]
        assert re.search(r"\b2\b", error["message"]) and re.search(r"\b1\b", error["message"])
        first = boot(mine, tag("vm"), one["name"], image["name"])
        assert first["status"] == "BUILDING"
        assert mine.get("/v1/quotas").json()["quotas"] == [
            {"project": project, "alias": alias, "limit": 1, "used": 1}]
        error = assert_error(mine.post("/v1/servers", json={
            "name": tag("vm"), "flavor": one["name"], "image": image["name"]}),
            403, "quota_exceeded")
        assert alias in error["message"]
        assert len(mine.get("/v1/servers").json()["servers"]) == 1
        assert mine.delete(f"/v1/servers/{first['id']}").status_code == 202
        confirm_all_destroys(http)
        assert mine.get("/v1/quotas").json()["quotas"][0]["used"] == 0
        assert boot(mine, tag("vm"), one["name"], image["name"])["status"] == "BUILDING"


def requested(text: str) -> tuple[str, int]:
    """A request as a server lists it, ``fpga:1`` (Nova's syntax) or ``1 x fpga``."""
    match = re.fullmatch(r"(?:(\d+) x (.+))|(?:(.+):(\d+))", text)
    assert match, text
    if match[1]:
        return match[2], int(match[1])
    return match[3], int(match[4])


def test_soft_request_not_granted(http: httpx.Client, image: JSON) -> None:
    rack, gpu_alias, fpga, host = tag("rack"), tag("gpu"), tag("fpga"), tag("host")
    make_alias(http, gpu_alias, rack)
    make_alias(http, fpga, rack, vendor_id="1ded")  # no host has one
    put_host(http, host, three_gpus(rack))
    flavor = make_flavor(http, tag("f"), pci=f"{gpu_alias}:1", preferred=f"{fpga}:1")
    server = boot(http, tag("vm"), flavor["name"], image["name"], project="proj-soft")
    assert server["status"] == "BUILDING", server
    assert server["host"] == host
    assert [d["alias"] for d in server["devices"]] == [gpu_alias]
    assert [requested(r) for r in server["not_granted"]] == [(fpga, 1)]
    assert server["fault"] is None
    # a soft request a host can grant is granted
    granted = make_flavor(http, tag("f"), preferred=f"{gpu_alias}:2")
    other = boot(http, tag("vm"), granted["name"], image["name"], project="proj-soft")
    assert other["status"] == "BUILDING" and other["not_granted"] == []
    assert [d["alias"] for d in other["devices"]] == [gpu_alias, gpu_alias]
    # and when the host is out of them, the server boots without
    third = boot(http, tag("vm"), granted["name"], image["name"], project="proj-soft")
    assert third["status"] == "BUILDING", third
    assert third["devices"] == []
    assert [requested(r) for r in third["not_granted"]] == [(gpu_alias, 2)]
    for s in (server, other, third):
        assert http.delete(f"/v1/servers/{s['id']}").status_code == 202
        confirm_all_destroys(http)


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"flavor": "no-such-flavor"}, 404, "not_found", None),
        ({"image": "no-such-image"}, 404, "not_found", None),
        ({"name": ""}, 422, "invalid_input", "body.name"),
        ({"flavor": None}, 422, "invalid_input", "body.flavor"),
        ({"hosts": 3}, 422, "invalid_input", "body.hosts"),
    ],
)
def test_bad_boots(http: httpx.Client, image: JSON, body: dict[str, Any], status: int,
                   code: str, field: str | None) -> None:
    flavor = make_flavor(http, tag("f"))
    full = {"name": tag("vm"), "flavor": flavor["name"], "image": image["name"],
            "project": "proj-bad", **body}
    before = listed(http, "/v1/servers", "servers", project="proj-bad")
    error = assert_error(http.post("/v1/servers", json=full), status, code, field)
    if status == 404:
        assert str(body.get("flavor") or body.get("image")) in error["message"]
    assert listed(http, "/v1/servers", "servers", project="proj-bad") == before


def test_unknown_server(http: httpx.Client) -> None:
    assert_error(http.get("/v1/servers/no-such-server"), 404, "not_found")
    assert_error(http.delete("/v1/servers/no-such-server"), 404, "not_found")


# --- lists -----------------------------------------------------------------------------------

def test_list_servers_filters_and_pages(http: httpx.Client, image: JSON) -> None:
    rack, alias, host, project = tag("rack"), tag("gpu"), tag("host"), tag("proj")
    make_alias(http, alias, rack)
    put_host(http, host, three_gpus(rack))
    flavor = make_flavor(http, tag("f"), pci=f"{alias}:1")
    built = [boot(http, tag("vm"), flavor["name"], image["name"], project=project)
             for _ in range(3)]
    failed = boot(http, tag("vm"), flavor["name"], image["name"], project=project)
    assert [s["status"] for s in built] == ["BUILDING"] * 3
    assert failed["status"] == "ERROR"

    def ids(**params: Any) -> list[str]:
        return [s["id"] for s in listed(http, "/v1/servers", "servers", **params)]

    assert sorted(ids(host=host)) == sorted(s["id"] for s in built)
    assert sorted(ids(project=project)) == sorted(s["id"] for s in [*built, failed])
    assert ids(project=project, status="ERROR") == [failed["id"]]
    assert sorted(ids(project=project, status="BUILDING")) == sorted(s["id"] for s in built)
    paged = ids(project=project, limit=1)
    assert sorted(paged) == sorted(s["id"] for s in [*built, failed])
    first = http.get("/v1/servers", params={"project": project, "limit": 2}).json()
    assert len(first["servers"]) == 2 and first["next"] is not None
    assert_error(http.get("/v1/servers", params={"status": "SLEEPING"}), 422, "invalid_input",
                 "query.status")
    assert_error(http.get("/v1/servers", params={"limit": 0}), 422, "invalid_input",
                 "query.limit")
    for s in built:
        assert http.delete(f"/v1/servers/{s['id']}").status_code == 202
        confirm_all_destroys(http)
    # a server that never got devices is deleted all the same
    reply = http.delete(f"/v1/servers/{failed['id']}")
    confirm_all_destroys(http)
    assert reply.status_code == 202, reply.text
    assert ids(host=host) == []


def test_openapi_documents_the_issue_3_routes(api: ApiServer) -> None:
    with api.client(admin=False) as anon:
        doc = anon.get("/openapi.json").json()
    assert {"/v1/aliases", "/v1/aliases/{name}", "/v1/flavors", "/v1/flavors/{ref}",
            "/v1/flavors/{ref}/access", "/v1/images", "/v1/images/{ref}", "/v1/servers",
            "/v1/servers/{ref}", "/v1/scheduler/explain", "/v1/quotas",
            "/v1/quotas/{project}/{alias}", "/v1/usage"} <= set(doc["paths"])
    assert "requestBody" in doc["paths"]["/v1/aliases"]["post"]
    assert "ServerOut" in doc["components"]["schemas"]
    created_status = doc["paths"]["/v1/servers"]["post"]["responses"]
    assert "202" in created_status and "403" in created_status
