"""Agent tasks over HTTP against a real server process: who may touch which host's tasks,
the long-poll, the admin's domain XML, and the timeout sweep (PCIPASS_TASKS_TIMEOUT)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from apicloud import boot, created, make_alias, make_flavor, make_image, put_host
from apiserver import ApiServer, api_server, assert_error, gpu
from apiserver import inventory as api_inventory
from cliserver import cli, env_for, failed, ok_json

TIMEOUT_S = 3.0
XML = "<domain type='kvm'><name>pcipass-x</name></domain>"


@pytest.fixture(scope="module")
def tapi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    work: Path = tmp_path_factory.mktemp("api-tasks")
    with api_server(f"sqlite:///{work / 'pcipass.db'}", work,
                    env={"PCIPASS_TASKS_TIMEOUT": str(TIMEOUT_S)}) as server:
        with server.client() as http:
            make_alias(http, "tgpu", product_id="20b5", device_type="type-PCI")
            make_flavor(http, "tg1", pci="tgpu:1")
            make_image(http, "timg")
        yield server
        assert "Traceback" not in server.log()


def agent_token(api: ApiServer, host: str) -> str:
    with api.client() as http:
        return str(created(http.post("/v1/tokens", json={"role": "agent", "host": host}))
                   ["token"])


def new_host(api: ApiServer, name: str, product: str = "20b5") -> httpx.Client:
    with api.client() as http:
        put_host(http, name, api_inventory([gpu("0000:3b:00.0", product=product)]))
    return api.client(agent_token(api, name))


def test_an_agent_sees_and_runs_only_its_own_hosts_tasks(tapi: ApiServer) -> None:
    a, b = new_host(tapi, "ta-1"), new_host(tapi, "ta-2")
    with tapi.client() as admin, a, b:
        server = boot(admin, "t-own", "tg1", "timg")
        host = server["host"]
        mine, other = (a, b) if host == "ta-1" else (b, a)
        other_host = "ta-2" if host == "ta-1" else "ta-1"
        (task,) = mine.get(f"/v1/hosts/{host}/tasks").json()["tasks"]
        assert (task["kind"], task["server_id"], task["state"]) == ("spawn", server["id"],
                                                                    "queued")
        assert task["payload"]["server"]["id"] == server["id"]
        assert other.get(f"/v1/hosts/{other_host}/tasks").json()["tasks"] == []
        assert_error(other.get(f"/v1/hosts/{host}/tasks"), 403, "forbidden")
        assert_error(other.post(f"/v1/tasks/{task['id']}/start"), 403, "forbidden")
        assert_error(other.post(f"/v1/tasks/{task['id']}/result", json={"ok": True}),
                     403, "forbidden")
        started = mine.post(f"/v1/tasks/{task['id']}/start")
        assert (started.status_code, started.json()["state"]) == (200, "running")
        assert mine.post(f"/v1/tasks/{task['id']}/start").status_code == 200
        assert_error(mine.get(f"/v1/servers/{server['id']}/domain-xml"), 403, "forbidden")
        assert_error(admin.get(f"/v1/servers/{server['id']}/domain-xml"), 404, "not_found")
        done = mine.post(f"/v1/tasks/{task['id']}/result",
                         json={"ok": True, "domain_xml": XML})
        assert done.json() == {"accepted": True, "state": "done"}
        assert admin.get(f"/v1/servers/{server['id']}").json()["status"] == "ACTIVE"
        xml = admin.get(f"/v1/servers/{server['id']}/domain-xml")
        assert (xml.status_code, xml.headers["content-type"].split(";")[0], xml.text) == (
            200, "application/xml", XML)
        assert_error(mine.post(f"/v1/tasks/{task['id']}/start"), 409, "task_not_runnable")
        late = mine.post(f"/v1/tasks/{task['id']}/result", json={"ok": False,
                                                                 "message": "x"})
        assert late.json() == {"accepted": False, "state": "done"}   # the first report stands
        # Delete: DELETING until the host confirms the destroy.
        gone = admin.delete(f"/v1/servers/{server['id']}")
        assert (gone.status_code, gone.json()["status"]) == (202, "DELETING")
        (destroy,) = mine.get(f"/v1/hosts/{host}/tasks").json()["tasks"]
        assert destroy["kind"] == "destroy" and destroy["deadline"] is None
        mine.post(f"/v1/tasks/{destroy['id']}/start")
        assert mine.post(f"/v1/tasks/{destroy['id']}/result",
                         json={"ok": True}).json() == {"accepted": True, "state": "done"}
        assert admin.get(f"/v1/servers/{server['id']}").json()["status"] == "DELETED"
        dev = admin.get(f"/v1/devices/{host}/0000:3b:00.0").json()
        assert (dev["state"], dev["owner"]) == ("available", None)


def test_long_poll_returns_when_a_task_is_queued_and_after_wait_when_none(
        tapi: ApiServer) -> None:
    agent = new_host(tapi, "tl-1", product="20b6")
    with tapi.client() as admin, agent:
        make_alias(admin, "lgpu", product_id="20b6", device_type="type-PCI")
        make_flavor(admin, "lg1", pci="lgpu:1")
        t0 = time.monotonic()
        assert agent.get("/v1/hosts/tl-1/tasks", params={"wait": 1}).json()["tasks"] == []
        assert 0.9 <= time.monotonic() - t0 < 5
        assert_error(agent.get("/v1/hosts/tl-1/tasks", params={"wait": 31}), 422,
                     "invalid_input")

        # Another request is served while the long-poll waits; the poll ends on the boot.
        with httpx.Client(base_url=tapi.url, timeout=30,
                          headers=agent.headers) as poller:
            got: list[httpx.Response] = []
            waiter = threading.Thread(target=lambda: got.append(
                poller.get("/v1/hosts/tl-1/tasks", params={"wait": 20})))
            t0 = time.monotonic()
            waiter.start()
            time.sleep(0.5)
            assert admin.get("/v1/health").status_code == 200
            server = boot(admin, "t-poll", "lg1", "timg")
            assert server["host"] == "tl-1"
            waiter.join(timeout=25)
            took = time.monotonic() - t0
        (reply,) = got
        assert [t["server_id"] for t in reply.json()["tasks"]] == [server["id"]]
        assert took < 10
        admin.delete(f"/v1/servers/{server['id']}", params={"force": "true"})


def test_a_spawn_no_agent_runs_fails_after_the_timeout(tapi: ApiServer) -> None:
    with tapi.client() as admin:
        put_host(admin, "tt-1", api_inventory([gpu("0000:3b:00.0")]))
        server = boot(admin, "t-late", "tg1", "timg")
        assert server["status"] == "BUILDING"
        (task,) = [t for t in admin.get(f"/v1/hosts/{server['host']}/tasks").json()["tasks"]
                   if t["server_id"] == server["id"]]
        deadline = time.monotonic() + TIMEOUT_S + 10
        while time.monotonic() < deadline:
            got = admin.get(f"/v1/servers/{server['id']}").json()
            if got["status"] != "BUILDING":
                break
            time.sleep(0.2)
        assert got["status"] == "ERROR"
        assert f"timed out after {TIMEOUT_S:g} s on host {server['host']}" in str(got["fault"])
        host = server["host"]
        dev = admin.get("/v1/devices", params={"host": host}).json()["devices"]
        assert all(d["owner"] is None for d in dev)
        # The agent that ran it after all is told so: it must undo the spawn.
        late = admin.post(f"/v1/tasks/{task['id']}/result", json={"ok": True})
        assert late.json() == {"accepted": False, "state": "expired"}
        assert admin.get(f"/v1/hosts/{host}/tasks").json()["tasks"] == []
        # Deleting the failed boot does not wait for a host.
        assert admin.delete(f"/v1/servers/{server['id']}").json()["status"] == "DELETED"


def test_cli_shows_the_domain_xml_and_lists_servers_by_host(tapi: ApiServer) -> None:
    agent = new_host(tapi, "tc-1", product="20b7")
    with tapi.client() as admin, agent:
        make_alias(admin, "cgpu", product_id="20b7", device_type="type-PCI")
        make_flavor(admin, "cg1", pci="cgpu:1")
        server = boot(admin, "t-cli", "cg1", "timg")
        assert server["host"] == "tc-1"
        env = env_for(tapi)
        assert "[not_found]" in failed(cli("server", "show", server["id"], "--xml", env=env))
        (task,) = agent.get("/v1/hosts/tc-1/tasks").json()["tasks"]
        agent.post(f"/v1/tasks/{task['id']}/result", json={"ok": True, "domain_xml": XML})
        shown = cli("server", "show", server["id"], "--xml", env=env)
        assert shown.exit_code == 0 and shown.stdout.strip() == XML
        listed = ok_json(cli("server", "list", "--host", "tc-1", "--json", env=env))
        assert [s["id"] for s in listed["servers"]] == [server["id"]]
        assert ok_json(cli("server", "list", "--host", "tl-none", "--json",
                           env=env))["servers"] == []
