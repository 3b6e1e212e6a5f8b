"""`pcipass server|explain|quota|usage`: boots against a real server, JSON checked.

One gpu-server host (4 x A100, two per NUMA node) and a tenant project with a quota; each test
boots servers of its own names.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import pytest
from rich.console import Console

from agentworld import in_background
from apicloud import confirm_all_destroys
from apiserver import ApiServer, api_server
from cliserver import cli, env_for, failed, member_token, ok_json, ok_text, report_host
from pcipass import errors
from pcipass.cli import render
from pcipass.cli.client import error_from_response, server_record
from pcipass.cli.servers import placement_line, settled, wait_for

Env = dict[str, str | None]
TENANT = "tenant"
A100 = ("10de", "20f1")


@dataclass(frozen=True)
class Cloud:
    server: ApiServer
    admin: Env
    member: Env


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    work = tmp_path_factory.mktemp("cli-servers")
    with api_server(f"sqlite:///{work / 'pcipass.db'}", work) as srv:
        report_host(srv, "gpu-1", work / "gpu-1", "gpu-server")
        admin = env_for(srv)
        for args in (
            ["alias", "create", "a100", "--vendor-id", A100[0], "--product-id", A100[1],
             "--device-type", "type-PCI", "--numa-policy", "preferred"],
            ["alias", "create", "a6000", "--vendor-id", "10de", "--product-id", "2230"],
            ["flavor", "create", "gpu.small", "--vcpus", "4", "--ram", "8192", "--pci",
             "a100:1", "--property", "hw:numa_nodes=1",
             "--property", "hw:pci_numa_affinity_policy=required"],
            ["flavor", "create", "gpu.quad", "--vcpus", "8", "--ram", "16384", "--pci",
             "a100:4", "--property", "hw:numa_nodes=1",
             "--property", "hw:pci_numa_affinity_policy=required"],
            ["flavor", "create", "display", "--vcpus", "2", "--ram", "4096", "--pci",
             "a6000:1"],
            ["image", "create", "cuda", "--source", "/images/cuda.qcow2",
             "--property", "hw_pci_supported_aliases=a100"],
            ["image", "create", "plain", "--source", "/images/plain.qcow2"],
            ["quota", "set", TENANT, "a100", "2"],
        ):
            ok_json(cli(*args, "--json", env=admin))
        yield Cloud(srv, admin, env_for(srv, member_token(srv, TENANT)))
        log = srv.log()
        assert "Traceback" not in log, log[-6000:]


def a100s_free(cloud: Cloud) -> int:
    devices = ok_json(cli("device", "list", "--json", "--vendor-id", A100[0], "--product-id",
                          A100[1], "--state", "available", env=cloud.admin))["devices"]
    return len(devices)


def delete(cloud: Cloud, name: str) -> Any:
    gone = ok_json(cli("server", "delete", name, "--json", env=cloud.admin))
    confirm(cloud)
    return gone


def confirm(cloud: Cloud) -> None:
    """Play the hosts' agents: the destroys the deletes queued succeed."""
    with cloud.server.client() as http:
        confirm_all_destroys(http)


# --- boots ---------------------------------------------------------------------------------

def test_boot_claims_a_numa_local_device(cloud: Cloud) -> None:
    made = ok_json(cli("server", "create", "s-one", "--flavor", "gpu.small", "--image", "cuda",
                       "--json", env=cloud.member))
    assert made["name"] == "s-one" and made["project"] == TENANT
    assert made["status"] == "BUILDING" and made["host"] == "gpu-1"
    [dev] = made["devices"]
    assert dev["alias"] == "a100" and dev["state"] == "claimed"
    assert (dev["vendor_id"], dev["product_id"]) == A100
    assert made["numa_cells"] == [dev["numa_node"]]  # the device is on the guest's node
    assert made["fault"] is None and made["not_granted"] == []
    device = ok_json(cli("device", "show", "gpu-1", dev["address"], "--json",
                         env=cloud.admin))
    assert device["state"] == "claimed" and device["owner"]
    by_name = ok_json(cli("server", "show", "s-one", "--json", env=cloud.member))
    by_id = ok_json(cli("server", "show", made["id"], "--json", env=cloud.member))
    assert by_name == by_id
    assert by_name["id"] == made["id"] and by_name["devices"] == made["devices"]
    table = ok_text(cli("server", "show", made["id"], env=cloud.member))
    assert dev["address"] in table and "a100" in table and "claimed" in table
    assert "gpu-1" in table and "BUILDING" in table
    delete(cloud, made["id"])


