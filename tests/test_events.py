"""The per-server action log: every step of a boot and a delete, through the real API with
the agent's task runner and the fake hypervisor; placement failures, expired spawns, tenant
isolation, the CLI; and the store's own rules (order, outcomes, one transaction per step).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import pytest

from apiserver import api_server
from cliserver import cli, failed, ok_json, ok_text
from fleet import ADMIN, T0, Clock, catalog, member, report, settings, two_gpus
from pcipass import errors
from pcipass.agent.tasks import TaskRunner
from pcipass.cli.agent import disk_overlays, host_cpus
from pcipass.cli.client import JSON, ApiClient, event_record
from pcipass.config import TaskSettings
from pcipass.host.discovery import discover
from pcipass.host.profiles import build_host, suggested_aliases, suggested_device_spec
from pcipass.pci.devspec import DeviceSpecSet, parse_device_spec
from pcipass.pci.inventory import Inventory, inventory_to_json
from pcipass.records import ServerStatus
from pcipass.services import Cloud
from pcipass.store import Store
from pcipass.store.events import list_events, record_event
from pcipass.virt.driver import DriverKind, open_driver

HOST = "gpu-1"
PROFILE = "gpu-server"
PROJECT = "tenant"
OTHER = "other"


@dataclass
class World:
    url: str
    admin: ApiClient
    member: ApiClient
    other: ApiClient
    runner: TaskRunner
    member_token: str
    admin_token: str

    def run_tasks(self) -> None:
        for _ in range(50):
            if not self.runner.run_once():
                return
        raise AssertionError("the task runner never ran out of work")


def gpu_inventory(root: Path) -> Inventory:
    build_host(root, PROFILE)
    specs = DeviceSpecSet(tuple(s for i, entry in enumerate(suggested_device_spec(PROFILE))
                                for s in parse_device_spec(entry, position=i)))
    found = discover(root)
    return Inventory(host=found.host, devices=specs.apply(found.devices))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("events")
    image = tmp / "images" / "plain.qcow2"
    image.parent.mkdir()
    image.write_bytes(b"")
    inv = gpu_inventory(tmp / "host")
    with api_server(f"sqlite:///{tmp / 'pcipass.db'}", tmp / "server") as api, \
            ApiClient(api.url, api.admin_token) as admin:
        agent_token = str(admin.create_token("agent", host=HOST)["token"])
        member_token = str(admin.create_token("member", project=PROJECT)["token"])
        other_token = str(admin.create_token("member", project=OTHER)["token"])
        admin.create_aliases(suggested_aliases(PROFILE))
        admin.create_flavor(name="one", vcpus=2, ram_mb=2048, disk_gb=1,
                            extra_specs={"pci_passthrough:alias": "a100:1"})
        admin.create_flavor(name="nine", vcpus=2, ram_mb=2048, disk_gb=1,
                            extra_specs={"pci_passthrough:alias": "a100:9"})
        admin.create_image(name="plain", source=str(image), properties={})
        state = tmp / "state"
        with ApiClient(api.url, agent_token) as agent, \
                ApiClient(api.url, member_token) as mem, \
                ApiClient(api.url, other_token) as other:
            agent.put_inventory(HOST, None, inventory_to_json(inv))
            runner = TaskRunner(
                client=agent, host=HOST, state_dir=state,
                open_driver=lambda: open_driver(DriverKind.FAKE, state_dir=state),
                overlays=disk_overlays(DriverKind.FAKE, state),
                host_cpus=lambda: host_cpus(inv), wait=0.0, rand=lambda: 0.0)
            try:
                yield World(api.url, admin, mem, other, runner, member_token,
                            api.admin_token)
            finally:
                runner.close()
        log = api.log()
        assert "Traceback" not in log, log[-6000:]


def steps(events: list[JSON]) -> list[tuple[str, str]]:
    return [(e["action"], e["outcome"]) for e in events]


# --- through the API ----------------------------------------------------------------------

def test_a_boot_and_delete_log_every_step_in_order(world: World) -> None:
    server = world.member.create_server(name="vm-cycle", flavor="one", image="plain")
    assert server["status"] == "BUILDING", server["fault"]
    (device,) = server["devices"]

    events = world.member.server_events("vm-cycle")
    assert steps(events) == [("create", "done"), ("schedule", "done")]
    create, schedule = events
    assert create["detail"]["flavor"] == "one" and create["detail"]["image"] == "plain"
    assert create["detail"]["nics"] == 0
    assert create["detail"]["requests"] == ["a100:1"]
    assert schedule["host"] == HOST
    assert schedule["detail"]["devices"] == [{"address": device["address"],
                                              "alias": "a100"}]

    world.run_tasks()
    assert world.member.server("vm-cycle")["status"] == "ACTIVE"
    world.member.delete_server("vm-cycle")
    mid = world.member.server_events(server["id"])
    assert steps(mid)[-1] == ("delete", "started")
    assert mid[-1]["detail"] == {"force": False}
    world.run_tasks()
    assert world.admin.server(server["id"])["status"] == "DELETED"

    events = world.member.server_events(server["id"])
    assert steps(events) == [
        ("create", "done"), ("schedule", "done"),
        ("spawn", "started"), ("spawn", "done"),
        ("delete", "started"),
        ("destroy", "started"), ("destroy", "done"),
    ]
    assert all(e["server_id"] == server["id"] for e in events)
    assert [e["host"] for e in events[2:4]] == [HOST, HOST]
    assert events[-1]["host"] == HOST
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    ats = [e["at"] for e in events]
    assert ats == sorted(ats)


def test_a_failed_placement_logs_the_schedulers_explanation(world: World) -> None:
    server = world.member.create_server(name="vm-nine", flavor="nine", image="plain")
    assert server["status"] == "ERROR"
    fault = server["fault"]["message"]
    events = world.member.server_events(server["id"])
    assert steps(events) == [("create", "done"), ("schedule", "failed")]
    assert events[1]["message"] == fault
    assert "a100" in fault and "1 host" in fault
    assert events[1]["host"] is None


def test_a_spawn_the_hypervisor_refuses_logs_its_message(world: World,
                                                         tmp_path: Path) -> None:
    # an image that does not exist: the agent fails the spawn and says why
    world.admin.create_image(name="missing", source=str(tmp_path / "nope.qcow2"),
                             properties={})
    server = world.member.create_server(name="vm-bad", flavor="one", image="missing")
    world.run_tasks()
    got = world.member.server("vm-bad")
    assert got["status"] == "ERROR"
    events = world.member.server_events(server["id"])
    assert steps(events) == [("create", "done"), ("schedule", "done"),
                             ("spawn", "started"), ("spawn", "failed")]
    assert events[-1]["message"] == got["fault"]["message"]
    assert events[-1]["message"]
    world.member.delete_server(server["id"])
    world.run_tasks()


def test_another_projects_server_events_are_not_found(world: World) -> None:
    server = world.member.create_server(name="vm-private", flavor="one", image="plain")
    with pytest.raises(errors.NotFound):
        world.other.server_events(server["id"])
    with pytest.raises(errors.NotFound):
        world.other.server_events("vm-private")
    with pytest.raises(errors.NotFound):
        world.member.server_events("no-such-server")
    assert steps(world.admin.server_events(server["id"]))[:2] == [
        ("create", "done"), ("schedule", "done")]
    world.member.delete_server(server["id"])
    world.run_tasks()


def test_cli_server_events_table_and_json(world: World) -> None:
    server = world.member.create_server(name="vm-cli", flavor="one", image="plain")
    world.run_tasks()
    env = {"PCIPASS_URL": world.url, "PCIPASS_TOKEN": world.member_token}
    as_json = ok_json(cli("server", "events", "vm-cli", "--json", env=env))
    assert as_json["next"] is None
    assert steps(as_json["events"]) == [("create", "done"), ("schedule", "done"),
                                        ("spawn", "started"), ("spawn", "done")]
    text = ok_text(cli("server", "events", "vm-cli", env=env))
    for word in ("create", "schedule", "spawn", "started", "done", HOST):
        assert word in text
    other = {"PCIPASS_URL": world.url, "PCIPASS_TOKEN": str(
        world.admin.create_token("member", project="third")["token"])}
    assert "not found" in failed(cli("server", "events", "vm-cli", env=other)).lower()
    assert event_record(as_json["events"][0]).action == "create"
    world.member.delete_server(server["id"])
    world.run_tasks()


# --- in process, on SQLite and PostgreSQL ---------------------------------------------------

def make_cloud(store: Store, timeout: float = 300.0) -> Cloud:
    return Cloud(store, replace(settings(), tasks=TaskSettings(timeout=timeout)))


def test_an_expired_spawn_is_logged_as_failed(clocked: tuple[Store, Clock]) -> None:
    store, clock = clocked
    cloud = make_cloud(store, timeout=60)
    report(store, "node1", two_gpus())
    catalog(cloud, {"g1": {"pci_passthrough:alias": "gpu:1"}})
    s = cloud.create_server(member("p1"), name="vm", flavor="g1", image="img")
    (task,) = cloud.tasks.poll(ADMIN, "node1")
    cloud.tasks.start(ADMIN, task.id)
    clock.advance(59)
    assert cloud.tasks.expire() == 0
    clock.advance(2)
    assert cloud.tasks.expire() == 1
    events = cloud.server_events(member("p1"), s.id)
    assert [(e.action, e.outcome) for e in events] == [
        ("create", "done"), ("schedule", "done"), ("spawn", "started"), ("spawn", "failed")]
    last = events[-1]
    assert last.message == cloud.get_server(ADMIN, s.id).fault
    assert last.message is not None and "timed out" in last.message
    assert last.detail == {"expired": True} and last.host == "node1"
    # a late result changes nothing, and logs nothing
    assert not cloud.tasks.result(ADMIN, task.id, ok=True, message=None, domain_xml=None)
    assert len(cloud.server_events(ADMIN, s.id)) == 4
    with pytest.raises(errors.NotFound):
        cloud.server_events(member("p2"), s.id)


def test_forced_delete_logs_delete_done_then_destroy_when_the_host_confirms(
        store: Store) -> None:
    cloud = make_cloud(store)
    report(store, "node1", two_gpus())
    catalog(cloud, {"g1": {"pci_passthrough:alias": "gpu:1"}})
    s = cloud.create_server(member("p1"), name="vm", flavor="g1", image="img")
    cloud.delete_server(ADMIN, s.id, force=True)
    events = cloud.server_events(ADMIN, s.id)
    assert [(e.action, e.outcome) for e in events] == [
        ("create", "done"), ("schedule", "done"), ("delete", "started"),
        ("spawn", "failed"), ("delete", "done")]
    assert events[3].message == "server deleted before its host started it"
    assert events[2].detail == {"force": True}
    assert events[4].message is not None and events[4].message.startswith("forced")
    (destroy,) = [t for t in cloud.tasks.poll(ADMIN, "node1") if t.kind == "destroy"]
    assert cloud.tasks.result(ADMIN, destroy.id, ok=True, message=None, domain_xml=None)
    assert [(e.action, e.outcome) for e in cloud.server_events(ADMIN, s.id)][-1] == (
        "destroy", "done")


def test_events_roll_back_with_their_step_and_come_oldest_first(store: Store) -> None:
    with pytest.raises(RuntimeError), store._tx.write() as conn:
        record_event(conn, "s1", "create", "done", None, T0)
        raise RuntimeError("the step failed")
    with store._tx.write() as conn:
        record_event(conn, "s1", "spawn", "started", None, T0 + timedelta(seconds=2),
                     host="h")
        record_event(conn, "s1", "create", "done", None, T0, detail={"nics": 1})
        record_event(conn, "s2", "create", "done", None, T0)
        with pytest.raises(ValueError):
            record_event(conn, "s1", "spawn", "maybe", None, T0)
    with store._tx.read() as conn:
        got = list_events(conn, "s1")
    assert [(e.action, e.at) for e in got] == [("create", T0),
                                               ("spawn", T0 + timedelta(seconds=2))]
    assert got[0].detail == {"nics": 1} and got[1].host == "h"


def test_an_unplaced_server_deleted_logs_it(store: Store) -> None:
    cloud = make_cloud(store)
    report(store, "node1", two_gpus())
    catalog(cloud, {"g3": {"pci_passthrough:alias": "gpu:3"}})
    s = cloud.create_server(member("p1"), name="vm", flavor="g3", image="img")
    assert s.status is ServerStatus.ERROR
    cloud.delete_server(member("p1"), s.id)
    assert [(e.action, e.outcome) for e in cloud.server_events(member("p1"), s.id)] == [
        ("create", "done"), ("schedule", "failed"), ("delete", "started"), ("delete", "done")]
