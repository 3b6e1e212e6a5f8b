"""Who may touch aliases, flavors, images, servers, quotas and usage, against a real server.

A member never learns that another project's private flavor, image or server exists (404,
not 403); admin-only writes are 403 for members whatever their body; agents may use none of
these routes; no token is 401 everywhere. A refused call changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from apicloud import (
    JSON,
    boot,
    created,
    make_alias,
    make_flavor,
    make_image,
    make_token,
    member,
    names,
    put_host,
    tag,
    tagged,
)
from apiserver import ApiServer, assert_error, gpu


@dataclass(frozen=True)
class World:
    """Two projects; a public flavor, one private to each project, and one private to nobody;
    a server of project 2; an agent of the one host."""

    api: ApiServer
    alias: str
    host: str
    public: JSON
    private_1: JSON
    private_2: JSON
    hidden: JSON
    image: JSON
    server_2: JSON
    member_1: str
    member_2: str
    agent: str

    def call(self, token: str | None, method: str, path: str, *,
             json: Any = None, params: Any = None) -> httpx.Response:
        with self.api.client(token, admin=False) as http:
            return http.request(method, path, json=json, params=params)


@pytest.fixture(scope="module")
def world(api: ApiServer) -> World:
    rack, alias, host = tag("rack"), tag("gpu"), tag("perm-host")
    with api.client() as http:
        make_alias(http, alias, rack)
        put_host(http, host, tagged([gpu("0000:3b:00.0"), gpu("0000:5e:00.0"),
                                     gpu("0000:86:00.0", numa=1)], rack))
        public = make_flavor(http, tag("public"), pci=f"{alias}:1")
        private_1 = make_flavor(http, tag("p1"), pci=f"{alias}:1", is_public=False,
                                projects=["proj-1"])
        private_2 = make_flavor(http, tag("p2"), pci=f"{alias}:1", is_public=False,
                                projects=["proj-2"])
        hidden = make_flavor(http, tag("hidden"), is_public=False)
        image = make_image(http, tag("image"))
    member_1, member_2 = member(api, "proj-1"), member(api, "proj-2")
    with api.client(member_2) as http:
        server_2 = boot(http, tag("vm"), private_2["name"], image["id"])
    assert server_2["status"] == "BUILDING", server_2
    agent = make_token(api, role="agent", host=host)
    return World(api, alias, host, public, private_1, private_2, hidden, image, server_2,
                 member_1, member_2, agent)


def every_route(w: World) -> list[tuple[str, str, Any]]:
    """Every issue-3 route, with a body that would succeed for an admin."""
    quota = f"/v1/quotas/proj-1/{w.alias}"
    return [
        ("GET", "/v1/aliases", None),
        ("POST", "/v1/aliases", {"name": tag("a"), "vendor_id": "10de"}),
        ("GET", f"/v1/aliases/{w.alias}", None),
        ("DELETE", f"/v1/aliases/{w.alias}", None),
        ("GET", "/v1/flavors", None),
        ("POST", "/v1/flavors", {"name": tag("f"), "vcpus": 1, "ram_mb": 512}),
        ("GET", f"/v1/flavors/{w.public['id']}", None),
        ("DELETE", f"/v1/flavors/{w.public['id']}", None),
        ("POST", f"/v1/flavors/{w.private_1['id']}/access", {"add": ["proj-9"]}),
        ("GET", "/v1/images", None),
        ("POST", "/v1/images", {"name": tag("i"), "source": "/i.qcow2"}),
        ("GET", f"/v1/images/{w.image['id']}", None),
        ("DELETE", f"/v1/images/{w.image['id']}", None),
        ("GET", "/v1/servers", None),
        ("POST", "/v1/servers", {"name": tag("vm"), "flavor": w.public["id"],
                                 "image": w.image["id"], "project": "proj-1"}),
        ("GET", f"/v1/servers/{w.server_2['id']}", None),
        ("DELETE", f"/v1/servers/{w.server_2['id']}", None),
        ("POST", "/v1/scheduler/explain", {"flavor": w.public["id"]}),
        ("GET", "/v1/quotas", None),
        ("PUT", quota, {"limit": 4}),
        ("DELETE", quota, None),
        ("GET", "/v1/usage", None),
    ]


def assert_world_intact(w: World) -> None:
    """Nothing a refused call aimed at is gone or changed."""
    with w.api.client() as http:
        assert http.get(f"/v1/aliases/{w.alias}").status_code == 200
        for flavor in (w.public, w.private_1, w.private_2, w.hidden):
            assert http.get(f"/v1/flavors/{flavor['id']}").json() == flavor
        assert http.get(f"/v1/images/{w.image['id']}").json() == w.image
        assert http.get(f"/v1/servers/{w.server_2['id']}").json()["status"] == "BUILDING"
        assert http.get("/v1/quotas", params={"project": "proj-1"}).json()["quotas"] == []


def test_no_token_is_401_everywhere(world: World) -> None:
    for method, path, body in every_route(world):
        reply = world.call(None, method, path, json=body)
        assert_error(reply, 401, "unauthenticated", "Authorization")
        assert reply.headers["WWW-Authenticate"] == "Bearer"
        assert_error(world.call("not-a-token", method, path, json=body), 401,
                     "unauthenticated")
    assert_world_intact(world)


def test_agents_may_use_none_of_these(world: World) -> None:
    for method, path, body in every_route(world):
        error = assert_error(world.call(world.agent, method, path, json=body), 403, "forbidden")
        assert "agent" in error["message"], (method, path)
    assert_world_intact(world)


ADMIN_ONLY = [
    ("POST", "/v1/aliases", {"name": "m", "vendor_id": "10de"}),
    ("POST", "/v1/aliases", {"name": "m", "bogus": "body"}),  # 403 before the body is read
    ("DELETE", "/v1/aliases/{alias}", None),
    ("POST", "/v1/flavors", {"name": "m", "vcpus": 1, "ram_mb": 1}),
    ("POST", "/v1/flavors", {"vcpus": "lots"}),
    ("DELETE", "/v1/flavors/{public}", None),
    ("POST", "/v1/flavors/{private_1}/access", {"add": ["proj-1", "proj-3"]}),
    ("PUT", "/v1/quotas/proj-1/{alias}", {"limit": 100}),
    ("PUT", "/v1/quotas/proj-1/{alias}", {"limit": -5}),
    ("DELETE", "/v1/quotas/proj-1/{alias}", None),
    ("POST", "/v1/scheduler/explain", {"flavor": "{public}"}),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ONLY)
def test_members_may_not_write_the_catalog(world: World, method: str, path: str,
                                           body: Any) -> None:
    refs = {"alias": world.alias, "public": world.public["id"],
            "private_1": world.private_1["id"]}
    path = path.format(**refs)
    if body is not None and isinstance(body.get("flavor"), str):
        body = {**body, "flavor": body["flavor"].format(**refs)}
    error = assert_error(world.call(world.member_1, method, path, json=body), 403, "forbidden")
    assert "admin" in error["message"]
    assert_world_intact(world)


def test_member_sees_public_and_shared_flavors_only(world: World) -> None:
    mine = {world.public["name"], world.private_1["name"]}
    others = {world.private_2["name"], world.hidden["name"]}
    reply = world.call(world.member_1, "GET", "/v1/flavors")
    assert reply.status_code == 200, reply.text
    seen = names(reply.json()["flavors"])
    assert mine <= seen and not others & seen
    assert all(f["is_public"] or "proj-1" in f["projects"] for f in reply.json()["flavors"])
    with world.api.client() as admin:
        assert mine | others <= names(admin.get("/v1/flavors").json()["flavors"])
    for flavor in (world.public, world.private_1):
        assert world.call(world.member_1, "GET", f"/v1/flavors/{flavor['id']}").json() == flavor
    for flavor in (world.private_2, world.hidden):
        for ref in (flavor["id"], flavor["name"]):
            assert_error(world.call(world.member_1, "GET", f"/v1/flavors/{ref}"),
                         404, "not_found")


def test_member_cannot_boot_another_projects_private_flavor(world: World) -> None:
    with world.api.client(world.member_1) as http:
        before = http.get("/v1/servers").json()["servers"]
        for ref in (world.private_2["id"], world.private_2["name"], world.hidden["name"]):
            error = assert_error(http.post("/v1/servers", json={
                "name": tag("vm"), "flavor": ref, "image": world.image["id"]}),
                404, "not_found")
            assert "flavor" in error["message"]
        assert http.get("/v1/servers").json()["servers"] == before
        # the same boot with a flavor shared with the project works
        ok = boot(http, tag("vm"), world.private_1["name"], world.image["name"])
        assert ok["project"] == "proj-1"
        assert http.delete(f"/v1/servers/{ok['id']}").status_code == 202


def test_member_cannot_see_another_projects_server(world: World) -> None:
    server = world.server_2
    for ref in (server["id"], server["name"]):
        assert_error(world.call(world.member_1, "GET", f"/v1/servers/{ref}"), 404, "not_found")
        assert_error(world.call(world.member_1, "DELETE", f"/v1/servers/{ref}"),
                     404, "not_found")
    listed = world.call(world.member_1, "GET", "/v1/servers").json()["servers"]
    assert server["id"] not in {s["id"] for s in listed}
    assert all(s["project"] == "proj-1" for s in listed)
    # naming the other project is refused outright
    assert_error(world.call(world.member_1, "GET", "/v1/servers",
                            params={"project": "proj-2"}), 403, "forbidden", "project")
    # its owner and the admin see it
    own = world.call(world.member_2, "GET", f"/v1/servers/{server['id']}")
    assert own.status_code == 200 and own.json()["id"] == server["id"]
    everything = world.call(world.api.admin_token, "GET", "/v1/servers",
                            params={"limit": 1000}).json()["servers"]
    assert server["id"] in {s["id"] for s in everything}
    assert_world_intact(world)


def test_member_boots_only_in_its_own_project(world: World) -> None:
    error = assert_error(world.call(world.member_1, "POST", "/v1/servers", json={
        "name": tag("vm"), "flavor": world.public["id"], "image": world.image["id"],
        "project": "proj-2"}), 403, "forbidden", "project")
    assert "proj-2" in error["message"]


def test_private_images_stay_in_their_project(world: World) -> None:
    with world.api.client(world.member_2) as http:
        private = created(http.post("/v1/images", json={"name": tag("own"),
                                                        "source": "/own.qcow2"}))
    assert private["project"] == "proj-2"
    for ref in (private["id"], private["name"]):
        assert_error(world.call(world.member_1, "GET", f"/v1/images/{ref}"), 404, "not_found")
    assert private["id"] not in {
        i["id"] for i in world.call(world.member_1, "GET", "/v1/images").json()["images"]}
    assert_error(world.call(world.member_1, "POST", "/v1/servers", json={
        "name": tag("vm"), "flavor": world.public["id"], "image": private["id"]}),
        404, "not_found")
    assert_error(world.call(world.member_1, "DELETE", f"/v1/images/{private['id']}"),
                 404, "not_found")
    assert world.call(world.member_2, "GET", f"/v1/images/{private['id']}").status_code == 200


def test_members_read_aliases_and_their_own_quotas_and_usage(world: World) -> None:
    reply = world.call(world.member_1, "GET", "/v1/aliases")
    assert reply.status_code == 200
    assert world.alias in names(reply.json()["aliases"])
    assert world.call(world.member_1, "GET", f"/v1/aliases/{world.alias}").status_code == 200

    with world.api.client() as admin:
        assert admin.put(f"/v1/quotas/proj-2/{world.alias}",
                         json={"limit": 7}).status_code == 200
    try:
        own = world.call(world.member_2, "GET", "/v1/quotas").json()["quotas"]
        assert own == [{"project": "proj-2", "alias": world.alias, "limit": 7, "used": 1}]
        assert world.call(world.member_1, "GET", "/v1/quotas").json()["quotas"] == []
        assert_error(world.call(world.member_1, "GET", "/v1/quotas",
                                params={"project": "proj-2"}), 403, "forbidden", "project")
    finally:
        with world.api.client() as admin:
            assert admin.delete(f"/v1/quotas/proj-2/{world.alias}").status_code == 204

    reply = world.call(world.member_1, "GET", "/v1/usage")
    assert reply.status_code == 200, reply.text
    assert all(u["project"] == "proj-1" for u in reply.json()["usage"])
    assert_error(world.call(world.member_1, "GET", "/v1/usage", params={"project": "proj-2"}),
                 403, "forbidden", "project")