def agent_answering(cloud: Cloud, *, ok: bool, message: str | None = None
                    ) -> AbstractContextManager[None]:
    """Play gpu-1's agent in a thread: every spawn it is handed ends with ``ok``."""

    def answer() -> None:
        with cloud.server.client() as http:
            for task in http.get("/v1/hosts/gpu-1/tasks").json()["tasks"]:
                if task["kind"] == "spawn":
                    http.post(f"/v1/tasks/{task['id']}/result",
                              json={"ok": ok, "message": message})

    return in_background(answer)


def test_boot_and_wait_returns_once_the_agent_started_it(cloud: Cloud) -> None:
    with agent_answering(cloud, ok=True):
        out = ok_text(cli("server", "create", "s-wait", "--flavor", "gpu.small", "--image",
                          "cuda", "--wait", "--timeout", "30", env=cloud.member))
    assert "server s-wait is ACTIVE on gpu-1" in out and "(a100, allocated)" in out
    assert "Server s-wait" in out
    delete(cloud, "s-wait")


def test_boot_and_wait_exits_1_with_the_fault_when_the_spawn_fails(cloud: Cloud) -> None:
    with agent_answering(cloud, ok=False, message="qemu: vfio 0000:4b:00.0: no IOMMU group"):
        result = cli("server", "create", "s-bad", "--flavor", "gpu.small", "--image", "cuda",
                     "--wait", "--timeout", "30", env=cloud.member)
    assert result.exit_code == 1
    assert "server s-bad is ERROR" in result.stdout
    assert "could not be booted" in result.stderr and "no IOMMU group" in result.stderr
    delete(cloud, "s-bad")


def test_boot_and_wait_without_an_agent_times_out_naming_the_status(cloud: Cloud) -> None:
    result = cli("server", "create", "s-slow", "--flavor", "gpu.small", "--image", "cuda",
                 "--wait", "--timeout", "0.6", env=cloud.member)
    assert result.exit_code == 1
    assert "still BUILDING after 0.6s" in result.stderr and "agent" in result.stderr
    delete(cloud, "s-slow")


def test_boot_without_pci_is_placed_without_devices(cloud: Cloud) -> None:
    ok_json(cli("flavor", "create", "tiny", "--vcpus", "1", "--ram", "512", "--json",
                env=cloud.admin))
    made = ok_json(cli("server", "create", "s-tiny", "--flavor", "tiny", "--image", "plain",
                       "--json", env=cloud.member))
    assert made["status"] == "BUILDING" and made["host"] and made["devices"] == []
    assert "no PCI devices" in placement_line(made)
    delete(cloud, "s-tiny")


def test_over_quota_is_refused_with_the_numbers(cloud: Cloud) -> None:
    first = ok_json(cli("server", "create", "q-1", "--flavor", "gpu.small", "--image", "cuda",
                        "--json", env=cloud.member))
    second = ok_json(cli("server", "create", "q-2", "--flavor", "gpu.small", "--image", "cuda",
                         "--json", env=cloud.member))
    quotas = ok_json(cli("quota", "list", "--json", env=cloud.member))["quotas"]
    assert quotas == [{"project": TENANT, "alias": "a100", "limit": 2, "used": 2}]
    result = cli("server", "create", "q-3", "--flavor", "gpu.small", "--image", "cuda",
                 env=cloud.member)
    message = failed(result)
    assert result.stdout == ""
    assert "[quota_exceeded]" in message and "a100" in message and "2" in message
    names = {s["name"] for s in ok_json(cli("server", "list", "--json",
                                            env=cloud.member))["servers"]}
    assert "q-3" not in names
    for s in (first, second):
        delete(cloud, s["name"])
    assert ok_json(cli("quota", "list", "--project", TENANT, "--json",
                       env=cloud.admin))["quotas"][0]["used"] == 0


