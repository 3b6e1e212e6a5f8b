"""Networks and ports through the real API: create, read, delete, who may, bad input, and
booting with NICs (ports bound to VFs on the right physical network).

Every test makes physical network names of its own (:func:`tag`), so the VFs its host tags
with them serve its boots only, whatever the other tests left on the shared server.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest

from apicloud import (
    JSON,
    boot,
    confirm_all_destroys,
    created,
    devices_of,
    isolated,
    make_flavor,
    make_image,
    member,
    put_host,
    tag,
)
from apiserver import ApiServer, assert_error, nic
from fleet import ADMIN, catalog, cloud_of
from fleet import member as member_of
from pcipass.errors import InfrastructureError
from pcipass.services.boot import Placer
from pcipass.store import Store

NETWORK_KEYS = {"id", "name", "project", "physical_network", "segmentation",
                "segmentation_id", "ports", "created_at"}
PORT_KEYS = {"id", "name", "project", "network_id", "network", "physical_network",
             "segmentation_id", "vnic_type", "mac", "trusted", "spoofchk", "max_tx_rate_mbps",
             "min_tx_rate_mbps", "numa_affinity_policy", "server_id", "auto_delete", "status",
             "binding", "created_at"}
BINDING_KEYS = {"host", "address", "pf_netdev", "vf_index", "vf_netdev"}


@pytest.fixture
def http(api: ApiServer) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client


def make_network(http: httpx.Client, physnet: str, *, vlan: int | None = 100,
                 project: str | None = None, name: str | None = None) -> JSON:
    body = {"name": name or tag("net"), "physical_network": physnet,
            "segmentation": "flat" if vlan is None else "vlan", "segmentation_id": vlan,
            "project": project}
    return created(http.post("/v1/networks", json=body))


def make_port(http: httpx.Client, network: str, **fields: Any) -> JSON:
    return created(http.post("/v1/ports", json={"network": network, **fields}))


def sriov_host(http: httpx.Client, physnet: str, vfs: int = 2, *,
               pf: str = "0000:af:00.0") -> str:
    """A host whose NIC has ``vfs`` VFs on ``physnet``."""
    host = tag("host")
    put_host(http, host, isolated(nic(pf, vfs, physnet=physnet)))
    return host


def ports_of(http: httpx.Client, **params: str) -> list[JSON]:
    reply = http.get("/v1/ports", params=params)
    assert reply.status_code == 200, reply.text
    assert set(reply.json()) == {"ports", "next"}
    items: list[JSON] = reply.json()["ports"]
    return items


# --- networks ------------------------------------------------------------------------------

def test_network_create_list_show_delete(http: httpx.Client) -> None:
    physnet = tag("physnet")
    vlan = make_network(http, physnet, vlan=4094)
    assert set(vlan) == NETWORK_KEYS
    assert (vlan["physical_network"], vlan["segmentation"], vlan["segmentation_id"],
            vlan["project"], vlan["ports"]) == (physnet, "vlan", 4094, None, 0)
    flat = make_network(http, physnet, vlan=None, project="proj-flat")
    assert (flat["segmentation"], flat["segmentation_id"], flat["project"]) == (
        "flat", None, "proj-flat")

    listed = http.get("/v1/networks").json()
    assert set(listed) == {"networks", "next"}
    ids = {n["id"] for n in listed["networks"]}
    assert {vlan["id"], flat["id"]} <= ids
    for ref in (vlan["id"], vlan["name"]):
        assert http.get(f"/v1/networks/{ref}").json() == vlan

    assert http.delete(f"/v1/networks/{vlan['name']}").status_code == 204
    assert_error(http.get(f"/v1/networks/{vlan['id']}"), 404, "not_found")
    assert_error(http.delete(f"/v1/networks/{vlan['id']}"), 404, "not_found")
    assert http.delete(f"/v1/networks/{flat['id']}").status_code == 204


@pytest.mark.parametrize(("body", "status", "code", "field"), [
    ({"segmentation": "vlan", "segmentation_id": 0}, 400, "invalid_input", "segmentation_id"),
    ({"segmentation": "vlan", "segmentation_id": 4095}, 400, "invalid_input",
     "segmentation_id"),
    ({"segmentation": "vlan", "segmentation_id": None}, 400, "invalid_input",
     "segmentation_id"),
    ({"segmentation": "flat", "segmentation_id": 10}, 400, "invalid_input", "segmentation_id"),
    ({"segmentation": "vxlan", "segmentation_id": 10}, 400, "invalid_input", "segmentation"),
    ({"segmentation": "vlan", "segmentation_id": "ten"}, 422, "invalid_input",
     "body.segmentation_id"),
    ({"segmentation": "flat", "physical_network": "phys net"}, 400, "invalid_input",
     "physical_network"),
    ({"segmentation": "flat", "bogus": 1}, 422, "invalid_input", "body.bogus"),
])
def test_bad_networks_are_refused_naming_the_field(http: httpx.Client, body: JSON,
                                                   status: int, code: str,
                                                   field: str) -> None:
    name = tag("net")
    full = {"name": name, "physical_network": "physnet1", **body}
    assert_error(http.post("/v1/networks", json=full), status, code, field)
    assert_error(http.get(f"/v1/networks/{name}"), 404, "not_found")


def test_network_name_taken(http: httpx.Client) -> None:
    first = make_network(http, tag("physnet"))
    assert_error(http.post("/v1/networks", json={
        "name": first["name"], "physical_network": "physnet9", "segmentation": "flat"}),
        409, "conflict", "name")


def test_members_see_shared_and_their_own_networks_only(api: ApiServer,
                                                        http: httpx.Client) -> None:
    physnet = tag("physnet")
    shared = make_network(http, physnet)
    own = make_network(http, physnet, vlan=101, project="proj-net-1")
    other = make_network(http, physnet, vlan=102, project="proj-net-2")
    with api.client(member(api, "proj-net-1")) as mine:
        seen = {n["id"] for n in mine.get("/v1/networks").json()["networks"]}
        assert {shared["id"], own["id"]} <= seen and other["id"] not in seen
        assert all(n["project"] in (None, "proj-net-1")
                   for n in mine.get("/v1/networks").json()["networks"])
        assert mine.get(f"/v1/networks/{own['name']}").json() == own
        for ref in (other["id"], other["name"]):
            assert_error(mine.get(f"/v1/networks/{ref}"), 404, "not_found")
        # admin-only writes
        error = assert_error(mine.post("/v1/networks", json={
            "name": tag("net"), "physical_network": physnet, "segmentation": "flat"}),
            403, "forbidden")
        assert "admin" in error["message"]
        assert_error(mine.delete(f"/v1/networks/{own['id']}"), 403, "forbidden")
    assert http.get(f"/v1/networks/{own['id']}").status_code == 200


# --- ports ---------------------------------------------------------------------------------

def test_port_create_list_show_delete(api: ApiServer, http: httpx.Client) -> None:
    net = make_network(http, tag("physnet"))
    project = tag("proj")
    with api.client(member(api, project)) as mine:
        port = make_port(mine, net["name"], name="web", vnic_type="direct",
                         max_tx_rate_mbps=1000, min_tx_rate_mbps=100,
                         numa_affinity_policy="preferred")
        assert set(port) == PORT_KEYS
        assert (port["project"], port["network_id"], port["network"], port["vnic_type"],
                port["status"], port["binding"], port["server_id"], port["auto_delete"],
                port["trusted"], port["spoofchk"], port["segmentation_id"]) == (
            project, net["id"], net["name"], "direct", "DOWN", None, None, False, False,
            True, 100)
        assert port["mac"].startswith("fa:16:3e:") and len(port["mac"]) == 17
        assert (port["max_tx_rate_mbps"], port["min_tx_rate_mbps"],
                port["numa_affinity_policy"]) == (1000, 100, "preferred")
        given = make_port(mine, net["id"], mac="FA:16:3E:00:00:01", spoofchk=False)
        assert (given["mac"], given["vnic_type"], given["spoofchk"], given["name"]) == (
            "fa:16:3e:00:00:01", "normal", False, None)
        assert_error(mine.post("/v1/ports", json={"network": net["id"],
                                                  "mac": "fa:16:3e:00:00:01"}),
                     409, "mac_in_use", "mac")

        assert [p["id"] for p in ports_of(mine, network=net["name"])] == [port["id"],
                                                                         given["id"]]
        for ref in (port["id"], "web"):
            assert mine.get(f"/v1/ports/{ref}").json() == port
        assert http.get(f"/v1/networks/{net['id']}").json()["ports"] == 2

        assert mine.delete("/v1/ports/web").status_code == 204
        assert_error(mine.get(f"/v1/ports/{port['id']}"), 404, "not_found")
        assert [p["id"] for p in ports_of(mine)] == [given["id"]]
    # an admin makes ports in any project; its own land in "admin"
    theirs = make_port(http, net["id"], project=project)
    assert theirs["project"] == project
    assert make_port(http, net["id"])["project"] == "admin"
    # the network goes, and its free ports with it
    assert http.delete(f"/v1/networks/{net['id']}").status_code == 204
    assert_error(http.get(f"/v1/ports/{theirs['id']}"), 404, "not_found")


@pytest.mark.parametrize(("body", "status", "code", "field"), [
    ({"mac": "fa:16:3e:00:00"}, 400, "invalid_input", "mac"),
    ({"mac": "01:00:5e:00:00:01"}, 400, "invalid_input", "mac"),
    ({"mac": "00:00:00:00:00:00"}, 400, "invalid_input", "mac"),
    ({"vnic_type": "baremetal"}, 400, "invalid_input", "vnic_type"),
    ({"max_tx_rate_mbps": -1}, 400, "invalid_input", "max_tx_rate_mbps"),
    ({"max_tx_rate_mbps": 100, "min_tx_rate_mbps": 200}, 400, "invalid_input",
     "min_tx_rate_mbps"),
    ({"numa_affinity_policy": "anywhere"}, 400, "invalid_input", "numa_affinity_policy"),
    ({"network": "no-such-network"}, 404, "not_found", "network"),
    ({"trusted": "yes"}, 422, "invalid_input", "body.trusted"),
])
def test_bad_ports_are_refused_naming_the_field(http: httpx.Client, body: JSON,
                                                status: int, code: str, field: str) -> None:
    net = make_network(http, tag("physnet"))
    assert_error(http.post("/v1/ports", json={"network": net["id"], **body}), status, code,
                 field)
    assert ports_of(http, network=net["id"]) == []


def test_port_permissions(api: ApiServer, http: httpx.Client) -> None:
    physnet = tag("physnet")
    shared = make_network(http, physnet)
    private_2 = make_network(http, physnet, vlan=200, project="proj-port-2")
    with api.client(member(api, "proj-port-1")) as one, \
            api.client(member(api, "proj-port-2")) as two:
        # trusted VFs are an admin's call
        assert_error(one.post("/v1/ports", json={"network": shared["id"], "trusted": True}),
                     403, "forbidden", "trusted")
        trusted = make_port(http, shared["id"], trusted=True, project="proj-port-1")
        assert trusted["trusted"] is True
        # a member makes ports in its own project only, on networks it sees
        assert_error(one.post("/v1/ports", json={"network": shared["id"],
                                                 "project": "proj-port-2"}),
                     403, "forbidden", "project")
        assert_error(one.post("/v1/ports", json={"network": private_2["id"]}),
                     404, "not_found", "network")
        # nor may an admin put a project's port on another project's network
        assert_error(http.post("/v1/ports", json={"network": private_2["id"],
                                                  "project": "proj-port-1"}),
                     404, "not_found", "network")
        theirs = make_port(two, private_2["name"], name="db")
        for ref in (theirs["id"], "db"):
            assert_error(one.get(f"/v1/ports/{ref}"), 404, "not_found")
            assert_error(one.delete(f"/v1/ports/{ref}"), 404, "not_found")
        assert theirs["id"] not in {p["id"] for p in ports_of(one)}
        assert all(p["project"] == "proj-port-1" for p in ports_of(one))
        assert_error(one.get("/v1/ports", params={"project": "proj-port-2"}),
                     403, "forbidden", "project")
        assert_error(one.get("/v1/ports", params={"network": private_2["id"]}),
                     404, "not_found")
        assert two.get(f"/v1/ports/{theirs['id']}").json() == theirs
        assert theirs["id"] in {p["id"] for p in ports_of(http, project="proj-port-2")}


def test_agents_and_strangers_may_not_use_networks_or_ports(api: ApiServer) -> None:
    host = tag("host")
    with api.client() as http:
        put_host(http, host, isolated(nic("0000:af:00.0", 1)))
        agent = created(http.post("/v1/tokens", json={"role": "agent", "host": host}))["token"]
    routes = [("GET", "/v1/networks"), ("POST", "/v1/networks"), ("GET", "/v1/networks/x"),
              ("DELETE", "/v1/networks/x"), ("GET", "/v1/ports"), ("POST", "/v1/ports"),
              ("GET", "/v1/ports/x"), ("DELETE", "/v1/ports/x")]
    body = {"name": "n", "network": "n", "physical_network": "p", "segmentation": "flat"}
    for method, path in routes:
        with api.client(admin=False) as anonymous:
            assert_error(anonymous.request(method, path, json=body), 401, "unauthenticated")
        with api.client(agent) as as_agent:
            assert_error(as_agent.request(method, path, json=body), 403, "forbidden")


# --- booting with NICs ---------------------------------------------------------------------

@pytest.fixture
def image(http: httpx.Client) -> JSON:
    return make_image(http, tag("image"))


@pytest.fixture
def flavor(http: httpx.Client) -> JSON:
    return make_flavor(http, tag("f"))


def test_boot_with_nics_binds_vfs_and_delete_gives_them_back(
        api: ApiServer, http: httpx.Client, image: JSON, flavor: JSON) -> None:
    physnet = tag("physnet")
    host = sriov_host(http, physnet, vfs=2)
    net = make_network(http, physnet, vlan=300)
    project = tag("proj")
    with api.client(member(api, project)) as mine:
        kept = make_port(mine, net["id"], name="kept", vnic_type="macvtap")
        server = boot(mine, tag("vm"), flavor["name"], image["name"], nics=[
            {"net_id": net["name"], "vnic_type": "direct"}, {"port_id": "kept"},
            {"net_id": net["id"]}])
        assert server["status"] == "BUILDING", server["fault"]
        assert server["host"] == host
        ports = {p["vnic_type"]: p for p in server["ports"]}
        assert set(ports) == {"direct", "macvtap", "normal"}
        for kind in ("direct", "macvtap"):
            port = ports[kind]
            assert set(port) == PORT_KEYS
            assert port["server_id"] == server["id"] and port["status"] == "BUILD"
            binding = port["binding"]
            assert set(binding) == BINDING_KEYS
            assert binding["host"] == host
            assert binding["address"].startswith("0000:af:02.")
            assert binding["pf_netdev"] == "ens1f0"
            assert binding["vf_index"] == int(binding["address"][-1])
        assert ports["direct"]["binding"]["address"] != ports["macvtap"]["binding"]["address"]
        assert (ports["direct"]["auto_delete"], ports["macvtap"]["auto_delete"]) == (True, False)
        # A normal port holds no device: it follows its server (BUILD while it builds).
        assert ports["normal"]["binding"] is None and ports["normal"]["status"] == "BUILD"
        # the VFs are the server's, held for the ports
        devices = devices_of(http, host)
        for kind in ("direct", "macvtap"):
            held = devices[ports[kind]["binding"]["address"]]
            assert (held["state"], held["owner"]) == ("claimed", server["id"])
        assert {p["id"] for p in ports_of(mine, server=server["name"])} == {
            p["id"] for p in server["ports"]}
        # a port in use can be neither deleted nor given to another server
        assert_error(mine.delete("/v1/ports/kept"), 409, "port_in_use")
        assert_error(mine.post("/v1/servers", json={
            "name": tag("vm"), "flavor": flavor["id"], "image": image["id"],
            "nics": [{"port_id": kept["id"]}]}), 409, "port_in_use", "nics[0].port_id")
        assert_error(http.delete(f"/v1/networks/{net['id']}"), 409, "network_in_use",
                     "network")

        assert mine.delete(f"/v1/servers/{server['id']}").status_code == 202
        confirm_all_destroys(http)
        left = ports_of(mine, network=net["id"])
        assert [p["id"] for p in left] == [kept["id"]]
        assert (left[0]["server_id"], left[0]["binding"], left[0]["status"]) == (
            None, None, "DOWN")
        assert all(d["state"] == "available" for d in devices_of(http, host).values()
                   if d["assignable"])
        assert mine.delete("/v1/ports/kept").status_code == 204
    assert http.delete(f"/v1/networks/{net['id']}").status_code == 204


def test_direct_physical_takes_the_pf(http: httpx.Client, image: JSON, flavor: JSON) -> None:
    physnet = tag("physnet")
    devices = isolated(nic("0000:af:00.0", 1, physnet=physnet))
    devices[0] = replace(devices[0], assignable=True, tags={"physical_network": physnet})
    host = tag("host")
    put_host(http, host, devices)
    net = make_network(http, physnet, vlan=None)
    server = boot(http, tag("vm"), flavor["id"], image["id"], project=tag("proj"),
                  nics=[{"net_id": net["id"], "vnic_type": "direct-physical"}])
    assert server["status"] == "BUILDING", server["fault"]
    (port,) = server["ports"]
    assert port["binding"]["address"] == "0000:af:00.0"
    assert port["binding"]["pf_netdev"] == "ens1f0"
    assert port["binding"]["vf_index"] is None
    # the PF's VF is not to be had while the PF is out
    other = boot(http, tag("vm"), flavor["id"], image["id"], project=tag("proj"),
                 nics=[{"net_id": net["id"], "vnic_type": "direct"}])
    assert other["status"] == "ERROR"
    assert f"no free VF on {physnet}" in other["fault"]["message"]
    for s in (server, other):
        assert http.delete(f"/v1/servers/{s['id']}").status_code == 202
    confirm_all_destroys(http)
    assert ports_of(http, network=net["id"]) == []


def test_no_free_vf_on_the_physnet(http: httpx.Client, image: JSON, flavor: JSON) -> None:
    physnet, empty = tag("physnet"), tag("physnet")
    sriov_host(http, physnet, vfs=1)
    net = make_network(http, empty)
    server = boot(http, tag("vm"), flavor["id"], image["id"], project=tag("proj"),
                  nics=[{"net_id": net["id"], "vnic_type": "direct"}])
    assert server["status"] == "ERROR" and server["host"] is None
    assert f"no free VF on {empty}" in server["fault"]["message"]
    explained = http.post("/v1/scheduler/explain", json={
        "flavor": flavor["id"], "nics": [{"net_id": net["id"], "vnic_type": "direct"}]})
    assert explained.status_code == 200, explained.text
    assert explained.json()["fits"] is False
    assert f"no free VF on {empty}" in explained.json()["message"]
    good = make_network(http, physnet)
    fits = http.post("/v1/scheduler/explain", json={
        "flavor": flavor["id"], "nics": [{"net_id": good["id"], "vnic_type": "macvtap"}]})
    assert fits.json()["fits"] is True, fits.text
    assert http.delete(f"/v1/servers/{server['id']}").status_code == 202
    confirm_all_destroys(http)
    assert ports_of(http, network=net["id"]) == []


@pytest.mark.parametrize(("nics", "status", "code", "field"), [
    ([{"net_id": "{net}", "vnic_type": "vdpa"}], 400, "invalid_input", "nics[0].vnic_type"),
    ([{"net_id": "{net}"}, {"net_id": "no-such-net"}], 404, "not_found", "nics[1].net_id"),
    ([{"net_id": "{net}", "port_id": "{port}"}], 400, "invalid_input", "nics[0].net_id"),
    ([{}], 400, "invalid_input", "nics[0].net_id"),
    ([{"port_id": "{port}", "vnic_type": "direct"}], 400, "invalid_input",
     "nics[0].vnic_type"),
    ([{"port_id": "{port}"}, {"port_id": "{port}"}], 400, "invalid_input", "nics[1].port_id"),
    ([{"port_id": "no-such-port"}], 404, "not_found", "nics[0].port_id"),
    ([{"net_id": "{net}", "mac": "fa:16:3e:00:00:01"}], 422, "invalid_input",
     "body.nics.0.mac"),
])
def test_bad_nics_are_refused_and_nothing_is_made(api: ApiServer, http: httpx.Client,
                                                  image: JSON, flavor: JSON, nics: list[JSON],
                                                  status: int, code: str, field: str) -> None:
    net = make_network(http, tag("physnet"))
    project = tag("proj")
    port = make_port(http, net["id"], project=project)
    refs = {"{net}": net["id"], "{port}": port["id"]}
    body = [{k: refs.get(v, v) for k, v in n.items()} for n in nics]
    with api.client(member(api, project)) as mine:
        assert_error(mine.post("/v1/servers", json={
            "name": tag("vm"), "flavor": flavor["id"], "image": image["id"], "nics": body}),
            status, code, field)
        assert mine.get("/v1/servers").json()["servers"] == []
    assert [p["id"] for p in ports_of(http, network=net["id"])] == [port["id"]]


def test_members_boot_only_with_their_own_ports_and_visible_networks(
        api: ApiServer, http: httpx.Client, image: JSON, flavor: JSON) -> None:
    physnet = tag("physnet")
    hidden = make_network(http, physnet, project="proj-nic-2")
    theirs = make_port(http, hidden["id"], project="proj-nic-2")
    with api.client(member(api, "proj-nic-1")) as one:
        for nic_body, field in (({"net_id": hidden["id"]}, "nics[0].net_id"),
                                ({"port_id": theirs["id"]}, "nics[0].port_id")):
            assert_error(one.post("/v1/servers", json={
                "name": tag("vm"), "flavor": flavor["id"], "image": image["id"],
                "nics": [nic_body]}), 404, "not_found", field)
    # an admin booting for one project may not hand it another project's port
    assert_error(http.post("/v1/servers", json={
        "name": tag("vm"), "flavor": flavor["id"], "image": image["id"],
        "project": "proj-nic-1", "nics": [{"port_id": theirs["id"]}]}),
        400, "invalid_input", "nics[0].port_id")
    assert http.get(f"/v1/ports/{theirs['id']}").json()["server_id"] is None


def test_openapi_documents_networks_and_ports(api: ApiServer) -> None:
    with api.client(admin=False) as anon:
        doc = anon.get("/openapi.json").json()
    assert {"/v1/networks", "/v1/networks/{ref}", "/v1/ports", "/v1/ports/{ref}"} <= set(
        doc["paths"])
    schemas = doc["components"]["schemas"]
    assert {"NetworkOut", "PortOut", "PortBindingOut", "NicIn"} <= set(schemas)
    assert "ports" in schemas["ServerOut"]["properties"]
    assert "nics" in schemas["ServerCreate"]["properties"]


# --- the service under the route: a boot refused after its ports were made ------------------

def test_ports_prepared_for_a_boot_that_fails_before_its_server_exists_are_released(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    cloud = cloud_of(store)
    catalog(cloud, {"plain": {}})
    cloud.create_network(ADMIN, name="n1", physical_network="physnet1", segmentation="flat")
    kept = cloud.create_port(member_of("p1"), network="n1", name="kept")

    def broken(*_args: object, **_kw: object) -> None:
        raise InfrastructureError("database went away")

    monkeypatch.setattr(Placer, "place", broken)
    with pytest.raises(InfrastructureError):
        cloud.create_server(member_of("p1"), name="vm", flavor="plain", image="img",
                            nics=[{"net_id": "n1", "vnic_type": "direct"},
                                  {"port_id": "kept"}])
    # the port the boot made is gone, the one it was given is free again
    assert [p.id for p in cloud.list_ports(member_of("p1"))] == [kept.id]
    assert cloud.get_port(member_of("p1"), "kept").server_id is None
