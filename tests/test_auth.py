"""Who may do what: the role matrix, token handling and issuance, against a real server."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from apiserver import ApiServer, assert_error, gpu, inventory, report

ADDR = "0000:3b:00.0"


@dataclass(frozen=True)
class World:
    """Two hosts, A and B, and a token of each kind."""

    server: ApiServer
    host_a: str
    host_b: str
    member: str
    agent_a: str
    made: tuple[str, ...]  # every plaintext the server handed out

    def call(self, token: str | None, method: str, path: str, *, json: Any = None,
             headers: dict[str, str] | None = None) -> httpx.Response:
        with self.server.client(token, admin=False) as http:
            return http.request(method, path, json=json, headers=headers)

    def generation(self, host: str) -> int:
        with self.server.client() as http:
            value: int = http.get(f"/v1/hosts/{host}").json()["generation"]
            return value

    def unchanged_report(self, host: str) -> dict[str, Any]:
        return report(inventory([gpu(ADDR)]), self.generation(host))


def make_token(server: ApiServer, **body: Any) -> str:
    with server.client() as http:
        reply = http.post("/v1/tokens", json=body)
    assert reply.status_code == 201, reply.text
    made = reply.json()
    assert set(made) == {"id", "token", "role", "project", "host"}
    assert made["role"] == body["role"]
    token: str = made["token"]
    return token


@pytest.fixture(scope="module")
def world(api: ApiServer) -> World:
    suffix = secrets.token_hex(3)
    host_a, host_b = f"host-a-{suffix}", f"host-b-{suffix}"
    with api.client() as http:
        for host in (host_a, host_b):
            reply = http.put(f"/v1/hosts/{host}/inventory",
                             json=report(inventory([gpu(ADDR)]), None))
            assert reply.status_code == 200, reply.text
    member = make_token(api, role="member", project="proj-1")
    agent_a = make_token(api, role="agent", host=host_a)
    return World(api, host_a, host_b, member, agent_a, (member, agent_a))


def routes(w: World, host: str) -> list[tuple[str, str, Any]]:
    """Every protected route, aimed at ``host``, with a body that would succeed."""
    return [
        ("GET", "/v1/hosts", None),
        ("GET", f"/v1/hosts/{host}", None),
        ("PUT", f"/v1/hosts/{host}/inventory", w.unchanged_report(host)),
        ("GET", "/v1/devices", None),
        ("GET", f"/v1/devices?host={host}", None),
        ("GET", f"/v1/devices/{host}/{ADDR}", None),
        ("PATCH", f"/v1/devices/{host}/{ADDR}", {"reserved": False}),
        ("GET", "/v1/pools", None),
        ("GET", f"/v1/pools?host={host}", None),
        ("POST", "/v1/tokens", {"role": "member", "project": "p"}),
    ]


def test_admin_may_do_everything(world: World) -> None:
    for method, path, body in routes(world, world.host_b):
        reply = world.call(world.server.admin_token, method, path, json=body)
        assert reply.status_code in (200, 201), (method, path, reply.text)


def test_member_may_not_touch_hosts_devices_pools_or_tokens(world: World) -> None:
    for method, path, body in routes(world, world.host_a):
        body_ = assert_error(world.call(world.member, method, path, json=body),
                             403, "forbidden")
        assert "member" in body_["message"], (method, path)


def test_member_hears_403_before_any_body_check(world: World) -> None:
    assert_error(world.call(world.member, "POST", "/v1/tokens", json={"role": "nonsense"}),
                 403, "forbidden")
    assert_error(world.call(world.member, "PUT", f"/v1/hosts/{world.host_a}/inventory",
                            json=[]), 403, "forbidden")


def test_agent_reaches_its_own_host_only(world: World) -> None:
    a = world.host_a
    allowed = {("GET", f"/v1/hosts/{a}"), ("PUT", f"/v1/hosts/{a}/inventory"),
               ("GET", f"/v1/devices?host={a}"), ("GET", f"/v1/devices/{a}/{ADDR}"),
               ("GET", f"/v1/pools?host={a}")}
    for method, path, body in routes(world, a):
        reply = world.call(world.agent_a, method, path, json=body)
        if (method, path) in allowed:
            assert reply.status_code == 200, (method, path, reply.text)
        else:
            assert_error(reply, 403, "forbidden")


def test_agent_may_not_reach_another_host(world: World) -> None:
    for method, path, body in routes(world, world.host_b):
        if world.host_b not in path:
            continue
        body_ = assert_error(world.call(world.agent_a, method, path, json=body),
                             403, "forbidden")
        if method != "PATCH":  # PATCH is for admins whichever host
            assert world.host_a in body_["message"], (method, path, body_)


def test_agent_report_for_another_host_changes_nothing(world: World) -> None:
    before = world.generation(world.host_b)
    body = report(inventory([gpu(ADDR), gpu("0000:5e:00.0")]), before)
    reply = world.call(world.agent_a, "PUT", f"/v1/hosts/{world.host_b}/inventory", json=body)
    message = assert_error(reply, 403, "forbidden")["message"]
    assert world.host_a in message and world.host_b in message
    assert world.generation(world.host_b) == before


def test_agent_creates_its_host_with_its_first_report(world: World) -> None:
    host = f"fresh-{secrets.token_hex(3)}"
    token = make_token(world.server, role="agent", host=host)
    reply = world.call(token, "PUT", f"/v1/hosts/{host}/inventory",
                       json=report(inventory(), None))
    assert reply.status_code == 200, reply.text
    assert world.call(token, "GET", f"/v1/hosts/{host}").json()["name"] == host


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": ""}, {"Authorization": "Bearer"},
     {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer a b"},
     {"Authorization": "Token abcdef"}, {"Authorization": "Bearer " + "x" * 600}],
)
def test_missing_or_malformed_header_is_401(world: World, headers: dict[str, str]) -> None:
    for method, path, body in routes(world, world.host_a):
        reply = world.call(None, method, path, json=body, headers=headers)
        assert_error(reply, 401, "unauthenticated", "Authorization")
        assert reply.headers["WWW-Authenticate"] == "Bearer"


def test_unknown_token_is_401(world: World) -> None:
    for token in (secrets.token_urlsafe(32), world.server.admin_token + "x"):
        for method, path, body in routes(world, world.host_a):
            reply = world.call(token, method, path, json=body)
            assert_error(reply, 401, "unauthenticated")
            assert "unknown token" in reply.json()["message"]


def test_token_only_in_the_header(world: World) -> None:
    with world.server.client(admin=False) as http:
        reply = http.get("/v1/hosts", params={"token": world.server.admin_token})
    assert_error(reply, 401, "unauthenticated")


def test_scheme_is_case_insensitive(world: World) -> None:
    reply = world.call(None, "GET", "/v1/hosts",
                       headers={"Authorization": f"bearer {world.server.admin_token}"})
    assert reply.status_code == 200


# --- issuing tokens ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"role": "member"}, "body.project", "needs a project"),
        ({"role": "member", "project": ""}, "body.project", ""),
        ({"role": "agent"}, "body.host", "needs the host"),
        ({"role": "agent", "host": "not a host"}, "body.host", "not a host name"),
        ({"role": "admin", "project": "p"}, "body.project", "only member tokens"),
        ({"role": "agent", "host": "h1", "project": "p"}, "body.project", "only member"),
        ({"role": "member", "project": "p", "host": "h1"}, "body.host", "only agent"),
        ({"role": "root"}, "body.role", ""),
        ({}, "body.role", ""),
        ({"role": "admin", "expires": 5}, "body.expires", ""),
    ],
)
def test_token_requests_refused(world: World, body: dict[str, Any], field: str,
                                words: str) -> None:
    reply = world.call(world.server.admin_token, "POST", "/v1/tokens", json=body)
    assert words in assert_error(reply, 422, "invalid_input", field)["message"]


def test_issued_tokens_work_and_differ(world: World) -> None:
    with world.server.client() as http:
        first = http.post("/v1/tokens", json={"role": "admin"}).json()
        second = http.post("/v1/tokens", json={"role": "admin"}).json()
    assert first["token"] != second["token"] and first["id"] != second["id"]
    assert len(first["token"]) >= 32
    assert (first["project"], first["host"]) == (None, None)
    assert world.call(first["token"], "GET", "/v1/hosts").status_code == 200
    member = make_token(world.server, role="member", project="proj-9")
    assert_error(world.call(member, "GET", "/v1/pools"), 403, "forbidden")


def _database_text(server: ApiServer) -> bytes:
    """Everything the database holds, schema-blind: the SQLite files, or every PG row."""
    if server.db_url.startswith("sqlite:///"):
        path = Path(server.db_url.removeprefix("sqlite:///"))
        files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-journal")]
        return b"".join(f.read_bytes() for f in files if f.exists())
    url = server.db_url.replace("postgresql+psycopg://", "postgresql://", 1)
    out = []
    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")]
        for table in tables:
            for (row,) in conn.execute(f'SELECT t::text FROM "{table}" t'):
                out.append(row)
    assert out, "no rows found: the scan looked in the wrong place"
    return "\n".join(out).encode()


def test_tokens_are_stored_hashed(world: World) -> None:
    made = [*world.made, make_token(world.server, role="admin")]
    stored = _database_text(world.server)
    assert world.host_a.encode() in stored  # the scan does see what the server wrote
    for plaintext in (*made, world.server.admin_token):
        assert plaintext.encode() not in stored