def test_image_that_cannot_drive_the_alias_is_refused(cloud: Cloud) -> None:
    message = failed(cli("server", "create", "s-disp", "--flavor", "display", "--image",
                         "cuda", env=cloud.member))
    assert "[alias_not_supported_by_image]" in message
    assert "a6000" in message and "cuda" in message


def test_boot_that_cannot_fit_is_error_with_the_explanation(cloud: Cloud) -> None:
    free = a100s_free(cloud)
    result = cli("server", "create", "s-quad", "--flavor", "gpu.quad", "--image", "cuda",
                 "--project", "ops", "--json", env=cloud.admin)
    message = failed(result)
    obj = server_record(json.loads(result.stdout))
    assert obj.status.value == "ERROR" and obj.host is None and obj.devices == ()
    assert obj.fault and "a100" in obj.fault
    assert "could not be booted" in message and obj.fault.split(":")[0] in message
    assert a100s_free(cloud) == free  # nothing was claimed
    shown = ok_text(cli("server", "show", "s-quad", env=cloud.admin))
    assert "ERROR" in shown and "a100" in shown
    table = cli("server", "create", "s-quad2", "--flavor", "gpu.quad", "--image", "cuda",
                "--project", "ops", env=cloud.admin)
    assert table.exit_code == 1 and "server s-quad2 is ERROR" in " ".join(table.stdout.split())


def test_explain(cloud: Cloud) -> None:
    quad = ok_json(cli("explain", "--flavor", "gpu.quad", "--json", env=cloud.admin))
    assert quad["fits"] is False and "a100" in quad["message"]
    [verdict] = [h for h in quad["hosts"] if h["host"] == "gpu-1"]
    assert verdict["fits"] is False and verdict["reason"]
    small = ok_json(cli("explain", "--flavor", "gpu.small", "--image", "cuda", "--json",
                        env=cloud.admin))
    assert small["fits"] is True
    [ok] = [h for h in small["hosts"] if h["host"] == "gpu-1"]
    assert ok["fits"] is True
    table = ok_text(cli("explain", "--flavor", "gpu.quad", env=cloud.admin))
    assert "does not fit" in table and "gpu-1" in table
    assert "[forbidden]" in failed(cli("explain", "--flavor", "gpu.small", env=cloud.member))
    assert "[not_found]" in failed(cli("explain", "--flavor", "nope", env=cloud.admin))


def test_server_list_filters(cloud: Cloud) -> None:
    made = ok_json(cli("server", "create", "l-1", "--flavor", "gpu.small", "--image", "cuda",
                       "--json", env=cloud.member))
    assert cli("server", "create", "l-err", "--flavor", "gpu.quad", "--image", "cuda",
               "--project", "ops", env=cloud.admin).exit_code == 1  # an ERROR server
    on_host = ok_json(cli("server", "list", "--host", "gpu-1", "--json", env=cloud.admin))
    assert made["id"] in {s["id"] for s in on_host["servers"]}
    building = ok_json(cli("server", "list", "--status", "building", "--json",
                           env=cloud.admin))["servers"]
    assert building and all(s["status"] == "BUILDING" for s in building)
    in_error = ok_json(cli("server", "list", "--status", "ERROR", "--json",
                           env=cloud.admin))["servers"]
    assert "l-err" in {s["name"] for s in in_error}
    assert all(s["status"] == "ERROR" for s in in_error)
    mine = ok_json(cli("server", "list", "--project", TENANT, "--json",
                       env=cloud.admin))["servers"]
    assert mine and all(s["project"] == TENANT for s in mine)
    table = ok_text(cli("server", "list", env=cloud.member))
    assert "l-1" in table and "1 x a100" in table
    delete(cloud, "l-1")


def test_delete_frees_the_devices(cloud: Cloud) -> None:
    free = a100s_free(cloud)
    made = ok_json(cli("server", "create", "d-1", "--flavor", "gpu.small", "--image", "cuda",
                       "--json", env=cloud.member))
    assert a100s_free(cloud) == free - 1
    gone = ok_json(cli("server", "delete", made["id"], "--json", env=cloud.member))
    assert gone["id"] == made["id"] and gone["status"] in ("DELETED", "DELETING")
    confirm(cloud)
    assert a100s_free(cloud) == free
    address = made["devices"][0]["address"]
    device = ok_json(cli("device", "show", "gpu-1", address, "--json", env=cloud.admin))
    assert device["state"] == "available" and device["owner"] is None


def test_members_see_only_their_projects_servers(cloud: Cloud) -> None:
    made = ok_json(cli("server", "create", "m-1", "--flavor", "gpu.small", "--image", "cuda",
                       "--json", env=cloud.member))
    other = env_for(cloud.server, member_token(cloud.server, "other"))
    assert "[not_found]" in failed(cli("server", "show", "m-1", env=other))
    assert "[not_found]" in failed(cli("server", "show", made["id"], env=other))
    assert "[not_found]" in failed(cli("server", "delete", "m-1", env=other))
    listed = ok_json(cli("server", "list", "--json", env=other))["servers"]
    assert made["id"] not in {s["id"] for s in listed}
    delete(cloud, "m-1")


def test_server_bad_usage_exits_2(cloud: Cloud) -> None:
    assert cli("server", "create", "x", "--image", "cuda", env=cloud.member).exit_code == 2
    assert cli("server", "list", "--status", "sleeping", env=cloud.member).exit_code == 2
    assert cli("server", "create", "x", "--flavor", "f", "--image", "i", "--timeout", "-1",
               env=cloud.member).exit_code == 2
    assert "[not_found]" in failed(cli("server", "show", "nope", env=cloud.member))
    assert "[not_found]" in failed(cli("server", "create", "x", "--flavor", "nope",
                                       "--image", "cuda", env=cloud.member))


# --- quotas and usage ----------------------------------------------------------------------

def test_quota_set_list_delete(cloud: Cloud) -> None:
    made = ok_json(cli("quota", "set", "q-proj", "a6000", "3", "--json", env=cloud.admin))
    assert made == {"project": "q-proj", "alias": "a6000", "limit": 3, "used": 0}
    assert "q-proj" in ok_text(cli("quota", "list", env=cloud.admin))
    listed = ok_json(cli("quota", "list", "--project", "q-proj", "--json",
                         env=cloud.admin))["quotas"]
    assert listed == [made]
    assert ok_json(cli("quota", "delete", "q-proj", "a6000", "--json", env=cloud.admin)) == \
        {"deleted": "quota", "name": "q-proj/a6000"}
    assert ok_json(cli("quota", "list", "--project", "q-proj", "--json",
                       env=cloud.admin))["quotas"] == []
    assert "[forbidden]" in failed(cli("quota", "set", TENANT, "a100", "99",
                                       env=cloud.member))
    assert cli("quota", "set", "p", "a100", "-1", env=cloud.admin).exit_code == 2
    assert cli("quota", "set", "p", "a100", "many", env=cloud.admin).exit_code == 2


def test_usage(cloud: Cloud) -> None:
    data = ok_json(cli("usage", "--json", env=cloud.admin))
    assert isinstance(data["usage"], list)
    for row in data["usage"]:
        assert set(row) >= {"project", "alias", "device_seconds", "device_hours"}
    mine = ok_json(cli("usage", "--project", TENANT, "--start", "2024-01-01T00:00:00Z",
                       "--end", "2099-01-01", "--json", env=cloud.member))
    assert all(r["project"] == TENANT for r in mine["usage"])
    assert "device-hours" in ok_text(cli("usage", env=cloud.admin))
    assert "--start" in failed(cli("usage", "--start", "yesterday", env=cloud.admin), 2)
    assert "after" in failed(cli("usage", "--start", "2025-02-01", "--end", "2025-01-01",
                                 env=cloud.admin), 2)


# --- --wait, without a server --------------------------------------------------------------

class FakeClient:
    """Answers ``server()`` from a script of states."""

    def __init__(self, states: list[dict[str, Any]]) -> None:
        self.states = states
        self.calls = 0

    def server(self, ref: str) -> dict[str, Any]:
        self.calls += 1
        return self.states.pop(0)


def test_settled() -> None:
    assert not settled({"status": "BUILDING", "host": None})
    assert not settled({"status": "BUILDING", "host": "h1"})   # placed, not started yet
    assert not settled({"status": "RESIZE", "host": "h1"})
    assert not settled({"status": "MIGRATING", "host": "h1"})
    assert settled({"status": "ERROR", "host": None})
    assert settled({"status": "ACTIVE", "host": "h1"})
    assert settled({"status": "VERIFY_RESIZE", "host": "h2"})


def test_wait_polls_until_settled_or_timeout() -> None:
    now = [0.0]

    def clock() -> float:
        return now[0]

    def sleep(s: float) -> None:
        now[0] += s

    start = {"id": "x", "status": "BUILDING", "host": None}
    fake = FakeClient([{"id": "x", "status": "BUILDING", "host": "h1"},
                       {"id": "x", "status": "ACTIVE", "host": "h1"}])
    done, ok = wait_for(fake, dict(start), timeout=10, poll=1,
                        clock=clock, sleep=sleep)
    assert ok and done["status"] == "ACTIVE" and fake.calls == 2
    fake = FakeClient([dict(start)] * 10)
    done, ok = wait_for(fake, dict(start), timeout=3, poll=1,
                        clock=clock, sleep=sleep)
    assert not ok and done["status"] == "BUILDING" and fake.calls == 3


# --- rendering the contract's JSON ---------------------------------------------------------

SERVER_JSON: dict[str, Any] = {
    "id": "3f2a", "name": "r-1", "project": "p", "status": "BUILDING", "flavor": "gpu.small",
    "image": "cuda", "host": "gpu-1",
    "devices": [
        {"address": "0000:4b:00.0", "alias": "a6000", "state": "claimed", "vendor_id": "10de",
         "product_id": "2230", "dev_type": "type-PCI", "numa_node": 0},
        {"address": "0000:4b:00.1", "alias": None, "state": "claimed", "vendor_id": "10de",
         "product_id": "1aef", "dev_type": "type-PCI", "numa_node": 0},
    ],
    "not_granted": ["fpga:1"], "fault": None, "numa_cells": [0],
    "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:01Z",
}


def test_server_rendering_from_the_contract_json() -> None:
    rec = server_record(SERVER_JSON)
    assert [d.alias for d in rec.devices] == ["a6000", None]
    assert render.server_devices_text(rec) == "1 x a6000, 1 x (group mate)"
    line = placement_line(SERVER_JSON)
    assert line == ("server r-1 is BUILDING on gpu-1: 0000:4b:00.0 (a6000, claimed), "
                    "0000:4b:00.1 (group mate, claimed); preferred but not granted: fpga:1")
    console = Console(width=200, record=True)
    console.print(render.server_view(rec))
    text = console.export_text()
    assert "0000:4b:00.1" in text and "(group mate)" in text and "fpga:1" in text
    failed_boot = {**SERVER_JSON, "status": "ERROR", "host": None, "devices": [],
                   "fault": {"message": "No host can satisfy 4 x a100"}}
    assert placement_line(failed_boot) == "server r-1 is ERROR: No host can satisfy 4 x a100"
    console.print(render.servers_table([server_record(failed_boot)]))
    assert "No host can satisfy" in console.export_text()


def test_an_error_class_with_extra_attributes_is_rebuilt_from_the_wire() -> None:
    # VfProgrammingError also names the PF, which an error body does not carry
    body = errors.VfProgrammingError("m", pf="ens1f0").to_dict()
    rebuilt = error_from_response(503, body, "fallback")
    assert type(rebuilt) is errors.VfProgrammingError
    assert (rebuilt.code, rebuilt.message) == ("vf_programming_failed", "m")
